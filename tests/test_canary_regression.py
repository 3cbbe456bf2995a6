"""The canary of a regression model: its predictor's histogram of predicted values on one
fixed grid, the ``predicted_value`` metric that compares it between revisions, and the
policy judging only the metrics that apply to the model's task. Pure functions over
constructed measurements and an injected clock, as test_canary_judge.py; the predictor is
the real process (tests.conftest.predictor), scraped directly."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families
from scipy.stats import norm

from conveyor.components.core.data.task import TASKS as DATA_TASKS
from conveyor.components.core.errors import ConveyorError
from conveyor.components.core.rollout.analysis import AnalysisRun, Judgement, MetricResult, judge
from conveyor.components.core.rollout.kube import InferenceServices
from conveyor.components.core.rollout.manifests import ServingSpec, render_inference_service
from conveyor.components.core.rollout.policy import (
    DEFAULT_METRICS,
    DEFAULT_POLICY,
    TASKS,
    CanaryPolicy,
    describe_policy,
    fill_query,
)
from conveyor.components.core.rollout.prometheus import Sample, Series
from conveyor.components.core.rollout.runner import (
    Rollout,
    RolloutFailed,
    RolloutPlan,
    RolloutResult,
    RolloutSettings,
    describe_plan,
    model_task,
    render_report,
)
from conveyor.components.core.serving.http_layer import VALUE_BUCKETS, ServingMetrics
from conveyor.components.core.serving.inference import predict_table
from conveyor.components.core.training.trainer import (
    MODEL_CARD,
    fit_model,
    load_model_dir,
    save_model_dir,
)
from tests.conftest import predictor
from tests.doubles.kube_api import KubernetesApiDouble
from tests.test_regression import flats_table

NAME = "flats"
REVISION = "flats-predictor-00001"
CANARY, STABLE = "flats-predictor-00002", "flats-predictor-00001"
REGRESSION = DEFAULT_POLICY.for_task("regression")
LATENCY_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
# The seeded simulation: draws per scenario, and the prices' log-normal spread.
DRAWS = 400
SIGMA = 0.3
MEDIAN = 20_000.0


# -- the grid ------------------------------------------------------------------------------


def test_the_value_grid_is_fixed_log_spaced_and_the_same_on_both_signs() -> None:
    bounds = np.array(VALUE_BUCKETS)
    assert len(bounds) == 263 and bounds[131] == 0.0
    assert np.all(np.diff(bounds) > 0)
    assert np.array_equal(-bounds[:131][::-1], bounds[132:])
    positive = bounds[132:]
    assert positive[0] == 0.001 and positive[-1] == 1e10
    ratios = positive[1:] / positive[:-1]
    assert np.allclose(ratios, 10**0.1, rtol=1e-3)  # 4 significant digits: within 0.1 %
    spec = {m.name: m for m in DEFAULT_METRICS}["predicted_value"]
    assert spec.categories == len(VALUE_BUCKETS)  # the minimum sample counts every bound
    assert TASKS == DATA_TASKS


def price_model(seed: int, scale: float = 1.0):
    table = flats_table(300, seed)
    table["price"] = table["price"] * scale
    return fit_model(table, "price", "ridge", {}, 0, task="regression")


def value_le(registry: CollectorRegistry) -> dict[str, float]:
    return {
        sample.labels["le"]: sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == "conveyor_predicted_value_bucket"
    }


def test_two_regression_models_share_the_buckets_and_values_land_where_prometheus_puts_them(
) -> None:  # fmt: skip
    rows = flats_table(50, seed=9).drop(columns="price")
    registries = []
    for seed, scale in ((1, 1.0), (2, 1000.0)):  # other data, prices a thousand times larger
        model = price_model(seed, scale)
        registry = CollectorRegistry()
        metrics = ServingMetrics(NAME, f"r{seed}", [], registry=registry, regression=True)
        values = predict_table(model, rows).values
        metrics.observe_values(values)  # at once
        metrics.observe_values(values[:1])  # and one by one
        reference = Histogram("reference", "", buckets=VALUE_BUCKETS, registry=CollectorRegistry())
        for value in [*values, values[0]]:
            reference.observe(value)
        expected = {
            s.labels["le"]: s.value
            for s in next(iter(reference.collect())).samples
            if s.name == "reference_bucket"
        }
        assert value_le(registry) == expected
        registries.append(registry)
    assert list(value_le(registries[0])) == list(value_le(registries[1]))
    assert value_le(registries[0]) != value_le(registries[1])  # the values differ, not the grid


def test_a_classifier_has_no_predicted_value_child_and_nan_is_left_out() -> None:
    registry = CollectorRegistry()
    ServingMetrics(NAME, "r1", ["no", "yes"], registry=registry).observe_values(np.ones(3))
    assert value_le(registry) == {}
    registry = CollectorRegistry()
    metrics = ServingMetrics(NAME, "r1", [], registry=registry, regression=True)
    metrics.observe_values(np.array([np.nan, 5.0, np.inf, -np.inf]))
    metrics.observe_values(np.array([np.nan]))
    metrics.observe_values(np.array([np.inf]))
    labels = {"model": NAME, "revision": "r1"}
    assert registry.get_sample_value("conveyor_predicted_value_count", labels) == 4
    buckets = value_le(registry)
    assert buckets["-10000000.0"] == 1 and buckets["5.012"] - buckets["3.981"] == 1
    assert buckets["+Inf"] - buckets["1e+07"] == 2  # the infinities, as far out as they get


# -- the real predictor -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("flats") / "model"
    save_model_dir(price_model(0), directory)
    return directory


def scrape(url: str) -> dict[str, float]:
    """The served revision's predicted-value buckets by ``le``, and its _count."""
    found = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name == "conveyor_predicted_value_bucket":
                found[sample.labels["le"]] = sample.value
            elif sample.name == "conveyor_predicted_value_count":
                found["count"] = sample.value
    return found


def test_a_served_regression_model_counts_its_answered_values_in_their_buckets(
    model_dir: Path, tmp_path: Path
) -> None:
    rows = flats_table(30, seed=4).dropna(subset=["area_m2"]).drop(columns="price")
    rows = rows.astype(object).where(rows.notna(), None)  # JSON has null, not NaN
    values = predict_table(load_model_dir(model_dir), pd.DataFrame(rows.to_dict("records"))).values
    path = f"/v1/models/{NAME}:predict"
    with predictor(model_dir, NAME, REVISION, tmp_path / "predictor.log") as url:
        assert scrape(url)["count"] == 0  # the served revision's child, from 0
        first = httpx.post(f"{url}{path}", json={"instances": rows.to_dict("records")[:10]})
        assert first.status_code == 200, first.text
        rest = httpx.post(f"{url}{path}", json={"instances": rows.to_dict("records")[10:]})
        assert rest.status_code == 200, rest.text
        refused = httpx.post(f"{url}{path}", json={"instances": [{"rooms": "many"}]})
        assert refused.status_code == 400  # answered no value: counts none
        found = scrape(url)
    assert np.allclose(first.json()["predictions"] + rest.json()["predictions"], values)
    assert found.pop("count") == len(values)
    assert len(found) == len(VALUE_BUCKETS) + 1
    for le, count in found.items():
        assert count == np.sum(values <= float(le)), le
    assert 0 < found["10000.0"] < len(values)  # prices in the thousands: the grid sees them


# -- judging predicted values ------------------------------------------------------------------


def value_probabilities(factor: float = 1.0, sigma: float = SIGMA) -> np.ndarray:
    """The share of log-normal prices (median MEDIAN x factor) in each bucket, +Inf last."""
    cdf = norm.cdf((np.log(np.maximum(VALUE_BUCKETS, 1e-300)) - math.log(MEDIAN * factor)) / sigma)
    cdf = np.where(np.array(VALUE_BUCKETS) > 0, cdf, 0.0)
    return np.diff(np.concatenate([[0.0], cdf, [1.0]]))


def value_series(counts: np.ndarray) -> Series:
    """Cumulative ``le`` buckets from per-bucket counts (+Inf's own last), as Prometheus'
    ``sum by (le)`` gives them: the exposition's bound strings."""
    names = [*(_go_float(b) for b in VALUE_BUCKETS), "+Inf"]
    return dict(zip(names, np.cumsum(counts).astype(float).tolist(), strict=True))


def _go_float(bound: float) -> str:
    from prometheus_client.utils import floatToGoString

    return floatToGoString(bound)


def regression_revision(
    requests: int,
    values: np.ndarray | None = None,
    server_errors: float = 0.005,
    client_errors: float = 0.01,
) -> dict[str, Sample]:
    """Every metric a regression rollout judges, for one revision: expected counts, and the
    predicted values' bucket counts (``values``; by default, exact expected counts)."""
    answered = requests * (1 - server_errors - client_errors)
    if values is None:
        values = value_probabilities() * answered
    latency = [0.3, 0.4, 0.2, 0.07, 0.025, 0.004, 0.001, 0.0, 0.0]
    cumulative = np.cumsum([requests * share for share in latency])
    bounds = [*map(str, LATENCY_BOUNDS), "+Inf"]
    return {
        "server_errors": Sample(
            {"events": {"": requests * server_errors}, "total": {"": requests}}
        ),
        "client_errors": Sample(
            {"events": {"": requests * client_errors}, "total": {"": requests}}
        ),
        "latency": Sample({"buckets": dict(zip(bounds, cumulative.tolist(), strict=True))}),
        "predicted_value": Sample(
            {"counts": value_series(values) if answered else {}, "requests": {"": answered}}
        ),
        "restarts": Sample({"value": {"": 0.0}}),
    }


def results(judgement: Judgement) -> dict[str, MetricResult]:
    return {result.name: result for result in judgement.results}


def test_shifted_predicted_values_fail_and_unshifted_ones_pass() -> None:
    stable = regression_revision(40_000)
    for factor, outcome in ((1.0, "pass"), (1.5, "fail"), (1 / 1.5, "fail")):
        answered = 6000 * (1 - 0.015)
        canary = regression_revision(6000, value_probabilities(factor) * answered)
        result = results(judge(REGRESSION, canary, stable))["predicted_value"]
        assert result.outcome == outcome, result.reason
    assert "largest change of a distribution function (at le " in result.test


@dataclass
class Rates:
    """Outcomes of the predicted_value metric over many seeded draws."""

    outcomes: dict[str, int] = field(default_factory=dict)

    def share(self, outcome: str) -> float:
        return self.outcomes.get(outcome, 0) / sum(self.outcomes.values())


def simulate(factor: float, canary_requests: int, seed: int) -> Rates:
    """The metric's outcome at one look, over DRAWS canaries of ``canary_requests``
    requests (the stable serving nine times as many, as at a 10 % step), each request's
    price a fresh log-normal draw (multinomial bucket counts)."""
    rng = np.random.default_rng(seed)
    stable_p, canary_p = value_probabilities(), value_probabilities(factor)
    rates = Rates()
    for _ in range(DRAWS):
        stable = regression_revision(
            9 * canary_requests, rng.multinomial(9 * canary_requests, stable_p), 0.0, 0.0
        )
        canary = regression_revision(
            canary_requests, rng.multinomial(canary_requests, canary_p), 0.0, 0.0
        )
        outcome = results(judge(REGRESSION, canary, stable))["predicted_value"].outcome
        rates.outcomes[outcome] = rates.outcomes.get(outcome, 0) + 1
    return rates


def test_predicted_value_error_rates_at_the_default_margins_by_seeded_simulation() -> None:
    """At the policy's minimum sample, 4152 canary requests (the default margin of 0.1 of
    the distribution function, alpha 0.05/6 split over 263 bounds), one look, 400 draws each
    (log-normal prices, sigma 0.3; the largest change of the distribution function at a
    bound in brackets); measured with these seeds:

    - equal to stable (0): failed in 0 of 400 (false alarm 0 %), passed in all 400;
    - prices 1.2x (0.23) and 1.5x (0.50): failed in all 400 (missed shift 0 %);
    - prices 1.1x (0.12, just past the margin): never passed (missed shift 0 %), failed in
      15 of 400, inconclusive in the rest (which waits another interval and fails at the
      limit, never passes); at 3x the minimum sample, failed in 228 of 400.
    """
    needed = REGRESSION.minimum_samples()["predicted_value"]
    assert needed == 4152
    equal = simulate(1.0, needed, seed=1)
    assert equal.share("fail") == 0 and equal.share("pass") >= 0.95, equal
    for factor, seed in ((1.5, 2), (1.2, 3)):
        shifted = simulate(factor, needed, seed)
        assert shifted.share("fail") >= 0.99, (factor, shifted)
    near = simulate(1.1, needed, seed=4)
    assert near.share("pass") == 0 and near.share("fail") < 0.1, near
    later = simulate(1.1, 3 * needed, seed=5)
    assert later.share("pass") == 0 and later.share("fail") >= 0.3, later


def test_a_regression_canary_answering_only_400_and_500_is_never_promoted() -> None:
    stable = regression_revision(40_000)
    for server, client in ((1.0, 0.0), (0.0, 1.0), (0.5, 0.5)):
        canary = regression_revision(4000, server_errors=server, client_errors=client)
        judgement = judge(REGRESSION, canary, stable)
        found = results(judgement)
        assert judgement.outcome == "fail", judgement.reason
        assert found["predicted_value"].outcome == "inconclusive"  # no value answered
        failed = {name for name, r in found.items() if r.outcome == "fail"}
        assert failed & {"server_errors", "client_errors"}, failed
        assert AnalysisRun(REGRESSION).decide(judgement).action == "fail"


# -- which metrics apply --------------------------------------------------------------------


def test_each_task_judges_its_own_metrics_and_a_classifier_is_judged_as_before() -> None:
    judged = {task: [m.name for m in DEFAULT_POLICY.for_task(task).judged] for task in TASKS}
    assert judged["classification"] == [
        "server_errors", "client_errors", "latency", "predicted_class", "score", "restarts"
    ]  # fmt: skip
    assert judged["regression"] == [
        "server_errors", "client_errors", "latency", "predicted_value", "restarts"
    ]  # fmt: skip
    assert DEFAULT_POLICY.task == "classification"  # a task that cannot be known
    # A classifier's error rates are split as before the regression metric existed.
    assert DEFAULT_POLICY.comparison_alpha == pytest.approx(0.05 / 8)
    assert DEFAULT_POLICY.comparison_beta == pytest.approx(0.05 / 5)
    assert REGRESSION.comparison_alpha == pytest.approx(0.05 / 6)


def test_a_metric_s_task_is_checked_and_the_policy_s_is_not_a_setting() -> None:
    policy = CanaryPolicy.from_dict(
        {"metrics": [{"name": "score", "task": ""}, {"name": "predicted_value", "margin": 0.2}]}
    )
    scored = [m.name for m in policy.for_task("regression").judged]
    assert "score" in scored and "predicted_value" in scored
    with pytest.raises(ConveyorError) as bad:
        CanaryPolicy.from_dict({"metrics": [{"name": "score", "task": "ranking"}]})
    assert str(bad.value) == (
        "canary_policy.metrics[0] (score).task: must be one of classification, regression, "
        "or empty for both, not 'ranking'"
    )
    with pytest.raises(ConveyorError, match=r"^canary_policy.task: the model's task comes from"):
        CanaryPolicy.from_dict({"task": "regression"})
    with pytest.raises(ConveyorError, match=r"^task: must be one of classification, regressi"):
        DEFAULT_POLICY.for_task("ranking")
    unjudged = ("server_errors", "client_errors", "latency", "restarts", "predicted_value")
    only_classes = CanaryPolicy.from_dict(
        {"metrics": [{"name": name, "enabled": False} for name in unjudged]}
    )
    with pytest.raises(ConveyorError, match="none left to judge by for a regression model"):
        only_classes.for_task("regression")


def test_the_policy_says_which_task_each_metric_applies_to() -> None:
    lines = describe_policy(REGRESSION)
    assert "- the model is a regression model" in "\n".join(lines)
    assert "- `predicted_class`: not judged (classification models only)" in lines
    assert "- `score`: not judged (classification models only)" in lines
    (value,) = [line for line in lines if line.startswith("- `predicted_value`")]
    assert value.endswith("at 263 categories, regression models only)")
    lines = describe_policy(DEFAULT_POLICY)
    assert "- `predicted_value`: not judged (regression models only)" in lines
    assert any(line.startswith("- `score` (distribution") for line in lines)
    manifest = render_inference_service(ServingSpec(NAME, "1", "gs://m/2", namespace="ml"))
    settings = RolloutSettings(RolloutPlan(), DEFAULT_POLICY, "http://p:9090")
    assert "- `predicted_value` (distribution" in describe_plan(manifest, settings, "regression")
    assert "read from its model card at gs://m/2" in describe_plan(manifest, settings)


def test_the_task_is_read_from_the_model_card(model_dir: Path, tmp_path: Path) -> None:
    assert model_task(str(model_dir)) == ("regression", f"from {model_dir}/{MODEL_CARD}")
    older = tmp_path / "older"
    older.mkdir()
    card = json.loads((model_dir / MODEL_CARD).read_text())
    (older / MODEL_CARD).write_text(json.dumps({k: v for k, v in card.items() if k != "task"}))
    assert model_task(str(older))[0] == "classification"  # written before regression models
    task, source = model_task(str(tmp_path / "missing"))
    assert task == "classification" and source.startswith("assumed: ")
    assert "could not be read: FileNotFoundError" in source
    (older / MODEL_CARD).write_text(json.dumps({"task": "ranking"}))
    with pytest.raises(ConveyorError, match=r"model.json: task 'ranking' is none of classif"):
        model_task(str(older))


# -- whole rollouts, scripted ------------------------------------------------------------------


class FakeClock:
    """Time that moves only when the rollout sleeps (for a moment, really: the Kubernetes
    double's controller runs in real time)."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, 0.005))
        self.now += seconds


class PredictorsPrometheus:
    """Answers every default query as Prometheus would for predictors of ``task`` (the
    canary at 100 requests a second, the stable at 900): a regressor's predictor has no
    class or score series, a classifier's no predicted-value series. Records each query."""

    url = "scripted"

    def __init__(self, clock: FakeClock, task: str, canary: dict | None = None) -> None:
        self.clock, self.task, self.canary = clock, task, canary or {}
        self.queries: list[str] = []

    def query(self, query: str, at: float | None = None, label: str = "") -> Series:
        self.queries.append(query)
        seconds = float(re.search(r"\[(\d+)s\]", query).group(1))
        for name, per_second, changes in ((CANARY, 100, self.canary), (STABLE, 900, {})):
            sample = self._revision(int(seconds * per_second), changes)
            for metric in DEFAULT_METRICS:
                for role in metric.queries:
                    if query == fill_query(metric.query(role, False), "ml", name, seconds):
                        return dict(sample[metric.name].series[role])
        raise AssertionError(f"unscripted query {query}")

    def _revision(self, requests: int, changes: dict) -> dict[str, Sample]:
        sample = regression_revision(requests, **changes)
        answered = sample["predicted_value"].series["requests"]
        classifier = {
            "predicted_class": {"no": 0.63 * answered[""], "yes": 0.37 * answered[""]},
            "score": {"0.5": 0.6 * answered[""], "1.0": answered[""], "+Inf": answered[""]},
        }
        for name, counts in classifier.items():  # a regressor's predictor has no series
            sample[name] = Sample(
                {"counts": counts if self.task == "classification" else {}, "requests": answered}
            )
        if self.task == "classification":
            sample["predicted_value"] = Sample({"counts": {}, "requests": answered})
        return sample


@pytest.fixture
def cluster() -> Iterator[KubernetesApiDouble]:
    with KubernetesApiDouble(ready_after=0.05, tick=0.01) as double:
        yield double


def roll_out(
    cluster: KubernetesApiDouble, served: str, task: str, canary: dict | None = None
) -> tuple[RolloutResult, PredictorsPrometheus]:
    """A first deploy, then a canary rollout of a model of ``task`` whose predictors are
    ``served``'s (a model that the rollout takes for another task: they differ)."""
    from kubernetes.client import ApiClient

    services = InferenceServices(ApiClient(cluster.configuration()), "ml", backoff_s=0.01)
    clock = FakeClock()
    plan = RolloutPlan(steps=(10, 50), interval_s=60, ready_timeout_s=600, deadline_s=3600)
    settings = RolloutSettings(plan, DEFAULT_POLICY, "http://unused")
    prometheus = PredictorsPrometheus(clock, served, canary)

    def rollout(uri: str) -> Rollout:
        manifest = render_inference_service(ServingSpec(NAME, "1", uri, namespace="ml"))
        return Rollout(services, manifest, settings, f"run-{uri}", progress=lambda _: None,
                       clock=lambda: clock.now, sleep=clock.sleep, wall=lambda: clock.now,
                       prometheus=prometheus, task=task)  # fmt: skip

    assert rollout("gs://m/1").run().decision == "created"
    try:
        return rollout("gs://m/2").run(), prometheus
    except RolloutFailed as failed:
        return failed.result, prometheus


def judged_names(result: RolloutResult) -> set[str]:
    return {r.name for look in result.looks if look.judgement for r in look.judgement.results}


def test_a_regression_rollout_judges_predicted_values_not_classes(
    cluster: KubernetesApiDouble,
) -> None:
    result, prometheus = roll_out(cluster, "regression", "regression")
    assert result.decision == "promoted", result.reason
    assert judged_names(result) == {
        "server_errors", "client_errors", "latency", "predicted_value", "restarts"
    }  # fmt: skip
    assert not [q for q in prometheus.queries if "conveyor_prediction" in q]  # no class, score
    assert any("conveyor_predicted_value_bucket" in q for q in prometheus.queries)
    report = render_report(result)
    assert "- task: regression" in report
    assert "- `score`: not judged (classification models only)" in report


def test_a_classification_rollout_still_judges_classes_and_scores_only(
    cluster: KubernetesApiDouble,
) -> None:
    result, prometheus = roll_out(cluster, "classification", "classification")
    assert result.decision == "promoted", result.reason
    assert judged_names(result) == {
        "server_errors", "client_errors", "latency", "predicted_class", "score", "restarts"
    }  # fmt: skip
    assert not [q for q in prometheus.queries if "conveyor_predicted_value" in q]


def test_a_regressor_taken_for_a_classifier_is_never_promoted(
    cluster: KubernetesApiDouble,
) -> None:
    """A card that could not be read: the classifier's metrics find no series to pass on."""
    result, _ = roll_out(cluster, "regression", "classification")
    assert result.decision == "rolled_back"
    assert "still inconclusive after 6 looks" in result.reason
    assert "predicted_class: nothing measured for the canary" in result.reason


def test_a_regression_canary_answering_only_errors_is_rolled_back_at_its_first_look(
    cluster: KubernetesApiDouble,
) -> None:
    result, _ = roll_out(
        cluster, "regression", "regression", {"server_errors": 0.5, "client_errors": 0.5}
    )
    assert result.decision == "rolled_back" and len(result.looks) == 1
    assert result.reason.startswith("analysis at 10 %: server_errors: worse than stable")


# -- live: a real Prometheus scraping real regression predictors ------------------------------

LIVE = "flats-live"
LIVE_POLICY = {
    # Margins wide enough that a few hundred local requests tell a canary apart; latency is
    # the live tests' of test_canary_analysis.py.
    "metrics": [
        {"name": "server_errors", "margin": 0.15, "baseline": 0.01, "max": 0.5},
        {"name": "client_errors", "margin": 0.15, "baseline": 0.01},
        {"name": "latency", "enabled": False},
        {"name": "predicted_value", "margin": 0.45},
    ],
}


def test_prometheus_reads_the_predicted_values_the_judge_compares(
    model_dir: Path, tmp_path: Path
) -> None:
    """The stable model, the same model as a canary, and one trained on prices three times
    larger, each sent the same 300 one-row requests: the same passes ``predicted_value``,
    the shifted one fails it, through the policy's own PromQL."""
    from conveyor.components.core.rollout.analysis import analyse
    from conveyor.components.core.rollout.prometheus import Prometheus, Window
    from tests.conftest import predictors, require_binary
    from tests.serving_stack import prometheus

    require_binary("prometheus")
    shifted = tmp_path / "shifted"
    save_model_dir(price_model(0, scale=3.0), shifted)
    revisions = {f"{LIVE}-00001": model_dir, f"{LIVE}-00002": model_dir, f"{LIVE}-00003": shifted}
    rows = flats_table(400, seed=11).dropna(subset=["area_m2"]).drop(columns="price").head(300)
    rows = rows.astype(object).where(rows.notna(), None).to_dict("records")
    policy = CanaryPolicy.from_dict(LIVE_POLICY).for_task("regression")
    with (
        predictors(revisions, NAME, tmp_path) as urls,
        prometheus(urls, "ml", tmp_path) as server,
        httpx.Client(timeout=10) as client,
    ):
        started = time.time()
        for url in urls.values():
            for row in rows:
                answer = client.post(f"{url}/v1/models/{NAME}:predict", json={"instances": [row]})
                assert answer.status_code == 200, answer.text
        time.sleep(2.5)  # a scrape or two after the last request
        seconds = time.time() - started + 5
        window = Window(time.time(), seconds, seconds)
        live = Prometheus(server.url)
        same = analyse(live, policy, "ml", f"{LIVE}-00002", f"{LIVE}-00001", window)
        moved = analyse(live, policy, "ml", f"{LIVE}-00003", f"{LIVE}-00001", window)
    assert same.outcome == "pass", same.reason
    value = results(same)["predicted_value"]
    # increase() extrapolates to the range's ends: about the 300 requests, not exactly.
    assert value.samples >= 290 and value.canary == pytest.approx(value.stable, abs=0.01)
    assert moved.outcome == "fail", moved.reason
    assert results(moved)["predicted_value"].outcome == "fail"
