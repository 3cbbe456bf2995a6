"""Calibration: the reliability diagram's error rates on seeded simulations, calibration at
training improving a miscalibrated model on held-out rows, and evaluate's HTML."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conveyor.components.core.data.tables import split_table
from conveyor.components.core.errors import ConveyorError
from conveyor.components.core.training.calibration import reliability
from conveyor.components.core.training.evaluation import Policy, evaluate_model
from conveyor.components.core.training.trainer import ModelCard, fit_model, load_model_dir
from tests.conftest import train_species_model


def test_a_calibrated_model_s_bins_hold_the_diagonal_95_percent_of_the_time() -> None:
    """Outcomes drawn at exactly the predicted probability: the diagonal falls outside
    about 5 % of the bins' 95 % intervals, and the calibration error stays near its
    stated noise floor."""
    outside = bins = 0
    errors, floors = [], []
    for seed in range(200):
        rng = np.random.default_rng(seed)
        probability = rng.uniform(size=2000)
        happened = rng.uniform(size=2000) < probability
        result = reliability(happened, probability, "class 'yes'")
        for rows, predicted, low, high in zip(
            result.rows, result.predicted, result.lower, result.upper, strict=True
        ):
            if rows:
                bins += 1
                outside += not low <= predicted <= high
        errors.append(result.expected_calibration_error)
        floors.append(result.noise_floor)
    assert 0.02 < outside / bins < 0.08, outside / bins
    assert np.mean(errors) == pytest.approx(np.mean(floors), rel=0.25)


def test_an_overconfident_model_is_told_apart_from_its_noise_floor() -> None:
    rng = np.random.default_rng(1)
    truth = rng.uniform(size=2000)
    happened = rng.uniform(size=2000) < truth
    overconfident = np.clip(0.5 + 1.8 * (truth - 0.5), 0, 1)
    result = reliability(happened, overconfident, "class 'yes'")
    assert result.expected_calibration_error > 4 * result.noise_floor
    # Too sure at the ends: more happens than it says in the lowest bin, less in the highest.
    assert result.lower[0] > result.predicted[0] and result.upper[-1] < result.predicted[-1]


def test_calibration_at_training_repairs_an_overconfident_model_on_new_rows() -> None:
    """Gradient boosting run far past its fit is overconfident on a noisy target; sigmoid
    and isotonic calibration bring its calibration error on held-out rows near the noise
    floor, and lower its Brier score."""
    rng = np.random.default_rng(5)
    rows = 6000
    x = rng.normal(size=(rows, 4))
    chance = 1 / (1 + np.exp(-(2 * x[:, 0] - x[:, 1] + 0.5 * x[:, 2])))
    happened = (rng.uniform(size=rows) < chance).astype(int)
    table = pd.DataFrame(x, columns=list("abcd")).assign(label=happened)
    train, test = split_table(table, "label", 0.5, 0, "t")
    overfit = {"max_iter": 300, "learning_rate": 0.5}
    results = {}
    for method in ("", "sigmoid", "isotonic"):
        model = fit_model(train, "label", "hist_gradient_boosting", overfit, 0, calibration=method)
        assert model.card.calibration == (method or None)
        probability = model.pipeline.predict_proba(test[list("abcd")])[:, 1]
        results[method] = reliability(test["label"].to_numpy() == 1, probability, "class '1'")
    assert results[""].expected_calibration_error > 5 * results[""].noise_floor
    for method in ("sigmoid", "isotonic"):
        calibrated = results[method]
        assert calibrated.brier_score < results[""].brier_score - 0.02
        assert calibrated.expected_calibration_error < 2 * calibrated.noise_floor


@pytest.mark.parametrize(
    ("calibration", "message"),
    [
        ("platt", "calibration 'platt': expected sigmoid or isotonic, or empty for none"),
        ("Isotonic", "calibration 'Isotonic': expected sigmoid or isotonic"),
    ],
)
def test_an_unknown_calibration_is_one_line(calibration: str, message: str) -> None:
    table = pd.DataFrame({"a": np.arange(40.0), "label": [0, 1] * 20})
    with pytest.raises(ConveyorError, match=message):
        fit_model(table, "label", "logistic_regression", {}, 0, calibration=calibration)


def test_a_calibrated_card_is_format_4_and_refuses_an_unknown_method() -> None:
    table = pd.DataFrame({"a": np.arange(40.0), "label": [0, 1] * 20})
    card = fit_model(table, "label", "logistic_regression", {}, 0, calibration="sigmoid").card
    assert card.calibration == "sigmoid" and card.oldest_format() == 4
    saved = json.loads(card.to_json())
    for wrong in ("beta", ""):
        with pytest.raises(ConveyorError, match=f"key 'calibration' holds '{wrong}': expected"):
            ModelCard.from_json(json.dumps({**saved, "format_version": 4, "calibration": wrong}))


def test_too_few_rows_of_a_class_to_calibrate_says_so_before_fitting() -> None:
    table = pd.DataFrame({"a": np.arange(40.0), "label": [0] * 36 + [1] * 4})
    with pytest.raises(ConveyorError, match=r"^calibration 'isotonic' needs at least 5 training "
                       r"rows of each class \(5 folds\); class '1' has 4$"):  # fmt: skip
        fit_model(table, "label", "logistic_regression", {}, 0, calibration="isotonic")


def test_probabilities_that_are_not_numbers_are_refused() -> None:
    with pytest.raises(ConveyorError, match="^1 predicted probabilities of class 'yes' are not"):
        reliability(np.array([True, False]), np.array([0.2, np.nan]), "class 'yes'")


def test_calibration_undoing_class_weight_is_warned_about_unless_a_threshold_is_chosen() -> None:
    from conveyor.components.core.training.evaluation import calibration_warnings
    from conveyor.components.core.training.thresholds import ThresholdPolicy

    table = pd.DataFrame({"a": np.arange(60.0), "label": [0, 1, 0] * 20})
    weighted = fit_model(
        table, "label", "logistic_regression", {"class_weight": "balanced"}, 0,
        calibration="sigmoid",
    ).card  # fmt: skip
    (warning,) = calibration_warnings(weighted, None)
    assert warning.startswith("calibration (sigmoid) maps the probabilities back")
    assert calibration_warnings(weighted, ThresholdPolicy("min_recall", 0.8)) == ()
    plain = fit_model(table, "label", "logistic_regression", {}, 0, calibration="sigmoid")
    assert calibration_warnings(plain.card, None) == ()


def test_evaluate_writes_the_reliability_diagram_and_its_figures(
    tmp_path: Path, mlflow_server: str, model_name: str
) -> None:
    rng = np.random.default_rng(2)
    table = pd.DataFrame({"x": rng.normal(size=800), "y": rng.normal(size=800)})
    table["species"] = np.where(table["x"] + rng.normal(size=800) > 0.8, "fraud", "ok")
    train, test = split_table(table, "species", 0.5, 0, "t")
    test.to_parquet(tmp_path / "test")
    trained = train_species_model(tmp_path, mlflow_server, model_name, train, "v1")
    result = evaluate_model(
        tmp_path / "v1" / "model", tmp_path / "test", "species", model_name, mlflow_server,
        trained.run_id, Policy(floors={}), "", tmp_path / "v1" / "evaluation.json",
        tmp_path / "v1" / "report.md", tmp_path / "v1" / "reliability.html",
    )  # fmt: skip
    page = (tmp_path / "v1" / "reliability.html").read_text()
    assert "Probability of class &#x27;fraud&#x27;, not calibrated" in page and "<svg" in page
    verdict = json.loads((tmp_path / "v1" / "evaluation.json").read_text())
    assert sum(b["rows"] for b in verdict["reliability"]["bins"]) == len(test)
    assert verdict["reliability"]["brier_score"] == pytest.approx(result.reliability.brier_score)
    model = load_model_dir(tmp_path / "v1" / "model")
    fraud = list(model.pipeline.classes_).index("fraud")
    scores = model.pipeline.predict_proba(test[["x", "y"]])[:, fraud]
    happened = (test["species"] == "fraud").to_numpy()
    assert result.reliability.brier_score == pytest.approx(np.mean((scores - happened) ** 2))
