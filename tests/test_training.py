"""Train's core: the fitted pipeline, the model directory, and its MLflow run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from conveyor.components.core.data.tables import split_table
from conveyor.components.core.errors import ConveyorError
from conveyor.components.core.training.estimators import ESTIMATORS
from conveyor.components.core.training.trainer import (
    MODEL_CARD,
    MODEL_FILE,
    MODEL_FORMAT_VERSION,
    fit_model,
    load_model_dir,
    save_model_dir,
    sha256_file,
    train_model,
)
from tests.conftest import multiclass_table


@pytest.mark.parametrize(
    "estimator",
    sorted(name for name, spec in ESTIMATORS.items() if "classification" in spec.classes),
)
def test_each_estimator_learns_a_multiclass_table_with_categories(
    estimator: str, species: pd.DataFrame
) -> None:
    train, test = split_table(species, "species", 0.25, 0, "t")
    model = fit_model(train, "species", estimator, {}, seed=0)
    accuracy = (model.pipeline.predict(test.drop(columns="species")) == test["species"]).mean()
    majority = test["species"].value_counts(normalize=True).max()
    assert accuracy > majority + 0.1
    assert model.card.classes == sorted(species["species"].unique())
    assert {f.name: f.kind for f in model.card.features} == {
        "size": "numeric",
        "weight": "numeric",
        "color": "categorical",
    }


def test_training_is_seeded(species: pd.DataFrame) -> None:
    def proba(seed: int) -> list[float]:
        model = fit_model(species, "species", "random_forest", {"n_estimators": 20}, seed)
        return model.pipeline.predict_proba(species.drop(columns="species"))[:, 0].tolist()

    assert proba(1) == proba(1)
    assert proba(1) != proba(2)


def test_model_directory_round_trips_and_records_its_sha256(
    tmp_path: Path, species: pd.DataFrame
) -> None:
    model = fit_model(species, "species", "logistic_regression", {"C": 0.5}, seed=0)
    card = save_model_dir(model, tmp_path / "model")
    assert card.sha256 == sha256_file(tmp_path / "model" / MODEL_FILE)
    saved = json.loads((tmp_path / "model" / MODEL_CARD).read_text())
    assert saved["hyperparameters"] == {"C": 0.5}
    # Readers refuse newer formats: a card without id columns is written in format 1, which
    # servers from before format 2 still load.
    assert saved["format_version"] == 1 and MODEL_FORMAT_VERSION == 6
    assert saved["sha256"] == card.sha256 and saved["model_file"] == MODEL_FILE
    assert {"python", "scikit-learn", "pandas", "conveyor"} <= set(saved["versions"])
    loaded = load_model_dir(tmp_path / "model")
    features = species.drop(columns="species")
    assert (loaded.pipeline.predict(features) == model.pipeline.predict(features)).all()


def test_a_tampered_model_file_is_refused(tmp_path: Path, species: pd.DataFrame) -> None:
    save_model_dir(fit_model(species, "species", "logistic_regression", {}, 0), tmp_path)
    with (tmp_path / MODEL_FILE).open("ab") as file:
        file.write(b"\0")
    with pytest.raises(ConveyorError, match="does not match .* recorded at training; refusing"):
        load_model_dir(tmp_path)


def test_model_file_loads_without_conveyor_installed(tmp_path: Path, species: pd.DataFrame) -> None:
    """KServe's sklearn server unpickles model.joblib: a scikit-learn estimator's holds
    scikit-learn classes only (XGBoost's holds Conveyor's label wrapper, format 5)."""
    save_model_dir(fit_model(species, "species", "hist_gradient_boosting", {}, 0), tmp_path)
    script = (
        "import sys; sys.modules['conveyor'] = None\n"
        "import joblib, pandas as pd\n"
        f"model = joblib.load({str(tmp_path / MODEL_FILE)!r})\n"
        "row = pd.DataFrame([{'size': 12.0, 'weight': 50.0, 'color': 'red'}])\n"
        "print(model.predict(row)[0])\n"
    )
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert output.returncode == 0, output.stderr
    assert output.stdout.strip() in set(species["species"])


@pytest.mark.parametrize(
    ("estimator", "hyperparameters", "message"),
    [
        ("catboost", {}, "unknown estimator 'catboost'; choose one of: logistic_regression"),
        (
            "random_forest",
            {"depth": 3},
            "hyperparameters ['depth'] are not accepted by 'random_forest'",
        ),
        (
            "logistic_regression",
            {"C": -1},
            "could not train 'logistic_regression': The 'C' parameter",
        ),
    ],
)
def test_bad_estimator_settings_are_named(
    species: pd.DataFrame, estimator: str, hyperparameters: dict, message: str
) -> None:
    with pytest.raises(ConveyorError) as raised:
        fit_model(species, "species", estimator, hyperparameters, seed=0)
    assert message in str(raised.value)


def test_train_model_logs_params_metrics_and_files_to_mlflow(
    tmp_path: Path, species: pd.DataFrame, mlflow_server: str, model_name: str
) -> None:
    species.to_parquet(tmp_path / "train")
    result = train_model(
        tmp_path / "train",
        "species",
        "random_forest",
        {"n_estimators": 30},
        7,
        tmp_path / "model",
        mlflow_server,
        model_name,
        {"pipeline_run_id": "run-1"},
        model_name=model_name,
    )
    assert load_model_dir(tmp_path / "model").card.name == model_name  # what serve names it
    run = MlflowClient(mlflow_server).get_run(result.run_id)
    assert (
        run.data.params["n_estimators"] == "30" and run.data.params["estimator"] == "random_forest"
    )
    assert run.data.metrics["train_accuracy"] == pytest.approx(result.metrics["accuracy"])
    assert run.data.tags["pipeline_run_id"] == "run-1"
    files = {f.path for f in MlflowClient(mlflow_server).list_artifacts(result.run_id, "model")}
    assert files == {f"model/{MODEL_FILE}", f"model/{MODEL_CARD}"}


def test_train_model_fails_fast_without_a_tracking_uri(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ConveyorError, match="no MLflow tracking URI"):
        train_model(tmp_path / "absent", "y", "random_forest", {}, 0, tmp_path / "m", "", "x", {})
    assert not (tmp_path / "m").exists()


def test_whole_floats_from_kfp_struct_parameters_are_taken_as_integers(
    species: pd.DataFrame,
) -> None:
    model = fit_model(species, "species", "random_forest", {"n_estimators": 12.0}, seed=0)
    assert len(model.pipeline[-1].estimators_) == 12


def test_whole_floats_stay_floats_where_floats_mean_a_share(species: pd.DataFrame) -> None:
    model = fit_model(
        species, "species", "random_forest", {"max_features": 1.0, "n_estimators": 5.0}, 0
    )
    assert model.card.hyperparameters == {"max_features": 1.0, "n_estimators": 5}
    assert isinstance(model.card.hyperparameters["max_features"], float)


def fraud_or_legit(rows: int = 600, seed: int = 5) -> pd.DataFrame:
    """A binary target named neither 1 nor yes, fraud the rarer class (about 20 %) and the
    first in sorted order: the old "second class" rule and the rarer-class rule disagree."""
    rng = np.random.default_rng(seed)
    amount = rng.lognormal(3.5, 0.7, rows)
    fraud = rng.uniform(size=rows) < 1 / (1 + np.exp(-3 * (np.log(amount) - 4.5)))
    return pd.DataFrame(
        {
            "amount": amount,
            "age": rng.normal(40, 10, rows),
            "label": np.where(fraud, "fraud", "legit"),
        }
    )


def test_the_card_records_the_positive_class_decided_at_training(tmp_path: Path) -> None:
    table = fraud_or_legit()
    assert 0.1 < (table["label"] == "fraud").mean() < 0.4
    model = fit_model(table, "label", "logistic_regression", {}, seed=0)
    assert model.card.classes == ["fraud", "legit"] and model.card.positive_class == "fraud"
    named = fit_model(table, "label", "logistic_regression", {}, 0, positive_class="legit")
    assert named.card.positive_class == "legit"
    with pytest.raises(ConveyorError, match="positive_class 'spam' is not a class"):
        fit_model(table, "label", "logistic_regression", {}, 0, positive_class="spam")
    card = save_model_dir(model, tmp_path / "model")
    saved = json.loads((tmp_path / "model" / MODEL_CARD).read_text())
    # A key format 1 does not know: the card is format 2, which older servers refuse.
    assert (
        saved["positive_class"] == "fraud" and saved["format_version"] == 2 == card.format_version
    )
    assert load_model_dir(tmp_path / "model").card.positive_class == "fraud"
    species = fit_model(multiclass_table(), "species", "logistic_regression", {}, seed=0)
    assert species.card.positive_class is None  # more classes: none, and format 1 still


def test_train_model_passes_its_positive_class_to_the_card_and_training_metrics(
    tmp_path: Path, mlflow_server: str, model_name: str
) -> None:
    table = fraud_or_legit()
    table.to_parquet(tmp_path / "train.parquet")
    result = train_model(
        tmp_path / "train.parquet", "label", "logistic_regression", {}, 0, tmp_path / "model",
        mlflow_server, model_name, {}, positive_class="legit",
    )  # fmt: skip
    assert result.card.positive_class == "legit"
    predicted = fit_model(table, "label", "logistic_regression", {}, 0).pipeline.predict(
        table.drop(columns="label")
    )
    legit = table["label"].to_numpy() == "legit"
    negatives_flagged = ((predicted == "legit") & ~legit).sum() / (~legit).sum()
    assert result.metrics["false_positive_rate"] == pytest.approx(negatives_flagged)
