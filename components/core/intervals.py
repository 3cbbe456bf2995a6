"""Confidence intervals of proportions, shared by evaluation, thresholds and monitoring,
and the check that the numbers a statistic is computed on are numbers."""

from __future__ import annotations

import numpy as np

from conveyor.components.core.errors import ConveyorError

__all__ = ["Z95", "require_finite", "wilson_interval"]

# The standard normal's 97.5th percentile: a two-sided 95 % interval's z.
Z95 = 1.959963984540054


def wilson_interval(
    successes: np.ndarray, trials: np.ndarray, z: float
) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a binomial proportion, element-wise (NaN where no trials)."""
    successes, trials = np.asarray(successes, float), np.asarray(trials, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = successes / trials
        square = z * z / trials
        centre = (rate + square / 2) / (1 + square)
        half = z / (1 + square) * np.sqrt(rate * (1 - rate) / trials + square / (4 * trials))
    return np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)


def require_finite(values: np.ndarray, refusal: str) -> None:
    """Refuses ``values`` holding a NaN or an infinity, with ``refusal`` (its ``{count}``
    filled with how many)."""
    count = int((~np.isfinite(values)).sum())
    if count:
        raise ConveyorError(refusal.format(count=count))
