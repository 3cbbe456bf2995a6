"""Probability calibration: fitting it at training, and how well a model's probabilities
match what happens (a reliability diagram, the Brier score and the expected calibration
error) on the evaluation split.

Calibration wraps the estimator in scikit-learn's ``CalibratedClassifierCV`` with
``ensemble=False``: the calibrator is fitted on 5-fold out-of-fold predictions, and one
estimator fitted on every row serves (the model is no larger or slower than without):
``sigmoid`` (Platt's logistic fit, two parameters, for small splits) or ``isotonic`` (a
monotone step function, for a few thousand rows or more). Calibration maps probabilities
back to the classes' real rates, so it undoes what ``class_weight`` does to them: choose
the operating point with a ``threshold_policy`` instead.

The diagram bins rows by predicted probability into ten equal-width bins. A bin's observed
rate has a 95 % Wilson interval; on a perfectly calibrated model, the diagonal falls
outside about 5 % of the intervals (``tests/test_calibration.py``'s seeded simulation).
The expected calibration error, the rows-weighted mean gap between predicted and observed
per bin, is biased upward on few rows (each bin's noise adds to it): its noise floor is
stated beside it.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.calibration import CalibratedClassifierCV

from conveyor.components.core.errors import ConveyorError
from conveyor.components.core.intervals import Z95, require_finite, wilson_interval

__all__ = [
    "CALIBRATION_METHODS",
    "Reliability",
    "calibrated",
    "check_calibration",
    "check_calibration_rows",
    "reliability",
    "reliability_html",
]

CALIBRATION_METHODS = ("sigmoid", "isotonic")
_FOLDS = 5
_BINS = 10


def check_calibration(method: str) -> str | None:
    """The calibration method ``method`` names; None for an empty one."""
    if method == "":
        return None
    if method not in CALIBRATION_METHODS:
        raise ConveyorError(
            f"calibration {method!r}: expected {' or '.join(CALIBRATION_METHODS)}, or empty "
            "for none"
        )
    return method


def check_calibration_rows(labels: pd.Series, method: str | None) -> None:
    """Every class has a row in each of the calibration's folds."""
    counts = labels.value_counts()
    if method is not None and len(counts) and counts.min() < _FOLDS:
        raise ConveyorError(
            f"calibration {method!r} needs at least {_FOLDS} training rows of each class "
            f"({_FOLDS} folds); class {str(counts.idxmin())!r} has {counts.min()}"
        )


def calibrated(estimator: BaseEstimator, method: str | None) -> BaseEstimator:
    """``estimator`` calibrated by ``method`` (5-fold, one estimator); itself for None."""
    if method is None:
        return estimator
    return CalibratedClassifierCV(
        estimator, method=check_calibration(method), cv=_FOLDS, ensemble=False
    )


@dataclass(frozen=True)
class Reliability:
    """How predicted probabilities match observed rates, bin by bin.

    Attributes:
        event: What the probability is of (``class 'fraud'``, or ``the predicted class``).
        edges: The bins' edges (11 for 10 bins).
        rows: Rows per bin.
        predicted: Mean predicted probability per bin (NaN where empty).
        observed: Observed rate per bin (NaN where empty).
        lower: Lower end of the observed rate's 95 % Wilson interval.
        upper: Upper end.
        brier_score: Mean squared gap between probability and outcome.
        expected_calibration_error: Rows-weighted mean of |predicted - observed|.
        noise_floor: The error a perfectly calibrated model shows on these bins' rows on
            average (binomial noise alone): a smaller gap is not evidence of miscalibration.
    """

    event: str
    edges: list[float]
    rows: list[int]
    predicted: list[float]
    observed: list[float]
    lower: list[float]
    upper: list[float]
    brier_score: float
    expected_calibration_error: float
    noise_floor: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "brier_score": self.brier_score,
            "expected_calibration_error": self.expected_calibration_error,
            "noise_floor": self.noise_floor,
            "bins": [
                {"from": low, "to": high, "rows": rows, "predicted": _finite(predicted),
                 "observed": _finite(observed)}
                for low, high, rows, predicted, observed in zip(
                    self.edges[:-1], self.edges[1:], self.rows, self.predicted, self.observed,
                    strict=True,
                )
            ],
        }  # fmt: skip


def reliability(happened: np.ndarray, probability: np.ndarray, event: str) -> Reliability:
    """The reliability of ``probability`` as the chance of ``event``, which ``happened``
    says each row had.

    Raises:
        ConveyorError: A probability is not a finite number.
    """
    happened, probability = np.asarray(happened, bool), np.asarray(probability, float)
    require_finite(
        probability,
        f"{{count}} predicted probabilities of {event} are not finite numbers: the model's "
        "probabilities cannot be judged",
    )
    edges = np.arange(_BINS + 1) / _BINS  # 0.3, not linspace's 0.30000000000000004
    index = np.clip(np.digitize(probability, edges[1:-1]), 0, _BINS - 1)
    rows = np.bincount(index, minlength=_BINS)
    hits = np.bincount(index, weights=happened, minlength=_BINS)
    sums = np.bincount(index, weights=probability, minlength=_BINS)
    with np.errstate(invalid="ignore", divide="ignore"):
        predicted, observed = sums / rows, hits / rows
    lower, upper = wilson_interval(hits, rows, Z95)
    share = rows / max(len(probability), 1)
    gaps = np.where(rows > 0, np.abs(predicted - observed), 0.0)
    # E|binomial mean - p| is about sqrt(2 p (1 - p) / (pi n)) per bin.
    spread = np.where(rows > 0, np.sqrt(2 * predicted * (1 - predicted) / (math.pi * rows)), 0)
    return Reliability(
        event=event,
        edges=edges.tolist(),
        rows=rows.astype(int).tolist(),
        predicted=predicted.tolist(),
        observed=observed.tolist(),
        lower=lower.tolist(),
        upper=upper.tolist(),
        brier_score=float(np.mean((probability - happened) ** 2)) if len(probability) else 0.0,
        expected_calibration_error=float(np.sum(share * gaps)),
        noise_floor=float(np.sum(share * np.nan_to_num(spread))),
    )


def reliability_html(result: Reliability, method: str | None) -> str:
    """A page with the reliability diagram (observed against predicted, with intervals)
    and the table behind it."""
    calibration = f"calibrated ({method})" if method else "not calibrated"
    summary = (
        f"Probability of {html.escape(result.event)}, {calibration}. Brier score "
        f"{result.brier_score:.4f}; expected calibration error "
        f"{result.expected_calibration_error:.4f} (a perfectly calibrated model would show "
        f"about {result.noise_floor:.4f} on these rows)."
    )
    header = (
        "<tr><th>predicted</th><th>rows</th><th>mean predicted</th><th>observed (95 %)</th></tr>"
    )
    body = "".join(
        f"<tr><td>{low:.1f}–{high:.1f}</td><td>{rows}</td><td>{_shown(predicted)}</td>"
        f"<td>{_shown(observed)} [{_shown(lo)}, {_shown(hi)}]</td></tr>"
        for low, high, rows, predicted, observed, lo, hi in zip(
            result.edges[:-1], result.edges[1:], result.rows, result.predicted, result.observed,
            result.lower, result.upper, strict=True,
        )
    )  # fmt: skip
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Reliability</title>"
        "<style>body{font-family:sans-serif;max-width:760px;margin:2em auto}"
        "td,th{padding:2px 8px;text-align:right}</style></head><body>"
        f"<h1>Reliability diagram</h1><p>{summary}</p>{_diagram(result)}"
        f"<table>{header}{body}</table></body></html>\n"
    )


def _diagram(result: Reliability) -> str:
    size, pad = 360, 40

    def x(value: float) -> float:
        return pad + (size - 2 * pad) * value

    def y(value: float) -> float:
        return size - pad - (size - 2 * pad) * value

    marks = [
        f"<line x1='{x(0)}' y1='{y(0)}' x2='{x(1)}' y2='{y(1)}' stroke='#999' "
        "stroke-dasharray='4'/>",
        f"<line x1='{x(0)}' y1='{y(0)}' x2='{x(1)}' y2='{y(0)}' stroke='black'/>",
        f"<line x1='{x(0)}' y1='{y(0)}' x2='{x(0)}' y2='{y(1)}' stroke='black'/>",
        f"<text x='{x(0.5)}' y='{size - 8}' text-anchor='middle' font-size='12'>"
        "mean predicted probability</text>",
        f"<text x='12' y='{y(0.5)}' font-size='12' transform='rotate(-90 12 {y(0.5)})' "
        "text-anchor='middle'>observed rate</text>",
    ]
    for rows, predicted, observed, low, high in zip(
        result.rows, result.predicted, result.observed, result.lower, result.upper, strict=True
    ):
        if not rows:
            continue
        marks.append(
            f"<line x1='{x(predicted):.1f}' x2='{x(predicted):.1f}' y1='{y(low):.1f}' "
            f"y2='{y(high):.1f}' stroke='#4e79a7'/><circle cx='{x(predicted):.1f}' "
            f"cy='{y(observed):.1f}' r='4' fill='#4e79a7'><title>{rows} rows: predicted "
            f"{predicted:.3f}, observed {observed:.3f}</title></circle>"
        )
    return f"<svg width='{size}' height='{size}' role='img'>{''.join(marks)}</svg>"


def _shown(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.3f}"


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else value
