"""Metrics of a fitted model on a labelled table: a classifier's and its curves, or a
regressor's errors."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm
from sklearn.base import is_regressor
from sklearn.pipeline import Pipeline

from conveyor.components.core.data.task import CLASSIFICATION, REGRESSION, check_task
from conveyor.components.core.errors import ConveyorError, plain

__all__ = [
    "DEFAULT_METRICS",
    "METRIC_DIRECTIONS",
    "REGRESSION_METRICS",
    "Curves",
    "Scores",
    "conventional_positive",
    "metric_task",
    "positive_label",
    "primary_metric",
    "score",
    "score_predictions",
    "score_probabilities",
]

# +1: higher is better; -1: lower is better.
METRIC_DIRECTIONS = {
    "accuracy": 1,
    "precision": 1,
    "recall": 1,
    "f1": 1,
    "roc_auc": 1,
    "log_loss": -1,
    "false_positive_rate": -1,  # binary targets only: a multi-class score has none
    # Regression: rmse and mae in the target's units; mape a fraction (0.1 is 10 %), only
    # where no true value is zero.
    "rmse": -1,
    "mae": -1,
    "r2": 1,
    "mape": -1,
}
REGRESSION_METRICS = ("rmse", "mae", "r2", "mape")
# The metric the champion is compared on when none is named, by task.
DEFAULT_METRICS = {CLASSIFICATION: "roc_auc", REGRESSION: "rmse"}
# Labels that name the positive class of a binary target, compared case-insensitively.
_POSITIVE_NAMES = {"1", "true", "yes", "y", "positive", "pos"}
_MAX_ROC_POINTS = 200


@dataclass(frozen=True)
class Curves:
    """What the KFP UI draws: a confusion matrix, and a ROC curve for binary targets."""

    labels: list[str]
    confusion: list[list[int]]
    roc: tuple[list[float], list[float], list[float]] | None


@dataclass(frozen=True)
class Scores:
    """Metrics and curves (none for a regressor); for a binary target, the class
    precision, recall and ROC are of."""

    metrics: dict[str, float]
    curves: Curves | None
    positive_class: Any = None


def metric_task(name: str) -> str:
    """The task whose models have metric ``name``."""
    return REGRESSION if name in REGRESSION_METRICS else CLASSIFICATION


def primary_metric(name: str, task: str) -> str:
    """``name``, or the task's default when empty; ConveyorError for a metric unknown or
    of the other task."""
    check_task(task, allow_auto=False)
    name = name or DEFAULT_METRICS[task]
    if name not in METRIC_DIRECTIONS:
        raise ConveyorError(f"unknown metric {name!r}; known: {', '.join(METRIC_DIRECTIONS)}")
    if metric_task(name) != task:
        known = [m for m in METRIC_DIRECTIONS if metric_task(m) == task]
        raise ConveyorError(f"metric {name!r} is not one of a {task} model's: {', '.join(known)}")
    return name


def score(
    model: Pipeline,
    table: pd.DataFrame,
    target: str,
    positive_class: str = "",
    pick: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Scores:
    """``score_probabilities`` of the model's probabilities for ``table``'s rows, its
    classes picked from them by ``pick`` (a card's ``predicted_indices``; None: argmax);
    ``score_predictions`` for a regressor."""
    if is_regressor(model):
        predicted = model.predict(table.drop(columns=[target]))
        return score_predictions(table[target].to_numpy(dtype=float), predicted)
    proba = model.predict_proba(table.drop(columns=[target]))
    picked = proba.argmax(axis=1) if pick is None else pick(proba)
    return score_probabilities(
        model.classes_, table[target].to_numpy(), proba, positive_class, picked
    )


def score_probabilities(
    classes: np.ndarray,
    truth: np.ndarray,
    proba: np.ndarray,
    positive_class: str = "",
    picked: np.ndarray | None = None,
) -> Scores:
    """Accuracy, precision, recall, F1, ROC-AUC and log loss, and the curves; for a binary
    target also the false-positive rate (FP / (FP + TN) of the positive class).

    Multi-class precision, recall, F1 and ROC-AUC are macro averages (one-vs-rest); a
    multi-class target has no false-positive rate. ``positive_class`` picks the binary
    positive class by name; empty chooses it (see ``positive_label``). ``picked`` is each
    row's predicted class as a column of ``proba`` (a model's at its decision threshold);
    None takes the most probable. The probability and ranking metrics do not depend on it.
    """
    shared: dict[str, Any] = {"zero_division": 0}
    positive = column = None
    picked = proba.argmax(axis=1) if picked is None else picked
    if len(classes) == 2:
        positive = positive_label(classes, truth, positive_class)
        column = list(classes).index(positive)
        is_positive, positive_proba = truth == positive, proba[:, column]
        shared |= {"average": "binary", "pos_label": positive}
        roc_auc = skm.roc_auc_score(is_positive, positive_proba)
        roc = _roc_curve(is_positive, positive_proba)
    else:
        shared |= {"average": "macro"}
        roc_auc = skm.roc_auc_score(
            truth, proba, multi_class="ovr", average="macro", labels=classes
        )
        roc = None
    predicted = classes[picked]
    metrics = {
        "accuracy": skm.accuracy_score(truth, predicted),
        "precision": skm.precision_score(truth, predicted, **shared),
        "recall": skm.recall_score(truth, predicted, **shared),
        "f1": skm.f1_score(truth, predicted, **shared),
        "roc_auc": roc_auc,
        "log_loss": skm.log_loss(truth, proba, labels=classes),
    }
    matrix = skm.confusion_matrix(truth, predicted, labels=classes)
    if column is not None:
        metrics["false_positive_rate"] = _false_positive_rate(matrix, column)
    curves = Curves([str(c) for c in classes], matrix.tolist(), roc)
    return Scores({k: float(v) for k, v in metrics.items()}, curves, plain(positive))


def score_predictions(truth: np.ndarray, predicted: np.ndarray) -> Scores:
    """A regressor's RMSE, MAE, R² and, where no true value is zero, MAPE (a fraction);
    ConveyorError when a prediction is not a finite number."""
    truth, predicted = np.asarray(truth, dtype=float), np.asarray(predicted, dtype=float)
    odd = np.flatnonzero(~np.isfinite(predicted))
    if odd.size:
        raise ConveyorError(
            f"the model predicted {odd.size} values that are not finite numbers (first at row "
            f"{odd[0] + 1}: {predicted[odd[0]]}); its errors cannot be measured"
        )
    metrics = {
        "rmse": skm.root_mean_squared_error(truth, predicted),
        "mae": skm.mean_absolute_error(truth, predicted),
        "r2": skm.r2_score(truth, predicted) if len(truth) > 1 else float("nan"),
    }
    if len(truth) and not (truth == 0).any():
        metrics["mape"] = skm.mean_absolute_percentage_error(truth, predicted)
    return Scores({k: float(v) for k, v in metrics.items()}, None)


def positive_label(classes: np.ndarray, truth: np.ndarray, requested: str = "") -> Any:
    """The positive class of a binary target.

    The one named ``requested``; else one called 1, true, yes or positive; else the
    rarer class in ``truth`` (what is usually looked for: fraud, churn, disease).
    """
    if requested:
        named = [c for c in classes if str(c) == requested]
        if not named:
            shown = ", ".join(repr(str(c)) for c in classes)
            raise ConveyorError(f"positive_class {requested!r} is not a class; classes: {shown}")
        return named[0]
    conventional = conventional_positive(classes)
    if conventional is not None:
        return conventional
    counts = [(truth == c).sum() for c in classes]
    return classes[1] if counts[0] == counts[1] else classes[int(np.argmin(counts))]


def conventional_positive(classes: Sequence[Any]) -> Any:
    """The one class called 1, true, yes, y, positive or pos (case-insensitive); None unless
    exactly one is."""
    conventional = [c for c in classes if str(c).lower() in _POSITIVE_NAMES]
    return conventional[0] if len(conventional) == 1 else None


def _false_positive_rate(matrix: np.ndarray, positive: int) -> float:
    """FP / (FP + TN) of a binary confusion matrix (rows: truth); 0 without negatives, as
    scikit-learn's zero_division=0."""
    negative = 1 - positive
    false, true = matrix[negative, positive], matrix[negative, negative]
    return float(false / (false + true)) if false + true else 0.0


def _roc_curve(is_positive: np.ndarray, proba: np.ndarray) -> tuple[list[float], ...]:
    fpr, tpr, thresholds = skm.roc_curve(is_positive, proba)
    # The first threshold is +inf (nothing predicted positive): not JSON, so cap it at 1.
    thresholds = np.minimum(thresholds, 1.0)
    keep = _thin(len(fpr), _MAX_ROC_POINTS)
    return fpr[keep].tolist(), tpr[keep].tolist(), thresholds[keep].tolist()


def _thin(points: int, limit: int) -> np.ndarray:
    """Indices of at most ``limit`` points, evenly spread, always keeping both ends."""
    if points <= limit:
        return np.arange(points)
    return np.unique(np.linspace(0, points - 1, limit).round().astype(int))
