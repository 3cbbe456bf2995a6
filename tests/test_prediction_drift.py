"""Prediction drift: a real fitted model scores its evaluation split (the reference) and
seeded draws of logged inputs; a segment whose inputs moved moves the model's scores."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conveyor.components.core.errors import ConveyorError
from conveyor.components.core.monitoring.drift import DriftSettings
from conveyor.components.core.monitoring.prediction_drift import (
    PredictionDrift,
    compare_predictions,
)
from conveyor.components.core.serving.payload_log import PREDICTION as PREDICTION_COLUMN
from conveyor.components.core.serving.payload_log import SCORE as SCORE_COLUMN
from conveyor.components.core.training.importance import evaluation_scores
from conveyor.components.core.training.trainer import TrainedModel, fit_model

SEGMENTS = ("student", "retired", "employed", "self-employed")


def customers(rows_per_segment: int, seed: int, shifted: str = "") -> pd.DataFrame:
    """Credit customers: default grows with balance; ``shifted``'s balances are 1.6 times."""
    rng = np.random.default_rng(seed)
    segment = np.repeat(SEGMENTS, rows_per_segment)
    balance = rng.gamma(4, 250, len(segment)) * np.where(segment == shifted, 1.6, 1.0)
    income = rng.normal(40, 10, len(segment))
    chance = 1 / (1 + np.exp(-(balance / 1000 * 3 - 4.5 + (segment == "student") * 0.5)))
    default = np.where(rng.random(len(segment)) < chance, "Yes", "No")
    return pd.DataFrame(
        {"balance": balance, "income": income, "segment": segment, "default": default}
    )


@pytest.fixture(scope="module")
def model() -> TrainedModel:
    return fit_model(customers(1000, 1), "default", "logistic_regression", {}, seed=0)


def scored(model: TrainedModel, table: pd.DataFrame) -> pd.DataFrame:
    """The table as the payload log holds it: inputs, predicted class and score."""
    features = [feature.name for feature in model.card.features]
    return evaluation_scores(model.pipeline, table, "default", features)


@pytest.fixture(scope="module")
def reference(model: TrainedModel) -> pd.DataFrame:
    return scored(model, customers(800, 2))  # what train records of its evaluation split


def test_scores_that_moved_in_one_segment_are_reported_with_that_segment(
    model: TrainedModel, reference: pd.DataFrame
) -> None:
    """Seeded: 30 draws of 800 logged rows per segment, students' balances 1.6 times.
    Observed: every draw drifts in student (PSI of the students' scores 0.83 to 1.06 against
    a threshold of 0.1), while the overall score's PSI stays near the threshold (at most
    0.10): the segment comparison is what catches it surely."""
    caught = 0
    for seed in range(100, 130):
        logged = scored(model, customers(800, seed, shifted="student"))
        result = compare_predictions(reference, logged, DriftSettings(), segment="segment")
        caught += result.drifted and "student" in result.drifted_segments
    assert caught == 30
    assert result.measured and set(result.drifted_segments) <= {"student", "all"}
    assert result.reason.startswith("Prediction drift: score in student (psi ")
    assert result.scores()["student"]["score_psi"] > 0.5
    assert set(result.scores()) == {"all", *SEGMENTS}
    assert "| score | student | psi |" in result.markdown()
    assert "**drift**" in result.markdown()


def test_scores_of_same_distribution_inputs_are_not_drift(
    model: TrainedModel, reference: pd.DataFrame
) -> None:
    """Seeded: 30 same-distribution draws (800 rows per segment). Observed: no false alarm
    (the largest PSI of any segment's scores is 0.074 at worst, median 0.047; threshold
    0.1); the test allows one in 30."""
    alarms = 0
    for seed in range(200, 230):
        logged = scored(model, customers(800, seed))
        result = compare_predictions(reference, logged, DriftSettings(), segment="segment")
        alarms += result.drifted
    assert alarms <= 1
    assert result.measured and len(result.results) == 2 * (1 + len(SEGMENTS))
    assert result.reason.startswith("No prediction drift")


def test_a_log_written_before_scores_were_logged_cannot_be_measured(
    model: TrainedModel, reference: pd.DataFrame
) -> None:
    old = customers(300, 3).drop(columns="default")  # inputs only: the log's old format
    result = compare_predictions(reference, old, DriftSettings(), segment="segment")
    assert result == PredictionDrift(False, False, result.reason, (), result.skipped)
    assert result.reason.startswith("Prediction drift could not be measured: the log holds no")
    assert "could not be measured" in result.markdown()
    nulls = old.assign(**{SCORE_COLUMN: np.nan, PREDICTION_COLUMN: None})  # read_log's nulls
    assert not compare_predictions(reference, nulls, DriftSettings()).measured


def test_a_champion_without_recorded_scores_cannot_be_measured(model: TrainedModel) -> None:
    logged = scored(model, customers(300, 4))
    result = compare_predictions(None, logged, DriftSettings(), segment="segment")
    assert not result.measured and not result.drifted
    assert "recorded no scores on its evaluation split" in result.reason


def test_rows_logged_before_scores_are_left_out_and_counted(
    model: TrainedModel, reference: pd.DataFrame
) -> None:
    new = scored(model, customers(300, 5))
    old = customers(100, 6).drop(columns="default")  # an older day, without the columns
    logged = pd.concat([old, new], ignore_index=True)
    result = compare_predictions(reference, logged, DriftSettings())
    assert result.measured and not result.drifted
    assert "score: 400 logged rows have none" in result.skipped
    overall = [r for r in result.results if r.output == "score"]
    assert [(r.segment, r.current_rows) for r in overall] == [("all", 1200)]


def test_a_model_without_probabilities_is_judged_on_its_classes(
    model: TrainedModel, reference: pd.DataFrame
) -> None:
    logged = scored(model, customers(300, 7)).assign(**{SCORE_COLUMN: np.nan})
    result = compare_predictions(reference, logged, DriftSettings())
    assert [r.output for r in result.results] == ["class"]
    assert "score: the log holds none (written before it was logged)" in result.skipped


def test_a_segment_column_missing_from_either_side_is_one_line(
    model: TrainedModel, reference: pd.DataFrame
) -> None:
    logged = scored(model, customers(300, 8))
    with pytest.raises(ConveyorError, match="segment column 'region' is not in the reference"):
        compare_predictions(reference, logged, DriftSettings(), segment="region")
    with pytest.raises(ConveyorError, match="'segment' is not in the log;"):
        compare_predictions(
            reference, logged.drop(columns="segment"), DriftSettings(), segment="segment"
        )
    with pytest.raises(ConveyorError, match="'conveyor.score': expected numbers"):
        compare_predictions(reference, logged.assign(**{SCORE_COLUMN: "high"}), DriftSettings())
