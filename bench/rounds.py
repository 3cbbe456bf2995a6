"""The arithmetic every bench shares: rounds alternating the two sides, per-round ratios,
their median, spread (min–max) and interquartile range, and whether an aim is met.

Pure functions on numbers already measured: nothing here times, sleeps or reads a clock.
A bench measures both sides once per round (A, B, A, B, …), pairs the two figures of each
round into a ratio, and reports the median of those ratios: one slow round, from a neighbour
on a shared machine, moves the spread, not the verdict. Anything that would make a figure
meaningless (fewer than ``MIN_ROUNDS`` rounds, a missing, zero, negative or non-finite
measurement) raises ``RoundsError`` with a one-line message.
"""

from __future__ import annotations

import math
import operator
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "MIN_ROUNDS",
    "Aim",
    "Comparison",
    "RoundsError",
    "Spread",
    "check_rounds",
    "compare",
    "order",
    "ratios",
    "spread",
]

MIN_ROUNDS = 5


class RoundsError(ValueError):
    """A bench's figures cannot be summarised; the message is one line."""


def check_rounds(rounds: int) -> int:
    """``rounds`` itself, or a ``RoundsError`` when it is fewer than ``MIN_ROUNDS``."""
    if rounds < MIN_ROUNDS:
        raise RoundsError(
            f"--rounds {rounds}: at least {MIN_ROUNDS} rounds are needed for a median and "
            "a spread that one noisy round cannot swing"
        )
    return rounds


def order(sides: Sequence[str], rounds: int) -> list[tuple[int, str]]:
    """The run order: ``(round, side)`` for rounds 1..``rounds``, every side in turn within
    a round (A, B, A, B, …)."""
    check_rounds(rounds)
    if not sides:
        raise RoundsError("no sides to alternate")
    return [(number, side) for number in range(1, rounds + 1) for side in sides]


@dataclass(frozen=True)
class Spread:
    """A median and how far the values around it range: min–max and quartiles."""

    median: float
    low: float
    high: float
    q1: float
    q3: float

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "iqr": self.iqr}


def _checked(values: Sequence[Any], what: str) -> list[float]:
    """The values as floats, one per round; a missing, zero or non-finite one is refused."""
    if len(values) < MIN_ROUNDS:
        raise RoundsError(f"{what}: {len(values)} round(s) measured, at least {MIN_ROUNDS} needed")
    checked = []
    for number, value in enumerate(values, start=1):
        if value is None:
            raise RoundsError(f"{what}: round {number} has no measurement")
        number_value = float(value)
        if not math.isfinite(number_value) or number_value <= 0:
            raise RoundsError(f"{what}: round {number} measured {value!r}, not a positive number")
        checked.append(number_value)
    return checked


def spread(values: Sequence[Any], what: str = "measurement") -> Spread:
    """Median, min, max and quartiles (linear interpolation, as ``numpy.percentile``) of
    one value per round."""
    checked = _checked(values, what)
    q1, _, q3 = statistics.quantiles(checked, n=4, method="inclusive")
    return Spread(statistics.median(checked), min(checked), max(checked), q1, q3)


def ratios(numerators: Sequence[Any], denominators: Sequence[Any], what: str = "ratio") -> list:
    """``numerator / denominator`` round by round: the two sides' figures must pair up."""
    if len(numerators) != len(denominators):
        raise RoundsError(
            f"{what}: {len(numerators)} round(s) on one side, {len(denominators)} on the other"
        )
    tops = _checked(numerators, f"{what} (numerator)")
    bottoms = _checked(denominators, f"{what} (denominator)")
    return [top / bottom for top, bottom in zip(tops, bottoms, strict=True)]


@dataclass(frozen=True)
class Comparison:
    """One metric of two sides over the same rounds: each side's spread, and the spread of
    the per-round ratio ``numerator / denominator``."""

    metric: str
    numerator: str
    denominator: str
    numerator_values: tuple[float, ...]
    denominator_values: tuple[float, ...]
    numerator_spread: Spread
    denominator_spread: Spread
    round_ratios: tuple[float, ...]
    ratio: Spread

    @property
    def median_ratio(self) -> float:
        return self.ratio.median

    def as_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "ratio": f"{self.numerator} / {self.denominator}, round by round",
            "rounds": len(self.round_ratios),
            self.numerator: {
                "per_round": list(self.numerator_values),
                **self.numerator_spread.as_dict(),
            },
            self.denominator: {
                "per_round": list(self.denominator_values),
                **self.denominator_spread.as_dict(),
            },
            "round_ratios": list(self.round_ratios),
            "median_ratio": self.ratio.median,
            "ratio_spread": self.ratio.as_dict(),
        }

    def lines(self, unit: str = "", digits: int = 2, ratio_digits: int = 2) -> list[str]:
        """Two printed lines: each side's median, then the median ratio and its spread."""
        suffix = f" {unit}" if unit else ""

        def side(name: str, value: float) -> str:
            return f"{name} {value:,.{digits}f}{suffix}"

        r = self.ratio
        return [
            f"{self.metric}: median {side(self.numerator, self.numerator_spread.median)}, "
            f"{side(self.denominator, self.denominator_spread.median)}",
            f"  {self.numerator}/{self.denominator}: median {r.median:.{ratio_digits}f}x "
            f"(min-max {r.low:.{ratio_digits}f}-{r.high:.{ratio_digits}f}x, "
            f"IQR {r.q1:.{ratio_digits}f}-{r.q3:.{ratio_digits}f}x, "
            f"{len(self.round_ratios)} rounds)",
        ]


def compare(
    metric: str,
    numerator: tuple[str, Sequence[Any]],
    denominator: tuple[str, Sequence[Any]],
) -> Comparison:
    """``numerator`` and ``denominator`` are ``(side name, one figure per round)``."""
    (top_name, tops), (bottom_name, bottoms) = numerator, denominator
    what = f"{metric} {top_name}/{bottom_name}"
    per_round = ratios(tops, bottoms, what)
    return Comparison(
        metric,
        top_name,
        bottom_name,
        tuple(float(value) for value in tops),
        tuple(float(value) for value in bottoms),
        spread(tops, f"{metric} of {top_name}"),
        spread(bottoms, f"{metric} of {bottom_name}"),
        tuple(per_round),
        spread(per_round, what),
    )


_OPERATORS = {">=": operator.ge, "<=": operator.le, "<": operator.lt, ">": operator.gt}


@dataclass(frozen=True)
class Aim:
    """A goal on a median ratio: ``median_ratio <op> bound``."""

    text: str
    op: str
    bound: float

    def __post_init__(self) -> None:
        if self.op not in _OPERATORS:
            raise RoundsError(f"aim {self.text!r}: unknown comparison {self.op!r}")

    def met(self, median_ratio: float) -> bool:
        return bool(_OPERATORS[self.op](median_ratio, self.bound))

    def verdict(self, median_ratio: float) -> dict[str, Any]:
        met = self.met(median_ratio)
        return {
            "aim": self.text,
            "test": f"median ratio {self.op} {self.bound:g}",
            "median_ratio": median_ratio,
            "met": met,
            "line": f"aim: {self.text} (median ratio {median_ratio:.2f}x, needs {self.op} "
            f"{self.bound:g}x) -> {'aim met' if met else 'aim not met'}",
        }
