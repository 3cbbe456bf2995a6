"""``conveyor run --replay``: train again from a recorded run, and show the metrics match.

A local run records its whole set of pipeline arguments (each default written out, so a
later Conveyor with other defaults replays the same thing) on its training MLflow run, as
``replay/arguments.json``; ingest records the resolved DVC revision and the whole table's
content hash as the run's ``data_revision`` and ``source_content_hash`` tags. A replay
reads the data at that revision, refuses when its content hash differs from the
recorded one (a source without DVC that changed), and runs the pipeline with those
arguments into a registry and model store of its own, so it never registers or deploys
anything beside the original. Its evaluation metrics must then equal the recorded ones
(``test_<metric>`` on the MLflow run) to ``TOLERANCE``: the estimators, the split and the
seed are deterministic on a CPU.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.components.core.errors import ConveyorError

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

__all__ = [
    "ARGUMENTS_ARTIFACT",
    "TOLERANCE",
    "check_data",
    "differences",
    "find_training_run",
    "record_arguments",
    "recorded_arguments",
    "recorded_metrics",
]

ARGUMENTS_ARTIFACT = "replay/arguments.json"
TOLERANCE = 1e-9
# Where a run keeps things, not what it decides: a replay sets its own.
_PLACES = ("mlflow_tracking_uri", "model_store_uri", "rollout")


def record_arguments(client: MlflowClient, run_id: str, arguments: dict[str, Any]) -> None:
    """The run's pipeline arguments, defaults included, on its training MLflow run."""
    client.log_text(run_id, json.dumps(arguments, indent=2, sort_keys=True), ARGUMENTS_ARTIFACT)


def find_training_run(client: MlflowClient, run: str) -> Run:
    """The training MLflow run for an MLflow run id or a pipeline run id (an audit event's
    ``pipeline_run``).

    Raises:
        ConveyorError: No such run, or more than one training run for a pipeline run.
    """
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run)
    except MlflowException:
        pass
    experiments = [e.experiment_id for e in client.search_experiments()]
    found = client.search_runs(experiments, f"tags.pipeline_run_id = '{_quoted(run)}'")
    if len(found) != 1:
        what = "no training run" if not found else f"{len(found)} training runs"
        raise ConveyorError(f"{what} in MLflow at {client.tracking_uri} for run {run!r}")
    return found[0]


def recorded_arguments(client: MlflowClient, run: Run, known: set[str]) -> dict[str, Any]:
    """The arguments the run recorded, less where it kept things; refuses a run without
    them, and one whose arguments the pipeline (``known``, its parameters) no longer
    takes."""
    run_id = run.info.run_id
    if not any(f.path == ARGUMENTS_ARTIFACT for f in client.list_artifacts(run_id, "replay")):
        raise ConveyorError(
            f"run {run_id} recorded no arguments to replay ({ARGUMENTS_ARTIFACT}): only runs "
            "started by `conveyor run` record them"
        )
    with tempfile.TemporaryDirectory(prefix="replay-") as scratch:
        text = Path(client.download_artifacts(run_id, ARGUMENTS_ARTIFACT, scratch)).read_text()
    arguments = json.loads(text)
    if not isinstance(arguments, dict):
        raise ConveyorError(f"run {run_id}: {ARGUMENTS_ARTIFACT} is not a JSON object")
    unknown = sorted(set(arguments) - known)
    if unknown:
        raise ConveyorError(
            f"run {run_id} was trained with parameters this Conveyor's pipeline no longer "
            f"takes ({', '.join(unknown)}): replay it with the Conveyor version it recorded"
        )
    return {key: value for key, value in arguments.items() if key not in _PLACES}


def recorded_metrics(run: Run) -> dict[str, float]:
    """The evaluation metrics evaluate logged on the run (``test_<metric>``); refuses a run
    with none (its evaluation failed), which a replay could not be compared with."""
    metrics = {
        name.removeprefix("test_"): value
        for name, value in run.data.metrics.items()
        if name.startswith("test_")
    }
    if not metrics:
        raise ConveyorError(f"run {run.info.run_id} recorded no evaluation metrics to compare")
    return metrics


def check_data(run: Run, arguments: dict[str, Any]) -> dict[str, Any]:
    """The arguments with the data pinned at the recorded revision; refuses when the data
    read there is not the data the run was trained on."""
    from conveyor.components.core.data.tables import Source, content_hash, load_table

    tags = run.data.tags
    recorded = tags.get("source_content_hash", "")
    if not recorded:
        raise ConveyorError(f"run {run.info.run_id} recorded no content hash of its data")
    pinned = {**arguments, "data_revision": tags.get("data_revision") or arguments.get(
        "data_revision", "")}  # fmt: skip
    source = Source(pinned["data_uri"], pinned.get("dvc_repo", ""), pinned["data_revision"])
    now = content_hash(load_table(source))
    if now != recorded:
        raise ConveyorError(
            f"replay of run {run.info.run_id} refused: {source.describe()} has changed since "
            f"(content hash {now[:12]}, recorded {recorded[:12]}); track it with DVC to "
            "replay a run"
        )
    return pinned


def differences(recorded: dict[str, float], replayed: dict[str, float]) -> list[str]:
    """Each recorded metric the replay missed or did not reproduce to ``TOLERANCE``."""
    found = []
    for name, value in sorted(recorded.items()):
        again = replayed.get(name)
        if again is None:
            found.append(f"{name}: recorded {value!r}, not measured again")
        elif not _same(value, again):
            found.append(f"{name}: recorded {value!r}, replayed {again!r}")
    return found


def _same(recorded: float, replayed: float) -> bool:
    if math.isnan(recorded) or math.isnan(replayed):
        return math.isnan(recorded) and math.isnan(replayed)
    return abs(recorded - replayed) <= TOLERANCE


def _quoted(text: str) -> str:
    return text.replace("'", "\\'")
