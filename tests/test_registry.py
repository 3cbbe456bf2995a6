"""Register's core against a real MLflow server: once per pipeline run, the alias, the store."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from components.core.errors import ConveyorError
from components.core.registry import (
    CHAMPION_ALIAS,
    champion_model_dir,
    find_champion,
    load_champion,
    register_model,
)
from components.core.training import MODEL_CARD, MODEL_FILE, sha256_file, train_model
from tests.conftest import register_blessed, train_species_model


@pytest.fixture
def trained(tmp_path: Path, species: pd.DataFrame, mlflow_server: str, model_name: str):
    species.to_parquet(tmp_path / "train")
    result = train_model(
        tmp_path / "train", "species", "logistic_regression", {}, 0,
        tmp_path / "model", mlflow_server, model_name, {},
    )  # fmt: skip
    verdict = {"blessed": True, "reason": "test", "metrics": {"roc_auc": 0.91}}
    (tmp_path / "evaluation.json").write_text(json.dumps(verdict))
    return result


def _register(tmp_path: Path, server: str, name: str, run_id: str, pipeline_run: str):
    return register_model(
        tmp_path / "model", tmp_path / "evaluation.json", name, server, run_id,
        str(tmp_path / "store"), pipeline_run, "hash-1",
    )  # fmt: skip


def test_registers_publishes_and_moves_the_alias(
    tmp_path: Path, trained, mlflow_server: str, model_name: str
) -> None:
    client = MlflowClient(mlflow_server)
    assert find_champion(client, model_name) is None
    registration = _register(tmp_path, mlflow_server, model_name, trained.run_id, "pipeline-a")
    assert registration.version == "1" and not registration.reused
    store = Path(registration.storage_uri)
    assert store.parent == tmp_path / "store" / model_name
    assert sha256_file(store / MODEL_FILE) == trained.card.sha256
    version = client.get_model_version_by_alias(model_name, CHAMPION_ALIAS)
    assert version.version in (1, "1")
    assert version.tags["metric.roc_auc"] == "0.91" and version.tags["data_hash"] == "hash-1"
    assert version.tags["storage_uri"] == registration.storage_uri
    assert version.source == f"runs:/{trained.run_id}/model"
    champion = find_champion(client, model_name)
    assert champion.recorded_metric("roc_auc") == 0.91
    assert load_champion(client, champion).card.sha256 == trained.card.sha256
    assert champion_model_dir(mlflow_server, model_name) == store  # what `make serve` serves


def test_serving_a_model_without_a_champion_is_one_line(
    mlflow_server: str, model_name: str
) -> None:
    with pytest.raises(ConveyorError, match=f"model '{model_name}' has no champion in"):
        champion_model_dir(mlflow_server, model_name)


def test_repeating_register_for_one_training_run_registers_nothing_new(
    tmp_path: Path, trained, mlflow_server: str, model_name: str
) -> None:
    first = _register(tmp_path, mlflow_server, model_name, trained.run_id, "pipeline-a")
    again = _register(tmp_path, mlflow_server, model_name, trained.run_id, "")
    assert (again.version, again.reused, again.storage_uri) == (
        first.version,
        True,
        first.storage_uri,
    )
    versions = MlflowClient(mlflow_server).search_model_versions(f"name = '{model_name}'")
    assert len(versions) == 1


def test_a_model_judged_against_a_replaced_champion_is_refused(
    tmp_path: Path, trained, species: pd.DataFrame, mlflow_server: str, model_name: str
) -> None:
    """Run A was judged with no champion; run B registered meanwhile: A must not demote B."""
    other = train_species_model(tmp_path, mlflow_server, model_name, species, "b", C=3.0)
    register_blessed(tmp_path, mlflow_server, model_name, other, "b", roc_auc=0.93)
    with pytest.raises(
        ConveyorError, match=r"is now v1, but this model was judged against no champion"
    ):
        _register(tmp_path, mlflow_server, model_name, trained.run_id, "pipeline-a")
    assert find_champion(MlflowClient(mlflow_server), model_name).run_id == other.run_id
    judged_against_v1 = {
        **json.loads((tmp_path / "evaluation.json").read_text()),
        "champion": {"version": "1"},
    }
    (tmp_path / "evaluation.json").write_text(json.dumps(judged_against_v1))
    assert (
        _register(tmp_path, mlflow_server, model_name, trained.run_id, "pipeline-c").version == "2"
    )


def test_a_truncated_store_copy_is_replaced(
    tmp_path: Path, trained, mlflow_server: str, model_name: str
) -> None:
    store = tmp_path / "store" / model_name / trained.card.sha256[:16]
    store.mkdir(parents=True)
    (store / MODEL_CARD).write_text('{"trunc')
    registration = _register(tmp_path, mlflow_server, model_name, trained.run_id, "pipeline-a")
    assert Path(registration.storage_uri) == store
    assert (store / MODEL_CARD).read_text() == (tmp_path / "model" / MODEL_CARD).read_text()
    assert sha256_file(store / MODEL_FILE) == trained.card.sha256


def test_an_unblessed_model_is_never_registered(
    tmp_path: Path, trained, mlflow_server: str, model_name: str
) -> None:
    verdict = {"blessed": False, "reason": "champion v1 stays", "metrics": {}}
    (tmp_path / "evaluation.json").write_text(json.dumps(verdict))
    with pytest.raises(ConveyorError, match="did not bless: champion v1 stays"):
        _register(tmp_path, mlflow_server, model_name, trained.run_id, "pipeline-a")
    assert MlflowClient(mlflow_server).search_registered_models(f"name = '{model_name}'") == []
    assert not (tmp_path / "store").exists()


def test_a_model_directory_that_does_not_match_its_card_is_refused(
    tmp_path: Path, trained, mlflow_server: str, model_name: str
) -> None:
    card = json.loads((tmp_path / "model" / MODEL_CARD).read_text())
    card["sha256"] = "0" * 64
    (tmp_path / "model" / MODEL_CARD).write_text(json.dumps(card))
    with pytest.raises(ConveyorError, match="does not match the sha256 in its model card"):
        _register(tmp_path, mlflow_server, model_name, trained.run_id, "pipeline-a")
    assert MlflowClient(mlflow_server).search_registered_models(f"name = '{model_name}'") == []
