"""Always-valid confidence intervals for proportions: the statistics of the canary judge.

A canary is looked at again and again while its traffic accumulates. A fixed-sample test
repeated at every look rejects far more often than its level says; a *confidence
sequence* does not: the probability that it ever excludes the true value, at any look,
however many, is at most ``alpha``. Conveyor uses the normal-mixture boundary of
Robbins (1970), in the form of the mixture sequential probability ratio test (mSPRT) of
Johari, Koomen, Pekelis and Walsh, "Always Valid Inference: Continuous Monitoring of A/B
Tests", Operations Research 70(3), 2022, section 4; Howard, Ramdas, McAuliffe and Sekhon,
"Time-uniform, nonparametric, nonasymptotic confidence sequences", Annals of Statistics
49(2), 2021, give the boundary's derivation. For an estimate with variance ``V`` and a
normal mixing distribution of scale ``tau`` (here the metric's margin, the size of effect
that matters), the sequence is the estimate plus or minus

    r(V) = sqrt( V (V + tau^2) / tau^2 * ( 2 ln(1/alpha) + ln((V + tau^2) / V) ) )

Proportions are smoothed as Agresti and Caffo ("Simple and effective confidence intervals
for proportions and differences of proportions result from adding two successes and two
failures", The American Statistician 54(4), 2000): one event and one non-event are added
to each revision's counts, so a revision with no errors yet has a variance above zero.

The minimum sample size is the smallest canary count ``n`` at which a canary *equal* to
stable (both at the ``baseline`` rate ``p``) passes one comparison with probability
``1 - beta``:

    z(1 - beta) * sqrt(V(n)) + r(V(n)) <= margin,   V(n) = 2 p (1 - p) / n

(the stable revision is assumed to have served at least as many requests as the canary,
which it has at every step up to 50 %). A metric comparing K categories or bounds at once,
on one side or both, asks it of each at ``alpha / K`` and ``beta / (sides * K)``
(``MetricSpec.minimum_sample``).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from statistics import NormalDist

__all__ = [
    "Interval",
    "difference_interval",
    "minimum_sample_size",
    "proportion_interval",
    "radius",
    "rate_difference_interval",
]


@dataclass(frozen=True)
class Interval:
    """An estimate and its always-valid confidence interval (clipped to what a rate, or a
    difference of rates, can be)."""

    estimate: float
    low: float
    high: float

    def distance_from_zero(self) -> float:
        """How far the interval lies from 0 (0 when it contains 0)."""
        return max(self.low, -self.high, 0.0)

    def magnitude(self) -> float:
        """The largest absolute value in the interval."""
        return max(abs(self.low), abs(self.high))


def radius(variance: float, tau: float, alpha: float) -> float:
    """Half-width of the normal-mixture confidence sequence for an estimate of this variance."""
    mixed = variance + tau * tau
    log_terms = 2 * math.log(1 / alpha) + math.log(mixed / variance)
    return math.sqrt(variance * mixed / (tau * tau) * log_terms)


def proportion_interval(events: int, total: int, alpha: float, tau: float) -> Interval:
    """The always-valid interval of one revision's rate, ``events`` out of ``total``."""
    rate, variance = _smoothed(events, total)
    half = radius(variance, tau, alpha)
    return Interval(_rate(events, total), max(0.0, rate - half), min(1.0, rate + half))


def difference_interval(
    events_a: int, total_a: int, events_b: int, total_b: int, alpha: float, tau: float
) -> Interval:
    """The always-valid interval of rate a minus rate b, from counts."""
    return rate_difference_interval(
        _rate(events_a, total_a), total_a, _rate(events_b, total_b), total_b, alpha, tau
    )


def rate_difference_interval(
    rate_a: float, samples_a: int, rate_b: float, samples_b: int, alpha: float, tau: float
) -> Interval:
    """The always-valid interval of rate a minus rate b, each observed over so many
    independent samples (a rate of rows over the requests they came in)."""
    smoothed_a, variance_a = _smoothed(rate_a * samples_a if samples_a else 0.0, samples_a)
    smoothed_b, variance_b = _smoothed(rate_b * samples_b if samples_b else 0.0, samples_b)
    half = radius(variance_a + variance_b, tau, alpha)
    centre = smoothed_a - smoothed_b
    return Interval(rate_a - rate_b, max(-1.0, centre - half), min(1.0, centre + half))


@functools.lru_cache(maxsize=256)  # a policy asks at every look, with the same numbers
def minimum_sample_size(
    baseline: float, margin: float, alpha: float, beta: float, tau: float | None = None
) -> int:
    """The fewest canary samples at which a canary equal to stable passes with
    probability ``1 - beta`` (see the module's docstring for the formula)."""
    tau = margin if tau is None else tau
    z = NormalDist().inv_cdf(1 - beta)
    spread = 2 * baseline * (1 - baseline)

    def enough(n: int) -> bool:
        variance = spread / n
        return z * math.sqrt(variance) + radius(variance, tau, alpha) <= margin

    low, high = 1, 1
    while not enough(high):  # the boundary shrinks as n grows: double, then bisect
        low, high = high, high * 2
    while low < high:
        middle = (low + high) // 2
        low, high = (middle + 1, high) if not enough(middle) else (low, middle)
    return high


def _rate(events: int, total: int) -> float:
    return events / total if total else math.nan


def _smoothed(events: float, total: int) -> tuple[float, float]:
    """The Agresti-Caffo rate and the variance of its estimate."""
    rate = (events + 1) / (total + 2)
    return rate, rate * (1 - rate) / (total + 2)
