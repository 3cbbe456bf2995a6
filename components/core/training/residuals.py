"""A regression model's residuals on the evaluation split, as a page a person can read.

Two plots drawn as inline SVG (no plotting library in the images): predicted against
true values, where a perfect model lies on the diagonal, and the residual (true minus
predicted) against the predicted value, where a good model's points scatter evenly about
zero; then a histogram of the residuals and their quantiles. A plot shows at most
``MAX_POINTS`` rows, a seeded sample; the numbers are of every row.
"""

from __future__ import annotations

import html
from collections.abc import Callable

import numpy as np

__all__ = ["MAX_POINTS", "residuals_html"]

MAX_POINTS = 2_000
_SIZE, _PAD = 360, 44
_BINS = 30
_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def residuals_html(truth: np.ndarray, predicted: np.ndarray, target: str, seed: int = 0) -> str:
    """The residual page of a regressor's ``predicted`` values against ``truth``."""
    truth, predicted = np.asarray(truth, dtype=float), np.asarray(predicted, dtype=float)
    residuals = truth - predicted
    shown = _sample(len(truth), seed)
    name = html.escape(target)
    quantiles = np.quantile(residuals, _QUANTILES) if len(residuals) else [np.nan] * 5
    header = "".join(f"<th>{q:.0%}</th>" for q in _QUANTILES)
    cells = "".join(f"<td>{value:.4g}</td>" for value in quantiles)
    sampled = (
        f" ({len(shown)} of {len(truth)} rows shown, a seeded sample)"
        if len(shown) < len(truth)
        else ""
    )
    summary = (
        f"{len(truth)} evaluation rows of <code>{name}</code>. Mean residual (true minus "
        f"predicted) {np.mean(residuals):.4g}: above 0 the model predicts too low on average, "
        f"below too high. Mean absolute residual {np.mean(np.abs(residuals)):.4g}."
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Residuals</title>"
        "<style>body{font-family:sans-serif;max-width:800px;margin:2em auto}"
        "td,th{padding:2px 8px;text-align:right}</style></head><body>"
        f"<h1>Residuals</h1><p>{summary}</p>"
        f"<h2>Predicted against true{sampled}</h2>"
        + _scatter(truth[shown], predicted[shown], "true", "predicted", diagonal=True)
        + "<h2>Residual against predicted</h2>"
        + _scatter(predicted[shown], residuals[shown], "predicted", "residual", diagonal=False)
        + "<h2>Residuals</h2>"
        + _histogram(residuals)
        + f"<table><tr><th>quantile</th>{header}</tr><tr><td>residual</td>{cells}</tr></table>"
        "</body></html>\n"
    )


def _sample(rows: int, seed: int) -> np.ndarray:
    if rows <= MAX_POINTS:
        return np.arange(rows)
    return np.sort(np.random.default_rng(seed).choice(rows, MAX_POINTS, replace=False))


def _scale(values: np.ndarray, low_px: float, high_px: float) -> Callable[[float], float]:
    """A map from the values' range (widened when flat) onto pixels."""
    low, high = (float(values.min()), float(values.max())) if len(values) else (0.0, 1.0)
    if high <= low:
        low, high = low - 1, high + 1
    return lambda value: low_px + (high_px - low_px) * (value - low) / (high - low)


def _axes(x_label: str, y_label: str) -> list[str]:
    bottom, top, left, right = _SIZE - _PAD, _PAD / 2, _PAD, _SIZE - _PAD / 2
    middle = (bottom + top) / 2
    return [
        f"<line x1='{left}' y1='{bottom}' x2='{right}' y2='{bottom}' stroke='black'/>",
        f"<line x1='{left}' y1='{bottom}' x2='{left}' y2='{top}' stroke='black'/>",
        f"<text x='{(left + right) / 2}' y='{_SIZE - 10}' text-anchor='middle' "
        f"font-size='12'>{x_label}</text>",
        f"<text x='14' y='{middle}' font-size='12' text-anchor='middle' "
        f"transform='rotate(-90 14 {middle})'>{y_label}</text>",
    ]


def _scatter(xs: np.ndarray, ys: np.ndarray, x_label: str, y_label: str, diagonal: bool) -> str:
    if diagonal:  # one scale for both axes, so the diagonal is where predicted equals true
        both = np.concatenate([xs, ys])
        x, y = _scale(both, _PAD, _SIZE - _PAD / 2), _scale(both, _SIZE - _PAD, _PAD / 2)
        low, high = (float(both.min()), float(both.max())) if len(both) else (0.0, 1.0)
    else:
        x, y = _scale(xs, _PAD, _SIZE - _PAD / 2), _scale(ys, _SIZE - _PAD, _PAD / 2)
        low, high = (float(xs.min()), float(xs.max())) if len(xs) else (0.0, 1.0)
    marks = _axes(x_label, y_label)
    ideal = (low, low, high, high) if diagonal else (low, 0.0, high, 0.0)
    marks.append(
        f"<line x1='{x(ideal[0]):.1f}' y1='{y(ideal[1]):.1f}' x2='{x(ideal[2]):.1f}' "
        f"y2='{y(ideal[3]):.1f}' stroke='#999' stroke-dasharray='4'/>"
    )
    marks += [
        f"<circle cx='{x(a):.1f}' cy='{y(b):.1f}' r='2' fill='#4e79a7' fill-opacity='0.5'/>"
        for a, b in zip(xs.tolist(), ys.tolist(), strict=True)
    ]
    return f"<svg width='{_SIZE}' height='{_SIZE}' role='img'>{''.join(marks)}</svg>"


def _histogram(residuals: np.ndarray) -> str:
    counts, edges = np.histogram(residuals, bins=_BINS) if len(residuals) else ([], [0, 1])
    x = _scale(np.asarray(edges, dtype=float), _PAD, _SIZE - _PAD / 2)
    tallest = max(max(counts, default=0), 1)
    marks = _axes("residual", "rows")
    for count, low, high in zip(counts, edges[:-1], edges[1:], strict=True):
        height = (_SIZE - 1.5 * _PAD) * count / tallest
        marks.append(
            f"<rect x='{x(low):.1f}' y='{_SIZE - _PAD - height:.1f}' "
            f"width='{max(x(high) - x(low) - 1, 1):.1f}' height='{height:.1f}' fill='#4e79a7'>"
            f"<title>{count} rows: {low:.4g} to {high:.4g}</title></rect>"
        )
    return f"<svg width='{_SIZE}' height='{_SIZE}' role='img'>{''.join(marks)}</svg>"
