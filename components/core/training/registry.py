"""The MLflow model registry: finding the champion, registering a version, moving the aliases.

A version's ``source`` is the training run's ``model/`` artifacts; its ``storage_uri``
tag is the copy in the model store that KServe pulls from (content-addressed by the
model's sha256, so copying again is a no-op).

The ``champion`` alias names the model that serves. A pipeline that rolls out registers
its blessed version under ``candidate``; deploy moves ``champion`` to it only when the
rollout creates the service or promotes the canary, and otherwise records the version as
rejected (``rollout.*`` tags) and leaves ``champion`` where it was. Without a rollout
(local runs) register makes the version ``champion`` at once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import fsspec
from fsspec.implementations.local import LocalFileSystem
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from conveyor.components.core.audit import AuditEvent, record_event, record_events
from conveyor.components.core.data.schema import Schema
from conveyor.components.core.data.tables import read_parquet
from conveyor.components.core.errors import ConveyorError, first_line
from conveyor.components.core.files import write_atomically
from conveyor.components.core.training import tracking
from conveyor.components.core.training.importance import (
    read_reference_scores,
    scores_at_threshold,
)
from conveyor.components.core.training.trainer import (
    MODEL_CARD,
    ModelCard,
    TrainedModel,
    load_model_dir,
    sha256_file,
)

__all__ = [
    "CANDIDATE_ALIAS",
    "CHAMPION_ALIAS",
    "ROLLOUT_TAGS",
    "Champion",
    "Registration",
    "RolloutOutcome",
    "champion_model_dir",
    "check_rollout_allowed",
    "download_reference",
    "find_champion",
    "load_champion",
    "load_run_model",
    "publish_model_dir",
    "record_rollout",
    "register_model",
    "register_version",
]

CHAMPION_ALIAS = "champion"
CANDIDATE_ALIAS = "candidate"
PIPELINE_RUN_TAG = "pipeline_run_id"
# The champion version evaluate compared the model with ("" for none), so deploy can tell
# whether another run's rollout replaced it while this one waited.
JUDGED_AGAINST_TAG = "judged_against"
# A training run's and a version's operating threshold (evaluate's choice; empty: none).
DECISION_THRESHOLD_TAG = "decision_threshold"
POSITIVE_CLASS_TAG = "positive_class"
# What deploy's rollout of a version decided, why (one line), and in which pipeline run.
ROLLOUT_TAGS = ("rollout.decision", "rollout.reason", "rollout.run")
# "true" once a canary of the version served and was sent back (rolled back, or its
# rollback failed): a retried deploy step must not send it out again.
REJECTED_TAG = "rollout.rejected"
# fsspec protocols of bucket stores (s3fs, gcsfs).
_OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs"})
# How MLflow's stores (REST, SQL) answer for a version or alias that does not exist.
_NOT_FOUND = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"})


@dataclass(frozen=True)
class Champion:
    name: str
    version: str
    run_id: str
    tags: dict[str, str]

    def recorded_metric(self, metric: str) -> float | None:
        value = self.tags.get(f"metric.{metric}")
        return None if value is None else float(value)

    def operating_threshold(self) -> tuple[str, float] | None:
        """The positive class and the decision threshold the version serves at; None for
        the most probable class."""
        where = f"version {self.version} of {self.name!r}"
        threshold = threshold_tag(self.tags.get(DECISION_THRESHOLD_TAG), where)
        positive = self.tags.get(POSITIVE_CLASS_TAG)
        return (positive, threshold) if threshold is not None and positive else None


def threshold_tag(value: str | None, where: str) -> float | None:
    """A ``decision_threshold`` tag's number; None when absent or empty."""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        raise ConveyorError(
            f"{where}: tag {DECISION_THRESHOLD_TAG!r} holds {value[:40]!r}, not a number"
        ) from None


@dataclass(frozen=True)
class Registration:
    name: str
    version: str
    storage_uri: str
    sha256: str
    reused: bool


class RolloutStep(Protocol):
    """One canary step as the audit trail records it (``rollout.StepRecord``)."""

    percent: int
    time: float  # wall seconds of the step's last look
    verdict: str
    reason: str
    looks: int
    measurements: dict[str, float]


class RolloutOutcome(Protocol):
    """What ``record_rollout`` needs of a rollout's result (``rollout.RolloutResult``)."""

    decision: str
    reason: str
    canary_revision: str  # empty when no canary started
    stable_revision: str

    @property
    def succeeded(self) -> bool: ...

    def steps(self) -> Sequence[RolloutStep]: ...


def register_model(
    model_dir: Path,
    evaluation_path: Path,
    model_name: str,
    tracking_uri: str,
    run_id: str,
    model_store_uri: str,
    pipeline_run_id: str,
    data_hash: str,
    *,
    rollout: bool = False,
) -> Registration:
    """Publishes a blessed model to the model store and registers it, once.

    ``rollout`` True gives the version the ``candidate`` alias (deploy promotes it to
    ``champion`` if its rollout does); False makes it the ``champion`` at once.
    """
    verdict = json.loads(evaluation_path.read_text())
    if not verdict["blessed"]:
        raise ConveyorError(
            f"refusing to register a model the evaluation did not bless: {verdict['reason']}"
        )
    client = tracking.connect(tracking_uri)
    card = ModelCard.from_json((model_dir / MODEL_CARD).read_text())
    if sha256_file(model_dir / card.model_file) != card.sha256:
        raise ConveyorError(f"{model_dir}: model file does not match the sha256 in its model card")
    threshold = (verdict.get("threshold") or {}).get("value")
    if threshold is not None:
        card = card.at_threshold(threshold)  # what serves predicts at evaluate's choice
    compared_with = (verdict.get("champion") or {}).get("version")
    _check_champion_unchanged(client, model_name, run_id, compared_with)
    threshold_text = "" if threshold is None else repr(threshold)
    _check_reuse_keeps_threshold(client, model_name, run_id, threshold_text)
    storage_uri = publish_model_dir(model_dir, model_store_uri, model_name, card)
    tags = {
        DECISION_THRESHOLD_TAG: threshold_text,
        POSITIVE_CLASS_TAG: card.positive_class or "",
        "sha256": card.sha256,
        "data_hash": data_hash,
        PIPELINE_RUN_TAG: pipeline_run_id,
        "storage_uri": storage_uri,
        JUDGED_AGAINST_TAG: compared_with or "",
        **{f"metric.{name}": f"{value:.6g}" for name, value in verdict["metrics"].items()},
    }
    alias = CANDIDATE_ALIAS if rollout else CHAMPION_ALIAS
    registration = register_version(client, model_name, run_id, tags, alias)
    if not registration.reused:
        judged = f"judged against version {compared_with}" if compared_with else "no champion"
        record_event(
            client,
            run_id,
            AuditEvent(
                kind="registration", decision=alias, model=model_name, step="register",
                version=registration.version, pipeline_run=pipeline_run_id,
                data_hash=data_hash,
                reason=f"version {registration.version} registered as {alias} ({judged}), "
                f"published to {storage_uri}",
                parameters={"rollout": rollout}, measurements=dict(verdict["metrics"]),
            ),
        )  # fmt: skip
    return registration


def find_champion(client: MlflowClient, name: str) -> Champion | None:
    """The version holding the ``champion`` alias, or None when there is none yet."""
    version = _aliased_version(client, name, CHAMPION_ALIAS)
    if version is None:
        return None
    return Champion(name, str(version.version), version.run_id, dict(version.tags))


def champion_model_dir(tracking_uri: str, name: str) -> Path:
    """The local model directory the champion of ``name`` was published to."""
    champion = find_champion(tracking.connect(tracking_uri), name)
    if champion is None:
        raise ConveyorError(f"model {name!r} has no champion in {tracking_uri}: run it first")
    directory = Path(champion.tags.get("storage_uri", ""))
    if not (directory / MODEL_CARD).is_file():
        raise ConveyorError(
            f"{name} version {champion.version} was published to "
            f"{champion.tags.get('storage_uri')!r}, not a local model directory"
        )
    return directory


def download_reference(
    tracking_uri: str,
    name: str,
    reference_path: Path,
    schema_path: Path,
    importance_path: Path | None = None,
    scores_path: Path | None = None,
) -> Champion:
    """The champion's training inputs (its training split without the label) and schema,
    as its training run recorded them; returns the champion.

    With ``importance_path`` and ``scores_path``, also its feature importance and its scores
    on the evaluation split (``training.importance``). A champion trained before
    Conveyor recorded them gets an empty file at each (``read_importance`` and
    ``read_reference_scores`` read None), not a failure: drift is then judged without
    importance, and prediction drift is not measured.
    """
    client = tracking.connect(tracking_uri)
    champion = find_champion(client, name)
    if champion is None:
        raise ConveyorError(
            f"model {name!r} has no champion in {client.tracking_uri}: no training data to "
            "compare with; run the training pipeline first"
        )
    recorded = {
        Path(entry.path).name
        for entry in client.list_artifacts(champion.run_id, tracking.REFERENCE_DIR)
    }
    if not {tracking.REFERENCE_TABLE, tracking.REFERENCE_SCHEMA} <= recorded:
        raise ConveyorError(
            f"{name} version {champion.version} (MLflow run {champion.run_id}) has no "
            f"{tracking.REFERENCE_DIR}/ with its training split and schema: it was trained "
            "before Conveyor recorded them; retrain it"
        )
    with tempfile.TemporaryDirectory(prefix="reference-") as scratch:
        local = Path(client.download_artifacts(champion.run_id, tracking.REFERENCE_DIR, scratch))
        table, schema = local / tracking.REFERENCE_TABLE, local / tracking.REFERENCE_SCHEMA
        target = Schema.from_json(schema.read_text(), f"{name} reference schema").target
        inputs = read_parquet(table).drop(columns=[target], errors="ignore")
        write_atomically(reference_path, lambda path: inputs.to_parquet(path, index=False))
        write_atomically(schema_path, lambda path: shutil.copyfile(schema, path))
        for file, destination in (
            (tracking.REFERENCE_IMPORTANCE, importance_path),
            (tracking.REFERENCE_SCORES, scores_path),
        ):
            if destination is not None:
                _copy_recorded(local / file if file in recorded else None, destination)
    if scores_path is not None:
        rethreshold_scores(scores_path, champion)
    return champion


def rethreshold_scores(path: Path, champion: Champion) -> None:
    """Rewrites the champion's recorded evaluation scores at ``path`` with the classes it
    serves: recorded at training, before evaluate chose its threshold."""
    operating = champion.operating_threshold()
    scores = read_reference_scores(path) if operating is not None else None
    if scores is not None:
        rethresholded = scores_at_threshold(scores, *operating)
        write_atomically(path, lambda file: rethresholded.to_parquet(file, index=False))


def _copy_recorded(source: Path | None, destination: Path) -> None:
    """Copies a file the training run recorded; an empty file where it recorded none."""
    if source is None:
        write_atomically(destination, lambda path: path.write_bytes(b""))
    else:
        write_atomically(destination, lambda path: shutil.copyfile(source, path))


def load_champion(client: MlflowClient, champion: Champion) -> TrainedModel:
    """Downloads the champion's model directory from MLflow and loads it (sha256 verified),
    at the decision threshold its version serves at (register's tag, as the card it
    published)."""
    operating = champion.operating_threshold()
    model = _download_model(client, champion.run_id)
    return model.at_threshold(None if operating is None else operating[1])


def load_run_model(client: MlflowClient, run_id: str) -> TrainedModel:
    """Downloads the model directory a training run logged and loads it (sha256 verified),
    at the decision threshold its evaluation chose (the run's tag)."""
    try:
        tags = client.get_run(run_id).data.tags
    except MlflowException as error:
        raise ConveyorError(f"MLflow run {run_id!r}: {first_line(error)}") from None
    threshold = threshold_tag(tags.get(DECISION_THRESHOLD_TAG), f"MLflow run {run_id}")
    return _download_model(client, run_id).at_threshold(threshold)


def _download_model(client: MlflowClient, run_id: str) -> TrainedModel:
    with tempfile.TemporaryDirectory(prefix="model-") as scratch:
        try:
            local = client.download_artifacts(run_id, "model", scratch)
        except MlflowException as error:
            raise ConveyorError(
                f"MLflow run {run_id!r}: no model to load ({first_line(error)})"
            ) from None
        return load_model_dir(Path(local))


def publish_model_dir(model_dir: Path, store_uri: str, name: str, card: ModelCard) -> str:
    """Copies the model directory to ``<store>/<name>/<sha256[:16]>``; returns that URI.

    ``model.json`` is written last, so a copy whose ``model.json`` is this model's card
    is complete, and a re-run finding it copies nothing. A card with a decision threshold
    (``card``, not the directory's own) goes to a folder named for the card's hash too:
    the same model at another threshold is another copy, never an overwrite of one a
    deployment serves.
    """
    if not store_uri:
        raise ConveyorError("model_store_uri is empty: give a folder or a gs:// or s3:// URI")
    folder = card.sha256[:16]
    card_text = (model_dir / MODEL_CARD).read_text()
    if card.decision_threshold is not None:
        card_text = card.to_json()
        folder += f"-{hashlib.sha256(card_text.encode()).hexdigest()[:8]}"
    destination = f"{store_uri.rstrip('/')}/{name}/{folder}"
    try:
        fs, path = fsspec.core.url_to_fs(destination)
        if not (
            fs.exists(f"{path}/{MODEL_CARD}")
            and fs.cat_file(f"{path}/{MODEL_CARD}").decode() == card_text
        ):
            if not _is_object_store(fs):
                fs.makedirs(path, exist_ok=True)
            fs.put_file(str(model_dir / card.model_file), f"{path}/{card.model_file}")
            fs.pipe_file(f"{path}/{MODEL_CARD}", card_text.encode())
    except ImportError as error:  # fsspec's "Install s3fs to access S3"
        raise ConveyorError(
            f"cannot publish the model to {destination}: {first_line(error)} "
            "(Conveyor's gcs and s3 extras install gcsfs and s3fs)"
        ) from None
    except Exception as error:
        # Whatever the store's client raises: s3fs and gcsfs turn the store's answers into
        # OSErrors, but an unreachable endpoint surfaces as the client library's own error
        # (botocore's EndpointConnectionError). Nothing is registered yet.
        raise ConveyorError(
            f"cannot publish the model to {destination}: "
            f"{type(error).__name__}: {first_line(error)}"
        ) from None
    return path if isinstance(fs, LocalFileSystem) else destination


def _is_object_store(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether ``fs`` is a bucket store: it has no folders to make, and s3fs's and gcsfs's
    ``makedirs`` would create a missing bucket, so a mistyped bucket name would quietly
    become a new bucket instead of failing."""
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    return bool(protocols & _OBJECT_STORES)


def register_version(
    client: MlflowClient, name: str, run_id: str, tags: dict[str, str], alias: str
) -> Registration:
    """Registers the training run's model once and points ``alias`` at it.

    A version already made from ``run_id`` (a retried or repeated step) is reused. A
    ``candidate`` another run left, rolling out or abandoned, is replaced: rollouts of one
    service take turns (the rollout's lock), and deploy checks the champion again before
    it rolls out.
    """
    version = _version_of_run(client, name, run_id)
    reused = version is not None
    if version is None:
        _ensure_registered_model(client, name)
        version = client.create_model_version(
            name, source=f"runs:/{run_id}/model", run_id=run_id, tags=tags
        )
    number = str(version.version)
    client.set_registered_model_alias(name, alias, number)
    recorded = version.tags
    return Registration(
        name, number, recorded.get("storage_uri", ""), recorded.get("sha256", ""), reused
    )


def check_rollout_allowed(tracking_uri: str, name: str, version: str, run: str) -> None:
    """Refuses, before any traffic moves, to roll out a version that is not registered, was
    rolled back before, or was judged against a champion another run has replaced since
    (another run's candidate promoted while this one waited); a version refused for the
    last reason is recorded as a failed rollout.

    The registry and the cluster share no transaction: a rollout that has promoted and
    released its lock, but not yet moved ``champion``, is not seen here (a window of one
    registry write).
    """
    client = tracking.connect(tracking_uri)
    registered = _registered_version(client, name, version)
    decision, reason, by = (registered.tags.get(tag, "") for tag in ROLLOUT_TAGS)
    if registered.tags.get(REJECTED_TAG) == "true":  # a retried step: not sent out again
        raise ConveyorError(
            f"{name} version {version} was {decision.replace('_', ' ')} by run {by}: "
            f"{reason}; register another version to roll out"
        )
    judged = registered.tags.get(JUDGED_AGAINST_TAG)
    if judged is None:  # registered before register recorded it: nothing to compare with
        return
    try:
        _check_champion_unchanged(client, name, registered.run_id, judged or None)
    except ConveyorError as refusal:
        _tag_rollout(client, name, version, "failed", f"not rolled out: {refusal}", run)
        _drop_candidate(client, name, version)
        raise


def record_rollout(
    tracking_uri: str, name: str, version: str, outcome: RolloutOutcome, run: str
) -> str:
    """Records the rollout's decision on the version; returns the champion's version after it.

    A version that now serves (the service created, the canary promoted, or already
    serving it) becomes ``champion``, a no-op when it already is; any other decision
    leaves ``champion`` where it was. Either way the version stops being the candidate.
    """
    client = tracking.connect(tracking_uri)
    _tag_rollout(client, name, version, outcome.decision, outcome.reason, run)
    if not outcome.succeeded and outcome.canary_revision:
        client.set_model_version_tag(name, version, REJECTED_TAG, "true")
    if outcome.succeeded:
        client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
    _drop_candidate(client, name, version)
    champion = find_champion(client, name)
    after = champion.version if champion else ""
    training_run = _registered_version(client, name, version).run_id
    steps = [_step_event(name, version, run, outcome, step) for step in outcome.steps()]
    final = AuditEvent(
        kind="rollout", decision=outcome.decision, reason=outcome.reason, model=name,
        step="deploy", version=version, pipeline_run=run,
        measurements={
            "champion_after": after, "canary_revision": outcome.canary_revision,
            "stable_revision": outcome.stable_revision,
        },
    )  # fmt: skip
    record_events(client, training_run, [*steps, final])
    return after


def _step_event(
    name: str, version: str, run: str, outcome: RolloutOutcome, step: RolloutStep
) -> AuditEvent:
    """A canary step as an audit event, at the time of its deciding look."""
    looks = f"{step.looks} look{'s' if step.looks != 1 else ''}"
    when = dt.datetime.fromtimestamp(step.time, dt.UTC).isoformat(timespec="microseconds")
    return AuditEvent(
        kind="rollout", decision=f"canary {step.percent} %", model=name, step="deploy",
        reason=f"{step.verdict} after {looks}: {step.reason}", version=version,
        pipeline_run=run, time=when,
        parameters={"traffic_percent": step.percent},
        measurements={"canary_revision": outcome.canary_revision, **step.measurements},
    )  # fmt: skip


def _check_reuse_keeps_threshold(
    client: MlflowClient, name: str, run_id: str, threshold: str
) -> None:
    """A version this run registered before is reused only at the threshold it serves at:
    reusing it would leave the new one unpublished."""
    version = _version_of_run(client, name, run_id)
    recorded = None if version is None else version.tags.get(DECISION_THRESHOLD_TAG, "")
    if recorded is not None and recorded != threshold:
        raise ConveyorError(
            f"version {version.version} of {name!r} was registered from this training run "
            f"at decision threshold {recorded or 'none'}; this evaluation chose "
            f"{threshold or 'none'}: train again to register the model at another threshold"
        )


def _check_champion_unchanged(
    client: MlflowClient, name: str, run_id: str, compared_with: str | None
) -> None:
    """Refuses when another run moved the alias since this model was judged against it."""
    current = find_champion(client, name)
    if current is None or current.version == compared_with or current.run_id == run_id:
        return
    judged = f"v{compared_with}" if compared_with else "no champion"
    raise ConveyorError(
        f"the champion of {name!r} is now v{current.version}, but this model was judged "
        f"against {judged}; run the pipeline again to compare it with v{current.version}"
    )


def _tag_rollout(
    client: MlflowClient, name: str, version: str, decision: str, reason: str, run: str
) -> None:
    for key, value in zip(ROLLOUT_TAGS, (decision, reason, run), strict=True):
        client.set_model_version_tag(name, version, key, value)


def _drop_candidate(client: MlflowClient, name: str, version: str) -> None:
    """Removes ``candidate`` from ``version`` only: it may already name a later run's model."""
    if _holds_alias(client, name, CANDIDATE_ALIAS, version):
        client.delete_registered_model_alias(name, CANDIDATE_ALIAS)


def _holds_alias(client: MlflowClient, name: str, alias: str, version: str) -> bool:
    found = _aliased_version(client, name, alias)
    return found is not None and str(found.version) == version


def _aliased_version(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as error:
        if error.error_code in _NOT_FOUND:
            return None
        raise


def _registered_version(client: MlflowClient, name: str, version: str) -> ModelVersion:
    try:
        return client.get_model_version(name, version)
    except MlflowException as error:
        if error.error_code not in _NOT_FOUND:
            raise
        raise ConveyorError(
            f"{name} version {version!r} is not in the MLflow registry at "
            f"{client.tracking_uri}: deploy rolls out registered versions only"
        ) from None


def _version_of_run(client: MlflowClient, name: str, run_id: str) -> ModelVersion | None:
    try:
        found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except MlflowException as error:
        raise ConveyorError(f"MLflow registry search for {name!r}: {first_line(error)}") from None
    return found[0] if found else None


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.create_registered_model(name)
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
