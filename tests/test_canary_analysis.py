"""Canary analysis against a real Prometheus scraping real predictor processes under load,
alone and inside whole rollouts routed by the Kubernetes double."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from components.core.analysis import AnalysisPolicy, analyse, query_prometheus
from components.core.canary import standard_canary_name
from components.core.errors import ConveyorError
from components.core.kube import InferenceServices
from components.core.manifests import ServingSpec, render_inference_service
from components.core.rollout import Rollout, RolloutFailed, RolloutPlan, render_report
from tests.conftest import multiclass_table, predictors, require_binary, save_species_model
from tests.doubles.kube_api import KubernetesApiDouble
from tests.serving_stack import SplitLoad, faulty_model_dir, prometheus

NAMESPACE = "ml-serving"
MODEL = "species"
SCENARIOS = {"healthy": None, "failing": "failing", "slow": "slow"}
STANDARD = {"standard": "gs://models/standard/v2", "steady": "gs://models/steady/v2"}
BODY = {
    "instances": multiclass_table(seed=5)
    .drop(columns="species")
    .dropna()
    .head(3)
    .to_dict("records")
}


def standard_canary(scenario: str, uri: str) -> str:
    """The Deployment (and metrics revision) name of a Standard canary of ``uri``."""
    predictor = render_inference_service(ServingSpec(scenario, "1", uri, namespace=NAMESPACE))
    return f"{scenario}-{standard_canary_name(predictor['spec']['predictor'])}-predictor"


@dataclass(frozen=True)
class Stack:
    urls: dict[str, str]
    prometheus: str


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Per scenario, a stable revision (00001) and a canary (00002), all scraped by Prometheus."""
    require_binary("prometheus")
    root = tmp_path_factory.mktemp("canary")
    good = save_species_model(root / "good")
    models = {}
    for scenario, fault in SCENARIOS.items():
        models[f"{scenario}-predictor-00001"] = good
        models[f"{scenario}-predictor-00002"] = (
            faulty_model_dir(good, fault, root / fault) if fault else good
        )
    # Standard mode: revisions are Deployments, named for the predictor (see canary.py).
    models["standard-predictor"] = good
    models[standard_canary("standard", STANDARD["standard"])] = models["failing-predictor-00002"]
    models["steady-predictor"] = good
    models[standard_canary("steady", STANDARD["steady"])] = good
    with predictors(models, MODEL, root) as urls, prometheus(urls, NAMESPACE, root) as url:
        yield Stack(urls, url)


@pytest.fixture(scope="module")
def loaded(stack: Stack) -> Stack:
    """Half of each scenario's traffic on its canary for a few seconds, as at a 50 % step."""
    loads = [
        SplitLoad(
            lambda scenario=scenario: {
                f"{scenario}-predictor-00001": 50,
                f"{scenario}-predictor-00002": 50,
            },
            stack.urls,
            MODEL,
            BODY,
            rate=25,
        )
        for scenario in SCENARIOS
    ]
    for load in loads:
        load.__enter__()
    time.sleep(6)
    for load in loads:
        load.__exit__()
    time.sleep(1.5)  # one more scrape after the last request
    return stack


def policy(stack: Stack, **overrides: object) -> AnalysisPolicy:
    # A healthy predictor on a busy test machine (other tests run beside these) now and then
    # takes a few hundred ms; the latency tests lower the bound to catch the slow one.
    settings = {
        "prometheus_url": stack.prometheus,
        "window": "30s",
        "min_requests": 10,
        "max_latency_p99_s": 1.0,
    }
    return AnalysisPolicy(**{**settings, **overrides})


def test_a_healthy_canary_passes_with_every_value_measured(loaded: Stack) -> None:
    result = analyse(
        policy(loaded), NAMESPACE, "healthy-predictor-00002", "healthy-predictor-00001"
    )
    assert result.verdict == "pass", result.reason
    assert result.canary.success_rate == 1.0 and result.stable.success_rate == 1.0
    assert result.canary.requests >= 10 and result.stable.requests >= 10
    assert 0 < result.canary.latency_p99 < 1.0
    assert result.reason.startswith("canary success rate 100.00%, p99 latency")


def test_a_canary_returning_errors_fails_on_success_rate(loaded: Stack) -> None:
    result = analyse(
        policy(loaded), NAMESPACE, "failing-predictor-00002", "failing-predictor-00001"
    )
    assert result.verdict == "fail"
    assert result.canary.success_rate == 0.0 and result.stable.success_rate == 1.0
    assert result.reason == "canary success rate 0.00% is below 99.00%"


def test_a_slow_canary_fails_on_latency(loaded: Stack) -> None:
    result = analyse(
        policy(loaded, max_latency_p99_s=0.5, min_requests=5),
        NAMESPACE, "slow-predictor-00002", "slow-predictor-00001",
    )  # fmt: skip
    assert result.verdict == "fail", result.reason
    # The stable's p99 is near its slowest request, which a busy machine may slow; only
    # the canary sleeps past 0.5 s.
    assert result.canary.latency_p99 > 0.5 > result.stable.latency_p99
    assert "p99 latency" in result.reason and "is above 0.5 s" in result.reason
    assert "success rate" not in result.reason


def test_too_few_requests_is_no_data(loaded: Stack) -> None:
    result = analyse(
        policy(loaded, min_requests=100_000),
        NAMESPACE, "healthy-predictor-00002", "healthy-predictor-00001",
    )  # fmt: skip
    assert result.verdict == "no_data"
    assert "fewer than the 100000 needed" in result.reason
    assert result.canary.requests > 0  # measured all the same, and recorded


def test_a_revision_never_scraped_has_no_data(loaded: Stack) -> None:
    result = analyse(
        policy(loaded), NAMESPACE, "healthy-predictor-00099", "healthy-predictor-00001"
    )
    assert result.verdict == "no_data"
    assert result.canary.requests is None and result.canary.success_rate is None


def test_queries_are_templates_the_user_can_replace(loaded: Stack) -> None:
    custom = (
        'sum(increase(conveyor_inference_requests_total{revision="$revision",code="200"}[$window]))'
    )
    result = analyse(
        policy(loaded, queries={"requests": custom}),
        NAMESPACE, "failing-predictor-00002", "failing-predictor-00001",
    )  # fmt: skip
    assert result.canary.requests == 0  # the failing canary answered no 200s
    assert result.verdict == "no_data"


def test_a_bad_query_is_one_clear_line(stack: Stack) -> None:
    with pytest.raises(
        ConveyorError, match=r"^Prometheus refused the query 'sum\(\(': .*parse error"
    ):
        query_prometheus(stack.prometheus, "sum((")
    with pytest.raises(ConveyorError, match=f"must give one number, not {len(stack.urls)} series"):
        query_prometheus(stack.prometheus, "count by (instance) (up)")


def test_unreachable_prometheus_is_named() -> None:
    with pytest.raises(ConveyorError, match=r"^Prometheus at http://127.0.0.1:9 is unreachable"):
        query_prometheus("http://127.0.0.1:9", "up")


def test_policy_rejects_bad_settings() -> None:
    with pytest.raises(ConveyorError, match="on_no_data must be fail, wait or pass, not 'retry'"):
        AnalysisPolicy(on_no_data="retry")
    with pytest.raises(ConveyorError, match=r"unknown analysis queries \['errors'\]"):
        AnalysisPolicy(queries={"errors": "up"})
    with pytest.raises(ConveyorError, match=r"analysis query 'requests': 'ns' is not one of"):
        AnalysisPolicy(queries={"requests": 'sum(up{namespace="$ns"})'})
    with pytest.raises(ConveyorError, match="window '5 minutes' is not a PromQL duration"):
        AnalysisPolicy(window="5 minutes")
    AnalysisPolicy(window="1m30s", queries={"requests": "sum(up) * 0 + $$5"})  # $$ is a $


# -- whole rollouts: the Kubernetes double routes, the predictors serve, Prometheus judges --


@pytest.fixture(scope="module")
def cluster() -> Iterator[KubernetesApiDouble]:
    with KubernetesApiDouble(ready_after=0.2, tick=0.02) as double:
        yield double


def roll_out(cluster: KubernetesApiDouble, stack: Stack, scenario: str, uri: str, **settings):
    from kubernetes.client import ApiClient

    services = InferenceServices(ApiClient(cluster.configuration()), NAMESPACE)
    spec = ServingSpec(scenario, "1", uri, namespace=NAMESPACE)
    plan = RolloutPlan(steps=(10, 50), interval_s=4, ready_timeout_s=10, deadline_s=60, poll_s=0.05)
    analysis = policy(stack, window="5s", min_requests=3, **settings)
    manifest = render_inference_service(spec)
    return Rollout(services, manifest, plan, analysis, f"run-{uri}", progress=print).run()


def routed_load(
    cluster: KubernetesApiDouble, stack: Stack, scenario: str, splits: list | None = None
) -> SplitLoad:
    """Load that follows the service's traffic split, as Knative's router would; each
    split it routed by is added to ``splits``."""

    def split() -> dict[str, int]:
        service = cluster.get(NAMESPACE, scenario) or {}
        entries = service.get("status", {}).get("components", {}).get("predictor", {})
        current = {e["revisionName"]: e["percent"] for e in entries.get("traffic", [])}
        if splits is not None:
            splits.append(current)
        return current

    return SplitLoad(split, stack.urls, MODEL, BODY, rate=40)


def stable_deployed(cluster: KubernetesApiDouble, stack: Stack, scenario: str) -> None:
    assert roll_out(cluster, stack, scenario, f"gs://models/{scenario}/v1").decision == "created"


def test_rollout_promotes_a_healthy_canary_on_measured_numbers(
    cluster: KubernetesApiDouble, stack: Stack
) -> None:
    stable_deployed(cluster, stack, "healthy")
    with routed_load(cluster, stack, "healthy") as load:
        result = roll_out(cluster, stack, "healthy", "gs://models/healthy/v2")
    assert result.decision == "promoted", result.reason
    assert [(s.percent, s.analysis.verdict) for s in result.steps] == [(10, "pass"), (50, "pass")]
    metrics = result.metrics()
    assert metrics["step10_canary_success_rate"] == 1.0 and metrics["step50_canary_requests"] >= 3
    assert load.sent["healthy-predictor-00002"] > 0
    assert "| 50 % | pass |" in render_report(result)


@pytest.mark.parametrize(
    ("scenario", "settings", "reason"),
    [
        ("failing", {}, "analysis at 10 %: canary success rate 0.00% is below 99.00%"),
        ("slow", {"max_latency_p99_s": 0.5}, "analysis at 10 %: canary p99 latency"),
    ],
)
def test_rollout_rolls_back_a_bad_canary_by_itself(
    cluster: KubernetesApiDouble, stack: Stack, scenario: str, settings: dict, reason: str
) -> None:
    stable_deployed(cluster, stack, scenario)
    splits: list[dict[str, int]] = []
    with routed_load(cluster, stack, scenario, splits), pytest.raises(RolloutFailed) as failed:
        roll_out(cluster, stack, scenario, f"gs://models/{scenario}/v2", **settings)
    result = failed.value.result
    assert result.decision == "rolled_back" and result.reason.startswith(reason)
    # Never more than its first step's share, the rollback's re-apply included.
    assert max(split.get(result.canary_revision, 0) for split in splits) == 10
    assert result.steps[0].analysis.stable.success_rate == 1.0  # the stable was fine throughout
    service = cluster.get(NAMESPACE, scenario)
    assert service["spec"]["predictor"]["model"]["storageUri"] == f"gs://models/{scenario}/v1"
    traffic = service["status"]["components"]["predictor"]["traffic"]
    assert [e["percent"] for e in traffic if e["percent"]] == [100]
    assert "**rolled back**" in render_report(result)


@pytest.mark.parametrize(
    ("on_no_data", "decision"), [("fail", "rolled_back"), ("pass", "promoted")]
)
def test_a_canary_nobody_calls_follows_on_no_data(
    cluster: KubernetesApiDouble, stack: Stack, on_no_data: str, decision: str
) -> None:
    scenario = f"quiet-{on_no_data}"
    stable_deployed(cluster, stack, scenario)
    try:
        result = roll_out(
            cluster, stack, scenario, f"gs://models/{scenario}/v2", on_no_data=on_no_data
        )
    except RolloutFailed as failed:
        result = failed.result
    assert result.decision == decision
    assert result.steps[0].analysis.verdict == "no_data"
    assert "fewer than the 3 needed to judge it" in result.steps[0].analysis.reason


def standard_split(cluster: KubernetesApiDouble, scenario: str) -> Callable[[], dict[str, int]]:
    """The split a ready spec.canary entry asks for (weighted routing, as KServe intends)."""

    def split() -> dict[str, int]:
        service = cluster.get(NAMESPACE, scenario)
        stable = service["spec"]["predictor"].get("name")
        stable = f"{scenario}-{stable}-predictor" if stable else f"{scenario}-predictor"
        shares = {
            f"{scenario}-{entry['name']}-predictor": entry["trafficPercent"]
            for entry in service["status"].get("canaryStatuses", [])
            if entry["ready"]
        }
        return {stable: 100 - sum(shares.values()), **shares}

    return split


@pytest.fixture(scope="module")
def standard_cluster() -> Iterator[KubernetesApiDouble]:
    with KubernetesApiDouble(default_mode="Standard", ready_after=0.2, tick=0.02) as double:
        yield double


def test_standard_mode_promotes_a_healthy_spec_canary(
    standard_cluster: KubernetesApiDouble, stack: Stack
) -> None:
    stable_deployed(standard_cluster, stack, "steady")
    canary = standard_canary("steady", STANDARD["steady"])
    load = SplitLoad(standard_split(standard_cluster, "steady"), stack.urls, MODEL, BODY, rate=40)
    with load:
        result = roll_out(standard_cluster, stack, "steady", STANDARD["steady"])
    assert (result.mode, result.decision) == ("Standard", "promoted")
    assert (result.stable_revision, result.canary_revision) == ("steady-predictor", canary)
    assert [(s.percent, s.analysis.verdict) for s in result.steps] == [(10, "pass"), (50, "pass")]
    assert load.sent[canary] > 0
    service = standard_cluster.get(NAMESPACE, "steady")
    assert f"steady-{service['spec']['predictor']['name']}-predictor" == canary
    assert "name" not in service["spec"]["predictor"]["model"]  # KServe forbids it there
    assert "canary" not in service["spec"]


def test_standard_mode_rolls_back_a_failing_spec_canary(
    standard_cluster: KubernetesApiDouble, stack: Stack
) -> None:
    stable_deployed(standard_cluster, stack, "standard")
    canary = standard_canary("standard", STANDARD["standard"])
    load = SplitLoad(standard_split(standard_cluster, "standard"), stack.urls, MODEL, BODY, rate=40)
    with load, pytest.raises(RolloutFailed) as failed:
        roll_out(standard_cluster, stack, "standard", STANDARD["standard"])
    result = failed.value.result
    assert (result.mode, result.decision) == ("Standard", "rolled_back")
    assert (result.stable_revision, result.canary_revision) == ("standard-predictor", canary)
    assert result.reason.startswith("analysis at 10 %: canary success rate 0.00% is below")
    assert load.sent[canary] > 0
    service = standard_cluster.get(NAMESPACE, "standard")
    assert "canary" not in service["spec"]
    assert service["spec"]["predictor"]["model"]["storageUri"] == "gs://models/standard/v1"
