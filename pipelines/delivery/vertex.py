"""Submitting the training pipeline to Vertex AI Pipelines, once or on a schedule.

Everything is checked before anything is sent: the parameters against the template's
signature, and the project, region, pipeline root, service account, labels, cron and time
zone. Then, with the credentials and reading only: the project exists, and the pipeline
root's bucket exists and belongs to it (google-cloud-aiplatform would otherwise create a
missing bucket, and only log a bucket another project owns). Vertex AI is called over REST.

A schedule is found again by its display name. ``--replace`` pauses the schedules of that
name, creates the new one, then deletes them; if the new one cannot be created, the paused
ones are resumed, so a failed replace leaves the old schedule running.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import yaml

from conveyor.components.core.errors import ConveyorError, first_line
from conveyor.pipelines.definitions.parameters import parameter_problems
from conveyor.pipelines.delivery.gcloud import call

__all__ = ["VertexRequest", "preflight", "request_problems", "schedule", "submit"]

_SERVICE = "Vertex AI"
_PROJECT = re.compile(r"[a-z][a-z0-9-]{4,28}[a-z0-9]")
_BUCKET = re.compile(r"gs://([a-z0-9][a-z0-9._-]{1,220}[a-z0-9])(/.*)?")
_SERVICE_ACCOUNT = re.compile(r"[a-z0-9-]{6,30}@[a-z0-9.-]+\.gserviceaccount\.com")
_LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
_CONSOLE = "https://console.cloud.google.com/vertex-ai/locations"


@dataclass(frozen=True)
class VertexRequest:
    """What ``conveyor submit`` / ``schedule --target vertex`` sends to Vertex AI.

    Attributes:
        template: What runs: the pipeline compiled from this checkout (its content hash),
            or an Artifact Registry template URL pinned to its ``sha256:`` version.
        display_name: The pipeline job's name, or the schedule's when ``cron`` is set.
        cron: ``TZ=Area/City`` and the 5 standard fields; empty for a single run.
    """

    project: str
    region: str
    pipeline_root: str
    template: str
    display_name: str
    parameters: dict[str, Any] = field(default_factory=dict)
    service_account: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    cron: str = ""
    max_concurrent: int = 1
    replace: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def request_problems(
    request: VertexRequest, inputs: dict[str, Any] | None, where: str
) -> list[str]:
    """Every problem of ``request``, a line each, to refuse it before any call; ``inputs`` is
    the template's signature (None: checked once the template is read)."""
    problems = parameter_problems(request.parameters, inputs, where) if inputs is not None else []
    return problems + _settings_problems(request)


def _settings_problems(request: VertexRequest) -> list[str]:
    problems = []
    if not _PROJECT.fullmatch(request.project):
        problems.append(
            f"--project {request.project!r} is not a project id (6-30 lowercase letters, "
            "digits and hyphens, starting with a letter)"
        )
    if not _vertex_region(request.region):
        problems.append(
            f"--region {request.region!r} is not a Vertex AI region, such as europe-west4 or "
            "us-central1"
        )
    if not _BUCKET.fullmatch(request.pipeline_root):
        problems.append(
            f"--pipeline-root {request.pipeline_root!r}: expected gs://BUCKET/PATH, where "
            "Vertex AI writes the run's artifacts"
        )
    if request.service_account and not _SERVICE_ACCOUNT.fullmatch(request.service_account):
        problems.append(
            f"--service-account {request.service_account!r} is not a service account email "
            "(NAME@PROJECT.iam.gserviceaccount.com)"
        )
    for key, value in request.labels.items():
        if not _LABEL_KEY.fullmatch(key) or not _LABEL_VALUE.fullmatch(value):
            problems.append(
                f"--job-label {key}={value}: keys and values are lowercase letters, digits, '_' "
                "and '-', at most 63 characters, and keys start with a letter"
            )
    if not 1 <= len(request.display_name) <= 128 or re.search(r'["\\]', request.display_name):
        problems.append(
            f"the name {request.display_name!r} must be 1 to 128 characters, without quotes "
            "or backslashes"
        )
    if request.max_concurrent < 1:
        problems.append(f"--max-concurrent {request.max_concurrent} must be 1 or more")
    return problems


def _vertex_region(region: str) -> bool:
    from google.cloud.aiplatform import utils

    try:
        return utils.validate_region(region)
    except ValueError:
        return False


def preflight(request: VertexRequest, auth: Any) -> None:
    """The project exists and the pipeline root's bucket belongs to it (reads only)."""
    from google.cloud import resourcemanager_v3, storage

    projects = resourcemanager_v3.ProjectsClient(credentials=auth)
    project = call(
        f"read project {request.project}",
        "Resource Manager",
        lambda: projects.get_project(name=f"projects/{request.project}", timeout=30),
    )
    number = project.name.rsplit("/", 1)[-1]
    name = _BUCKET.fullmatch(request.pipeline_root).group(1)  # type: ignore[union-attr]
    client = storage.Client(project=request.project, credentials=auth)
    bucket = call(f"read bucket {name}", "Cloud Storage", lambda: client.lookup_bucket(name))
    if bucket is None:
        raise ConveyorError(
            f"--pipeline-root {request.pipeline_root}: bucket {name} does not exist; create "
            f"it in project {request.project}, in or near {request.region}"
        )
    if str(bucket.project_number) != number:
        raise ConveyorError(
            f"--pipeline-root {request.pipeline_root}: bucket {name} belongs to another project "
            f"(number {bucket.project_number}), not {request.project} ({number})"
        )


def submit(request: VertexRequest, template_path: str, auth: Any) -> tuple[str, str]:
    """Creates the pipeline job; returns its id and console link."""
    job = _pipeline_job(request, template_path, auth)
    call(
        "create the pipeline job",
        _SERVICE,
        lambda: job.submit(service_account=request.service_account or None),
    )
    link = f"{_CONSOLE}/{request.region}/pipelines/runs/{job.job_id}?project={request.project}"
    return job.job_id, link


def schedule(
    request: VertexRequest, template_path: str, auth: Any
) -> tuple[str, str, list[tuple[str, str]]]:
    """Creates the schedule, replacing those of its name with ``replace``; returns its id,
    console link, and for each schedule it replaced its id and why it could not be deleted
    ("" once deleted; one that could not be stays paused)."""
    job = _pipeline_job(request, template_path, auth)
    previous = _live_schedules(request, auth)
    if previous and not request.replace:
        raise ConveyorError(
            f"a schedule named {request.display_name!r} already exists "
            f"({', '.join(_id(found) for found in previous)}): pass --replace to pause and "
            "delete it in favour of this one, or choose another --schedule-name"
        )
    created = _create_pausing(request, job, previous)
    schedule_id = _id(created)
    link = f"{_CONSOLE}/{request.region}/pipelines/schedules/{schedule_id}"
    return schedule_id, f"{link}?project={request.project}", list(map(_delete_replaced, previous))


def _create_pausing(request: VertexRequest, job: Any, previous: list[Any]) -> Any:
    """Pauses the active ones of ``previous``, then creates the schedule; if either fails,
    what was paused is resumed, so the old schedule carries on."""
    from google.cloud import aiplatform

    paused: list[Any] = []
    try:
        for found in filter(_active, previous):
            call(f"pause schedule {_id(found)}", _SERVICE, found.pause)
            paused.append(found)
        created = aiplatform.PipelineJobSchedule(
            pipeline_job=job, display_name=request.display_name
        )
        call(
            "create the schedule",
            _SERVICE,
            lambda: created.create(
                cron=request.cron,
                max_concurrent_run_count=request.max_concurrent,
                service_account=request.service_account or None,
            ),
        )
    except ConveyorError as error:
        stuck = _resume(paused)
        if stuck:
            raise ConveyorError(f"{error}; and {stuck}") from None
        raise
    return created


def _resume(paused: list[Any]) -> str:
    """Resumes each of ``paused``; says which could not be, or "" when all were."""
    stuck = []
    for found in paused:
        try:
            call(f"resume schedule {_id(found)}", _SERVICE, found.resume)
        except ConveyorError as error:
            stuck.append(f"schedule {_id(found)} stays paused ({error})")
    return "; ".join(stuck)


def _delete_replaced(found: Any) -> tuple[str, str]:
    try:
        call(f"delete schedule {_id(found)}", _SERVICE, found.delete)
    except ConveyorError as error:
        return _id(found), str(error)
    return _id(found), ""


def _pipeline_job(request: VertexRequest, template_path: str, auth: Any) -> Any:
    from google.cloud import aiplatform

    _quiet_aiplatform()
    aiplatform.init(
        project=request.project,
        location=request.region,
        credentials=auth,
        api_transport="rest",
    )
    try:
        return call(
            f"read the template {template_path}",
            _SERVICE,
            lambda: aiplatform.PipelineJob(
                display_name=request.display_name,
                template_path=template_path,
                pipeline_root=request.pipeline_root,
                parameter_values=request.parameters,
                labels=request.labels or None,
                project=request.project,
                location=request.region,
                credentials=auth,
            ),
        )
    except (ValueError, yaml.YAMLError) as error:  # aiplatform's own checks of the template
        raise ConveyorError(f"the template {template_path}: {first_line(error)}") from None


def _quiet_aiplatform() -> None:
    """aiplatform gives each module a logger of its own at INFO, narrating every call; the
    command prints what it did itself, so only warnings are left."""
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if name.startswith("google.cloud.aiplatform") and isinstance(logger, logging.Logger):
            logger.setLevel(logging.WARNING)


def _live_schedules(request: VertexRequest, auth: Any) -> list[Any]:
    """Schedules of this display name that are active or paused (not completed)."""
    from google.cloud import aiplatform

    found = call(
        "list the schedules",
        _SERVICE,
        lambda: aiplatform.PipelineJobSchedule.list(
            filter=f'display_name="{request.display_name}"',
            project=request.project,
            location=request.region,
            credentials=auth,
        ),
    )
    return [schedule for schedule in found if _state(schedule) in ("ACTIVE", "PAUSED")]


def _state(found: Any) -> str:
    return found.gca_resource.state.name


def _active(found: Any) -> bool:
    return _state(found) == "ACTIVE"


def _id(found: Any) -> str:
    return found.resource_name.rsplit("/", 1)[-1]
