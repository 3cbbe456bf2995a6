"""XGBoost and LightGBM through the trainer, and which device the train step trains on."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from conveyor.components.core.data.roles import DeclaredRoles, column_roles
from conveyor.components.core.data.tables import split_table
from conveyor.components.core.errors import ConveyorError
from conveyor.components.core.training.devices import (
    GPUS_ENV,
    VisibleGpus,
    requested_gpus,
    training_device,
    visible_gpus,
)
from conveyor.components.core.training.estimators import ESTIMATORS
from conveyor.components.core.training.metrics import score
from conveyor.components.core.training.trainer import (
    MODEL_CARD,
    fit_model,
    load_model_dir,
    save_model_dir,
    train_model,
)
from tests.churn import churn_table
from tests.conftest import predictors

BOOSTERS = ("xgboost", "lightgbm")


@pytest.fixture(scope="module")
def churn_splits() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The churn export: an id, dates, free text, gaps, a yes/no label."""
    return split_table(churn_table(rows=900, seed=11), "churned", 0.25, 0, "churn")


@pytest.mark.parametrize("estimator", BOOSTERS)
def test_a_booster_learns_a_messy_table_and_loads_back_as_the_predictor_loads_it(
    estimator: str, churn_splits: tuple[pd.DataFrame, pd.DataFrame], tmp_path: Path
) -> None:
    train, test = churn_splits
    roles = column_roles(train, "churned", DeclaredRoles(text_columns=("support_notes",)))
    model = fit_model(train, "churned", estimator, {"n_estimators": 60}, 0, roles=roles)
    assert model.card.classes == ["no", "yes"] and model.card.positive_class == "yes"
    assert {f.kind for f in model.card.features} == {"numeric", "categorical", "datetime", "text"}
    scores = score(model.pipeline, test, "churned", "yes").metrics
    assert scores["roc_auc"] > 0.7  # 0.5 is chance; the churn rule is learnable
    card = save_model_dir(model, tmp_path)
    saved = json.loads((tmp_path / MODEL_CARD).read_text())
    # Older servers cannot unpickle these: the card says so by its format.
    assert saved["format_version"] == card.format_version == 5
    assert (
        saved["versions"][ESTIMATORS[estimator].library] == ESTIMATORS[estimator].library_version()
    )
    rows = test.drop(columns="churned").head(50)
    loaded = load_model_dir(tmp_path).pipeline.predict_proba(rows)
    assert loaded.dtype == np.float64 and np.allclose(loaded.sum(axis=1), 1, atol=1e-12)
    assert np.array_equal(loaded, model.pipeline.predict_proba(rows))


def test_xgboost_takes_any_labels_and_answers_in_them(species: pd.DataFrame) -> None:
    """XGBoost itself takes classes 0..k-1 only."""
    model = fit_model(species, "species", "xgboost", {"n_estimators": 30}, seed=0)
    predicted = model.pipeline.predict(species.drop(columns="species"))
    assert set(predicted) <= set(species["species"]) and len(set(predicted)) == 3
    assert (predicted == species["species"]).mean() > 0.8


@pytest.mark.parametrize("estimator", BOOSTERS)
def test_whole_floats_from_kfp_reach_the_boosters_as_integers(
    estimator: str, species: pd.DataFrame
) -> None:
    """KFP's Struct makes every number a float; both libraries hand settings to C++ as text."""
    model = fit_model(species, "species", estimator, {"n_estimators": 7.0, "learning_rate": 1.0}, 0)
    assert model.card.hyperparameters == {"n_estimators": 7, "learning_rate": 1}
    final = model.pipeline[-1]
    if estimator == "xgboost":
        assert final.estimator_.get_booster().num_boosted_rounds() == 7
    else:
        assert final.booster_.num_trees() == 7 * 3  # a tree per class per round


def test_lightgbm_takes_class_weight(churn_splits: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    train, test = churn_splits
    plain = fit_model(train, "churned", "lightgbm", {"n_estimators": 40}, seed=0)
    weighted = fit_model(
        train, "churned", "lightgbm", {"n_estimators": 40, "class_weight": "balanced"}, seed=0
    )
    rows = test.drop(columns="churned")
    flagged = [(m.pipeline.predict(rows) == "yes").mean() for m in (plain, weighted)]
    assert flagged[1] > flagged[0]  # the rarer class weighs more, so more rows reach it


@pytest.mark.parametrize(
    ("estimator", "hyperparameters", "message"),
    [
        ("xgboost", {"class_weight": "balanced"}, "['class_weight'] are not accepted by 'xgboost'"),
        ("xgboost", {"device": "cuda"}, "hyperparameter 'device' of 'xgboost' is Conveyor's"),
        # Another objective would serve margins or regression values as probabilities.
        ("xgboost", {"objective": "binary:logitraw"}, "'objective' of 'xgboost' is Conveyor's"),
        ("lightgbm", {"objective": "regression"}, "'objective' of 'lightgbm' is Conveyor's"),
        ("xgboost", {"max_depth": -1}, "could not train 'xgboost': "),
        ("lightgbm", {"num_leaves": 1}, "could not train 'lightgbm': "),
        ("lightgbm", {"device_type": "gpu"}, "['device_type'] are not accepted by 'lightgbm'"),
    ],
)
def test_bad_booster_settings_fail_in_one_line(
    species: pd.DataFrame, estimator: str, hyperparameters: dict, message: str
) -> None:
    with pytest.raises(ConveyorError) as raised:
        fit_model(species, "species", estimator, hyperparameters, seed=0)
    assert message in str(raised.value) and "\n" not in str(raised.value)


# --- the device -------------------------------------------------------------------------------


def test_the_gpus_the_step_was_given_come_from_its_environment() -> None:
    assert requested_gpus({}) == 0 and requested_gpus({GPUS_ENV: "1"}) == 1
    with pytest.raises(ConveyorError, match=f"{GPUS_ENV}='one': expected a whole number"):
        requested_gpus({GPUS_ENV: "one"})


def test_without_gpus_every_estimator_trains_on_the_cpu() -> None:
    for spec in ESTIMATORS.values():
        assert training_device(spec, 0) == ("cpu", "")


def test_an_estimator_that_cannot_use_a_gpu_is_refused_when_one_was_given() -> None:
    with pytest.raises(ConveyorError) as raised:
        training_device(ESTIMATORS["random_forest"], 1)
    assert str(raised.value) == (
        "the train step was given 1 GPU (--gpus 1), but estimator 'random_forest' trains on "
        "the CPU only: choose xgboost, or compile without --gpus"
    )


def test_xgboosts_cpu_build_is_refused_when_a_gpu_was_given() -> None:
    """This environment has the CPU build, as the base image does."""
    with pytest.raises(
        ConveyorError, match="but this xgboost is a CPU-only build: train in the gpu"
    ):
        training_device(ESTIMATORS["xgboost"], 1)


def test_one_gpu_is_what_the_step_trains_on() -> None:
    with pytest.raises(ConveyorError, match=r"given 2 GPUs \(--gpus 2\), but it trains on one"):
        training_device(ESTIMATORS["xgboost"], 2)


def test_a_gpu_xgboost_falls_back_from_is_refused_before_the_fit() -> None:
    """XGBoost's CUDA build only warns when it trains on the CPU instead."""
    falls_back = dataclasses.replace(
        ESTIMATORS["xgboost"], cuda_build=lambda: True, gpu_problem=lambda: "fell back to 'cpu'"
    )
    one = lambda: VisibleGpus(("NVIDIA L4",))  # noqa: E731
    with pytest.raises(ConveyorError, match="but xgboost cannot use it: fell back to 'cpu'$"):
        training_device(falls_back, 1, one)


def test_xgboost_refuses_a_single_class(species: pd.DataFrame) -> None:
    with pytest.raises(
        ConveyorError, match="XGBoost needs two classes or more, got \\['setosa'\\]"
    ):
        fit_model(species[species["species"] == "setosa"], "species", "xgboost", {}, 0)


def test_a_gpu_that_is_not_visible_is_named_not_replaced_by_the_cpu() -> None:
    with_cuda = dataclasses.replace(
        ESTIMATORS["xgboost"], cuda_build=lambda: True, gpu_problem=lambda: ""
    )
    found = visible_gpus()  # this machine's driver, as it is
    if found.names:
        pytest.skip(f"a GPU is visible here: {found.names}")
    with pytest.raises(ConveyorError) as raised:
        training_device(with_cuda, 1)
    assert raised.value.args[0].endswith(f"but none is visible: {found.why_none}")
    assert training_device(with_cuda, 1, lambda: VisibleGpus(("NVIDIA L4",))) == (
        "cuda",
        "NVIDIA L4",
    )


def test_train_model_refuses_a_gpu_it_cannot_use_before_any_work(
    tmp_path: Path, species: pd.DataFrame, mlflow_server: str, model_name: str
) -> None:
    species.to_parquet(tmp_path / "train")
    with pytest.raises(ConveyorError, match="estimator 'lightgbm' trains on the CPU only"):
        train_model(
            tmp_path / "train", "species", "lightgbm", {}, 0, tmp_path / "model",
            mlflow_server, model_name, {}, gpus=1,
        )  # fmt: skip
    assert not (tmp_path / "model").exists()
    assert MlflowClient(mlflow_server).get_experiment_by_name(model_name) is None


def test_train_model_records_the_device_it_trained_on(
    tmp_path: Path, species: pd.DataFrame, mlflow_server: str, model_name: str
) -> None:
    species.to_parquet(tmp_path / "train")
    result = train_model(
        tmp_path / "train", "species", "xgboost", {"n_estimators": 10}, 0, tmp_path / "model",
        mlflow_server, model_name, {},
    )  # fmt: skip
    assert (result.device, result.gpu) == ("cpu", "")
    run = MlflowClient(mlflow_server).get_run(result.run_id)
    assert run.data.params["device"] == "cpu" and "gpu" not in run.data.tags
    assert run.data.params["n_estimators"] == "10"


def test_the_predictor_serves_both_boosters_over_v1_and_v2(
    tmp_path: Path, species: pd.DataFrame
) -> None:
    models = {}
    for estimator in BOOSTERS:
        model = fit_model(species, "species", estimator, {"n_estimators": 30}, 0)
        save_model_dir(model, tmp_path / estimator)
        models[f"{estimator}-00001"] = tmp_path / estimator
    rows = species.drop(columns="species").sample(8, random_state=1)
    instances = [
        {name: (None if pd.isna(value) else value) for name, value in row.items()}
        for row in rows.to_dict("records")
    ]
    inputs = [
        {"name": "size", "shape": [8], "datatype": "FP64", "data": rows["size"].tolist()},
        {"name": "weight", "shape": [8], "datatype": "FP64", "data": rows["weight"].tolist()},
        {"name": "color", "shape": [8], "datatype": "BYTES", "data": rows["color"].tolist()},
    ]
    with predictors(models, "species", tmp_path) as urls:
        for revision, url in urls.items():
            local = load_model_dir(models[revision]).pipeline
            v1 = httpx.post(f"{url}/v1/models/species:predict", json={"instances": instances})
            v2 = httpx.post(f"{url}/v2/models/species/infer", json={"inputs": inputs})
            assert v1.status_code == 200 and v2.status_code == 200, (v1.text, v2.text)
            assert v1.json()["predictions"] == local.predict(rows).tolist()
            outputs = {output["name"]: output for output in v2.json()["outputs"]}
            answered = np.array(outputs["probabilities"]["data"]).reshape(8, -1)
            assert answered == pytest.approx(local.predict_proba(rows))
