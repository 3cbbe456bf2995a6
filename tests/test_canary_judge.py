"""The canary judge as pure functions: policies, intervals, each kind of metric, the looks
of a rollout over synthetic measurement streams and an injected clock. No Prometheus here
(test_canary_analysis.py runs it live), and no sleeping in the judge."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.components.core.errors import ConveyorError
from conveyor.components.core.rollout.analysis import (
    AnalysisRun,
    Judgement,
    MetricResult,
    histogram_quantile,
    judge,
)
from conveyor.components.core.rollout.kube import InferenceServices
from conveyor.components.core.rollout.manifests import ServingSpec, render_inference_service
from conveyor.components.core.rollout.policy import (
    DEFAULT_POLICY,
    CanaryPolicy,
    MetricSpec,
    describe_policy,
    fill_query,
    load_policy,
)
from conveyor.components.core.rollout.prometheus import Sample, Series, duration_seconds
from conveyor.components.core.rollout.runner import (
    Rollout,
    RolloutFailed,
    RolloutPlan,
    RolloutSettings,
)
from conveyor.components.core.rollout.sequential import (
    difference_interval,
    minimum_sample_size,
    proportion_interval,
    radius,
)
from tests.doubles.kube_api import KubernetesApiDouble

CANARY, STABLE = "fraud-predictor-00002", "fraud-predictor-00001"

LATENCY_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
SCORE_BOUNDS = (0.25, 0.5, 0.75, 1.0)


# -- measurements, as Prometheus would answer them -----------------------------------------


def proportion(events: float, total: float) -> Sample:
    return Sample({"events": {"": events}, "total": {"": total}})


def histogram(counts: list[float], bounds: tuple[float, ...]) -> Series:
    """Cumulative ``le`` buckets from per-bucket counts (the last one is ``+Inf``'s own)."""
    assert len(counts) == len(bounds) + 1
    series, running = {}, 0.0
    for bound, count in zip([*map(str, bounds), "+Inf"], counts, strict=True):
        running += count
        series[bound] = running
    return series


def revision(
    requests: int = 4000,
    server_errors: float = 0.005,
    client_errors: float = 0.01,
    slower_buckets: int = 0,
    classes: dict[str, float] | None = None,
    scores: list[float] | None = None,
    rows_per_request: int = 1,
    restarts: float = 0,
) -> dict[str, Sample]:
    """Every default metric's answer for one revision, at expected values (no noise)."""
    latency = [0.3, 0.4, 0.2, 0.07, 0.025, 0.004, 0.001, 0.0, 0.0]  # shares per bucket
    for _ in range(slower_buckets):  # each request a bucket up: each about twice as slow
        latency = [0.0, *latency[:-2], latency[-2] + latency[-1]]
    answered = requests * (1 - server_errors - client_errors)
    rows = answered * rows_per_request
    classes = classes or {"benign": 0.63, "malignant": 0.37}
    scores = scores or [0.55, 0.08, 0.07, 0.30, 0.0]
    return {
        "server_errors": proportion(requests * server_errors, requests),
        "client_errors": proportion(requests * client_errors, requests),
        "latency": Sample({"buckets": histogram([requests * s for s in latency], LATENCY_BOUNDS)}),
        "predicted_class": Sample(
            {"counts": {k: rows * v for k, v in classes.items()}, "requests": {"": answered}}
        ),
        "score": Sample(
            {
                "counts": histogram([rows * s for s in scores], SCORE_BOUNDS),
                "requests": {"": answered},
            }
        ),
        "restarts": Sample({"value": {"": restarts}}),
    }


def results(judgement: Judgement) -> dict[str, MetricResult]:
    return {result.name: result for result in judgement.results}


# -- the policy -----------------------------------------------------------------------------


def test_an_empty_policy_is_the_default_one() -> None:
    assert CanaryPolicy.from_dict({}) == DEFAULT_POLICY == CanaryPolicy.from_dict(None)
    names = [metric.name for metric in DEFAULT_POLICY.metrics]
    assert names == [
        "server_errors",
        "client_errors",
        "latency",
        "predicted_class",
        "score",
        "predicted_value",
        "restarts",
    ]


def test_metrics_merge_by_name_and_a_business_metric_needs_no_code() -> None:
    policy = CanaryPolicy.from_dict(
        {
            "false_promotion_rate": 0.01,
            "metrics": [
                {"name": "server_errors", "margin": 0.005},
                {
                    "name": "approvals",
                    "kind": "proportion",
                    "direction": "either",
                    "margin": 0.05,
                    "baseline": 0.3,
                    "queries": {
                        "events": 'sum(increase(conveyor_predictions_total{revision="$revision",'
                        'class="approved"}[$range]))',
                        "total": 'sum(increase(conveyor_predictions_total{revision="$revision"}'
                        "[$range]))",
                    },
                },
            ],
        }
    )
    metrics = {metric.name: metric for metric in policy.metrics}
    assert list(metrics)[-1] == "approvals" and len(metrics) == 8
    assert metrics["server_errors"].margin == 0.005
    assert metrics["server_errors"].max == 0.05  # the default's other fields stay
    assert metrics["server_errors"].queries == DEFAULT_POLICY.metrics[0].queries
    # Comparisons: five statistical metrics, and guards: server_errors' max, the latency
    # tail, predicted_class's relative margin (the restarts gauge has no error rate): 9.
    assert policy.comparison_alpha == pytest.approx(0.01 / 9)
    canary = revision() | {"approvals": proportion(1000, 5000)}
    stable = revision(requests=9000) | {"approvals": proportion(13500, 45000)}
    judged = results(judge(policy, canary, stable))
    assert judged["approvals"].outcome == "fail"  # 20 % approved against 30 %: beyond 5 pts
    assert "worse than stable beyond the margin" in judged["approvals"].reason


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"on_no_data": "pass"}, "canary_policy.on_no_data: was removed: too few requests are now an inconclusive result"),
        ({"failure_budget": 2}, "canary_policy.failure_budget: was removed"),
        ({"false_promotion_rat": 0.1}, "canary_policy: unknown setting 'false_promotion_rat'; known: analysis, consecutive_error_limit"),
        ({"false_promotion_rate": 0.7}, "canary_policy.false_promotion_rate: must be at least 1e-06 and below 0.5, not 0.7"),
        ({"inconclusive_limit": True}, "canary_policy.inconclusive_limit: must be a number, not True"),
        ({"analysis": "skip"}, "canary_policy.analysis: must be one of prometheus, none, not 'skip'"),
        ({"metrics": {"name": "x"}}, "canary_policy.metrics: expected a list of metrics"),
        ({"metrics": [{"margin": 0.1}]}, "canary_policy.metrics[0]: expected a mapping with a name"),
        ({"metrics": [{"name": "latency", "margn": 0.1}]}, "canary_policy.metrics[0] (latency): unknown field 'margn'"),
        ({"metrics": [{"name": "latency", "margin": 1.5}]}, "canary_policy.metrics[0] (latency).margin: must be at least 0.0001 and below 1, not 1.5"),
        ({"metrics": [{"name": "latency", "margin": "big"}]}, "canary_policy.metrics[0] (latency).margin: must be a number, not 'big'"),
        ({"metrics": [{"name": "latency", "max": 0.5}]}, "canary_policy.metrics[0] (latency).max, min: only proportions and gauges have absolute bounds"),
        ({"metrics": [{"name": "x", "kind": "proportion", "queries": {"events": "up"}}]}, "canary_policy.metrics[0] (x).queries: a proportion metric needs total"),
        ({"metrics": [{"name": "x", "kind": "ratio", "queries": {}}]}, "canary_policy.metrics[0] (x).kind: must be one of proportion, latency, distribution, gauge, not 'ratio'"),
        ({"metrics": [{"name": "x", "kind": "gauge", "queries": {"value": "up"}}]}, "canary_policy.metrics[0] (x).margin, max, min: a gauge needs one of them"),
        ({"metrics": [{"name": "x", "kind": "gauge", "queries": {"value": "up"}}, {"name": "x"}]}, "canary_policy.metrics[0] (x).margin, max, min"),
        ({"metrics": [{"name": "x", "kind": "proportion", "margin": 0.1, "queries": {"events": "up", "total": "up{ns=\"$ns\"}"}}]}, "canary_policy.metrics[0] (x).queries.total: $ns is not one of $namespace, $revision, $range"),
        ({"metrics": [{"name": "score", "queries": {"value": "up"}}]}, "canary_policy.metrics[0] (score).queries: a distribution metric has no value query; it has counts"),
        ({"metrics": [{"name": "score", "stable_queries": {"counts": ""}}]}, "canary_policy.metrics[0] (score).stable_queries.counts: must be a PromQL template"),
        ({"metrics": [{"name": "score", "label": ""}]}, "canary_policy.metrics[0] (score).label: a distribution needs the label"),
        ({"metrics": [{"name": "latency", "tail_ratio": 0.9}]}, "canary_policy.metrics[0] (latency).tail_ratio, tail_slack_s: must be 1 or more"),
        ({1: "a", "foo": "b"}, "canary_policy: unknown setting 1; known: analysis"),
        ({"false_rollback_rate": 1e-320}, "canary_policy.false_rollback_rate: must be at least 1e-06"),
        ({"metrics": [{"name": "latency", "margin": 1e-200}]}, "canary_policy.metrics[0] (latency).margin: must be at least 0.0001"),
        ({"metrics": [{"name": "server_errors", "max": -1}]}, "canary_policy.metrics[0] (server_errors).max, min: a rate's bounds are 0-1, not -1"),
        ({"metrics": [{"name": "server_errors", "min": 0.1, "max": 0.05}]}, "canary_policy.metrics[0] (server_errors).max, min: min 0.1 is above max 0.05"),
        ({"metrics": [{"name": "server_errors", "max": float("nan")}]}, "canary_policy.metrics[0] (server_errors).max: must be a finite number, not nan"),
        ({"metrics": [{"name": "latency", "tail_ratio": float("inf")}]}, "canary_policy.metrics[0] (latency).tail_ratio: must be a finite number"),
        ({"metrics": [{"name": "x", "kind": "gauge", "max": 1, "queries": {"value": "up"}}, {"name": "x", "max": 2}]}, "canary_policy.metrics[1] (x): a second metric of that name"),
        ({"metrics": [{"name": "latency", "kind": "gauge"}]}, "canary_policy.metrics[0] (latency).kind: the default 'latency' is a latency metric; give a gauge metric a name of its own"),
        ({"metrics": [{"name": "score", "relative_margin": 0.5}]}, "canary_policy.metrics[0] (score).relative_margin: only a distribution of categories (not le)"),
        ({"metrics": [{"name": "score", "categories": 0}]}, "canary_policy.metrics[0] (score).categories: must be 1 to 1000, not 0"),
        ({"metrics": [{"name": "score", "queries": {1: "up"}}]}, "canary_policy.metrics[0] (score).queries: a distribution metric has no 1 query"),
        ({"metrics": [{"name": "restarts", "enabled": False}, {"name": "latency", "enabled": False}, {"name": "score", "enabled": False}, {"name": "predicted_class", "enabled": False}, {"name": "server_errors", "enabled": False}, {"name": "client_errors", "enabled": False}]}, "canary_policy.metrics: none left to judge by"),
    ],
)  # fmt: skip
def test_every_policy_field_is_checked_with_one_line_naming_it(policy: dict, message: str) -> None:
    with pytest.raises(ConveyorError) as error:
        CanaryPolicy.from_dict(policy)
    assert str(error.value).startswith(message)
    assert "\n" not in str(error.value)


def test_a_policy_file_names_itself_in_its_errors(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("metrics:\n  - name: latency\n    margin: -1\n")
    with pytest.raises(ConveyorError, match=rf"^{path}\.metrics\[0\] \(latency\)\.margin: must"):
        load_policy(path)
    path.write_text("metrics: [\n")
    with pytest.raises(ConveyorError, match=rf"^{path}: not valid YAML at line"):
        load_policy(path)
    with pytest.raises(ConveyorError, match=r"cannot read it"):
        load_policy(tmp_path / "missing.yaml")


def test_query_roles_are_filled_per_revision_with_stable_overrides() -> None:
    metric = MetricSpec(
        name="memory", kind="gauge", queries={"value": "a{r=\"$revision\"}"},
        stable_queries={"value": "b"}, margin=0.2,
    )  # fmt: skip
    assert metric.query("value", stable=False) == 'a{r="$revision"}'
    assert metric.query("value", stable=True) == "b"


def test_the_policy_describes_itself_with_its_error_rates_and_samples() -> None:
    lines = describe_policy(DEFAULT_POLICY)
    needed = max(DEFAULT_POLICY.minimum_samples().values())
    assert f"once it has served {needed} requests" in lines[0]
    assert "at most 5.0% of the time, over any number of looks" in lines[0]
    assert describe_policy(CanaryPolicy(analysis="none"))[0].startswith("- **analysis: none**")


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("10m", 600), ("1h30m", 5400), ("250ms", 0.25)]
)
def test_durations_read_as_promql_writes_them(text: str, seconds: float) -> None:
    assert duration_seconds(text, "--since") == seconds


@pytest.mark.parametrize("text", ["", "10", "10 m", "m", "1.5h", "-5m"])
def test_a_bad_duration_is_one_line(text: str) -> None:
    with pytest.raises(ConveyorError, match=rf"^--since '{text}': expected a duration"):
        duration_seconds(text, "--since")


# -- the statistics -------------------------------------------------------------------------


def test_the_minimum_sample_is_the_first_that_meets_the_formula() -> None:
    from statistics import NormalDist

    n = minimum_sample_size(0.005, 0.01, 0.01, 0.01)

    def meets(count: int) -> bool:
        variance = 2 * 0.005 * 0.995 / count
        z = NormalDist().inv_cdf(0.99)
        return z * math.sqrt(variance) + radius(variance, 0.01, 0.01) <= 0.01

    assert meets(n) and not meets(n - 1)
    # Wider margins and looser error rates need fewer samples.
    assert minimum_sample_size(0.005, 0.02, 0.01, 0.01) < n
    assert minimum_sample_size(0.005, 0.01, 0.05, 0.05) < n


def test_intervals_of_rare_events_have_width_before_any_event() -> None:
    none_yet = proportion_interval(0, 200, 0.01, 0.01)
    assert none_yet.estimate == 0 and none_yet.low == 0 < none_yet.high
    difference = difference_interval(0, 200, 0, 2000, 0.01, 0.01)
    assert difference.low < 0 < difference.high
    # More data, narrower; a real difference, an interval clear of 0.
    assert difference_interval(0, 20000, 0, 200000, 0.01, 0.01).high < difference.high
    worse = difference_interval(400, 2000, 100, 10000, 0.01, 0.05)
    assert worse.estimate == pytest.approx(0.19) and worse.low > 0.1


# -- each kind of metric --------------------------------------------------------------------


def test_a_canary_like_stable_with_enough_samples_passes_every_metric() -> None:
    judgement = judge(DEFAULT_POLICY, revision(requests=4000), revision(requests=36000))
    assert judgement.outcome == "pass", judgement.reason
    server_errors = results(judgement)["server_errors"]
    assert (server_errors.canary, server_errors.stable) == pytest.approx((0.005, 0.005))
    assert server_errors.needed == DEFAULT_POLICY.minimum_samples()["server_errors"]
    assert server_errors.reason == "within the margin over 4000 canary samples"


def test_too_few_samples_is_inconclusive_and_says_how_many_are_needed() -> None:
    judgement = judge(DEFAULT_POLICY, revision(requests=300), revision(requests=2700))
    assert judgement.outcome == "inconclusive"
    needed = DEFAULT_POLICY.minimum_samples()["server_errors"]
    reason = results(judgement)["server_errors"].reason
    assert reason.startswith(f"300 canary samples of the {needed} the policy needs (rate: ")


@pytest.mark.parametrize(
    ("canary", "metric", "reason"),
    [
        ({"server_errors": 0.03}, "server_errors", "worse than stable beyond the margin (rate: +2.50 pts"),
        ({"client_errors": 0.5}, "client_errors", "worse than stable beyond the margin (rate: +49.00 pts"),
        ({"slower_buckets": 2}, "latency", "worse than stable beyond the margin (largest change of the share slower than a tail bound (at 0.025 s)"),
        ({"classes": {"benign": 1.0}}, "predicted_class", "worse than stable beyond the margin (largest change of a share (at class benign)"),
        ({"scores": [0.30, 0.07, 0.08, 0.55, 0.0]}, "score", "worse than stable beyond the margin (largest change of a distribution function (at le 0.5)"),
    ],
)  # fmt: skip
def test_each_way_a_canary_is_bad_fails_its_metric(canary: dict, metric: str, reason: str) -> None:
    judgement = judge(DEFAULT_POLICY, revision(**canary), revision(requests=36000))
    assert judgement.outcome == "fail"
    failed = [r.name for r in judgement.results if r.outcome == "fail"]
    assert failed == [metric]
    assert results(judgement)[metric].reason.startswith(reason)


def test_a_canary_answering_only_400s_fails_within_a_hundred_requests() -> None:
    judgement = judge(
        DEFAULT_POLICY, revision(requests=100, client_errors=0.995), revision(requests=900)
    )
    assert results(judgement)["client_errors"].outcome == "fail"


def test_the_absolute_guard_fails_a_canary_as_bad_as_a_bad_stable() -> None:
    canary, stable = revision(server_errors=0.2), revision(requests=36000, server_errors=0.2)
    result = results(judge(DEFAULT_POLICY, canary, stable))["server_errors"]
    assert result.outcome == "fail"
    assert result.reason == "its rate 20.00% is above the max 5.00%"  # the comparison passed


def test_the_latency_tail_guard_measures_p99_against_stable() -> None:
    metric = MetricSpec("latency", "latency", {"buckets": "x"}, margin=0.2, warmup=True)
    policy = CanaryPolicy(metrics=(metric,))
    stable = {
        "latency": Sample(
            {"buckets": histogram([9000, 900, 90, 10, 0, 0, 0, 0, 0], LATENCY_BOUNDS)}
        )
    }
    tail = {
        "latency": Sample(
            {"buckets": histogram([8800, 900, 90, 10, 0, 200, 0, 0, 0], LATENCY_BOUNDS)}
        )
    }
    result = results(judge(policy, tail, stable))["latency"]
    assert result.outcome == "fail"  # 2 % of the canary past 0.1 s: its p99 is over the limit
    assert "its p99 is above 1.2 x the stable's" in result.reason
    assert result.extra["stable_p99_s"] == pytest.approx(histogram_quantile(0.99, _buckets(stable)))


def test_histogram_quantile_interpolates_as_prometheus_does() -> None:
    buckets = [(0.1, 50.0), (0.2, 90.0), (0.5, 100.0), (math.inf, 100.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.7, buckets) == pytest.approx(0.15)
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.2 + 0.3 * 9 / 10)
    assert histogram_quantile(0.99, [(0.1, 0.0), (math.inf, 10.0)]) == 0.1  # in +Inf


@pytest.mark.parametrize(
    ("direction", "canary_rate", "outcome"),
    [("lower", 0.40, "fail"), ("lower", 0.20, "pass"), ("higher", 0.20, "fail"),
     ("higher", 0.40, "pass"), ("either", 0.20, "fail"), ("either", 0.40, "fail"),
     ("either", 0.30, "pass")],
)  # fmt: skip
def test_a_proportion_is_worse_in_the_direction_it_names(
    direction: str, canary_rate: float, outcome: str
) -> None:
    metric = MetricSpec("rate", "proportion", {"events": "e", "total": "t"}, direction=direction,
                        margin=0.05, baseline=0.3)  # fmt: skip
    policy = CanaryPolicy(metrics=(metric,))
    canary = {"rate": proportion(canary_rate * 5000, 5000)}
    stable = {"rate": proportion(0.3 * 50000, 50000)}
    assert judge(policy, canary, stable).outcome == outcome


@pytest.mark.parametrize(
    ("canary", "stable", "outcome", "reason"),
    [(120.0, 100.0, "pass", "120 against stable's 100"),
     (130.0, 100.0, "fail", "it differs from stable by +30.0%, beyond 25.0%"),
     (90.0, 0.0, "fail", "it differs from stable by +inf%"),
     (600.0, 520.0, "fail", "600 is above the max 500"),
     (math.nan, 100.0, "inconclusive", "no value for the canary")],
)  # fmt: skip
def test_gauges_are_compared_as_measured(
    canary: float, stable: float, outcome: str, reason: str
) -> None:
    metric = MetricSpec("memory", "gauge", {"value": "v"}, margin=0.25, max=500)
    policy = CanaryPolicy(metrics=(metric,))
    result = judge(policy, {"memory": Sample({"value": {"": canary}})},
                   {"memory": Sample({"value": {"": stable}})}).results[0]  # fmt: skip
    assert (result.outcome, result.reason.startswith(reason)) == (outcome, True), result.reason


@pytest.mark.parametrize(
    ("canary", "reason"),
    [
        (Sample(error="Prometheus at http://p is unreachable: refused"), "Prometheus at http://p is unreachable"),
        (proportion(math.nan, math.nan), "nothing measured for the canary (an empty or NaN result, or a count of 0)"),
        (Sample({"events": {}, "total": {}}), "nothing measured for the canary"),
        (proportion(0, 0), "nothing measured for the canary"),
    ],
)  # fmt: skip
def test_errors_and_empty_or_nan_results_never_pass(canary: Sample, reason: str) -> None:
    judgement = judge(DEFAULT_POLICY, revision() | {"server_errors": canary}, revision(36000))
    result = results(judgement)["server_errors"]
    assert result.outcome == ("error" if canary.error else "inconclusive")
    assert result.reason.startswith(reason)
    assert judgement.outcome == result.outcome


def test_hostile_answers_are_clipped_not_crashed_on() -> None:
    # A reset or a skewed scrape: negative counts, more errors than requests.
    canary = revision() | {
        "server_errors": proportion(-5, 4000),
        "client_errors": proportion(9000, 4000),
    }
    judged = results(judge(DEFAULT_POLICY, canary, revision(36000)))
    assert judged["server_errors"].canary == 0
    assert judged["client_errors"].canary == 1 and judged["client_errors"].outcome == "fail"


def test_a_canary_judged_against_itself_is_refused() -> None:
    from conveyor.components.core.rollout.analysis import analyse
    from conveyor.components.core.rollout.prometheus import Prometheus, Window

    with pytest.raises(ConveyorError, match="the canary and the stable revision are both 'a'"):
        analyse(Prometheus("http://127.0.0.1:9"), DEFAULT_POLICY, "ns", "a", "a", Window(0, 60, 0))


def test_a_disabled_metric_is_not_judged_and_says_so() -> None:
    policy = CanaryPolicy.from_dict({"metrics": [{"name": "score", "enabled": False}]})
    canary = revision(scores=[0.30, 0.07, 0.08, 0.55, 0.0])  # a score that moved
    judgement = judge(policy, canary, revision(requests=36000))
    assert "score" not in results(judgement) and judgement.outcome == "pass"
    assert "- `score`: not judged (enabled: false)" in describe_policy(policy)


def test_distributions_count_requests_not_rows() -> None:
    # A hundred rows a request, alike within a request: 4000 requests, not 400,000 rows.
    judged = results(judge(DEFAULT_POLICY, revision(rows_per_request=100), revision(36000)))
    assert judged["predicted_class"].samples == round(4000 * 0.985)
    assert judged["score"].samples == round(4000 * 0.985)


def test_a_rare_class_that_vanishes_fails_on_its_relative_margin() -> None:
    stable = revision(requests=36000, classes={"legit": 0.99, "fraud": 0.01})
    canary = revision(requests=20000, classes={"legit": 1.0})  # never flags fraud
    result = results(judge(DEFAULT_POLICY, canary, stable))["predicted_class"]
    assert result.outcome == "fail"
    assert "the share of class fraud moved by -1.00% from stable's 1.00%, beyond 50% of it" in (
        result.reason
    )
    same = revision(requests=20000, classes={"legit": 0.99, "fraud": 0.01})
    assert results(judge(DEFAULT_POLICY, same, stable))["predicted_class"].outcome == "pass"


def test_a_canary_that_restarted_fails_even_with_clean_counts() -> None:
    result = results(judge(DEFAULT_POLICY, revision(restarts=1), revision(36000)))["restarts"]
    assert (result.outcome, result.reason) == ("fail", "1 is above the max 0")
    stable_unknown = revision(36000) | {"restarts": Sample({"value": {}})}
    assert results(judge(DEFAULT_POLICY, revision(), stable_unknown))["restarts"].outcome == "pass"


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_non_finite_answers_are_inconclusive(value: float) -> None:
    canary = revision() | {
        "server_errors": proportion(value, 4000),
        "latency": Sample({"buckets": {"0.1": value, "+Inf": 4000.0}}),
        "score": Sample({"counts": {"0.5": value, "+Inf": 10.0}, "requests": {"": 10.0}}),
    }
    judged = results(judge(DEFAULT_POLICY, canary, revision(36000)))
    assert {judged[name].outcome for name in ("server_errors", "latency", "score")} == {
        "inconclusive"
    }


def test_a_warm_up_metric_not_yet_measured_is_inconclusive() -> None:
    canary = revision() | {"latency": Sample()}
    assert results(judge(DEFAULT_POLICY, canary, revision(36000)))["latency"].reason == (
        "warming up: not measured yet"
    )


# -- the looks of a step --------------------------------------------------------------------


def verdicts(*outcomes: str) -> Iterator[Judgement]:
    for outcome in outcomes:
        yield Judgement((MetricResult("server_errors", outcome, reason=f"it was {outcome}"),))  # type: ignore[arg-type]


def test_inconclusive_waits_up_to_the_limit_then_fails_never_passes() -> None:
    run = AnalysisRun(CanaryPolicy(inconclusive_limit=2))
    actions = [run.decide(j).action for j in verdicts(*["inconclusive"] * 3)]
    assert actions == ["wait", "wait", "fail"]
    run.next_step()  # a new step starts its own count
    assert run.decide(next(verdicts("inconclusive"))).action == "wait"


def test_a_warm_up_look_does_not_count_against_the_limit() -> None:
    run = AnalysisRun(CanaryPolicy(inconclusive_limit=1))
    first = next(verdicts("inconclusive"))
    assert run.decide(first, warming_up=True).action == "wait"
    assert run.decide(first).action == "wait"
    decision = run.decide(first)
    assert decision.action == "fail"
    assert decision.reason.startswith("still inconclusive after 2 looks (the limit is 1)")


def test_errors_retry_up_to_the_consecutive_limit_and_a_success_resets_it() -> None:
    run = AnalysisRun(CanaryPolicy(consecutive_error_limit=2))
    assert [run.decide(j).action for j in verdicts("error", "error", "pass")] == [
        "wait", "wait", "pass",
    ]  # fmt: skip
    decisions = [run.decide(j) for j in verdicts("error", "error", "error")]
    assert [d.action for d in decisions] == ["wait", "wait", "fail"]
    assert decisions[-1].reason.startswith("server_errors: queries failed 3 times in a row")


def test_a_fail_ends_the_step_at_once() -> None:
    decision = AnalysisRun(DEFAULT_POLICY).decide(next(verdicts("fail")))
    assert (decision.action, decision.reason) == ("fail", "server_errors: it was fail")


# -- a rollout's looks, over an injected clock and a scripted Prometheus --------------------


class ScriptedPrometheus:
    """Answers each default query with ``revision()``'s numbers for the traffic its range
    covers (the canary at 100 requests a second, the stable at 900); records every query;
    refuses them all while ``down`` (from, until) says so."""

    url = "scripted"

    def __init__(self, clock: FakeClock, bad: dict | None = None) -> None:
        self.clock, self.bad = clock, bad or {}
        self.queries: list[tuple[str, float | None]] = []
        self.down = (0.0, 0.0)

    def query(self, query: str, at: float | None = None, label: str = "") -> Series:
        self.queries.append((query, at))
        if self.down[0] <= self.clock.now < self.down[1]:
            raise ConveyorError("Prometheus at scripted is unreachable: connection refused")
        seconds = float(re.search(r"\[(\d+)s\]", query).group(1))
        for name, per_second, bad in ((CANARY, 100, self.bad), (STABLE, 900, {})):
            sample = revision(int(seconds * per_second), **bad)
            for metric in DEFAULT_POLICY.metrics:
                for role in metric.queries:
                    if query == fill_query(metric.query(role, False), "ml", name, seconds):
                        return dict(sample[metric.name].series[role])
        raise AssertionError(f"unscripted query {query}")


class FakeClock:
    """Wall and monotonic time that move only when the rollout sleeps (for a moment, really:
    the Kubernetes double's controller runs in real time)."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, 0.005))
        self.now += seconds


@pytest.fixture
def cluster() -> Iterator[KubernetesApiDouble]:
    with KubernetesApiDouble(ready_after=0.05, tick=0.01) as double:
        yield double


def scripted_rollout(
    cluster: KubernetesApiDouble, bad: dict | None = None, outage_s: float = 0
) -> tuple[Rollout, ScriptedPrometheus, FakeClock]:
    from kubernetes.client import ApiClient

    services = InferenceServices(ApiClient(cluster.configuration()), "ml", backoff_s=0.01)
    clock = FakeClock()
    plan = RolloutPlan(
        steps=(10, 50), interval_s=60, ready_timeout_s=600, deadline_s=3600, poll_s=1
    )
    settings = RolloutSettings(plan, DEFAULT_POLICY, "http://unused")

    def rollout(uri: str) -> Rollout:
        manifest = render_inference_service(ServingSpec("fraud", "1", uri, namespace="ml"))
        return Rollout(services, manifest, settings, f"run-{uri}", progress=lambda _: None,
                       clock=lambda: clock.now, sleep=clock.sleep, wall=lambda: clock.now,
                       prometheus=prometheus)  # fmt: skip

    prometheus = ScriptedPrometheus(clock, bad)
    assert rollout("gs://m/1").run().decision == "created"
    # Down from just after the queries are tried, before the canary takes traffic.
    prometheus.down = (clock.now + 0.5, clock.now + outage_s)
    return rollout("gs://m/2"), prometheus, clock


def test_each_look_covers_all_canary_traffic_and_latency_leaves_out_the_warm_up(
    cluster: KubernetesApiDouble,
) -> None:
    rollout, prometheus, _ = scripted_rollout(cluster)
    result = rollout.run()
    assert result.decision == "promoted", result.reason
    assert [(look.percent, look.decision.action) for look in result.looks] == [
        (10, "wait"), (10, "pass"), (50, "pass"),
    ]  # fmt: skip
    first, second = result.looks[0], result.looks[1]
    assert "latency: warming up: not measured yet" in first.decision.reason
    looks: dict[float | None, list[str]] = {}
    for query, at in prometheus.queries:
        looks.setdefault(at, []).append(query)
    tried, *judged = looks.values()  # every query once for the stable, before the canary
    assert all(STABLE in query for query in tried)
    ranges = [sorted({q.split("[")[1].split("]")[0] for q in qs}) for qs in judged]
    elapsed = [round(look.elapsed_s) for look in result.looks]
    assert elapsed[0] >= 60
    # Both revisions over the same range at the same instant; latency's starts an interval later.
    assert ranges[0] == [f"{elapsed[0]}s"]
    assert ranges[1] == sorted([f"{elapsed[1]}s", f"{elapsed[1] - 60}s"])
    assert all(len([q for q in qs if CANARY in q]) * 2 == len(qs) for qs in judged)
    assert second.judgement and second.judgement.outcome == "pass"
    assert result.metrics()["step10_look2_server_errors_canary"] == pytest.approx(0.005)


def test_a_prometheus_outage_shorter_than_the_error_limit_is_retried(
    cluster: KubernetesApiDouble,
) -> None:
    # Down for the first two looks (a minute apart, once the canary is ready).
    rollout, _, _ = scripted_rollout(cluster, outage_s=150)
    result = rollout.run()
    assert result.decision == "promoted", result.reason
    assert [look.decision.action for look in result.looks] == ["wait", "wait", "pass", "pass"]
    assert result.looks[0].decision.reason.startswith("retrying: server_errors: Prometheus at")


def test_an_outage_past_the_error_limit_rolls_back(cluster: KubernetesApiDouble) -> None:
    rollout, _, _ = scripted_rollout(cluster, outage_s=math.inf)
    with pytest.raises(RolloutFailed) as failed:
        rollout.run()
    assert failed.value.result.decision == "rolled_back"
    assert "queries failed 5 times in a row" in failed.value.result.reason


def test_a_canary_answering_400s_is_rolled_back_at_its_first_look(
    cluster: KubernetesApiDouble,
) -> None:
    rollout, _, _ = scripted_rollout(cluster, bad={"client_errors": 0.99})
    with pytest.raises(RolloutFailed) as failed:
        rollout.run()
    result = failed.value.result
    assert result.decision == "rolled_back" and len(result.looks) == 1
    assert result.reason.startswith("analysis at 10 %: client_errors: worse than stable")


def test_queries_that_fail_before_the_canary_starts_refuse_the_rollout(
    cluster: KubernetesApiDouble,
) -> None:
    rollout, prometheus, _ = scripted_rollout(cluster)
    prometheus.down = (0.0, math.inf)
    with pytest.raises(RolloutFailed) as refused:
        rollout.run()
    result = refused.value.result
    assert result.decision == "failed" and not result.canary_revision
    assert result.reason == (
        "the canary could not be judged: server_errors: Prometheus at scripted is unreachable: "
        "connection refused"
    )
    assert cluster.revisions("ml", "fraud") == ["fraud-predictor-00001"]  # nothing moved


def test_a_plan_that_cannot_finish_before_its_deadline_is_refused() -> None:
    plan = RolloutPlan(steps=(10, 25, 50), interval_s=300, deadline_s=3600)
    with pytest.raises(
        ConveyorError,
        match=r"^the plan may take 19 looks of 300 s \(5700 s\), past rollout_deadline_s 3600",
    ):
        RolloutSettings(plan, DEFAULT_POLICY, "http://p:9090")
    RolloutSettings(plan, CanaryPolicy(analysis="none"))  # nothing to wait for


def _buckets(samples: dict[str, Sample]) -> list[tuple[float, float]]:
    return sorted((float(k), v) for k, v in samples["latency"].series["buckets"].items())
