"""The MLflow model registry: finding the champion, registering a version, moving the alias.

A version's ``source`` is the training run's ``model/`` artifacts; its ``storage_uri``
tag is the copy in the model store that KServe pulls from (content-addressed by the
model's sha256, so copying again is a no-op).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from components.core import tracking
from components.core.data import read_parquet
from components.core.errors import ConveyorError, first_line
from components.core.files import write_atomically
from components.core.schema import Schema
from components.core.training import (
    MODEL_CARD,
    ModelCard,
    TrainedModel,
    load_model_dir,
    sha256_file,
)

__all__ = [
    "CHAMPION_ALIAS",
    "Champion",
    "Registration",
    "champion_model_dir",
    "download_reference",
    "find_champion",
    "load_champion",
    "publish_model_dir",
    "register_model",
    "register_version",
]

CHAMPION_ALIAS = "champion"
PIPELINE_RUN_TAG = "pipeline_run_id"


@dataclass(frozen=True)
class Champion:
    name: str
    version: str
    run_id: str
    tags: dict[str, str]

    def recorded_metric(self, metric: str) -> float | None:
        value = self.tags.get(f"metric.{metric}")
        return None if value is None else float(value)


@dataclass(frozen=True)
class Registration:
    name: str
    version: str
    storage_uri: str
    reused: bool


def register_model(
    model_dir: Path,
    evaluation_path: Path,
    model_name: str,
    tracking_uri: str,
    run_id: str,
    model_store_uri: str,
    pipeline_run_id: str,
    data_hash: str,
) -> Registration:
    """Publishes a blessed model to the model store and registers it as the champion, once."""
    verdict = json.loads(evaluation_path.read_text())
    if not verdict["blessed"]:
        raise ConveyorError(
            f"refusing to register a model the evaluation did not bless: {verdict['reason']}"
        )
    client = tracking.connect(tracking_uri)
    card = ModelCard.from_json((model_dir / MODEL_CARD).read_text())
    if sha256_file(model_dir / card.model_file) != card.sha256:
        raise ConveyorError(f"{model_dir}: model file does not match the sha256 in its model card")
    compared_with = (verdict.get("champion") or {}).get("version")
    _check_champion_unchanged(client, model_name, run_id, compared_with)
    storage_uri = publish_model_dir(model_dir, model_store_uri, model_name, card)
    tags = {
        "sha256": card.sha256,
        "data_hash": data_hash,
        PIPELINE_RUN_TAG: pipeline_run_id,
        "storage_uri": storage_uri,
        **{f"metric.{name}": f"{value:.6g}" for name, value in verdict["metrics"].items()},
    }
    return register_version(client, model_name, run_id, tags)


def find_champion(client: MlflowClient, name: str) -> Champion | None:
    """The version holding the ``champion`` alias, or None when there is none yet."""
    try:
        version = client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException as error:
        if error.error_code in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"}:
            return None
        raise
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
    tracking_uri: str, name: str, reference_path: Path, schema_path: Path
) -> Champion:
    """The champion's training inputs (its training split without the label) and schema,
    as its training run recorded them; returns the champion."""
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
    return champion


def load_champion(client: MlflowClient, champion: Champion) -> TrainedModel:
    """Downloads the champion's model directory from MLflow and loads it (sha256 verified)."""
    with tempfile.TemporaryDirectory(prefix="champion-") as scratch:
        local = client.download_artifacts(champion.run_id, "model", scratch)
        return load_model_dir(Path(local))


def publish_model_dir(model_dir: Path, store_uri: str, name: str, card: ModelCard) -> str:
    """Copies the model directory to ``<store>/<name>/<sha256[:16]>``; returns that URI.

    ``model.json`` is written last, so a copy whose ``model.json`` is this model's card
    is complete, and a re-run finding it copies nothing.
    """
    if not store_uri:
        raise ConveyorError("model_store_uri is empty: give a folder or a gs:// or s3:// URI")
    destination = f"{store_uri.rstrip('/')}/{name}/{card.sha256[:16]}"
    fs, path = fsspec.core.url_to_fs(destination)
    card_text = (model_dir / MODEL_CARD).read_text()
    if not (
        fs.exists(f"{path}/{MODEL_CARD}")
        and fs.cat_file(f"{path}/{MODEL_CARD}").decode() == card_text
    ):
        fs.makedirs(path, exist_ok=True)
        fs.put_file(str(model_dir / card.model_file), f"{path}/{card.model_file}")
        fs.pipe_file(f"{path}/{MODEL_CARD}", card_text.encode())
    return path if isinstance(fs, LocalFileSystem) else destination


def register_version(
    client: MlflowClient, name: str, run_id: str, tags: dict[str, str]
) -> Registration:
    """Registers the training run's model once and points ``champion`` at it.

    A version already made from ``run_id`` (a retried or repeated step) is reused.
    """
    version = _version_of_run(client, name, run_id)
    reused = version is not None
    if version is None:
        _ensure_registered_model(client, name)
        version = client.create_model_version(
            name, source=f"runs:/{run_id}/model", run_id=run_id, tags=tags
        )
    number = str(version.version)
    client.set_registered_model_alias(name, CHAMPION_ALIAS, number)
    return Registration(name, number, version.tags.get("storage_uri", ""), reused=reused)


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
