"""Classification metrics and curves of a fitted model on a labelled table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm
from sklearn.pipeline import Pipeline

__all__ = ["METRIC_DIRECTIONS", "Curves", "compute_curves", "compute_metrics"]

# +1: higher is better; -1: lower is better.
METRIC_DIRECTIONS = {
    "accuracy": 1,
    "precision": 1,
    "recall": 1,
    "f1": 1,
    "roc_auc": 1,
    "log_loss": -1,
}
_MAX_ROC_POINTS = 200


@dataclass(frozen=True)
class Curves:
    """What the KFP UI draws: a confusion matrix, and a ROC curve for binary targets."""

    labels: list[str]
    confusion: list[list[int]]
    roc: tuple[list[float], list[float], list[float]] | None


def compute_metrics(model: Pipeline, table: pd.DataFrame, target: str) -> dict[str, float]:
    """Accuracy, precision, recall, F1, ROC-AUC and log loss (macro one-vs-rest for multi-class)."""
    truth, predicted, proba, classes = _predict(model, table, target)
    binary = len(classes) == 2
    average: dict[str, Any] = (
        {"average": "binary", "pos_label": classes[1]} if binary else {"average": "macro"}
    )
    scores = {
        "accuracy": skm.accuracy_score(truth, predicted),
        "precision": skm.precision_score(truth, predicted, zero_division=0, **average),
        "recall": skm.recall_score(truth, predicted, zero_division=0, **average),
        "f1": skm.f1_score(truth, predicted, zero_division=0, **average),
        "log_loss": skm.log_loss(truth, proba, labels=classes),
    }
    if binary:
        scores["roc_auc"] = skm.roc_auc_score(truth == classes[1], proba[:, 1])
    else:
        scores["roc_auc"] = skm.roc_auc_score(
            truth, proba, multi_class="ovr", average="macro", labels=classes
        )
    return {name: float(value) for name, value in scores.items()}


def compute_curves(model: Pipeline, table: pd.DataFrame, target: str) -> Curves:
    truth, predicted, proba, classes = _predict(model, table, target)
    matrix = skm.confusion_matrix(truth, predicted, labels=classes)
    roc = None
    if len(classes) == 2:
        fpr, tpr, thresholds = skm.roc_curve(truth == classes[1], proba[:, 1])
        # The first threshold is +inf (nothing predicted positive): not JSON, so cap it at 1.
        thresholds = np.minimum(thresholds, 1.0)
        keep = _thin(len(fpr), _MAX_ROC_POINTS)
        roc = (fpr[keep].tolist(), tpr[keep].tolist(), thresholds[keep].tolist())
    return Curves([str(c) for c in classes], matrix.tolist(), roc)


def _predict(
    model: Pipeline, table: pd.DataFrame, target: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Truth, predictions, probabilities and classes, all in the labels' own dtype."""
    proba = model.predict_proba(table.drop(columns=[target]))
    classes = model.classes_
    return table[target].to_numpy(), classes[proba.argmax(axis=1)], proba, classes


def _thin(points: int, limit: int) -> np.ndarray:
    """Indices of at most ``limit`` points, evenly spread, always keeping both ends."""
    if points <= limit:
        return np.arange(points)
    return np.unique(np.linspace(0, points - 1, limit).round().astype(int))
