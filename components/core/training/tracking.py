"""MLflow tracking: one client per step, an experiment per model, one run per training."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException

from conveyor.components.core.errors import ConveyorError, first_line

__all__ = [
    "REFERENCE_DIR",
    "REFERENCE_IMPORTANCE",
    "REFERENCE_SCHEMA",
    "REFERENCE_SCORES",
    "REFERENCE_TABLE",
    "TAG_VALUE_LIMIT",
    "connect",
    "ensure_experiment",
    "log_child_run",
    "log_evaluation_reference",
    "log_metrics",
    "log_reference",
    "start_training_run",
    "start_tuning_run",
]

# Where a training run keeps what it learned from, for monitoring to compare inputs with.
REFERENCE_DIR = "reference"
REFERENCE_TABLE = "train.parquet"
REFERENCE_SCHEMA = "schema.json"
# What the model relied on and said on its evaluation split (training.importance).
REFERENCE_IMPORTANCE = "importance.json"
REFERENCE_SCORES = "scores.parquet"
TAG_VALUE_LIMIT = 5000  # MLflow's longest tag value


def connect(tracking_uri: str) -> MlflowClient:
    """A client for ``tracking_uri``, or for ``$MLFLOW_TRACKING_URI`` when it is empty."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        raise ConveyorError(
            "no MLflow tracking URI: set the mlflow_tracking_uri parameter or MLFLOW_TRACKING_URI"
        )
    # MLflow retries an unreachable server for minutes by default; a step should say so sooner.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        client.search_experiments(max_results=1)
    except MlflowException as error:
        raise ConveyorError(f"MLflow at {uri} is not usable: {first_line(error)}") from None
    return client


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """The id of experiment ``name``, created on first use (concurrent creators tolerated)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=_artifact_location(client, name))
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id


def start_training_run(
    client: MlflowClient,
    experiment: str,
    params: dict[str, Any],
    tags: dict[str, str],
    model_dir: Path,
) -> str:
    """Creates a run with params, tags and the model directory (as ``model/``); returns its id."""
    run = client.create_run(ensure_experiment(client, experiment), tags=tags)
    run_id = run.info.run_id
    client.log_batch(
        run_id, params=[Param(key, str(value)[:6000]) for key, value in params.items()]
    )
    client.log_artifacts(run_id, str(model_dir), "model")
    return run_id


def start_tuning_run(
    client: MlflowClient, experiment: str, params: dict[str, Any], tags: dict[str, str]
) -> str:
    """Creates the run a tuning's trials are children of; returns its id."""
    run = client.create_run(ensure_experiment(client, experiment), tags=tags, run_name="tuning")
    client.log_batch(
        run.info.run_id, params=[Param(key, str(value)[:6000]) for key, value in params.items()]
    )
    return run.info.run_id


def log_child_run(
    client: MlflowClient,
    parent_run_id: str,
    name: str,
    params: dict[str, Any],
    metrics: dict[str, float],
    error: str = "",
) -> str:
    """A finished child run of ``parent_run_id`` (MLflow's ``mlflow.parentRunId`` tag nests
    it in the UI) with ``params`` and ``metrics``, FAILED with an ``error`` tag when one is
    given; returns its id."""
    parent = client.get_run(parent_run_id)
    tags = {
        "mlflow.parentRunId": parent_run_id,
        **({"error": error[:TAG_VALUE_LIMIT]} if error else {}),
    }
    run = client.create_run(parent.info.experiment_id, tags=tags, run_name=name)
    now = int(time.time() * 1000)
    client.log_batch(
        run.info.run_id,
        metrics=[Metric(key, float(value), now, 0) for key, value in metrics.items()],
        params=[Param(key, str(value)[:6000]) for key, value in params.items()],
    )
    client.set_terminated(run.info.run_id, status="FAILED" if error else "FINISHED")
    return run.info.run_id


def log_reference(client: MlflowClient, run_id: str, train_path: Path, schema_json: str) -> None:
    """Logs the training split and its schema as the run's ``reference/`` artifacts."""
    with tempfile.TemporaryDirectory(prefix="conveyor-reference-") as scratch:
        shutil.copyfile(train_path, Path(scratch) / REFERENCE_TABLE)
        (Path(scratch) / REFERENCE_SCHEMA).write_text(schema_json, encoding="utf-8")
        client.log_artifacts(run_id, scratch, REFERENCE_DIR)


def log_evaluation_reference(client: MlflowClient, run_id: str, model_dir: Path) -> None:
    """Logs the model directory's importance and evaluation scores to the run's
    ``reference/``, beside the training split."""
    for name in (REFERENCE_IMPORTANCE, REFERENCE_SCORES):
        client.log_artifact(run_id, str(model_dir / name), REFERENCE_DIR)


def log_metrics(client: MlflowClient, run_id: str, metrics: dict[str, float], prefix: str) -> None:
    """Logs ``metrics`` to a run, each name prefixed (``train_``, ``test_``)."""
    now = int(time.time() * 1000)
    client.log_batch(
        run_id, metrics=[Metric(f"{prefix}{k}", float(v), now, 0) for k, v in metrics.items()]
    )


def _artifact_location(client: MlflowClient, experiment: str) -> str | None:
    """Beside a SQLite database, not MLflow's default ``./mlruns`` under the working directory."""
    uri = client.tracking_uri
    if not uri.startswith("sqlite:///"):
        return None  # a tracking server decides where artifacts go
    database = Path(uri.removeprefix("sqlite:///"))
    return (database.parent / "mlartifacts" / experiment).resolve().as_uri()
