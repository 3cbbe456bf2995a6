"""The canary policy: which metrics judge a canary, their PromQL, margins and error rates.

A policy is data (YAML for ``conveyor rollout --policy FILE`` and ``conveyor judge``, a
dict for the pipeline's ``canary_policy`` parameter). Its ``metrics`` are merged by name
onto the defaults: an entry named like a default changes the fields it gives, any other
name adds a metric. Each metric has a kind:

- ``proportion``: ``events`` out of ``total`` requests (5xx, 4xx, a business rate);
- ``latency``: a Prometheus histogram's buckets (``sum by (le)``); the share of requests
  slower than each bound of the stable revision's tail (p90 to past p99) is compared, and
  the canary's p99 is held to ``tail_ratio`` x the stable's + ``tail_slack_s``;
- ``distribution``: counts by a label (``class``, or a histogram's ``le``) and the
  ``requests`` they came from: the largest change of any category's share (of any point of
  the distribution function, for ``le``), a request being one sample;
- ``gauge``: one number per revision, compared as it is (no statistics: no error rates).

A metric may apply to one task only (``task``): ``predicted_class`` and ``score`` are built
on series only a classifier's predictor has, ``predicted_value`` (the distribution of the
predicted numbers, on a grid every model shares) on one only a regressor's has. A rollout
judges the metrics that apply to the model it rolls out (``CanaryPolicy.for_task``, the task
read from the model card); one that does not apply is not judged at all, so it can neither
hold a rollout inconclusive nor pass it by default.

Queries are templates: ``$namespace``, ``$revision`` and ``$range`` (all traffic since the
canary started, as a PromQL duration) are filled in, once for the canary and once for the
stable revision (``stable_queries`` replaces a query for the stable revision).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from string import Template
from typing import Any

from conveyor.components.core.errors import ConveyorError
from conveyor.components.core.files import read_yaml
from conveyor.components.core.rollout.sequential import minimum_sample_size

__all__ = [
    "DEFAULT_METRICS",
    "DEFAULT_POLICY",
    "KINDS",
    "REMOVED_SETTINGS",
    "CanaryPolicy",
    "MetricSpec",
    "TASKS",
    "describe_policy",
    "fill_query",
    "load_policy",
]

# The queries each kind of metric needs.
KINDS = {
    "proportion": ("events", "total"),
    "latency": ("buckets",),
    "distribution": ("counts", "requests"),
    "gauge": ("value",),
}
_STATISTICAL = ("proportion", "latency", "distribution")
# data.task's CLASSIFICATION and TASKS, spelled here so the CLI starts without pandas (a test
# checks they agree).
CLASSIFICATION = "classification"
TASKS = (CLASSIFICATION, "regression")
# conveyor_predicted_value's finite bounds (http_layer.VALUE_BUCKETS, checked by a test): the
# judge compares the distribution function at each.
_VALUE_BOUNDS = 263
_DIRECTIONS = ("lower", "higher", "either")
_VARIABLES = ("namespace", "revision", "range")
_SMALLEST_MARGIN = 1e-4
_SMALLEST_RATE = 1e-6
# More looks than a rollout could take (a deadline of weeks at a one-minute interval).
_MAX_LOOKS = 10_000
_MAX_CATEGORIES = 1000
_SELECTOR = 'namespace="$namespace",revision="$revision"'
_REQUESTS = "conveyor_inference_requests_total"

# Settings of earlier releases, and what took their place: a saved config, schedule or
# policy that still sets one is refused with this line.
REMOVED_SETTINGS = {
    "on_no_data": "too few requests are now an inconclusive result, which waits another "
    "interval up to canary_policy's inconclusive_limit and then fails, never passes",
    "min_success_rate": "set the server_errors metric of canary_policy (margin against the "
    "stable revision, max)",
    "max_latency_p99_s": "set the latency metric of canary_policy (margin, tail_ratio, "
    "tail_slack_s)",
    "min_canary_requests": "the minimum sample size now follows from canary_policy's margins "
    "and error rates",
    "analysis_window": "each analysis now covers all canary traffic since the canary started",
    "analysis_queries": "give each metric's PromQL templates in canary_policy's metrics",
    "failure_budget": "a failed metric is now evidence at canary_policy's "
    "false_promotion_rate; an inconclusive one waits up to inconclusive_limit",
}


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConveyorError(f"{name}: must be one of {', '.join(choices)}, not {value!r}")


def _check_share(name: str, value: float) -> None:
    if not 0 < value < 1:
        raise ConveyorError(f"{name}: must be above 0 and below 1, not {value}")


def _check_template(where: str, query: str) -> None:
    try:
        Template(query).substitute(dict.fromkeys(_VARIABLES, "x"))
    except KeyError as error:
        raise ConveyorError(
            f"{where}: ${error.args[0]} is not one of $namespace, $revision, $range "
            "(write $$ for a literal $)"
        ) from None
    except ValueError:
        raise ConveyorError(f"{where}: a lone $ (write $$ for a literal $)") from None


@dataclass(frozen=True)
class MetricSpec:
    """One metric of a canary policy.

    Attributes:
        name: What the report and Metrics call it.
        kind: ``proportion``, ``latency``, ``distribution`` or ``gauge``.
        queries: PromQL template by role (the roles of the kind: ``KINDS``).
        stable_queries: Templates replacing ``queries`` for the stable revision.
        direction: Which change is worse: ``lower`` (a higher canary value is worse, as
            errors), ``higher`` (a lower one is), ``either``. Distributions: always either.
        margin: How much worse than stable the canary may be: rate points for proportions
            and latency (the share slower than each bucket bound of the stable's tail),
            the largest change of a share for distributions, a relative change for gauges.
        baseline: The largest rate expected of the stable revision; sets the minimum
            sample size (0.5, the most variable, for distributions).
        max: Absolute guard: the canary fails when its rate (gauge: value) is above this.
        min: Absolute guard: the canary fails when its rate (gauge: value) is below this.
        label: Distributions: the label whose values are the categories (``le``: a
            histogram's buckets, compared as a distribution function).
        relative_margin: Distributions by a label other than ``le``: a guard failing when
            a category's share moves by more than this fraction of the stable's share (a
            rare class that vanishes moves by little in points).
        categories: How many categories (latency: tail bounds) are compared, for the
            minimum sample; the judge uses the number it finds.
        tail_ratio: Latency: the canary's p99 must stay within ``tail_ratio`` x the
            stable's p99 + ``tail_slack_s``.
        tail_slack_s: See ``tail_ratio``.
        warmup: Left out during the canary's first interval (a cold revision is slower).
        enabled: False leaves a metric, a default one included, unjudged.
        task: The models it is judged for: ``classification``, ``regression``, or empty for
            both; a rollout of a model of the other task does not judge it.
    """

    name: str
    kind: str
    queries: Mapping[str, str]
    stable_queries: Mapping[str, str] = field(default_factory=dict)
    direction: str = "lower"
    margin: float | None = None
    baseline: float = 0.5
    max: float | None = None
    min: float | None = None
    label: str = ""
    relative_margin: float | None = None
    categories: int = 1
    tail_ratio: float = 1.2
    tail_slack_s: float = 0.01
    warmup: bool = False
    enabled: bool = True
    task: str = ""

    def __post_init__(self) -> None:
        _check_choice("kind", self.kind, tuple(KINDS))
        if self.task and self.task not in TASKS:
            raise ConveyorError(
                f"task: must be one of {', '.join(TASKS)}, or empty for both, not {self.task!r}"
            )
        _check_choice("direction", self.direction, _DIRECTIONS)
        self._check_queries()
        for name in ("margin", "baseline", "max", "min", "relative_margin", "tail_ratio",
                     "tail_slack_s"):  # fmt: skip
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ConveyorError(f"{name}: must be a finite number, not {value}")
        if self.statistical:
            self._check_statistical()
        elif self.margin is None and self.max is None and self.min is None:
            raise ConveyorError("margin, max, min: a gauge needs one of them to be judged by")
        elif self.margin is not None and self.margin < 0:
            raise ConveyorError(f"margin: must be 0 or more, not {self.margin}")
        self._check_bounds()
        if self.tail_ratio < 1 or self.tail_slack_s < 0:
            raise ConveyorError(
                f"tail_ratio, tail_slack_s: must be 1 or more and 0 or more, not "
                f"{self.tail_ratio} and {self.tail_slack_s}"
            )

    def _check_statistical(self) -> None:
        if self.margin is None:
            raise ConveyorError(f"margin: a {self.kind} metric needs one")
        if not _SMALLEST_MARGIN <= self.margin < 1:  # smaller: no traffic could tell
            raise ConveyorError(
                f"margin: must be at least {_SMALLEST_MARGIN} and below 1, not {self.margin}"
            )
        _check_share("baseline", self.baseline)
        if not 1 <= self.categories <= _MAX_CATEGORIES:
            raise ConveyorError(
                f"categories: must be 1 to {_MAX_CATEGORIES}, not {self.categories}"
            )
        if self.kind == "distribution" and not self.label:
            raise ConveyorError("label: a distribution needs the label naming its categories")
        if self.relative_margin is not None and (
            self.kind != "distribution" or self.label == "le" or self.relative_margin <= 0
        ):
            raise ConveyorError(
                "relative_margin: only a distribution of categories (not le) has one, above 0"
            )

    def _check_bounds(self) -> None:
        if self.max is None and self.min is None:
            return
        if self.kind not in ("proportion", "gauge"):
            raise ConveyorError("max, min: only proportions and gauges have absolute bounds")
        if self.kind == "proportion" and any(
            bound is not None and not 0 <= bound <= 1 for bound in (self.max, self.min)
        ):
            raise ConveyorError(f"max, min: a rate's bounds are 0-1, not {self.max}, {self.min}")
        if self.max is not None and self.min is not None and self.min > self.max:
            raise ConveyorError(f"max, min: min {self.min} is above max {self.max}")

    @property
    def statistical(self) -> bool:
        return self.kind in _STATISTICAL

    def applies_to(self, task: str) -> bool:
        """Whether a model of ``task`` is judged by this metric."""
        return not self.task or self.task == task

    @property
    def comparisons(self) -> int:
        """The statistical comparisons this metric makes (its test and its guards)."""
        if not self.statistical:
            return 0
        guards = (
            (self.max is not None)
            + (self.min is not None)
            + (self.kind == "latency")
            + (self.relative_margin is not None)
        )
        return 1 + guards

    @property
    def two_sided(self) -> bool:
        """Whether passing needs the change bounded on both sides."""
        return self.kind == "distribution" or self.direction == "either"

    def minimum_sample(self, alpha: float, beta: float, categories: int | None = None) -> int:
        """Canary samples (requests) at which a canary equal to stable passes this metric
        with probability ``1 - beta``, its test at ``alpha``, ``categories`` compared at
        once (Bonferroni over them, and over both sides for a two-sided test)."""
        count = categories or self.categories
        sides = 2 if self.two_sided else 1
        return minimum_sample_size(
            self.baseline, self.margin or 0.0, alpha / count, beta / (sides * count)
        )

    def query(self, role: str, stable: bool) -> str:
        return (self.stable_queries if stable else {}).get(role) or self.queries[role]

    def _check_queries(self) -> None:
        wanted = KINDS[self.kind]
        for label, given in (("queries", self.queries), ("stable_queries", self.stable_queries)):
            unknown = sorted(set(given) - set(wanted), key=str)
            if unknown:
                raise ConveyorError(
                    f"{label}: a {self.kind} metric has no {', '.join(map(str, unknown))} query; "
                    f"it has "
                    f"{', '.join(wanted)}"
                )
            for role, query in given.items():
                if not isinstance(query, str) or not query.strip():
                    raise ConveyorError(f"{label}.{role}: must be a PromQL template, not {query!r}")
                _check_template(f"{label}.{role}", query)
        missing = [role for role in wanted if role not in self.queries]
        if missing:
            raise ConveyorError(f"queries: a {self.kind} metric needs {', '.join(missing)}")


def _requests(codes: str = "") -> str:
    """Inference requests whose code matches ``codes`` (a label matcher list), or all."""
    selector = _SELECTOR + (f",{codes}" if codes else "")
    return f"sum(increase({_REQUESTS}{{{selector}}}[$range]))"


def _or_zero(query: str) -> str:
    """0 where no series matches: a revision that answered no 5xx may have no such series."""
    return f"({query} or vector(0))"


DEFAULT_METRICS = (
    MetricSpec(
        name="server_errors",
        kind="proportion",
        # 501 is KServe's answer to a client asking for a model version: not a failure.
        queries={"events": _or_zero(_requests('code=~"5..",code!="501"')), "total": _requests()},
        direction="lower",
        margin=0.01,
        baseline=0.005,
        max=0.05,
    ),
    MetricSpec(
        name="client_errors",
        kind="proportion",
        queries={"events": _or_zero(_requests('code=~"4.."')), "total": _requests()},
        direction="lower",
        margin=0.02,
        baseline=0.01,
    ),
    MetricSpec(
        name="latency",
        kind="latency",
        queries={
            "buckets": "sum by (le) (increase(conveyor_inference_request_duration_seconds_bucket"
            f"{{{_SELECTOR}}}[$range]))"
        },
        margin=0.05,
        baseline=0.1,
        categories=4,
        warmup=True,
    ),
    MetricSpec(
        name="predicted_class",
        kind="distribution",
        queries={
            "counts": f"sum by (class) (increase(conveyor_predictions_total{{{_SELECTOR}}}"
            "[$range]))",
            "requests": _requests('code="200"'),
        },
        direction="either",
        margin=0.1,
        label="class",
        relative_margin=0.5,
        categories=10,
        task="classification",  # a regressor's predictor counts no class
    ),
    MetricSpec(
        name="score",
        kind="distribution",
        queries={
            "counts": "sum by (le) (increase(conveyor_prediction_score_bucket"
            f"{{{_SELECTOR}}}[$range]))",
            "requests": _requests('code="200"'),
        },
        direction="either",
        margin=0.1,
        label="le",
        categories=20,
        task="classification",  # a regressor's predictor observes no score
    ),
    MetricSpec(
        name="predicted_value",
        kind="distribution",
        # One grid for every model and revision (http_layer.VALUE_BUCKETS), so the canary's
        # distribution function is compared with the stable's at each bound, as score's is.
        queries={
            "counts": "sum by (le) (increase(conveyor_predicted_value_bucket"
            f"{{{_SELECTOR}}}[$range]))",
            "requests": _requests('code="200"'),
        },
        direction="either",
        margin=0.1,
        label="le",
        categories=_VALUE_BOUNDS,
        task="regression",  # only a regressor's predictor observes values
    ),
    MetricSpec(
        name="restarts",
        kind="gauge",
        # A predictor that crashed (a poisonous input, out of memory) counted none of the
        # requests it lost; its restart shows as a new start time on the same pod.
        queries={
            "value": f"sum(changes(conveyor_predictor_start_time_seconds{{{_SELECTOR}}}[$range]))"
        },
        max=0,
    ),
)


@dataclass(frozen=True)
class CanaryPolicy:
    """How a canary is judged.

    Attributes:
        analysis: ``prometheus``, or ``none`` to roll out with no analysis at all (stated
            as such in the report, the step's Metrics and the summary).
        false_promotion_rate: The most a canary worse than a margin may be promoted, and a
            canary within every margin failed, across all metrics and however many looks.
        false_rollback_rate: The most a canary equal to stable may fail to pass every metric
            once it has served the minimum sample.
        inconclusive_limit: Looks per step that may be inconclusive, each followed by
            another interval, before the canary fails.
        consecutive_error_limit: Failed queries in a row a metric may have before the
            canary fails (Argo Rollouts' default, 4).
        metrics: What is measured and judged.
        task: The task of the model being judged (``classification``, the default, also
            for a model whose task cannot be known); only the metrics that apply to it are
            judged. Not a setting: the rollout sets it from the model card (``for_task``).
    """

    analysis: str = "prometheus"
    false_promotion_rate: float = 0.05
    false_rollback_rate: float = 0.05
    inconclusive_limit: int = 5
    consecutive_error_limit: int = 4
    metrics: tuple[MetricSpec, ...] = DEFAULT_METRICS
    task: str = CLASSIFICATION

    def __post_init__(self) -> None:
        _check_choice("analysis", self.analysis, ("prometheus", "none"))
        _check_choice("task", self.task, TASKS)
        for name in ("false_promotion_rate", "false_rollback_rate"):
            value = getattr(self, name)
            if not _SMALLEST_RATE <= value < 0.5:
                raise ConveyorError(
                    f"{name}: must be at least {_SMALLEST_RATE} and below 0.5, not {value}"
                )
        for name in ("inconclusive_limit", "consecutive_error_limit"):
            if not 0 <= getattr(self, name) <= _MAX_LOOKS:
                raise ConveyorError(
                    f"{name}: must be 0 to {_MAX_LOOKS} looks, not {getattr(self, name)}"
                )
        names = [metric.name for metric in self.metrics]
        if len(set(names)) != len(names):
            raise ConveyorError(f"metrics: names must differ: {names}")
        if self.analysis == "prometheus" and not self.judged:
            raise ConveyorError(
                f"metrics: none left to judge by for a {self.task} model (analysis: none says "
                "so plainly)"
            )

    def for_task(self, task: str) -> CanaryPolicy:
        """This policy judging a model of ``task``: the metrics that apply to it only."""
        return self if task == self.task else replace(self, task=task)

    @property
    def analysed(self) -> bool:
        return self.analysis != "none"

    @property
    def judged(self) -> tuple[MetricSpec, ...]:
        """The metrics judged: the enabled ones that apply to the model's task."""
        return tuple(m for m in self.metrics if m.enabled and m.applies_to(self.task))

    @property
    def comparison_alpha(self) -> float:
        """Each comparison's share of ``false_promotion_rate`` (Bonferroni)."""
        return self.false_promotion_rate / max(1, sum(m.comparisons for m in self.judged))

    @property
    def comparison_beta(self) -> float:
        """Each statistical metric's share of ``false_rollback_rate`` (Bonferroni)."""
        return self.false_rollback_rate / max(1, sum(m.statistical for m in self.judged))

    def minimum_samples(self) -> dict[str, int]:
        """Canary requests each statistical metric needs to pass a canary equal to stable,
        at the number of categories it expects."""
        alpha, beta = self.comparison_alpha, self.comparison_beta
        return {m.name: m.minimum_sample(alpha, beta) for m in self.judged if m.statistical}

    @classmethod
    def from_dict(cls, data: Any, source: str = "canary_policy") -> CanaryPolicy:
        """The policy a mapping describes, the defaults filling what it leaves out; one line
        naming ``source`` and the field for anything wrong."""
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConveyorError(f"{source}: expected a mapping of settings, not {data!r}")
        settings = dict(data)
        _refuse_removed(settings, source)
        if "task" in settings:
            raise ConveyorError(
                f"{source}.task: the model's task comes from its model card, not the policy; "
                "give a metric a task instead"
            )
        known = {f.name for f in fields(cls)} - {"task"}
        unknown = sorted(set(settings) - known, key=str)
        if unknown:
            raise ConveyorError(
                f"{source}: unknown setting {unknown[0]!r}; known: {', '.join(sorted(known))}"
            )
        metrics = _merged_metrics(settings.pop("metrics", []), source)
        for name, value in settings.items():
            _check_type(f"{source}.{name}", value, _SETTING_TYPES[name])
        try:
            return cls(**settings, metrics=metrics)
        except ConveyorError as error:
            raise ConveyorError(f"{source}.{error}") from None


DEFAULT_POLICY = CanaryPolicy()


def load_policy(path: Path) -> CanaryPolicy:
    """A policy file (YAML); one line naming the file and the field for anything wrong."""
    return CanaryPolicy.from_dict(read_yaml(path), str(path))


def describe_policy(policy: CanaryPolicy) -> list[str]:
    """The policy in a few Markdown lines: what is judged, at which error rates, and how
    many canary samples it takes."""
    if not policy.analysed:
        return [
            "- **analysis: none**: the canary is NOT judged; every step advances after its "
            "interval, whatever the canary does"
        ]
    needed = policy.minimum_samples()
    lines = [
        f"- a canary worse than stable beyond a margin is promoted, or one within every margin "
        f"failed, at most {policy.false_promotion_rate:.1%} of the time, over any number of "
        f"looks; one equal to stable passes with at least {1 - policy.false_rollback_rate:.1%} "
        f"once it has served {max(needed.values(), default=0)} requests (the largest minimum "
        "below)",
        f"- an inconclusive step is looked at again up to {policy.inconclusive_limit} times, "
        f"then fails; a metric whose queries fail {policy.consecutive_error_limit + 1} times "
        "in a row fails",
        f"- the model is a {policy.task} model: the metrics for {policy.task} models and for "
        "all models are judged",
    ]
    for metric in policy.metrics:
        if not metric.enabled:
            lines.append(f"- `{metric.name}`: not judged (enabled: false)")
            continue
        if not metric.applies_to(policy.task):
            lines.append(f"- `{metric.name}`: not judged ({metric.task} models only)")
            continue
        margin = "" if metric.margin is None else f", margin {metric.margin:g}"
        limits = (
            ("max", metric.max),
            ("min", metric.min),
            ("relative margin", metric.relative_margin),
        )
        bounds = "".join(f", {name} {value:g}" for name, value in limits if value is not None)
        sample = (
            f", minimum canary sample {needed[metric.name]} requests"
            + (f" at {metric.categories} categories" if metric.categories > 1 else "")
            if metric.statistical
            else ", no error rates"
        )
        task = f", {metric.task} models only" if metric.task else ""
        lines.append(
            f"- `{metric.name}` ({metric.kind}, {metric.direction}{margin}{bounds}{sample}{task})"
        )
    return lines


def fill_query(template: str, namespace: str, revision: str, range_s: float) -> str:
    """A query template with its variables filled in (the range in whole seconds)."""
    return Template(template).substitute(
        namespace=namespace, revision=revision, range=f"{max(1, math.ceil(range_s))}s"
    )


# -- checking what a user wrote -----------------------------------------------------------

_SETTING_TYPES: dict[str, tuple[type, ...]] = {
    "analysis": (str,),
    "false_promotion_rate": (int, float),
    "false_rollback_rate": (int, float),
    "inconclusive_limit": (int,),
    "consecutive_error_limit": (int,),
}
_METRIC_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "kind": (str,),
    "queries": (dict,),
    "stable_queries": (dict,),
    "direction": (str,),
    "margin": (int, float),
    "baseline": (int, float),
    "max": (int, float),
    "min": (int, float),
    "label": (str,),
    "relative_margin": (int, float),
    "categories": (int,),
    "tail_ratio": (int, float),
    "tail_slack_s": (int, float),
    "warmup": (bool,),
    "enabled": (bool,),
    "task": (str,),
}
_OPTIONAL_NUMBERS = ("margin", "max", "min", "relative_margin")


def _merged_metrics(entries: Any, source: str) -> tuple[MetricSpec, ...]:
    """The defaults with ``entries`` merged in by name (a new name adds a metric)."""
    if not isinstance(entries, list):
        raise ConveyorError(f"{source}.metrics: expected a list of metrics, not {entries!r}")
    merged = {metric.name: metric for metric in DEFAULT_METRICS}
    given: set[str] = set()
    for index, entry in enumerate(entries):
        where = f"{source}.metrics[{index}]"
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
            raise ConveyorError(f"{where}: expected a mapping with a name, not {entry!r}")
        where = f"{where} ({entry['name']})"
        if entry["name"] in given:
            raise ConveyorError(f"{where}: a second metric of that name; names must differ")
        given.add(entry["name"])
        unknown = sorted(set(entry) - set(_METRIC_TYPES), key=str)
        if unknown:
            raise ConveyorError(
                f"{where}: unknown field {unknown[0]!r}; known: {', '.join(_METRIC_TYPES)}"
            )
        for name, value in entry.items():
            if value is not None or name not in _OPTIONAL_NUMBERS:
                _check_type(f"{where}.{name}", value, _METRIC_TYPES[name])
        merged[entry["name"]] = _metric(merged.get(entry["name"]), dict(entry), where)
    return tuple(merged.values())


def _metric(default: MetricSpec | None, entry: dict[str, Any], where: str) -> MetricSpec:
    try:
        if default is None:
            if "kind" not in entry or "queries" not in entry:
                raise ConveyorError("kind, queries: a new metric needs both")
            return MetricSpec(**entry)
        if entry.get("kind", default.kind) != default.kind:
            raise ConveyorError(
                f"kind: the default {default.name!r} is a {default.kind} metric; give a "
                f"{entry['kind']} metric a name of its own"
            )
        # A default's queries are kept for the roles the entry does not give.
        if "queries" in entry:
            entry["queries"] = {**default.queries, **entry["queries"]}
        return replace(default, **entry)
    except ConveyorError as error:
        raise ConveyorError(f"{where}.{error}") from None


def _refuse_removed(settings: Mapping[str, Any], source: str) -> None:
    for name in settings:
        if name in REMOVED_SETTINGS:
            raise ConveyorError(f"{source}.{name}: was removed: {REMOVED_SETTINGS[name]}")


def _check_type(where: str, value: Any, accepted: tuple[type, ...]) -> None:
    if isinstance(value, bool) and bool not in accepted:
        accepted = ()  # `true` is no number
    if not isinstance(value, accepted):
        words = {str: "text", int: "a number", float: "a number", dict: "a mapping"}
        expected = words.get(accepted[0], "true or false") if accepted else "a number"
        raise ConveyorError(f"{where}: must be {expected}, not {value!r}")
