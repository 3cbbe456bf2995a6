"""The canary judge: each metric of the policy, canary against stable, to one of four outcomes.

As Argo Rollouts has them, a metric ends ``pass``, ``fail``, ``inconclusive`` (no data, or
too little for the test to tell at the policy's error rates) or ``error`` (its query
failed). Statistical metrics are judged with always-valid confidence intervals
(``rollout.sequential``) at a ``1 - alpha`` level, ``alpha`` being the policy's
``false_promotion_rate`` split over every comparison (Bonferroni):

- a comparison **fails** when the interval of canary minus stable lies beyond the margin
  on the worse side, and **passes** when it lies within it and the canary has served the
  policy's minimum sample; otherwise it is inconclusive;
- a guard (``max``, ``min``, the latency tail, a distribution's ``relative_margin``) fails
  only on evidence (the canary's interval entirely beyond its bound) and never holds a
  canary back.

So a canary worse than a margin is promoted, or one within every margin failed, with
probability at most ``false_promotion_rate`` however often it is looked at; a canary equal
to stable passes every metric, once it has served the minimum sample, with probability at
least ``1 - false_rollback_rate``. Gauges are compared as they are, with no error rates.

``judge`` is a pure function of measurements; ``AnalysisRun`` carries what a rollout's
looks accumulate (inconclusive looks in a step, errors in a row).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from conveyor.components.core.errors import ConveyorError
from conveyor.components.core.markdown import table
from conveyor.components.core.rollout.policy import CanaryPolicy, MetricSpec
from conveyor.components.core.rollout.prometheus import Prometheus, Sample, Series, Window, measure
from conveyor.components.core.rollout.sequential import (
    Interval,
    difference_interval,
    proportion_interval,
    rate_difference_interval,
)

__all__ = [
    "OUTCOMES",
    "AnalysisRun",
    "Decision",
    "Judgement",
    "MetricResult",
    "Outcome",
    "analyse",
    "histogram_quantile",
    "judge",
    "render_table",
]

Outcome = Literal["pass", "fail", "inconclusive", "error"]
OUTCOMES: tuple[Outcome, ...] = ("fail", "error", "inconclusive", "pass")  # worst first
_TAIL = 0.99  # the latency quantile compared


@dataclass(frozen=True)
class MetricResult:
    """One metric's judgement at one look.

    Attributes:
        name: The metric.
        outcome: pass, fail, inconclusive or error.
        canary: The canary's value (a rate, a share, a largest change, a gauge), if measured.
        stable: The stable revision's, if measured.
        test: What was tested, with the effect and its interval.
        reason: Why this outcome, in one line.
        samples: Canary samples the test used.
        needed: Canary samples the policy needs before the metric can pass.
        extra: Further values measured (the latency tail's p99s), by name.
    """

    name: str
    outcome: Outcome
    canary: float | None = None
    stable: float | None = None
    test: str = ""
    reason: str = ""
    samples: int = 0
    needed: int = 0
    extra: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Judgement:
    """Every metric's result at one look; the outcome is the worst of them."""

    results: tuple[MetricResult, ...]

    @property
    def outcome(self) -> Outcome:
        found = {result.outcome for result in self.results}
        return next((outcome for outcome in OUTCOMES if outcome in found), "pass")

    @property
    def reason(self) -> str:
        worst = [r for r in self.results if r.outcome == self.outcome]
        if self.outcome == "pass":
            return f"every metric passed ({', '.join(r.name for r in self.results)})"
        return "; ".join(f"{r.name}: {r.reason}" for r in worst)


def analyse(
    prometheus: Prometheus,
    policy: CanaryPolicy,
    namespace: str,
    canary: str,
    stable: str,
    window: Window,
) -> Judgement:
    """Measures both revisions over the same window and judges the canary."""
    if canary == stable:
        raise ConveyorError(f"the canary and the stable revision are both {canary!r}")
    return judge(
        policy,
        measure(prometheus, policy, namespace, canary, window),
        measure(prometheus, policy, namespace, stable, window, stable=True),
    )


def judge(
    policy: CanaryPolicy, canary: Mapping[str, Sample], stable: Mapping[str, Sample]
) -> Judgement:
    """Each judged metric of ``policy``, canary against stable (a pure function)."""
    alpha, beta = policy.comparison_alpha, policy.comparison_beta
    return Judgement(
        tuple(
            _judge_metric(metric, canary[metric.name], stable[metric.name], alpha, beta)
            for metric in policy.judged
        )
    )


def _judge_metric(
    metric: MetricSpec, canary: Sample, stable: Sample, alpha: float, beta: float
) -> MetricResult:
    if canary.error or stable.error:
        return MetricResult(metric.name, "error", reason=canary.error or stable.error)
    if not canary.series:
        return MetricResult(metric.name, "inconclusive", reason="warming up: not measured yet")
    return _JUDGES[metric.kind](metric, canary.series, stable.series, alpha, beta)


# -- proportions --------------------------------------------------------------------------


def _proportion(
    metric: MetricSpec, canary: Mapping[str, Series], stable: Mapping[str, Series],
    alpha: float, beta: float,
) -> MetricResult:  # fmt: skip
    counts_c, counts_s = _counts(canary), _counts(stable)
    missing = _no_data(counts_c and counts_c[1], counts_s and counts_s[1])
    if missing:
        return MetricResult(metric.name, "inconclusive", reason=missing)
    (events_c, total_c), (events_s, total_s) = counts_c, counts_s
    return _compared(
        metric,
        difference_interval(events_c, total_c, events_s, total_s, alpha, metric.margin),
        _guards(metric, events_c, total_c, alpha),
        (events_c / total_c, events_s / total_s),
        samples=total_c,
        needed=metric.minimum_sample(alpha, beta),
        what="rate",
    )


def _counts(series: Mapping[str, Series]) -> tuple[int, int] | None:
    events, total = _number(series["events"]), _number(series["total"])
    if events is None or total is None:
        return None
    # increase() extrapolates, and two queries are scraped apart: whole counts, consistent.
    total = max(0, round(total))
    return min(max(0, round(events)), total), total


def _guards(metric: MetricSpec, events: int, total: int, alpha: float) -> list[str]:
    """Absolute bounds the canary is beyond on evidence, each as a line."""
    rate = proportion_interval(events, total, alpha, metric.margin or 0.5)
    broken = []
    if metric.max is not None and rate.low > metric.max:
        broken.append(f"its rate {rate.estimate:.2%} is above the max {metric.max:.2%}")
    if metric.min is not None and rate.high < metric.min:
        broken.append(f"its rate {rate.estimate:.2%} is below the min {metric.min:.2%}")
    return broken


# -- latency ------------------------------------------------------------------------------


def _latency(
    metric: MetricSpec, canary: Mapping[str, Series], stable: Mapping[str, Series],
    alpha: float, beta: float,
) -> MetricResult:  # fmt: skip
    """The share slower than each bucket bound of the stable's tail (from the bound at or
    above its p90 to the one past its p99), canary against stable: a slowdown shows at
    some bound however the bounds fall around the stable's p99."""
    buckets_c, buckets_s = _buckets(canary["buckets"]), _buckets(stable["buckets"])
    missing = _no_data(buckets_c and buckets_c[-1][1], buckets_s and buckets_s[-1][1])
    if missing:
        return MetricResult(metric.name, "inconclusive", reason=missing)
    p99_s, p99_c = histogram_quantile(_TAIL, buckets_s), histogram_quantile(_TAIL, buckets_c)
    total_c, total_s = round(buckets_c[-1][1]), round(buckets_s[-1][1])
    slow = {}
    for bound in _tail_bounds(buckets_s, p99_s):
        slow_c = _above(bound, buckets_c)
        if slow_c is not None:  # a bound the canary's histogram has too
            slow[bound] = (slow_c, _above(bound, buckets_s))
    if not slow:
        return MetricResult(metric.name, "inconclusive", reason="the canary has other buckets")
    per_bound = alpha / len(slow)
    intervals = {
        bound: difference_interval(c, total_c, s, total_s, per_bound, metric.margin)
        for bound, (c, s) in slow.items()
    }
    moved = max(intervals, key=lambda bound: intervals[bound].estimate)
    guard = _tail_guard(metric, p99_s, buckets_c, total_c, alpha)
    result = _compared(
        metric,
        _largest(intervals.values(), magnitude=False),
        [guard] if guard else [],
        (slow[moved][0] / total_c, slow[moved][1] / total_s),
        samples=total_c,
        needed=metric.minimum_sample(alpha, beta, len(slow)),
        what=f"largest change of the share slower than a tail bound (at {moved:g} s)",
    )
    return replace(result, extra={"canary_p99_s": p99_c, "stable_p99_s": p99_s})


def _tail_bounds(buckets: list[tuple[float, float]], p99: float) -> list[float]:
    """The finite bounds from the one at or above the p90 to the one past the p99."""
    finite = [bound for bound, _ in buckets if math.isfinite(bound)]
    low = _bound_at_or_above(histogram_quantile(0.9, buckets), buckets)
    high = _bound_at_or_above(p99, buckets)
    past = finite.index(high) + 1 if high in finite else len(finite)
    return [bound for bound in finite[: past + 1] if bound >= low]


def _tail_guard(
    metric: MetricSpec, p99_s: float, buckets: list[tuple[float, float]], total: int, alpha: float
) -> str:
    """Broken when the canary's p99 is above the limit on evidence: more than 1 % of its
    requests slower than the first bucket at or above the limit."""
    limit = metric.tail_ratio * p99_s + metric.tail_slack_s
    bound = _bound_at_or_above(limit, buckets)
    slow = _above(bound, buckets)
    if slow is None or not limit <= bound < math.inf:  # no bucket to measure the limit by
        return ""
    share = proportion_interval(slow, total, alpha, metric.margin or 0.5)
    if share.low <= 1 - _TAIL:
        return ""
    return (
        f"its p99 is above {metric.tail_ratio:g} x the stable's {p99_s * 1000:.1f} ms + "
        f"{metric.tail_slack_s * 1000:g} ms: {share.estimate:.2%} of its requests took over "
        f"{bound:g} s"
    )


def _buckets(series: Series) -> list[tuple[float, float]]:
    """Cumulative buckets sorted by bound, ``+Inf`` last; empty when it has none, or a
    count that is not a finite number."""
    buckets = sorted((float(bound), count) for bound, count in series.items())
    if not buckets or not math.isinf(buckets[-1][0]):
        return []
    if not all(math.isfinite(count) for _, count in buckets):
        return []
    return buckets


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """The ``q`` quantile of cumulative buckets as Prometheus' ``histogram_quantile`` gives
    it: linear within the bucket, the highest finite bound when it falls in ``+Inf``."""
    total = buckets[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            within = (rank - lower_count) / (count - lower_count)
            return lower_bound + (bound - lower_bound) * within
        lower_bound, lower_count = bound, count
    return lower_bound


def _bound_at_or_above(value: float, buckets: list[tuple[float, float]]) -> float:
    finite = [bound for bound, _ in buckets if math.isfinite(bound)]
    return next((bound for bound in finite if bound >= value), finite[-1] if finite else math.inf)


def _above(bound: float, buckets: list[tuple[float, float]]) -> int | None:
    """Requests slower than ``bound``; None when the histogram has no such bucket."""
    at = dict(buckets).get(bound)
    return None if at is None else max(0, round(buckets[-1][1]) - round(at))


# -- distributions ------------------------------------------------------------------------


def _distribution(
    metric: MetricSpec, canary: Mapping[str, Series], stable: Mapping[str, Series],
    alpha: float, beta: float,
) -> MetricResult:  # fmt: skip
    """The largest change of any category's share, every category at once. The sample is
    the request, not the row: rows of one request (a batch from one client) are alike, and
    a share's variance over requests is at most p(1 - p) per request."""
    shares_c = _categories(metric, canary["counts"], _number(canary["requests"]))
    shares_s = _categories(metric, stable["counts"], _number(stable["requests"]))
    missing = _no_data(shares_c and shares_c.requests, shares_s and shares_s.requests)
    if missing:
        return MetricResult(metric.name, "inconclusive", reason=missing)
    names = sorted(set(shares_c.shares) | set(shares_s.shares), key=_category_order)
    per_category = alpha / max(1, len(names))
    intervals = {
        name: rate_difference_interval(
            shares_c.shares.get(name, 0.0), shares_c.requests,
            shares_s.shares.get(name, 0.0), shares_s.requests, per_category, metric.margin,
        )
        for name in names
    }  # fmt: skip
    moved = max(names, key=lambda name: abs(intervals[name].estimate))
    what = "distribution function" if metric.label == "le" else "share"
    return _compared(
        metric,
        _largest(intervals.values(), magnitude=True),
        _relative_guard(metric, intervals, shares_s.shares),
        (shares_c.shares.get(moved, 0.0), shares_s.shares.get(moved, 0.0)),
        samples=shares_c.requests,
        needed=metric.minimum_sample(alpha, beta, len(names)),
        what=f"largest change of a {what} (at {metric.label} {moved})",
        magnitude=True,
    )


@dataclass(frozen=True)
class _Shares:
    """Each category's share of the rows (a histogram's: the distribution function at each
    bound), and the requests they came from."""

    shares: dict[str, float]
    requests: int


def _categories(metric: MetricSpec, series: Series, requests: float | None) -> _Shares | None:
    values = list(series.values())
    if not series or requests is None or not all(math.isfinite(v) for v in values):
        return None
    counts = {name: max(0.0, value) for name, value in series.items()}
    total = counts.pop("+Inf", None) if metric.label == "le" else sum(counts.values())
    if not total:
        return None
    shares = {name: min(1.0, count / total) for name, count in counts.items()}
    return _Shares(shares, min(max(0, round(requests)), round(total)))


def _relative_guard(
    metric: MetricSpec, intervals: Mapping[str, Interval], stable: Mapping[str, float]
) -> list[str]:
    """Categories whose share moved, on evidence, by more than ``relative_margin`` of the
    stable's share of them."""
    if metric.relative_margin is None:
        return []
    return [
        f"the share of {metric.label} {name} moved by {interval.estimate:+.2%} from stable's "
        f"{stable.get(name, 0.0):.2%}, beyond {metric.relative_margin:.0%} of it"
        for name, interval in intervals.items()
        if interval.distance_from_zero() > metric.relative_margin * stable.get(name, 0.0)
    ]


def _category_order(name: str) -> tuple[float, str]:
    try:
        return float(name), name
    except ValueError:
        return math.inf, name


# -- gauges -------------------------------------------------------------------------------


def _gauge(
    metric: MetricSpec, canary: Mapping[str, Series], stable: Mapping[str, Series],
    alpha: float, beta: float,
) -> MetricResult:  # fmt: skip
    value_c, value_s = _number(canary["value"]), _number(stable["value"])
    # Only a margin compares with the stable revision; bounds need the canary alone.
    if value_c is None or (value_s is None and metric.margin is not None):
        whose = "the canary" if value_c is None else "the stable revision"
        return MetricResult(metric.name, "inconclusive", reason=f"no value for {whose}")
    broken = []
    if metric.margin is not None and value_s is not None:
        change = _relative_change(value_c, value_s)
        worse = {"lower": change, "higher": -change, "either": abs(change)}[metric.direction]
        if worse > metric.margin:
            broken.append(f"it differs from stable by {change:+.1%}, beyond {metric.margin:.1%}")
    if metric.max is not None and value_c > metric.max:
        broken.append(f"{value_c:g} is above the max {metric.max:g}")
    if metric.min is not None and value_c < metric.min:
        broken.append(f"{value_c:g} is below the min {metric.min:g}")
    outcome: Outcome = "fail" if broken else "pass"
    against = "" if value_s is None else f" against stable's {value_s:g}"
    reason = "; ".join(broken) or f"{value_c:g}{against}"
    return MetricResult(metric.name, outcome, value_c, value_s, "gauge, as measured", reason)


def _relative_change(canary: float, stable: float) -> float:
    if stable == 0:
        return 0.0 if canary == 0 else math.copysign(math.inf, canary)
    return (canary - stable) / abs(stable)


_JUDGES = {
    "proportion": _proportion,
    "latency": _latency,
    "distribution": _distribution,
    "gauge": _gauge,
}


# -- shared -------------------------------------------------------------------------------


def _compared(
    metric: MetricSpec,
    interval: Interval,
    broken_guards: list[str],
    values: tuple[float, float],
    samples: int,
    needed: int,
    what: str,
    magnitude: bool = False,
) -> MetricResult:
    """The outcome of canary minus stable (with ``magnitude``, of a size of change: the
    distributions') against the margin, and of the guards."""
    margin = metric.margin or 0.0
    if magnitude:
        worse, within = interval.low > margin, interval.high <= margin
    else:
        worse, within = _against_margin(interval, margin, metric.direction)
    test = (
        f"{what}: {_points(interval.estimate)} [{_points(interval.low)}, "
        f"{_points(interval.high)}] against a margin of {_points(margin)}"
    )
    result = MetricResult(metric.name, "pass", *values, test=test, samples=samples, needed=needed)
    if worse or broken_guards:
        beyond = [f"worse than stable beyond the margin ({test})"] if worse else []
        return replace(result, outcome="fail", reason="; ".join(beyond + broken_guards))
    if samples < needed:
        return replace(
            result,
            outcome="inconclusive",
            reason=f"{samples} canary samples of the {needed} the policy needs ({test})",
        )
    if not within:
        return replace(
            result, outcome="inconclusive", reason=f"not yet told apart from the margin ({test})"
        )
    return replace(result, reason=f"within the margin over {samples} canary samples")


def _largest(intervals: Iterable[Interval], magnitude: bool) -> Interval:
    """Several comparisons as one: beyond the margin when any is, within when all are.
    With ``magnitude``, of the size of each change (either direction is worse)."""
    intervals = list(intervals)
    if magnitude:
        return Interval(
            max(abs(i.estimate) for i in intervals),
            max(i.distance_from_zero() for i in intervals),
            max(i.magnitude() for i in intervals),
        )
    return Interval(
        max(i.estimate for i in intervals),
        max(i.low for i in intervals),
        max(i.high for i in intervals),
    )


def _against_margin(interval: Interval, margin: float, direction: str) -> tuple[bool, bool]:
    """(worse beyond the margin, within it), both on evidence, for canary minus stable."""
    if direction == "lower":
        return interval.low > margin, interval.high <= margin
    if direction == "higher":
        return interval.high < -margin, interval.low >= -margin
    return (
        interval.low > margin or interval.high < -margin,
        interval.low >= -margin and interval.high <= margin,
    )


def _no_data(canary: object, stable: object) -> str:
    if not canary:
        return "nothing measured for the canary (an empty or NaN result, or a count of 0)"
    if not stable:
        return (
            "nothing measured for the stable revision to compare with (an empty or NaN "
            "result, or a count of 0)"
        )
    return ""


def _number(series: Series) -> float | None:
    """A single number; None when there is none, or it is NaN or infinite."""
    value = series.get("")
    return None if value is None or not math.isfinite(value) else value


def _points(value: float) -> str:
    return f"{value * 100:+.2f} pts"


# -- a rollout's looks --------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """What a look decides for its step: ``pass`` (advance), ``fail`` (roll back) or
    ``wait`` (look again after another interval), and why."""

    action: Literal["pass", "fail", "wait"]
    reason: str


@dataclass
class AnalysisRun:
    """Inconclusive looks in the current step and query errors in a row, per metric."""

    policy: CanaryPolicy
    inconclusive: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def next_step(self) -> None:
        self.inconclusive = 0

    def decide(self, judgement: Judgement, warming_up: bool = False) -> Decision:
        """The step's decision after one look (a warm-up look's inconclusive results do not
        count against the limit)."""
        for result in judgement.results:
            self.errors[result.name] = self.errors.get(result.name, 0) + 1 if (
                result.outcome == "error"
            ) else 0  # fmt: skip
        outcome = judgement.outcome
        if outcome == "fail":
            return Decision("fail", judgement.reason)
        limit = self.policy.consecutive_error_limit
        over = [name for name, count in self.errors.items() if count > limit]
        if over:
            return Decision(
                "fail", f"{', '.join(over)}: queries failed {limit + 1} times in a row; last: "
                f"{judgement.reason}",
            )  # fmt: skip
        if outcome == "error":
            return Decision("wait", f"retrying: {judgement.reason}")
        if outcome == "inconclusive":
            self.inconclusive += 0 if warming_up else 1
            if self.inconclusive > self.policy.inconclusive_limit:
                return Decision(
                    "fail", f"still inconclusive after {self.inconclusive} looks (the limit is "
                    f"{self.policy.inconclusive_limit}): {judgement.reason}",
                )  # fmt: skip
            return Decision("wait", judgement.reason)
        return Decision("pass", judgement.reason)


def render_table(judgement: Judgement) -> list[str]:
    """The judgement as a Markdown table: one row per metric."""
    header = ("metric", "outcome", "canary", "stable", "samples", "test", "reason")
    return table(
        header,
        (
            [
                r.name,
                f"**{r.outcome}**",
                _value(r.canary),
                _value(r.stable),
                f"{r.samples} of {r.needed}" if r.needed else str(r.samples or "-"),
                r.test or "-",
                r.reason,
            ]  # fmt: skip
            for r in judgement.results
        ),
    )


def _value(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"
