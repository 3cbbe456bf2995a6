"""Regression: the task rule, the regressors, their metrics and blessing, the residual page,
tuning by plain folds, and a whole run through kfp.local to a served model answering numbers."""

from __future__ import annotations

import decimal
import json
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conveyor.components.core.data.tables import Source, check_target, load_table, split_table
from conveyor.components.core.data.task import MAX_NUMERIC_CLASSES, decide_task
from conveyor.components.core.errors import ConveyorError
from conveyor.components.core.monitoring.drift import DriftSettings
from conveyor.components.core.monitoring.prediction_drift import compare_predictions
from conveyor.components.core.serving.inference import predict_table
from conveyor.components.core.serving.payload_log import PREDICTION, SCORE
from conveyor.components.core.training.evaluation import (
    Policy,
    decide,
    regression_sample_warnings,
    unapplied_floor_warnings,
)
from conveyor.components.core.training.importance import evaluation_scores
from conveyor.components.core.training.metrics import score, score_predictions
from conveyor.components.core.training.residuals import MAX_POINTS, residuals_html
from conveyor.components.core.training.thresholds import ThresholdPolicy
from conveyor.components.core.training.trainer import (
    fit_model,
    load_model_dir,
    read_model_card,
    save_model_dir,
)
from conveyor.components.core.training.tuning import cross_validate, plan_trials
from tests.conftest import predictor
from tests.test_local_run import conveyor_run

REGRESSORS = ("ridge", "random_forest", "hist_gradient_boosting", "xgboost", "lightgbm")


def flats_table(rows: int, seed: int) -> pd.DataFrame:
    """A messy listing export: an id, dates as text, a category, free text with gaps, a
    numeric column with gaps, and a price made of them with noise."""
    rng = np.random.default_rng(seed)
    table = pd.DataFrame(
        {
            "listing_id": [f"L{index:06d}" for index in range(rows)],
            "listed_on": pd.date_range("2023-01-01", periods=rows, freq="13h").strftime("%Y-%m-%d"),
            "rooms": rng.integers(1, 6, rows).astype(float),
            "area_m2": rng.normal(80, 25, rows).round(1),
            "district": rng.choice(["north", "south", "east", "west"], rows),
            "notes": rng.choice(
                ["sunny balcony and lift", "needs renovation", "quiet street", None], rows
            ),
        }
    )
    table.loc[rng.choice(rows, rows // 20, replace=False), "area_m2"] = np.nan
    uplift = table["district"].map({"north": 5000, "south": 0, "east": 2000, "west": 1000})
    area = table["area_m2"].fillna(80)
    noise = rng.normal(0, 800, rows)
    table["price"] = (1500 * table["rooms"] + 30 * area + uplift + noise).round(2)
    return table


# --- the task rule --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "task", "rule"),
    [
        ([0.5, 1.25, 2.0, 3.0] * 3, "regression", "numbers that are not whole (e.g. 0.5)"),
        (list(range(MAX_NUMERIC_CLASSES + 1)), "regression", "51 distinct whole numbers"),
        (list(range(MAX_NUMERIC_CLASSES)), "classification", "50 distinct whole numbers"),
        ([1.0, 2.0, 3.0] * 4, "classification", "3 distinct whole numbers"),
        (["a", "b"] * 30, "classification", "holds text"),
        ([True, False] * 30, "classification", "holds booleans"),
    ],
)
def test_auto_decides_from_the_target_and_says_why(labels: list, task: str, rule: str) -> None:
    choice = decide_task(pd.Series(labels), "auto", "y")
    assert (choice.task, rule in choice.rule) == (task, True), choice.rule


def test_a_task_requested_overrides_the_rule() -> None:
    ratings = pd.Series([1, 2, 3, 4, 5] * 4)
    assert decide_task(ratings, "regression", "y").task == "regression"
    codes = pd.Series(range(80))
    assert decide_task(codes, "classification", "y").task == "classification"


@pytest.mark.parametrize(
    ("labels", "task", "message"),
    [
        (["a", "b"] * 5, "regression", "target column 'y' holds text (e.g. 'a'); task=regression"),
        ([0.5, 1.5] * 5, "classification", "holds numbers that are not whole (e.g. 0.5)"),
        ([1.0, 2.0] * 5, "regresion", "task 'regresion' is not one of auto, classification"),
        ([1.5, np.inf, 2.5] * 4, "auto", "holds inf in 4 rows (first at row 2)"),
        ([2.5] * 10, "regression", "holds one value (2.5) in every row"),
    ],
)
def test_a_target_the_task_cannot_take_is_refused_in_one_line(
    labels: list, task: str, message: str
) -> None:
    table = pd.DataFrame({"x": range(len(labels)), "y": labels})
    with pytest.raises(ConveyorError, match=r"^t\.csv: ") as raised:
        check_target(table, "y", "t.csv", task)
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_a_regression_split_is_plain_and_keeps_two_rows_each_side() -> None:
    table = flats_table(200, seed=1)
    train, test = split_table(table, "price", 0.25, 0, "t", "regression")
    assert (len(train), len(test)) == (150, 50)
    assert set(train["listing_id"]).isdisjoint(test["listing_id"])
    with pytest.raises(ConveyorError, match="leave fewer than 2 rows on one side"):
        split_table(table.head(3), "price", 0.25, 0, "t", "regression")


# --- the regressors ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def flats_splits() -> tuple[pd.DataFrame, pd.DataFrame]:
    return split_table(flats_table(900, seed=5), "price", 0.25, 0, "flats", "regression")


@pytest.mark.parametrize("estimator", REGRESSORS)
def test_each_regressor_learns_the_messy_table_and_loads_back_the_same(
    estimator: str, flats_splits: tuple[pd.DataFrame, pd.DataFrame], tmp_path: Path
) -> None:
    train, test = flats_splits
    model = fit_model(train, "price", estimator, {}, 0, task="regression")
    measured = score(model.pipeline, test, "price").metrics
    assert measured["r2"] > 0.8, measured  # the noise alone leaves about 0.9
    card = save_model_dir(model, tmp_path)
    saved = json.loads((tmp_path / "model.json").read_text())
    assert (saved["task"], saved["classes"], saved["format_version"]) == ("regression", [], 6)
    assert "listing_id" in card.id_columns and "price" not in [f.name for f in card.features]
    loaded = load_model_dir(tmp_path)
    inputs = test.drop(columns="price")
    # Equal up to the order a forest's threads add up its trees.
    assert np.allclose(loaded.pipeline.predict(inputs), model.pipeline.predict(inputs), rtol=1e-12)


def test_the_default_estimator_of_regression_is_ridge_and_a_classifier_only_one_is_refused(
    flats_splits: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    train, _ = flats_splits
    assert fit_model(train, "price", "", {}, 0, task="regression").card.estimator == "ridge"
    with pytest.raises(ConveyorError, match="'logistic_regression' does not train regression"):
        fit_model(train, "price", "logistic_regression", {}, 0, task="regression")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"positive_class": "x"}, "positive_class 'x': a regression model has no classes"),
        ({"calibration": "sigmoid"}, "no probabilities to calibrate"),
    ],
)
def test_what_only_a_classifier_takes_is_refused_for_regression(
    flats_splits: tuple[pd.DataFrame, pd.DataFrame], options: dict, message: str
) -> None:
    train, _ = flats_splits
    with pytest.raises(ConveyorError, match=message):
        fit_model(train, "price", "ridge", {}, 0, task="regression", **options)


def test_a_regression_card_holds_no_classes(tmp_path: Path) -> None:
    train, _ = split_table(flats_table(200, seed=2), "price", 0.25, 0, "t", "regression")
    save_model_dir(fit_model(train, "price", "ridge", {}, 0, task="regression"), tmp_path)
    card = json.loads((tmp_path / "model.json").read_text())
    (tmp_path / "model.json").write_text(json.dumps({**card, "classes": [1, 2]}))
    with pytest.raises(ConveyorError, match="key 'classes' holds .* a regression model"):
        read_model_card(tmp_path)
    (tmp_path / "model.json").write_text(json.dumps({**card, "format_version": 5}))
    with pytest.raises(ConveyorError, match="unknown key 'task' in a format-5 model card"):
        read_model_card(tmp_path)


# --- metrics and blessing ----------------------------------------------------------------


def test_regression_metrics_are_the_errors_and_mape_only_without_a_zero() -> None:
    rng = np.random.default_rng(3)
    truth = rng.uniform(10, 20, 200)
    predicted = truth + rng.normal(0, 1, 200)
    errors = truth - predicted
    measured = score_predictions(truth, predicted).metrics
    assert measured["rmse"] == pytest.approx(np.sqrt(np.mean(errors**2)))
    assert measured["mae"] == pytest.approx(np.mean(np.abs(errors)))
    assert measured["r2"] == pytest.approx(
        1 - np.sum(errors**2) / np.sum((truth - truth.mean()) ** 2)
    )
    assert measured["mape"] == pytest.approx(np.mean(np.abs(errors) / truth))
    truth[7] = 0.0
    assert "mape" not in score_predictions(truth, predicted).metrics


def test_a_regression_policy_defaults_to_rmse_and_sets_the_classifiers_floors_aside() -> None:
    policy = Policy(floors={"accuracy": 0.7, "r2": 0.5}).for_task("regression")
    assert (policy.metric, policy.sign(), policy.floors) == ("rmse", -1, {"r2": 0.5})
    assert policy.unapplied_floors == ("accuracy 0.7",)
    assert Policy().for_task("classification").metric == "roc_auc"
    with pytest.raises(ConveyorError, match="'accuracy' is not one of a regression model's"):
        Policy(metric="accuracy").for_task("regression")


def test_a_lower_rmse_wins_and_a_failed_r2_floor_is_not_blessed() -> None:
    from conveyor.components.core.training.evaluation import ChampionScore

    policy = Policy(floors={"r2": 0.5}).for_task("regression")
    champion = ChampionScore("3", 10.0, scored_on_current_data=True)
    better = decide({"rmse": 9.0, "r2": 0.8}, policy, champion)
    worse = decide({"rmse": 11.0, "r2": 0.8}, policy, champion)
    failing = decide({"rmse": 9.0, "r2": 0.3}, policy, champion)
    assert (better.blessed, worse.blessed, failing.blessed) == (True, False, False)
    assert "r2 0.3000 is below the floor 0.5" in failing.reason


def test_the_small_sample_interval_of_rmse_covers_the_truth_as_stated() -> None:
    """Seeded simulation: errors of sd 2 (true RMSE 2) on 30 rows; the stated 95 %
    bootstrap interval covers it in about 90 % of samples (a percentile bootstrap is short
    on so few rows; the warning says the interval is rough)."""
    rng = np.random.default_rng(11)
    covered = 0
    for sample in range(300):
        truth = rng.normal(0, 5, 30)
        predicted = truth + rng.normal(0, 2, 30)
        (warning,) = regression_sample_warnings(truth, predicted, seed=sample)
        low, high = (float(v) for v in warning.split("within [")[1].split("]")[0].split(", "))
        covered += low <= 2.0 <= high
    assert 0.85 <= covered / 300 <= 0.99, covered
    assert regression_sample_warnings(np.zeros(60), np.ones(60)) == ()


def test_the_residual_page_plots_every_row_up_to_its_sample_and_states_the_bias() -> None:
    rng = np.random.default_rng(4)
    truth = rng.normal(100, 10, 300)
    predicted = truth - 5 + rng.normal(0, 1, 300)  # predicts 5 too low on average
    page = residuals_html(truth, predicted, "price <eur>")
    assert page.count("<circle") == 2 * 300  # two scatter plots
    assert f"Mean residual (true minus predicted) {np.mean(truth - predicted):.4g}" in page
    assert "price &lt;eur&gt;" in page and "<eur>" not in page
    many = rng.normal(0, 1, MAX_POINTS + 500)
    big = residuals_html(many, many * 0.9, "y")
    assert big.count("<circle") == 2 * MAX_POINTS and f"of {MAX_POINTS + 500} rows" in big


# --- prediction drift -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def flats_model(flats_splits: tuple[pd.DataFrame, pd.DataFrame]):
    return fit_model(flats_splits[0], "price", "ridge", {}, 0, task="regression")


def predicted(model, table: pd.DataFrame) -> pd.DataFrame:
    """The table as the payload log holds it: inputs and the predicted value."""
    features = [feature.name for feature in model.card.features]
    return evaluation_scores(model.pipeline, table, "price", features)


def test_predicted_values_that_moved_in_one_district_are_prediction_drift(flats_model) -> None:
    """Seeded: 20 draws of 1,600 logged rows, north's flats 40 % larger, against 20 draws
    from the training distribution. Observed: the shift is caught in north in every draw,
    and no draw of the same distribution drifts anywhere."""
    reference = predicted(flats_model, flats_table(1600, seed=40))
    caught = alarms = 0
    for seed in range(41, 61):
        same = flats_table(1600, seed)
        moved = same.assign(area_m2=same["area_m2"] * np.where(same["district"] == "north", 1.4, 1))
        settings = DriftSettings()
        alarms += compare_predictions(reference, predicted(flats_model, same), settings,
                                      "district").drifted  # fmt: skip
        result = compare_predictions(reference, predicted(flats_model, moved), settings, "district")
        caught += "north" in result.drifted_segments
    assert (caught, alarms) == (20, 0)
    assert {r.output for r in result.results} == {"value"}
    assert "value in north" in result.reason


def test_a_classifiers_log_against_a_regressors_reference_is_one_line(flats_model) -> None:
    reference = predicted(flats_model, flats_table(200, seed=3))
    classifier_log = pd.DataFrame({SCORE: [0.2, 0.9], PREDICTION: ["a", "b"]})
    with pytest.raises(ConveyorError, match="the log is a classifier's and the champion's"):
        compare_predictions(reference, classifier_log, DriftSettings())


# --- tuning ---------------------------------------------------------------------------


def test_regression_trials_are_planned_for_the_regressor_and_scored_on_plain_folds(
    flats_splits: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    train, _ = flats_splits
    planned = plan_trials("", {}, {"alpha": [0.1, 10.0]}, "grid", 4, 0, task="regression")
    assert [trial["hyperparameters"]["alpha"] for trial in planned] == [0.1, 10.0]
    with pytest.raises(ConveyorError, match="not one of a regression model's"):
        plan_trials("", {}, {"alpha": [1.0]}, "grid", 4, 0, ("roc_auc", "auto", 3), "regression")

    def fit(rows: pd.DataFrame, params: dict):
        return fit_model(rows, "price", "ridge", params, 0, task="regression")

    folds = cross_validate(train, "price", {"alpha": 1.0}, "", 3, 0, fit, "regression")
    whole = score(fit(train, {"alpha": 1.0}).pipeline, train, "price").metrics["rmse"]
    assert len(folds) == 3 and all(value > whole * 0.8 for value in folds)


# --- a whole run through kfp.local --------------------------------------------------------


@pytest.mark.slow
def test_a_regression_run_registers_a_model_the_predictor_serves_as_numbers(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    table = flats_table(600, seed=21)
    table.to_csv(tmp_path / "flats.csv", index=False)
    code, summary, printed = conveyor_run(
        capsys, tmp_path / "runs", "--data", str(tmp_path / "flats.csv"), "--label", "price",
        "--estimator", "lightgbm", "--param", "search_space={num_leaves: [7, 15]}",
        "--param", "max_trials=2",
    )  # fmt: skip
    assert code == 0 and summary["blessed"], printed
    first_fraction = table["price"][table["price"] % 1 != 0].iloc[0]
    assert summary["task"] == {
        "task": "regression",
        "rule": f"'price' holds numbers that are not whole (e.g. {first_fraction:g})",
    }
    assert set(summary["metrics"]) == {"rmse", "mae", "r2", "mape"}
    assert f"Task: regression ({summary['task']['rule']})" in printed
    evaluate = Path(summary["artifacts"]) / "evaluate"
    residuals = (evaluate / "residuals").read_text()
    assert residuals.count("<circle") == 2 * 120  # the 120 evaluation rows, in both plots
    model_dir = Path(summary["storage_uri"])
    assert read_model_card(model_dir).task == "regression"
    rows = table.drop(columns="price").head(4)
    expected = load_model_dir(model_dir).pipeline.predict(rows)
    instances = json.loads(rows.to_json(orient="records"))
    with predictor(model_dir, "flats", "flats-00001", tmp_path / "predictor.log") as url:
        v1 = httpx.post(f"{url}/v1/models/flats:predict", json={"instances": instances})
        inputs = [
            {"name": name, "datatype": "FP64" if rows[name].dtype.kind == "f" else "BYTES",
             "shape": [len(rows)], "data": json.loads(rows[name].to_json(orient="values"))}
            for name in rows.columns
        ]  # fmt: skip
        v2 = httpx.post(f"{url}/v2/models/flats/infer", json={"inputs": inputs})
    assert v1.status_code == 200 and set(v1.json()) == {"predictions"}, v1.text
    assert np.allclose(v1.json()["predictions"], expected)
    (output,) = v2.json()["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("predictions", "FP64", [4])
    assert np.allclose(output["data"], expected)


@pytest.mark.slow
def test_a_threshold_policy_for_a_regression_model_fails_evaluate_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    flats_table(200, seed=3).to_csv(tmp_path / "flats.csv", index=False)
    policy = ThresholdPolicy.from_dict({"min_precision": 0.9}).to_dict()
    code, summary, printed = conveyor_run(
        capsys, tmp_path / "runs", "--data", str(tmp_path / "flats.csv"), "--label", "price",
        "--param", f"threshold_policy={json.dumps(policy)}",
    )  # fmt: skip
    assert code == 1 and summary["failed_step"] == "evaluate", printed
    assert (
        summary["reason"]
        .splitlines()[0]
        .startswith(
            "evaluate: threshold_policy {'min_precision': 0.9} needs a binary model; this is a "
            "regression model"
        )
    )
    assert summary["model_version"] is None and summary["steps"]["register"] == "skipped"


@pytest.mark.slow
def test_an_unknown_task_fails_ingest_in_one_line_and_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    flats_table(100, seed=4).to_csv(tmp_path / "flats.csv", index=False)
    code, summary, printed = conveyor_run(
        capsys, tmp_path / "runs", "--data", str(tmp_path / "flats.csv"), "--label", "price",
        "--param", "task=regresion",
    )  # fmt: skip
    assert code == 1 and summary["failed_step"] == "ingest", printed
    assert summary["reason"] == (
        "ingest: task 'regresion' is not one of auto, classification, regression"
    )
    assert summary["model_version"] is None and summary["task"] is None
    assert not list((tmp_path / "runs").rglob("train/model"))


# --- what a hostile review found -------------------------------------------------------------


def test_floors_of_the_other_task_alone_bound_nothing_and_say_so() -> None:
    policy = Policy(floors={"accuracy": 0.9, "roc_auc": 0.8}).for_task("regression")
    (warning,) = unapplied_floor_warnings(policy)
    assert warning.startswith("none of metric_floors applies to this model (accuracy 0.9")
    decision = decide({"rmse": 1e6, "mae": 1e5, "r2": -3.0}, policy, None)
    assert decision.reason.endswith("no floor set") and "all floors met" not in decision.reason
    assert unapplied_floor_warnings(Policy(floors={"r2": 0.0}).for_task("regression")) == ()


def test_a_prediction_that_is_not_a_finite_number_is_refused_not_scored_or_served(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConveyorError, match=r"predicted 1 values that are not finite .*row 2"):
        score_predictions(np.array([1.0, 2.0, 3.0]), np.array([1.0, np.inf, 3.0]))
    table = pd.DataFrame({"x": [1.0, 2.0, 3.0], "y": [1.0, 2.0, 4.0]})
    model = fit_model(table, "y", "ridge", {}, 0, task="regression")
    model.pipeline.steps[-1][1].intercept_ = np.nan  # a broken model answers NaN
    with pytest.raises(ConveyorError, match="predicted nan for row 1, not a finite number"):
        predict_table(model, table[["x"]])


def test_a_card_whose_task_is_not_its_models_is_refused_before_serving(tmp_path: Path) -> None:
    """A format-5 card (no task: classification) rewritten beside a regressor's pickle."""
    train, _ = split_table(flats_table(200, seed=6), "price", 0.25, 0, "t", "regression")
    save_model_dir(fit_model(train, "price", "ridge", {}, 0, task="regression"), tmp_path)
    card = json.loads((tmp_path / "model.json").read_text())
    older = {key: value for key, value in card.items() if key != "task"}
    (tmp_path / "model.json").write_text(json.dumps({**older, "format_version": 5}))
    with pytest.raises(ConveyorError, match="task 'classification', but the model is a regressor"):
        load_model_dir(tmp_path)


def test_decimal_prices_from_parquet_are_numbers(tmp_path: Path) -> None:
    prices = [decimal.Decimal(f"{index}.25") for index in range(60)]
    table = pa.table({"x": [float(i % 7) for i in range(60)], "price": pa.array(prices, pa.decimal128(10, 2))})  # fmt: skip
    pq.write_table(table, tmp_path / "prices.parquet")
    loaded = load_table(Source(str(tmp_path / "prices.parquet")))
    assert loaded["price"].dtype == np.float64
    assert check_target(loaded, "price", "prices.parquet").task == "regression"


@pytest.mark.slow
def test_a_model_name_cannot_change_task_under_its_champion(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    table = flats_table(300, seed=8).assign(rating=lambda t: (t["rooms"]).astype(int))
    table.drop(columns="price").to_csv(tmp_path / "ratings.csv", index=False)
    common = ("--data", str(tmp_path / "ratings.csv"), "--label", "rating", "--model", "m")
    code, first, printed = conveyor_run(
        capsys, tmp_path / "runs", *common, "--param", "metric_floors={}"
    )
    assert code == 0 and first["task"]["task"] == "classification", printed
    code, second, printed = conveyor_run(capsys, tmp_path / "runs", *common, "--task", "regression")
    assert code == 1 and second["failed_step"] == "evaluate", printed
    assert second["reason"].splitlines()[0] == (
        "evaluate: champion v1 of 'm' is a classification model and this one a regression "
        "model: its clients get classes, not numbers; register it under another model_name, "
        "or set task=classification"
    )
    assert second["model_version"] is None
