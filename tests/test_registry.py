"""Register's core against a real MLflow server: once per pipeline run, the aliases, the store,
and what deploy records of a rollout (the champion is what serves)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from conveyor.components.core.errors import ConveyorError
from conveyor.components.core.rollout.runner import RolloutResult
from conveyor.components.core.training.registry import (
    CANDIDATE_ALIAS,
    CHAMPION_ALIAS,
    champion_model_dir,
    check_rollout_allowed,
    find_champion,
    load_champion,
    record_rollout,
    register_model,
)
from conveyor.components.core.training.trainer import (
    MODEL_CARD,
    MODEL_FILE,
    sha256_file,
    train_model,
)
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


# -- the champion is what serves: candidate at register, champion when the rollout serves it --


def _register_candidate(
    tmp_path: Path, server: str, name: str, trained, tag: str, judged_against: str | None
):
    """Registers as a pipeline that rolls out does: blessed against ``judged_against``."""
    champion = {"version": judged_against} if judged_against else None
    verdict = {"blessed": True, "reason": "test", "metrics": {"roc_auc": 0.9}, "champion": champion}
    (tmp_path / tag / "evaluation.json").write_text(json.dumps(verdict))
    return register_model(
        tmp_path / tag / "model", tmp_path / tag / "evaluation.json", name, server,
        trained.run_id, str(tmp_path / "store"), f"pipeline-{tag}", "hash", rollout=True,
    )  # fmt: skip


def _outcome(decision: str, reason: str, canary_revision: str = "") -> RolloutResult:
    return RolloutResult(
        decision=decision, reason=reason, name="svc", namespace="ml", model_uri="gs://m",
        canary_revision=canary_revision,
    )  # fmt: skip


def _aliases(server: str, name: str) -> dict[str, str]:
    model = MlflowClient(server).get_registered_model(name)
    return {alias: str(version) for alias, version in model.aliases.items()}


def _rollout_tags(server: str, name: str, version: str) -> tuple[str, ...]:
    tags = MlflowClient(server).get_model_version(name, version).tags
    return tuple(tags.get(key, "") for key in ("rollout.decision", "rollout.reason", "rollout.run"))


def test_a_rolled_out_version_is_the_candidate_until_its_first_deploy_creates_the_service(
    tmp_path: Path, species: pd.DataFrame, mlflow_server: str, model_name: str
) -> None:
    trained = train_species_model(tmp_path, mlflow_server, model_name, species, "a")
    registration = _register_candidate(tmp_path, mlflow_server, model_name, trained, "a", None)
    assert registration.sha256 == trained.card.sha256
    version = MlflowClient(mlflow_server).get_model_version(model_name, registration.version)
    assert version.tags["sha256"] == registration.sha256
    assert _aliases(mlflow_server, model_name) == {CANDIDATE_ALIAS: "1"}
    assert find_champion(MlflowClient(mlflow_server), model_name) is None

    check_rollout_allowed(mlflow_server, model_name, "1", "pipeline-a")
    created = _outcome("created", "InferenceService created and Ready")
    assert record_rollout(mlflow_server, model_name, "1", created, "pipeline-a") == "1"
    assert _aliases(mlflow_server, model_name) == {CHAMPION_ALIAS: "1"}
    assert _rollout_tags(mlflow_server, model_name, "1") == (
        "created", "InferenceService created and Ready", "pipeline-a",
    )  # fmt: skip

    # A retried register and deploy of the same run: the same version, promoted again as a no-op.
    again = _register_candidate(tmp_path, mlflow_server, model_name, trained, "a", None)
    assert (again.version, again.reused) == ("1", True)
    check_rollout_allowed(mlflow_server, model_name, "1", "pipeline-a")
    served = _outcome("promoted", "already serving this model at 100 %: nothing to do")
    assert record_rollout(mlflow_server, model_name, "1", served, "pipeline-a") == "1"
    assert _aliases(mlflow_server, model_name) == {CHAMPION_ALIAS: "1"}
    assert len(MlflowClient(mlflow_server).search_model_versions(f"name = '{model_name}'")) == 1


def test_a_rolled_back_version_is_rejected_and_the_champion_stays_until_one_is_promoted(
    tmp_path: Path, species: pd.DataFrame, mlflow_server: str, model_name: str
) -> None:
    first = train_species_model(tmp_path, mlflow_server, model_name, species, "a")
    register_blessed(tmp_path, mlflow_server, model_name, first, "a", roc_auc=0.9)  # no rollout
    assert _aliases(mlflow_server, model_name) == {CHAMPION_ALIAS: "1"}

    second = train_species_model(tmp_path, mlflow_server, model_name, species, "b", C=3.0)
    assert _register_candidate(tmp_path, mlflow_server, model_name, second, "b", "1").version == "2"
    assert _aliases(mlflow_server, model_name) == {CHAMPION_ALIAS: "1", CANDIDATE_ALIAS: "2"}
    check_rollout_allowed(mlflow_server, model_name, "2", "pipeline-b")
    rolled_back = _outcome(
        "rolled_back", "revision svc-predictor-00002 failed to load", "svc-predictor-00002"
    )
    assert record_rollout(mlflow_server, model_name, "2", rolled_back, "pipeline-b") == "1"
    assert _aliases(mlflow_server, model_name) == {CHAMPION_ALIAS: "1"}
    assert _rollout_tags(mlflow_server, model_name, "2") == (
        "rolled_back", "revision svc-predictor-00002 failed to load", "pipeline-b",
    )  # fmt: skip
    # Evaluate, monitoring and `make serve` all read the champion: still the first model.
    assert find_champion(MlflowClient(mlflow_server), model_name).run_id == first.run_id
    # A retried deploy step does not send the rejected model out again.
    with pytest.raises(ConveyorError, match=r"version 2 was rolled back by run pipeline-b: "):
        check_rollout_allowed(mlflow_server, model_name, "2", "pipeline-b")

    third = train_species_model(tmp_path, mlflow_server, model_name, species, "c", C=0.3)
    assert _register_candidate(tmp_path, mlflow_server, model_name, third, "c", "1").version == "3"
    promoted = _outcome("promoted", "every step passed")
    assert record_rollout(mlflow_server, model_name, "3", promoted, "pipeline-c") == "3"
    assert _aliases(mlflow_server, model_name) == {CHAMPION_ALIAS: "3"}
    assert _rollout_tags(mlflow_server, model_name, "2")[0] == "rolled_back"


def test_a_candidate_judged_against_a_champion_another_rollout_replaced_is_not_rolled_out(
    tmp_path: Path, species: pd.DataFrame, mlflow_server: str, model_name: str
) -> None:
    """Runs A and B are both judged against v1 and register v2 and v3 (B's is the candidate
    now); A's rollout promotes v2 first. B must not replace v2 unjudged against it."""
    first = train_species_model(tmp_path, mlflow_server, model_name, species, "v1")
    register_blessed(tmp_path, mlflow_server, model_name, first, "v1", roc_auc=0.9)
    run_a = train_species_model(tmp_path, mlflow_server, model_name, species, "a", C=3.0)
    run_b = train_species_model(tmp_path, mlflow_server, model_name, species, "b", C=0.3)
    assert _register_candidate(tmp_path, mlflow_server, model_name, run_a, "a", "1").version == "2"
    assert _register_candidate(tmp_path, mlflow_server, model_name, run_b, "b", "1").version == "3"
    check_rollout_allowed(mlflow_server, model_name, "2", "pipeline-a")
    record_rollout(mlflow_server, model_name, "2", _outcome("promoted", "ok"), "pipeline-a")
    assert _aliases(mlflow_server, model_name) == {CHAMPION_ALIAS: "2", CANDIDATE_ALIAS: "3"}

    with pytest.raises(
        ConveyorError,
        match=rf"the champion of '{model_name}' is now v2, but this model was judged against v1",
    ):
        check_rollout_allowed(mlflow_server, model_name, "3", "pipeline-b")
    assert _aliases(mlflow_server, model_name) == {CHAMPION_ALIAS: "2"}
    decision, reason, run = _rollout_tags(mlflow_server, model_name, "3")
    assert (decision, run) == ("failed", "pipeline-b")
    assert reason.startswith("not rolled out: the champion of")
    # A's deploy retried after its promotion: the champion is its own version, still allowed.
    check_rollout_allowed(mlflow_server, model_name, "2", "pipeline-a")


def test_deploying_a_version_the_registry_does_not_hold_is_one_line(
    mlflow_server: str, model_name: str
) -> None:
    with pytest.raises(
        ConveyorError, match=rf"^{model_name} version '7' is not in the MLflow registry at http"
    ):
        check_rollout_allowed(mlflow_server, model_name, "7", "pipeline-a")
