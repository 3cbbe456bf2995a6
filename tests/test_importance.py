"""Feature importance and evaluation scores: measured on real fitted pipelines, recorded by
train beside the model and in its MLflow run, fetched back by champion_reference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from kfp.dsl import Artifact, Dataset
from mlflow import MlflowClient

from conveyor.components.champion_reference import champion_reference
from conveyor.components.core.errors import ConveyorError
from conveyor.components.core.serving.payload_log import PREDICTION as PREDICTION_COLUMN
from conveyor.components.core.serving.payload_log import PROBABILITY_PREFIX
from conveyor.components.core.serving.payload_log import SCORE as SCORE_COLUMN
from conveyor.components.core.training import tracking
from conveyor.components.core.training.importance import (
    IMPORTANCE_FILE,
    LABEL_COLUMN,
    SCORES_FILE,
    FeatureImportance,
    evaluation_scores,
    feature_importance,
    read_importance,
    read_reference_scores,
)
from conveyor.components.core.training.registry import download_reference
from conveyor.components.core.training.trainer import (
    MODEL_CARD,
    MODEL_FILE,
    fit_model,
    load_model_dir,
    sha256_file,
    train_model,
)
from tests.conftest import artifact, multiclass_table, register_blessed, train_species_model


def signal_table(rows: int, seed: int, signal: str) -> pd.DataFrame:
    """A binary label decided by one column (``amount`` or ``channel``) with 10 % of the
    labels flipped; two noise columns of the other kind; 10 % of every input missing."""
    rng = np.random.default_rng(seed)
    table = pd.DataFrame(
        {
            "amount": rng.normal(100, 20, rows),
            "noise": rng.normal(0, 1, rows),
            "channel": rng.choice(["web", "pos", "atm"], rows).astype(object),
            "region": rng.choice(["north", "south"], rows).astype(object),
        }
    )
    decided = table["amount"] > 100 if signal == "amount" else table["channel"] == "atm"
    flipped = decided ^ (rng.random(rows) < 0.1)
    table["fraud"] = np.where(flipped, "yes", "no")
    for column in ("amount", "noise", "channel", "region"):
        table.loc[rng.random(rows) < 0.1, column] = np.nan
    return table


@pytest.mark.parametrize("estimator", ["logistic_regression", "hist_gradient_boosting"])
@pytest.mark.parametrize("signal", ["amount", "channel"])
def test_the_column_that_decides_the_label_gets_most_of_the_importance(
    estimator: str, signal: str
) -> None:
    train, test = signal_table(2000, 1, signal), signal_table(1000, 2, signal)
    model = fit_model(train, "fraud", estimator, {}, seed=0)
    features = [feature.name for feature in model.card.features]
    importance = feature_importance(model.pipeline, test, "fraud", features, seed=0)
    assert importance.metric == "log_loss" and importance.rows == 1000
    assert set(importance.importances) == {"amount", "noise", "channel", "region"}  # inputs
    assert importance.shares[signal] > 0.5
    assert max(importance.importances, key=importance.importances.get) == signal
    assert sum(importance.shares.values()) == pytest.approx(1.0)
    # Noise columns matter little: shuffling them moves the log loss by under 0.02.
    for noise in {"amount", "noise", "channel", "region"} - {signal}:
        assert importance.importances[noise] < 0.02


def test_importance_is_seeded_and_bounded_in_rows() -> None:
    train, test = signal_table(1500, 3, "amount"), signal_table(3000, 4, "amount")
    model = fit_model(train, "fraud", "logistic_regression", {}, seed=0)
    features = [feature.name for feature in model.card.features]

    def measured(seed: int) -> FeatureImportance:
        return feature_importance(
            model.pipeline, test, "fraud", features, seed, max_rows=400, repeats=3
        )

    assert measured(5) == measured(5)
    assert measured(5).importances != measured(6).importances
    assert measured(5).rows == 400 and measured(5).repeats == 3


def test_rows_labelled_with_a_class_the_model_never_saw_are_left_out() -> None:
    train = signal_table(800, 5, "amount")
    test = signal_table(400, 6, "amount")
    test.loc[:9, "fraud"] = "unknown"
    model = fit_model(train, "fraud", "logistic_regression", {}, seed=0)
    importance = feature_importance(
        model.pipeline, test, "fraud", ["amount", "noise", "channel", "region"], 0
    )
    assert importance.rows == 390
    test["fraud"] = "unknown"
    with pytest.raises(ConveyorError, match="no row labelled 'fraud' with a class the model"):
        feature_importance(model.pipeline, test, "fraud", ["amount"], 0)
    with pytest.raises(ConveyorError, match=r"lacks column\(s\) \['weight'\]"):
        feature_importance(model.pipeline, test, "fraud", ["amount", "weight"], 0)


def test_a_model_whose_columns_never_vary_has_no_shares() -> None:
    """No column's shuffling hurts: no shares (monitoring then weighs columns equally)."""
    rng = np.random.default_rng(0)
    table = pd.DataFrame(
        {"flat": 1.0, "kind": "same", "label": rng.choice(["a", "b"], 600)}, index=range(600)
    )
    model = fit_model(table, "label", "logistic_regression", {}, seed=0)
    importance = feature_importance(model.pipeline, table, "label", ["flat", "kind"], 0)
    assert importance.importances == {"flat": 0.0, "kind": 0.0} and importance.shares == {}
    assert FeatureImportance.from_json(importance.to_json()) == importance


def test_binary_scores_are_the_positive_class_probability_as_serving_reports_it() -> None:
    train, test = signal_table(1000, 7, "amount"), signal_table(300, 8, "amount")
    model = fit_model(train, "fraud", "logistic_regression", {}, seed=0)
    features = [feature.name for feature in model.card.features]
    scores = evaluation_scores(model.pipeline, test, "fraud", features)
    probabilities = model.pipeline.predict_proba(test[features])
    assert model.card.classes == ["no", "yes"]
    assert "fraud" not in scores.columns and len(scores) == len(test)
    assert list(scores.columns[:4]) == features  # the inputs, as the log holds them
    np.testing.assert_allclose(scores[SCORE_COLUMN], probabilities[:, 1])  # "yes"
    np.testing.assert_allclose(scores[f"{PROBABILITY_PREFIX}no"], probabilities[:, 0])
    assert scores[PREDICTION_COLUMN].tolist() == model.pipeline.predict(test[features]).tolist()
    # The label, as text, last (the log has none; quality recomputes offline metrics with it).
    assert scores.columns[-1] == LABEL_COLUMN
    assert scores[LABEL_COLUMN].tolist() == test["fraud"].tolist()


def test_binary_scores_are_of_the_card_s_positive_class_as_serving_logs_them() -> None:
    """fraud/legit, fraud the rarer: the card's positive class is fraud, and the recorded
    scores are its probability, not the second class's (legit)."""
    train, test = signal_table(1000, 7, "amount"), signal_table(300, 8, "amount")
    for table in (train, test):
        table["fraud"] = table["fraud"].map({"yes": "fraud", "no": "legit"})
    train = pd.concat([train[train["fraud"] == "legit"], train[train["fraud"] == "fraud"][:200]])
    model = fit_model(train, "fraud", "logistic_regression", {}, seed=0)
    assert model.card.classes == ["fraud", "legit"] and model.card.positive_class == "fraud"
    features = [feature.name for feature in model.card.features]
    scores = evaluation_scores(model.pipeline, test, "fraud", features, model.card.positive_class)
    probabilities = model.pipeline.predict_proba(test[features])
    np.testing.assert_allclose(scores[SCORE_COLUMN], probabilities[:, 0])  # fraud


def test_multiclass_scores_are_the_top_probability_and_classes_are_strings() -> None:
    table = multiclass_table(400, seed=3)
    table["species"] = table["species"].map({"setosa": 1, "versicolor": 2, "virginica": 3})
    model = fit_model(table, "species", "random_forest", {"n_estimators": 20}, seed=0)
    scores = evaluation_scores(model.pipeline, table, "species", ["size", "weight", "color"])
    probabilities = model.pipeline.predict_proba(table[["size", "weight", "color"]])
    np.testing.assert_allclose(scores[SCORE_COLUMN], probabilities.max(axis=1))
    assert set(scores[PREDICTION_COLUMN]) <= {"1", "2", "3"}
    assert scores[LABEL_COLUMN].tolist() == table["species"].astype(str).tolist()
    assert [c for c in scores.columns if c.startswith(PROBABILITY_PREFIX)] == [
        f"{PROBABILITY_PREFIX}{c}" for c in (1, 2, 3)
    ]


def test_malformed_importance_files_are_one_line(tmp_path: Path) -> None:
    path = tmp_path / IMPORTANCE_FILE
    path.write_text('{"method": "permutation", "metric": "log_loss", "importances": {"a": 1}}')
    with pytest.raises(ConveyorError, match=f"{path}: expected an object with method"):
        read_importance(path)
    path.write_text(
        json.dumps(
            {"method": "permutation", "metric": "x", "importances": {"a": 1.0}, "shares": {"a": 2}}
        )
    )
    with pytest.raises(ConveyorError, match="shares: expected non-negative shares summing to 1"):
        read_importance(path)
    path.write_text("")
    assert read_importance(path) is None and read_importance(tmp_path / "absent") is None


def _train_with_test(tmp_path: Path, server: str, name: str):
    signal_table(1500, 10, "amount").to_parquet(tmp_path / "train")
    signal_table(600, 11, "amount").to_parquet(tmp_path / "test")
    return train_model(
        tmp_path / "train", "fraud", "logistic_regression", {}, 0, tmp_path / "model",
        server, name, {}, model_name=name, test_path=tmp_path / "test",
    )  # fmt: skip


def test_train_records_importance_and_scores_beside_the_model_and_in_its_run(
    tmp_path: Path, mlflow_server: str, model_name: str
) -> None:
    result = _train_with_test(tmp_path, mlflow_server, model_name)
    model_dir = tmp_path / "model"
    importance = read_importance(model_dir / IMPORTANCE_FILE)
    assert importance is not None and importance.shares["amount"] > 0.5
    scores = read_reference_scores(model_dir / SCORES_FILE)
    assert scores is not None and len(scores) == 600
    assert result.card.sha256 == sha256_file(model_dir / MODEL_FILE)  # the card covers the model
    for extra in (IMPORTANCE_FILE, SCORES_FILE):  # ... and loading needs neither file
        (model_dir / extra).unlink()
    assert load_model_dir(model_dir).card.name == model_name
    client = MlflowClient(mlflow_server)
    recorded = {Path(f.path).name for f in client.list_artifacts(result.run_id, "reference")}
    assert recorded == {"train.parquet", "schema.json", IMPORTANCE_FILE, SCORES_FILE}
    files = {Path(f.path).name for f in client.list_artifacts(result.run_id, "model")}
    assert files == {MODEL_FILE, MODEL_CARD, IMPORTANCE_FILE, SCORES_FILE}


def test_a_split_the_model_cannot_score_leaves_no_model_behind(
    tmp_path: Path, mlflow_server: str, model_name: str
) -> None:
    signal_table(500, 12, "amount").to_parquet(tmp_path / "train")
    signal_table(100, 13, "amount").drop(columns="noise").to_parquet(tmp_path / "test")
    with pytest.raises(ConveyorError, match=r"lacks column\(s\) \['noise'\]"):
        train_model(
            tmp_path / "train", "fraud", "logistic_regression", {}, 0, tmp_path / "model",
            mlflow_server, model_name, {}, test_path=tmp_path / "test",
        )  # fmt: skip
    assert not (tmp_path / "model").exists()
    assert MlflowClient(mlflow_server).get_experiment_by_name(model_name) is None


def test_champion_reference_fetches_the_champion_s_importance_and_scores(
    tmp_path: Path, mlflow_server: str, model_name: str
) -> None:
    result = _train_with_test(tmp_path, mlflow_server, model_name)
    (tmp_path / "evaluation.json").write_text(
        json.dumps({"blessed": True, "reason": "test", "metrics": {"roc_auc": 0.9}})
    )
    from conveyor.components.core.training.registry import register_model

    register_model(
        tmp_path / "model", tmp_path / "evaluation.json", model_name, mlflow_server,
        result.run_id, str(tmp_path / "store"), "run-1", "hash-1",
    )  # fmt: skip
    paths = [tmp_path / "out" / name for name in ("ref", "schema", "importance", "scores")]
    champion = download_reference(mlflow_server, model_name, *paths)
    assert champion.version == "1"
    assert read_importance(paths[2]) == read_importance(tmp_path / "model" / IMPORTANCE_FILE)
    pd.testing.assert_frame_equal(
        read_reference_scores(paths[3]), pd.read_parquet(tmp_path / "model" / SCORES_FILE)
    )

    outputs = {
        "reference": artifact(Dataset, tmp_path, "reference"),
        "schema": artifact(Artifact, tmp_path, "schema"),
        "importance": artifact(Artifact, tmp_path, "importance"),
        "reference_scores": artifact(Dataset, tmp_path, "reference_scores"),
    }
    version = champion_reference.python_func(
        model_name=model_name, mlflow_tracking_uri=mlflow_server, **outputs
    )
    assert version == "1"
    for name in ("importance", "reference_scores"):
        assert outputs[name].metadata["recorded"] is True
        assert outputs[name].metadata["model_version"] == "1"
    assert read_importance(Path(outputs["importance"].path)).shares["amount"] > 0.5
    scores = read_reference_scores(Path(outputs["reference_scores"].path))
    assert {SCORE_COLUMN, PREDICTION_COLUMN, "amount"} <= set(scores.columns)


def test_a_champion_trained_before_importance_gives_empty_outputs_with_a_note(
    tmp_path: Path, mlflow_server: str, model_name: str
) -> None:
    trained = train_species_model(tmp_path, mlflow_server, model_name, multiclass_table(), "old")
    register_blessed(tmp_path, mlflow_server, model_name, trained, "old", 0.9)
    client = MlflowClient(mlflow_server)
    recorded = {Path(f.path).name for f in client.list_artifacts(trained.run_id, "reference")}
    assert tracking.REFERENCE_IMPORTANCE not in recorded  # as trained before they existed
    outputs = {
        "reference": artifact(Dataset, tmp_path, "reference"),
        "schema": artifact(Artifact, tmp_path, "schema"),
        "importance": artifact(Artifact, tmp_path, "importance"),
        "reference_scores": artifact(Dataset, tmp_path, "reference_scores"),
    }
    champion_reference.python_func(
        model_name=model_name, mlflow_tracking_uri=mlflow_server, **outputs
    )
    assert pd.read_parquet(outputs["reference"].path).shape[1] == 3  # the rest still works
    for name in ("importance", "reference_scores"):
        assert Path(outputs[name].path).stat().st_size == 0
        assert outputs[name].metadata["recorded"] is False
        assert "trained before Conveyor recorded" in outputs[name].metadata["note"]
    assert read_importance(Path(outputs["importance"].path)) is None
    assert read_reference_scores(Path(outputs["reference_scores"].path)) is None
