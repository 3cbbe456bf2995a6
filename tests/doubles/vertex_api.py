"""Vertex AI Pipelines (REST v1) for ``tests.doubles.google_cloud``: pipeline jobs and
schedules, as ``google-cloud-aiplatform`` with ``api_transport="rest"`` calls them.

What the service checks, the double checks, each with a 400 ``INVALID_ARGUMENT`` naming the
field: the request host's region matches the resource's location; a pipeline job holds one
KFP v2 pipeline spec (schema 2.1.0) whose accelerators are Vertex machine names (a
Kubernetes resource name such as ``nvidia.com/gpu`` is refused), a ``gs://`` output
directory, parameter values that match the root inputs by name and type, labels within
Google's rules, and a service account that is an email address; a schedule has a display
name, a positive ``maxConcurrentRunCount`` and a 5-field cron, optionally prefixed
``TZ=`` or ``CRON_TZ=`` and an IANA time zone. Resource names carry the project number, as
the service writes them. Pause, resume and delete move a schedule's state; delete answers
with a long-running operation that is still running, and finished when it is next read;
list filters by ``display_name`` and ``state`` and pages.
"""

from __future__ import annotations

import itertools
import re
import zoneinfo
from datetime import UTC, datetime
from typing import Any

from tests.doubles.google_api import Answer, CloudError, CloudRequest, not_implemented

__all__ = ["VertexAiDouble"]

_JSON = "application/json"
_VERTEX_ACCELERATORS = re.compile(r"NVIDIA_[A-Z0-9_]+|TPU_V[0-9A-Z_]+")
_LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
_JOB_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,127}")
_FILTER_TERM = re.compile(r'\s*(display_name|displayName|state)\s*=\s*"([^"]*)"\s*')
_PARAMETER_KINDS: dict[str, tuple[type, ...]] = {
    "STRING": (str,), "NUMBER_INTEGER": (int, float), "NUMBER_DOUBLE": (int, float),
    "BOOLEAN": (bool,), "LIST": (list,), "STRUCT": (dict,),
}  # fmt: skip
_CRON_FIELDS = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_CRON_NAMES = {
    name: number
    for names in (
        ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"),
        ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"),
    )
    for number, name in enumerate(names, start=1 if len(names) == 12 else 0)
}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _invalid(message: str) -> CloudError:
    return CloudError(400, message)


class VertexAiDouble:
    """Pipeline jobs and schedules of one project, kept in memory."""

    def __init__(self, project: str, project_number: str) -> None:
        self.project, self.project_number = project, project_number
        self.pipeline_jobs: dict[str, dict[str, Any]] = {}  # by resource name
        self.schedules: dict[str, dict[str, Any]] = {}
        self.operations: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1000)

    def answer(self, request: CloudRequest) -> Answer:
        # The REST transport's operations client reads operations under /ui/, as the service
        # also serves them.
        match = re.fullmatch(r"/(?:v1|ui)/projects/([^/]+)/locations/([^/]+)/(.*)", request.path)
        if not match:
            raise not_implemented(request)
        project, location, rest = match.groups()
        self._check_scope(request, project, location)
        parent = f"projects/{self.project_number}/locations/{location}"
        return 200, self._route(request, parent, rest), _JSON

    def _check_scope(self, request: CloudRequest, project: str, location: str) -> None:
        if project not in (self.project, self.project_number):
            raise CloudError(
                403,
                f"Permission denied on resource project {project} (or it may not exist).",
            )
        region = request.host.removesuffix("-aiplatform.googleapis.com")
        if region != location:
            raise _invalid(
                f"Location {location} in the request does not match the endpoint's region {region}."
            )

    def _route(self, request: CloudRequest, parent: str, rest: str) -> dict[str, Any]:
        method, body = request.method, request.json or {}
        if rest == "pipelineJobs" and method == "POST":
            return self._create_job(parent, body, request.query.get("pipelineJobId", ""))
        if rest == "schedules" and method == "POST":
            return self._create_schedule(parent, body)
        if rest == "schedules" and method == "GET":
            return self._list_schedules(parent, request.query)
        kind, _, rest = rest.partition("/")
        ident, _, action = rest.partition(":")
        name = f"{parent}/{kind}/{ident}"
        if kind == "pipelineJobs" and method == "GET" and not action:
            return self._get(self.pipeline_jobs, name, "PipelineJob")
        if kind == "schedules" and not action and method in ("GET", "DELETE"):
            schedule = self._get(self.schedules, name, "Schedule")
            return schedule if method == "GET" else self._delete_schedule(name)
        if kind == "schedules" and method == "POST" and action in ("pause", "resume"):
            return self._switch(self._get(self.schedules, name, "Schedule"), action)
        if kind == "operations" and method == "GET" and not action:
            operation = self._get(self.operations, name, "Operation")
            operation.update(
                done=True, response={"@type": "type.googleapis.com/google.protobuf.Empty"}
            )
            return operation
        raise not_implemented(request)

    @staticmethod
    def _get(store: dict[str, dict[str, Any]], name: str, kind: str) -> dict[str, Any]:
        if name not in store:
            raise CloudError(404, f"{kind} {name} is not found.")
        return store[name]

    # -- pipeline jobs ---------------------------------------------------------------------

    def _create_job(self, parent: str, body: dict[str, Any], job_id: str) -> dict[str, Any]:
        if job_id and not _JOB_ID.fullmatch(job_id):
            raise _invalid(f"pipelineJobId {job_id!r} must match [a-z0-9][a-z0-9-]{{0,127}}.")
        job_id = job_id or f"{self._spec_name(body)}-{next(self._ids)}"
        name = f"{parent}/pipelineJobs/{job_id}"
        if name in self.pipeline_jobs:
            raise CloudError(409, f"PipelineJob {name} already exists.")
        job = self._checked_job(body, "pipelineJob")
        job.update(name=name, state="PIPELINE_STATE_PENDING", createTime=_now())
        job["updateTime"] = job["createTime"]
        self.pipeline_jobs[name] = job
        return job

    def _checked_job(self, body: dict[str, Any], where: str) -> dict[str, Any]:
        spec = body.get("pipelineSpec")
        if not isinstance(spec, dict):
            raise _invalid(f"{where}.pipelineSpec is required.")
        if spec.get("schemaVersion") != "2.1.0" or not self._spec_name(body):
            raise _invalid(
                f"{where}.pipelineSpec is not a KFP v2 pipeline spec (schemaVersion 2.1.0 with "
                "pipelineInfo.name)."
            )
        self._check_accelerators(spec, where)
        runtime = body.get("runtimeConfig") or {}
        if not str(runtime.get("gcsOutputDirectory", "")).startswith("gs://"):
            raise _invalid(f"{where}.runtimeConfig.gcsOutputDirectory must be a gs:// URI.")
        self._check_parameters(spec, runtime.get("parameterValues") or {}, where)
        for key, value in (body.get("labels") or {}).items():
            if not _LABEL_KEY.fullmatch(key) or not _LABEL_VALUE.fullmatch(str(value)):
                raise _invalid(
                    f"{where}.labels: {key}={value} is not a valid label (lowercase letters, "
                    "digits, - and _; keys start with a letter; at most 63 characters)."
                )
        account = body.get("serviceAccount", "")
        if account and not re.fullmatch(r"[^@\s]+@[^@\s]+\.[a-z]+", account):
            raise _invalid(f"{where}.serviceAccount {account!r} is not an email address.")
        return dict(body)

    @staticmethod
    def _spec_name(body: dict[str, Any]) -> str:
        spec = body.get("pipelineSpec") or {}
        return str((spec.get("pipelineInfo") or {}).get("name", ""))

    @staticmethod
    def _check_accelerators(spec: dict[str, Any], where: str) -> None:
        executors = (spec.get("deploymentSpec") or {}).get("executors") or {}
        for executor, definition in executors.items():
            resources = (definition.get("container") or {}).get("resources") or {}
            accelerator = resources.get("accelerator") or {}
            kind = accelerator.get("resourceType") or accelerator.get("type")
            if kind and not _VERTEX_ACCELERATORS.fullmatch(str(kind)):
                raise _invalid(
                    f"{where}.pipelineSpec: executor {executor} asks for accelerator type "
                    f"{kind!r}, which is not a Vertex AI accelerator type."
                )

    @staticmethod
    def _check_parameters(spec: dict[str, Any], values: dict[str, Any], where: str) -> None:
        inputs = ((spec.get("root") or {}).get("inputDefinitions") or {}).get("parameters") or {}
        for name, value in values.items():
            if name not in inputs:
                raise _invalid(
                    f"{where}.runtimeConfig.parameterValues: {name} is not an input of the "
                    "pipeline."
                )
            kind = inputs[name].get("parameterType", "")
            accepted = _PARAMETER_KINDS.get(kind, (object,))
            if not isinstance(value, accepted) or (isinstance(value, bool) and kind != "BOOLEAN"):
                raise _invalid(
                    f"{where}.runtimeConfig.parameterValues: {name} must be of type {kind}."
                )
        for name, definition in inputs.items():
            required = not definition.get("isOptional") and "defaultValue" not in definition
            if name not in values and required:
                raise _invalid(
                    f"{where}.runtimeConfig.parameterValues: the required input {name} has no "
                    "value."
                )

    # -- schedules -------------------------------------------------------------------------

    def _create_schedule(self, parent: str, body: dict[str, Any]) -> dict[str, Any]:
        if not body.get("displayName"):
            raise _invalid("schedule.displayName is required.")
        _check_cron(str(body.get("cron", "")))
        if int(body.get("maxConcurrentRunCount") or 0) < 1:
            raise _invalid("schedule.maxConcurrentRunCount must be greater than 0.")
        request = body.get("createPipelineJobRequest") or {}
        if request.get("parent") not in (
            parent,
            parent.replace(self.project_number, self.project),
        ):
            raise _invalid(f"schedule.createPipelineJobRequest.parent must be {parent}.")
        self._checked_job(
            request.get("pipelineJob") or {}, "schedule.createPipelineJobRequest.pipelineJob"
        )
        name = f"{parent}/schedules/{next(self._ids)}"
        schedule = dict(body, name=name, state="ACTIVE", createTime=_now())
        schedule.update(updateTime=schedule["createTime"], startTime=schedule["createTime"])
        self.schedules[name] = schedule
        return schedule

    def _list_schedules(self, parent: str, query: dict[str, str]) -> dict[str, Any]:
        wanted = _parse_filter(query.get("filter", ""))
        found = [
            schedule
            for name, schedule in sorted(self.schedules.items())
            if name.startswith(parent + "/")
            and all(schedule.get(_camel(key)) == value for key, value in wanted)
        ]
        start = int(query.get("pageToken") or 0)
        size = int(query.get("pageSize") or 100)
        page = {"schedules": found[start : start + size]} if found else {}
        if start + size < len(found):
            page["nextPageToken"] = str(start + size)
        return page

    @staticmethod
    def _switch(schedule: dict[str, Any], action: str) -> dict[str, Any]:
        before, after = ("ACTIVE", "PAUSED") if action == "pause" else ("PAUSED", "ACTIVE")
        if schedule["state"] != before:
            raise CloudError(
                400, f"Schedule {schedule['name']} is {schedule['state']}; it must be {before}."
            )
        schedule["state"] = after
        schedule[f"last{action.title()}Time"] = schedule["updateTime"] = _now()
        return {}

    def _delete_schedule(self, name: str) -> dict[str, Any]:
        del self.schedules[name]
        parent = name.rsplit("/schedules/", 1)[0]
        operation = {"name": f"{parent}/operations/{next(self._ids)}", "done": False}
        self.operations[operation["name"]] = operation
        return dict(operation)


def _camel(name: str) -> str:
    return re.sub(r"_([a-z])", lambda match: match.group(1).upper(), name)


def _parse_filter(text: str) -> list[tuple[str, str]]:
    """``display_name="x" AND state="ACTIVE"``: the subset of AIP-160 filters the double
    reads; anything else is refused."""
    if not text.strip():
        return []
    terms = []
    for term in re.split(r"\s+AND\s+", text.strip()):
        match = _FILTER_TERM.fullmatch(term)
        if not match:
            raise _invalid(f"Unsupported filter: {text}")
        terms.append((match.group(1), match.group(2)))
    return terms


def _check_cron(cron: str) -> None:
    """Unix cron with an optional ``TZ=`` / ``CRON_TZ=`` time zone prefix."""
    fields = cron.split()
    if fields and re.fullmatch(r"(CRON_)?TZ=\S+", fields[0]):
        zone = fields.pop(0).split("=", 1)[1]
        try:
            zoneinfo.ZoneInfo(zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise _invalid(f"schedule.cron: unknown time zone {zone}.") from None
    if len(fields) != 5:
        raise _invalid(f"schedule.cron {cron!r} must have 5 fields.")
    for value, (low, high) in zip(fields, _CRON_FIELDS, strict=True):
        for part in value.upper().split(","):
            match = re.fullmatch(r"(\*|(\w+)(?:-(\w+))?)(?:/(\d+))?", part)
            bounds = [b for b in (match.group(2), match.group(3)) if b] if match else [""]
            for bound in bounds:
                number = _CRON_NAMES.get(bound, int(bound) if bound.isdigit() else -1)
                if not low <= number <= high:
                    raise _invalid(f"schedule.cron {cron!r}: {part} is out of range.")
