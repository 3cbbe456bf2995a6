"""A binary model's operating threshold: chosen on the evaluation split from a policy, and
the classes a model predicts at it.

A row is predicted positive when its score (the positive class's probability) is at or
above the threshold. Without one, a model predicts its most probable class, as before.
A chosen threshold lies halfway between the lowest score it flags and the next lower
score on the evaluation split, so that a score served a float's last digit away from the
one evaluated (batch and single-row ``predict_proba`` differ there) gets the same class.

The threshold is chosen on the evaluation split and its precision, recall and
false-positive rate are measured on the same rows, so they are in-sample: on new data the
rate a policy bounds lands on either side of its bound about equally often (for
``max_false_positive_rate``, above it in about half of all choices; see
``tests/test_thresholds.py``'s seeded simulation). Each point therefore carries the 95 %
Wilson interval of its false-positive rate, which held the new-data rate in about 95 % of
the simulation's choices.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from conveyor.components.core.errors import ConveyorError
from conveyor.components.core.intervals import Z95, require_finite, wilson_interval
from conveyor.components.core.monitoring.drift import is_number

__all__ = [
    "RULES",
    "OperatingPoint",
    "ThresholdChoice",
    "ThresholdPolicy",
    "choose_threshold",
    "predicted_indices",
]

# Rule -> what its bound is, as the report says it.
RULES = {
    "max_false_positive_rate": "false-positive rate at most",
    "min_precision": "precision at least",
    "min_recall": "recall at least",
    "costs": "the least total cost",
}
_COSTS = ("false_positive", "false_negative")


@dataclass(frozen=True)
class ThresholdPolicy:
    """How evaluate chooses a binary model's threshold: one rule and its bound.

    Attributes:
        rule: A key of ``RULES``.
        bound: The rate the rule bounds (in (0, 1]); 0 for ``costs``.
        false_positive_cost: With ``costs``, what one false positive costs.
        false_negative_cost: With ``costs``, what one false negative costs.
    """

    rule: str
    bound: float = 0.0
    false_positive_cost: float = 0.0
    false_negative_cost: float = 0.0

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ConveyorError(
                f"threshold_policy: unknown rule {self.rule!r}; expected one of {', '.join(RULES)}"
            )
        if self.rule == "costs":
            costs = (self.false_positive_cost, self.false_negative_cost)
            if not all(_is_rate_or_cost(c) and c >= 0 for c in costs) or not any(costs):
                raise ConveyorError(
                    "threshold_policy costs: false_positive and false_negative must be "
                    f"numbers >= 0, not both 0; got {list(costs)}"
                )
        elif not (_is_rate_or_cost(self.bound) and 0 < self.bound <= 1):
            raise ConveyorError(
                f"threshold_policy {self.rule}: expected a rate in (0, 1], got {self.bound!r}"
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ThresholdPolicy | None:
        """The policy a ``threshold_policy`` parameter gives; None for an empty one."""
        if not isinstance(data, Mapping):
            raise ConveyorError(f"threshold_policy: expected a dict, got {data!r}")
        if not data:
            return None
        if len(data) != 1:
            raise ConveyorError(
                f"threshold_policy: expected one rule, got {', '.join(map(str, data))}"
            )
        (rule, value), = data.items()  # fmt: skip
        if rule != "costs":
            return cls(str(rule), value)
        if not isinstance(value, Mapping) or set(value) != set(_COSTS):
            raise ConveyorError(
                "threshold_policy costs: expected {false_positive: X, false_negative: Y}, "
                f"got {value!r}"
            )
        return cls("costs", 0.0, value["false_positive"], value["false_negative"])

    def to_dict(self) -> dict[str, Any]:
        if self.rule == "costs":
            return {"costs": dict(zip(_COSTS, self.costs(), strict=True))}
        return {self.rule: self.bound}

    def costs(self) -> tuple[float, float]:
        return float(self.false_positive_cost), float(self.false_negative_cost)

    def describe(self) -> str:
        if self.rule == "costs":
            fp, fn = self.costs()
            return f"the least cost at {fp:g} per false positive and {fn:g} per false negative"
        return f"{RULES[self.rule]} {self.bound:g}"


@dataclass(frozen=True)
class OperatingPoint:
    """What a threshold gives on the rows it was chosen on.

    Attributes:
        threshold: Rows scoring at or above it are predicted positive.
        precision: TP / (TP + FP).
        recall: TP / (TP + FN).
        false_positive_rate: FP / (FP + TN).
        false_positive_rate_interval: Its 95 % Wilson interval over the negatives.
        flagged: Rows predicted positive.
        positives: Positive rows.
        negatives: Negative rows.
    """

    threshold: float
    precision: float
    recall: float
    false_positive_rate: float
    false_positive_rate_interval: tuple[float, float]
    flagged: int
    positives: int
    negatives: int

    def describe(self) -> str:
        low, high = self.false_positive_rate_interval
        return (
            f"threshold {self.threshold:.4g}: precision {self.precision:.3f}, recall "
            f"{self.recall:.3f}, false-positive rate {self.false_positive_rate:.3f} "
            f"[{low:.3f}, {high:.3f}] on {self.positives} positive and {self.negatives} "
            "negative evaluation rows"
        )


@dataclass(frozen=True)
class ThresholdChoice:
    """The point a policy chose, or None and why none meets it."""

    policy: ThresholdPolicy
    point: OperatingPoint | None
    reason: str

    @property
    def threshold(self) -> float | None:
        return None if self.point is None else self.point.threshold


def choose_threshold(
    is_positive: np.ndarray, scores: np.ndarray, policy: ThresholdPolicy
) -> ThresholdChoice:
    """The threshold ``policy`` prefers, flagging at least one row: the most recall within
    a false-positive or precision bound, the fewest false positives reaching a recall, or
    the least total cost (ties: the fewer rows flagged).

    Raises:
        ConveyorError: A score is not a finite number.
    """
    is_positive, scores = np.asarray(is_positive, bool), np.asarray(scores, float)
    require_finite(
        scores,
        "threshold_policy: {count} evaluation score(s) are not finite numbers; a threshold "
        "cannot be chosen on them",
    )
    positives, negatives = int(is_positive.sum()), int((~is_positive).sum())
    if not len(scores):
        return _unmet(policy, "the evaluation split has no rows")
    thresholds, true_positives, false_positives = _curve(is_positive, scores)
    index = _pick(policy, true_positives, false_positives, positives, negatives)
    if isinstance(index, str):
        return _unmet(policy, index)
    tp, fp = int(true_positives[index]), int(false_positives[index])
    low, high = _wilson(fp, negatives)
    point = OperatingPoint(
        threshold=float(thresholds[index]),
        precision=tp / (tp + fp),
        recall=tp / positives if positives else 0.0,
        false_positive_rate=fp / negatives if negatives else 0.0,
        false_positive_rate_interval=(low, high),
        flagged=tp + fp,
        positives=positives,
        negatives=negatives,
    )
    return ThresholdChoice(policy, point, f"{policy.describe()}: {point.describe()}")


def _unmet(policy: ThresholdPolicy, why: str) -> ThresholdChoice:
    return ThresholdChoice(policy, None, f"threshold_policy ({policy.describe()}): {why}")


def predicted_indices(
    probabilities: np.ndarray, positive_index: int | None, threshold: float | None
) -> np.ndarray:
    """Each row's predicted class, as a column of ``probabilities``: the positive one when
    its probability reaches ``threshold``; the most probable without a threshold."""
    if threshold is None or positive_index is None:
        return probabilities.argmax(axis=1)
    negative_index = 1 - positive_index
    return np.where(probabilities[:, positive_index] >= threshold, positive_index, negative_index)


def _curve(is_positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, ...]:
    """For each distinct score, highest first: a threshold flagging the rows scored at or
    above it and no other (halfway to the next lower score; half the lowest for the
    lowest), and the true and false positives it flags."""
    order = np.argsort(-scores, kind="stable")
    ordered, truth = scores[order], is_positive[order]
    last_of_each = np.flatnonzero(np.r_[ordered[1:] != ordered[:-1], True])
    distinct = ordered[last_of_each]
    thresholds = (distinct + np.r_[distinct[1:], 0.0]) / 2
    true_positives = np.cumsum(truth)[last_of_each]
    false_positives = np.cumsum(~truth)[last_of_each]
    return thresholds, true_positives, false_positives


def _pick(
    policy: ThresholdPolicy, tp: np.ndarray, fp: np.ndarray, positives: int, negatives: int
) -> int | str:
    """The index of the preferred point, or why there is none."""
    if policy.rule in ("max_false_positive_rate", "min_precision", "min_recall") and not positives:
        return "the evaluation split has no positive rows"
    if policy.rule == "max_false_positive_rate":
        if not negatives:
            return "the evaluation split has no negative rows to measure it on"
        meets = fp / negatives <= policy.bound
        return _most_recall(meets, tp, fp, f"every threshold flags more than "
                            f"{policy.bound:.2%} of the {negatives} negative rows")  # fmt: skip
    if policy.rule == "min_precision":
        meets = tp / (tp + fp) >= policy.bound
        return _most_recall(meets, tp, fp, f"no threshold reaches precision {policy.bound:g} "
                            f"(best {float(np.max(tp / (tp + fp))):.3f})")  # fmt: skip
    if policy.rule == "min_recall":
        candidates = np.flatnonzero(tp / positives >= policy.bound)
        return int(candidates[np.lexsort((-tp[candidates], fp[candidates]))[0]])
    scale = max(policy.costs())  # costs near the float maximum would overflow
    fp_cost, fn_cost = (cost / scale for cost in policy.costs())
    costs = fp_cost * fp + fn_cost * (positives - tp)
    best = int(np.argmin(costs))
    if costs[best] >= fn_cost * positives:
        return (
            f"flagging no row costs least ({policy.costs()[1] * positives:g} for "
            f"{positives} missed positives, against {costs[best] * scale:g} at best): at "
            "these costs the model is not worth acting on"
        )
    return best


def _most_recall(meets: np.ndarray, tp: np.ndarray, fp: np.ndarray, unmet: str) -> int | str:
    """Among the points that meet a bound, the one with most true positives, then fewest
    false positives; ``unmet`` when none meets it or those that do flag no positive."""
    if not meets.any():
        return unmet
    candidates = np.flatnonzero(meets)
    best = candidates[np.lexsort((fp[candidates], -tp[candidates]))[0]]
    if tp[best] == 0:
        return f"only thresholds that flag no positive row meet it ({unmet})"
    return int(best)


def _wilson(successes: int, trials: int) -> tuple[float, float]:
    if not trials:
        return (0.0, 1.0)
    low, high = wilson_interval(np.array([successes]), np.array([trials]), Z95)
    return float(low[0]), float(high[0])


def _is_rate_or_cost(value: Any) -> bool:
    return is_number(value) and math.isfinite(value)
