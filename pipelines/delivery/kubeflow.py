"""Submitting the training pipeline to a Kubeflow Pipelines cluster, once or on a schedule.

Everything is checked before anything is sent: the parameters against the pipeline's
signature, the cron expression, the timezone. The pipeline is uploaded once by name;
each distinct compiled YAML becomes a version named for its content, so submitting
the same package twice reuses its version.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from conveyor.components.core.errors import ConveyorError, first_line
from conveyor.components.images import VERSION
from conveyor.pipelines.definitions.parameters import parameter_problems

__all__ = [
    "TOKEN_ENV",
    "KubeflowRequest",
    "connector",
    "request_problems",
    "schedule",
    "submit",
    "version_name",
]

TOKEN_ENV = "KFP_TOKEN"  # a bearer token for clusters that ask for one
_UTC = {"UTC", "Etc/UTC", "Z", "GMT"}


@dataclass(frozen=True)
class KubeflowRequest:
    """What ``conveyor submit`` / ``schedule`` sends to a KFP API server."""

    host: str
    pipeline_name: str
    version_name: str
    experiment: str
    namespace: str
    run_name: str
    parameters: dict[str, Any] = field(default_factory=dict)
    service_account: str = ""
    cron: str = ""  # the 6-field form Kubeflow's scheduler reads
    timezone: str = "UTC"
    max_concurrency: int = 1

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def version_name(pipeline_name: str, package: Path) -> str:
    """``<pipeline>-<package version>-<content hash>``: one version per distinct YAML."""
    digest = hashlib.sha256(package.read_bytes()).hexdigest()[:10]
    return f"{pipeline_name}-{VERSION}-{digest}"


def request_problems(request: KubeflowRequest, inputs: dict[str, Any], where: str) -> list[str]:
    """Every problem of ``request``, a line each, to refuse it before any call; ``where``
    names the parameters' source."""
    problems = parameter_problems(request.parameters, inputs, where)
    if request.timezone not in _UTC:
        problems.append(
            f"--timezone {request.timezone!r}: Kubeflow's scheduler runs cron in UTC; "
            "write the schedule in UTC (--timezone UTC)"
        )
    return problems


def submit(request: KubeflowRequest, package: Path, connect: Callable[[], Any]) -> tuple[str, str]:
    """Uploads the pipeline (or its new version) and starts a run; returns its id and link."""
    client = connect()
    pipeline_id, version_id, experiment_id = _prepare(client, request, package)
    run = _call(
        "start the run",
        lambda: client.run_pipeline(
            experiment_id=experiment_id,
            job_name=request.run_name,
            params=request.parameters,
            pipeline_id=pipeline_id,
            version_id=version_id,
            service_account=request.service_account or None,
        ),
    )
    return run.run_id, f"{request.host.rstrip('/')}/#/runs/details/{run.run_id}"


def schedule(
    request: KubeflowRequest, package: Path, connect: Callable[[], Any]
) -> tuple[str, str]:
    """Uploads the pipeline (or its new version) and creates a recurring run on its cron."""
    client = connect()
    pipeline_id, version_id, experiment_id = _prepare(client, request, package)
    recurring = _call(
        "create the recurring run",
        lambda: client.create_recurring_run(
            experiment_id=experiment_id,
            job_name=request.run_name,
            cron_expression=request.cron,
            max_concurrency=request.max_concurrency,
            params=request.parameters,
            pipeline_id=pipeline_id,
            version_id=version_id,
            service_account=request.service_account or None,
        ),
    )
    link = f"{request.host.rstrip('/')}/#/recurringrun/details/{recurring.recurring_run_id}"
    return recurring.recurring_run_id, link


def connector(host: str, namespace: str) -> Callable[[], Any]:
    """A factory of kfp.Client for ``host``, with ``$KFP_TOKEN`` as its bearer token if set."""

    def connect() -> Any:
        import kfp

        token = os.environ.get(TOKEN_ENV) or None
        _check_health(host, token)  # kfp.Client's own check retries, then names no cause
        with warnings.catch_warnings():  # kfp warns that it needs KFP >= 2.0.0-beta.2: so be it
            warnings.simplefilter("ignore", FutureWarning)
            return _call(
                "connect",
                lambda: kfp.Client(
                    host=host, namespace=namespace or "kubeflow", existing_token=token
                ),
                host,
            )

    return connect


def _check_health(host: str, token: str | None) -> None:
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = f"{host.rstrip('/')}/apis/v2beta1/healthz"
    try:
        response = httpx.get(url, headers=headers, timeout=10)
    except httpx.HTTPError as error:
        raise ConveyorError(f"the KFP API at {host} is unreachable: {first_line(error)}") from None
    if response.status_code == 401:
        raise ConveyorError(
            f"the KFP API at {host} refused the credentials (401): set {TOKEN_ENV} to a valid token"
        )
    if response.status_code == 403:
        raise ConveyorError(
            f"the KFP API at {host} refused access (403): {first_line(response.text)}"
        )
    if response.status_code != 200:
        raise ConveyorError(
            f"{url} answered {response.status_code}: is {host} a Kubeflow Pipelines API?"
        )


def _prepare(client: Any, request: KubeflowRequest, package: Path) -> tuple[str, str, str]:
    """The pipeline, its version for this package, and the experiment: ids, made if missing."""
    pipeline_id, version_id = _upload(client, request, package)
    experiment = _call(
        "create the experiment",
        lambda: client.create_experiment(request.experiment, namespace=request.namespace or None),
    )
    return pipeline_id, version_id, experiment.experiment_id


def _upload(client: Any, request: KubeflowRequest, package: Path) -> tuple[str, str]:
    pipeline_id = _call("find the pipeline", lambda: client.get_pipeline_id(request.pipeline_name))
    if pipeline_id is None:
        pipeline = _call(
            "upload the pipeline",
            lambda: client.upload_pipeline(
                str(package),
                pipeline_name=request.pipeline_name,
                namespace=request.namespace or None,
            ),
        )
        pipeline_id = pipeline.pipeline_id
    existing = _version_id(client, pipeline_id, request.version_name)
    if existing:
        return pipeline_id, existing
    version = _call(
        "upload the pipeline version",
        lambda: client.upload_pipeline_version(
            str(package), pipeline_version_name=request.version_name, pipeline_id=pipeline_id
        ),
    )
    return pipeline_id, version.pipeline_version_id


def _version_id(client: Any, pipeline_id: str, name: str) -> str:
    query = {"predicates": [{"key": "display_name", "operation": "EQUALS", "string_value": name}]}
    listed = _call(
        "list the pipeline's versions",
        lambda: client.list_pipeline_versions(pipeline_id, filter=json.dumps(query)),
    )
    versions = listed.pipeline_versions or []
    return versions[0].pipeline_version_id if versions else ""


def _call(what: str, request: Callable[[], Any], host: str = "") -> Any:
    """One line for what went wrong: refused credentials, a missing permission, no answer."""
    from kfp_server_api.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        return request()
    except ApiException as error:
        detail = first_line(_message(error))
        if error.status == 401:
            raise ConveyorError(
                f"the KFP API refused the credentials (401) when trying to {what}: set "
                f"{TOKEN_ENV} to a valid token ({detail})"
            ) from None
        if error.status == 403:
            raise ConveyorError(f"permission denied (403): cannot {what}: {detail}") from None
        raise ConveyorError(f"the KFP API could not {what} ({error.status}): {detail}") from None
    except (HTTPError, OSError) as error:
        cause = getattr(error, "reason", None) or error  # urllib3 wraps the socket's error
        raise ConveyorError(
            f"the KFP API{' at ' + host if host else ''} is unreachable ({what}): "
            f"{first_line(cause)}"
        ) from None


def _message(error: Any) -> str:
    try:
        body = json.loads(error.body or "{}")
    except ValueError:
        return str(error.reason)
    # grpc-gateway routes answer {"message"}; KFP's upload routes {"error_message"}.
    return body.get("message") or body.get("error_message") or str(error.reason)
