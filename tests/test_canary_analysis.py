"""The canary judged live: a real Prometheus scraping real predictor processes under load,
through ``conveyor judge`` and inside whole rollouts routed by the Kubernetes double."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conveyor.components.core.errors import ConveyorError
from conveyor.components.core.rollout.analysis import histogram_quantile
from conveyor.components.core.rollout.canary import standard_canary_name
from conveyor.components.core.rollout.kube import InferenceServices
from conveyor.components.core.rollout.manifests import ServingSpec, render_inference_service
from conveyor.components.core.rollout.policy import DEFAULT_POLICY, CanaryPolicy
from conveyor.components.core.rollout.prometheus import Prometheus
from conveyor.components.core.rollout.runner import (
    Rollout,
    RolloutFailed,
    RolloutPlan,
    RolloutResult,
    RolloutSettings,
    render_report,
)
from tests.conftest import ROOT, multiclass_table, predictors, require_binary, save_species_model
from tests.doubles.kube_api import KubernetesApiDouble
from tests.serving_stack import (
    PrometheusProcess,
    SplitLoad,
    constant_model_dir,
    faulty_model_dir,
    new_column_model_dir,
    prometheus,
)

NAMESPACE = "ml-serving"
MODEL = "species"
STANDARD = {"standard": "gs://models/standard/v2", "steady": "gs://models/steady/v2"}
BODY = {
    "instances": multiclass_table(seed=5)
    .drop(columns="species")
    .dropna()
    .head(3)
    .to_dict("records")
}
# Margins wide enough that a minute of local load tells an identical canary from a bad one.
LIVE_POLICY = {
    "inconclusive_limit": 4,
    "metrics": [
        {"name": "server_errors", "margin": 0.15, "baseline": 0.01, "max": 0.5},
        {"name": "client_errors", "margin": 0.15, "baseline": 0.01},
        # A loaded two-core machine: one predictor process can answer up to about 25 % more
        # of its requests past a 15 ms bound than another serving the same model. Whether
        # the latency check catches a slow canary is the simulation's to show, not these.
        {"name": "latency", "margin": 0.4, "tail_slack_s": 0.05},
        {"name": "predicted_class", "margin": 0.45, "categories": 3},
        {"name": "score", "margin": 0.45},
    ],
}
PLAN = RolloutPlan(steps=(20, 50), interval_s=4, ready_timeout_s=20, deadline_s=120, poll_s=0.05)


def standard_canary(scenario: str, uri: str) -> str:
    """The Deployment (and metrics revision) name of a Standard canary of ``uri``."""
    predictor = render_inference_service(ServingSpec(scenario, "1", uri, namespace=NAMESPACE))
    return f"{scenario}-{standard_canary_name(predictor['spec']['predictor'])}-predictor"


@dataclass(frozen=True)
class Stack:
    urls: dict[str, str]
    prometheus: PrometheusProcess


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Per scenario, a stable revision (00001) and a canary (00002), all scraped by Prometheus."""
    require_binary("prometheus")
    root = tmp_path_factory.mktemp("canary")
    good = save_species_model(root / "good")
    canaries = {
        "healthy": good,
        "refusing": new_column_model_dir(root / "refusing"),
        "constant": constant_model_dir(good, root / "constant"),
    }
    models = {}
    for scenario, canary in canaries.items():
        models[f"{scenario}-predictor-00001"] = good
        models[f"{scenario}-predictor-00002"] = canary
    # Standard mode: revisions are Deployments, named for the predictor (see canary.py).
    models["standard-predictor"] = good
    models[standard_canary("standard", STANDARD["standard"])] = faulty_model_dir(
        good, "failing", root / "failing"
    )
    models["steady-predictor"] = good
    models[standard_canary("steady", STANDARD["steady"])] = good
    with predictors(models, MODEL, root) as urls, prometheus(urls, NAMESPACE, root) as server:
        yield Stack(urls, server)


def settings(stack: Stack, **policy: object) -> RolloutSettings:
    return RolloutSettings(
        PLAN, CanaryPolicy.from_dict({**LIVE_POLICY, **policy}), stack.prometheus.url
    )


# -- conveyor judge: now, from Prometheus only -----------------------------------------------


@pytest.fixture(scope="module")
def loaded(stack: Stack) -> Stack:
    """Half of the healthy and the refusing scenarios' traffic on their canaries for a while."""
    loads = [
        SplitLoad(
            lambda scenario=scenario: {
                f"{scenario}-predictor-00001": 50,
                f"{scenario}-predictor-00002": 50,
            },
            stack.urls,
            MODEL,
            BODY,
            rate=40,
        )
        for scenario in ("healthy", "refusing")
    ]
    for load in loads:
        load.__enter__()
    time.sleep(12)
    for load in loads:
        load.__exit__()
    time.sleep(1.5)  # one more scrape after the last request
    return stack


def judge_command(
    stack: Stack, tmp_path: Path, scenario: str, policy: dict | None
) -> subprocess.CompletedProcess:
    arguments = [
        sys.executable, "-m", "conveyor.pipelines.cli", "judge", "--prometheus", stack.prometheus.url,
        "--namespace", NAMESPACE, "--canary", f"{scenario}-predictor-00002",
        "--stable", f"{scenario}-predictor-00001", "--since", "1m",
    ]  # fmt: skip
    if policy is not None:
        (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy))
        arguments += ["--policy", str(tmp_path / "policy.yaml")]
    return subprocess.run(arguments, cwd=ROOT, capture_output=True, text=True, timeout=120)


def rows(output: str) -> dict[str, list[str]]:
    """``conveyor judge``'s table: metric -> its cells."""
    table = output.splitlines()[1:-1]
    return {line.split()[0]: line.split() for line in table[1:]}


def test_judge_passes_an_identical_canary(loaded: Stack, tmp_path: Path) -> None:
    result = judge_command(loaded, tmp_path, "healthy", LIVE_POLICY)
    assert result.returncode == 0, result.stdout + result.stderr
    table = rows(result.stdout)
    assert set(table) == {
        "server_errors", "client_errors", "latency", "predicted_class", "score", "restarts"
    }  # fmt: skip
    assert all(cells[1] == "pass" for cells in table.values())
    assert table["server_errors"][2:4] == ["0", "0"]  # no 5xx, canary or stable
    assert result.stdout.splitlines()[-1].startswith("outcome: pass: every metric passed")


def test_judge_fails_a_canary_that_refuses_its_clients(loaded: Stack, tmp_path: Path) -> None:
    result = judge_command(loaded, tmp_path, "refusing", LIVE_POLICY)
    assert result.returncode == 3, result.stdout + result.stderr
    table = rows(result.stdout)
    assert table["client_errors"][1:4] == ["fail", "1", "0"]  # every canary request a 400
    assert table["server_errors"][1] == "pass"  # none of them counted as the server's fault
    assert "outcome: fail: client_errors: worse than stable beyond the margin" in result.stdout


def test_judge_with_the_default_policy_wants_more_traffic(loaded: Stack, tmp_path: Path) -> None:
    result = judge_command(loaded, tmp_path, "healthy", None)
    assert result.returncode == 4, result.stdout + result.stderr
    needed = DEFAULT_POLICY.minimum_samples()["server_errors"]
    assert f"canary samples of the {needed} the policy needs" in result.stdout
    assert result.stdout.splitlines()[-1].startswith("outcome: inconclusive")


def test_judge_refuses_bad_input_in_one_line(stack: Stack, tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text("on_no_data: pass\n")
    result = subprocess.run(
        [sys.executable, "-m", "conveyor.pipelines.cli", "judge", "--prometheus", stack.prometheus.url,
         "--namespace", NAMESPACE, "--canary", "a", "--stable", "b",
         "--policy", str(tmp_path / "policy.yaml")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"conveyor judge: {tmp_path / 'policy.yaml'}.on_no_data: was removed: too few requests "
        "are now an inconclusive result, which waits another interval up to canary_policy's "
        "inconclusive_limit and then fails, never passes"
    ]


def test_our_p99_is_prometheus_own(loaded: Stack) -> None:
    client = Prometheus(loaded.prometheus.url)
    selector = f'namespace="{NAMESPACE}",revision="healthy-predictor-00001"'
    buckets = f"sum by (le) (increase(conveyor_inference_request_duration_seconds_bucket{{{selector}}}[1m]))"
    at = time.time()
    ours = histogram_quantile(
        0.99, sorted((float(k), v) for k, v in client.query(buckets, at, "le").items())
    )
    theirs = client.query(f"histogram_quantile(0.99, {buckets})", at)[""]
    assert ours == pytest.approx(theirs, rel=1e-9)


def test_a_bad_query_is_one_clear_line(stack: Stack) -> None:
    client = Prometheus(stack.prometheus.url)
    with pytest.raises(
        ConveyorError, match=r"^Prometheus refused the query 'sum\(\(': .*parse error"
    ):
        client.query("sum((")
    with pytest.raises(ConveyorError, match=f"must give one number, not {len(stack.urls)} series"):
        client.query("count by (instance) (up)")
    with pytest.raises(ConveyorError, match=r"^Prometheus at http://127.0.0.1:9 is unreachable"):
        Prometheus("http://127.0.0.1:9").query("up")


# -- whole rollouts: the Kubernetes double routes, the predictors serve, Prometheus judges --


@pytest.fixture(scope="module")
def cluster() -> Iterator[KubernetesApiDouble]:
    with KubernetesApiDouble(ready_after=0.2, tick=0.02) as double:
        yield double


def roll_out(
    cluster: KubernetesApiDouble,
    stack: Stack,
    scenario: str,
    uri: str,
    progress: Callable[[str], None] = print,
    **policy: object,
) -> RolloutResult:
    from kubernetes.client import ApiClient

    services = InferenceServices(ApiClient(cluster.configuration()), NAMESPACE)
    manifest = render_inference_service(ServingSpec(scenario, "1", uri, namespace=NAMESPACE))
    rollout = Rollout(
        services, manifest, settings(stack, **policy), f"run-{uri}", progress=progress
    )
    try:
        return rollout.run()
    except RolloutFailed as failed:
        return failed.result


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

    return SplitLoad(split, stack.urls, MODEL, BODY, rate=60)


def stable_deployed(cluster: KubernetesApiDouble, stack: Stack, scenario: str) -> None:
    assert roll_out(cluster, stack, scenario, f"gs://models/{scenario}/v1").decision == "created"


def test_an_identical_canary_is_promoted(cluster: KubernetesApiDouble, stack: Stack) -> None:
    stable_deployed(cluster, stack, "healthy")
    with routed_load(cluster, stack, "healthy") as load:
        result = roll_out(cluster, stack, "healthy", "gs://models/healthy/v2")
    assert result.decision == "promoted", result.reason
    assert [look.percent for look in result.looks if look.decision.action == "pass"] == [20, 50]
    last = result.looks[-1].judgement
    assert last is not None and {r.outcome for r in last.results} == {"pass"}
    metrics = result.metrics()
    assert any(
        key.endswith("_server_errors_canary") and value == 0 for key, value in metrics.items()
    )
    assert load.sent["healthy-predictor-00002"] > 0
    assert "| predicted_class | **pass** |" in render_report(result)


@pytest.mark.parametrize(
    ("scenario", "metric"),
    [("refusing", "client_errors"), ("constant", "predicted_class")],
)
def test_a_bad_canary_is_rolled_back_on_the_metric_that_shows_it(
    cluster: KubernetesApiDouble, stack: Stack, scenario: str, metric: str
) -> None:
    stable_deployed(cluster, stack, scenario)
    splits: list[dict[str, int]] = []
    with routed_load(cluster, stack, scenario, splits):
        result = roll_out(cluster, stack, scenario, f"gs://models/{scenario}/v2")
    assert result.decision == "rolled_back", result.reason
    assert result.reason.startswith(f"analysis at 20 %: {metric}: ")
    # Never more than its first step's share, the rollback's re-apply included.
    assert max(split.get(result.canary_revision, 0) for split in splits) == 20
    judged = {r.name: r for r in result.looks[-1].judgement.results}
    assert judged["server_errors"].outcome != "fail"  # the server itself never failed
    service = cluster.get(NAMESPACE, scenario)
    assert service["spec"]["predictor"]["model"]["storageUri"] == f"gs://models/{scenario}/v1"
    traffic = service["status"]["components"]["predictor"]["traffic"]
    assert [e["percent"] for e in traffic if e["percent"]] == [100]
    assert "**rolled back**" in render_report(result)


def test_a_canary_nobody_calls_is_inconclusive_then_rolled_back(
    cluster: KubernetesApiDouble, stack: Stack
) -> None:
    stable_deployed(cluster, stack, "quiet")
    result = roll_out(cluster, stack, "quiet", "gs://models/quiet/v2", inconclusive_limit=1)
    assert result.decision == "rolled_back"
    assert [look.decision.action for look in result.looks] == ["wait", "wait", "fail"]
    assert "still inconclusive after 2 looks (the limit is 1)" in result.reason
    assert (
        "nothing measured for the canary (an empty or NaN result, or a count of 0)" in result.reason
    )


def test_a_prometheus_outage_for_two_intervals_is_retried_and_the_rollout_goes_on(
    stack: Stack,
) -> None:
    # A cluster of its own: the same service name, so the healthy scenario's predictors serve.
    with KubernetesApiDouble(ready_after=0.2, tick=0.02) as fresh:
        stable_deployed(fresh, stack, "healthy")
        outcome: dict[str, RolloutResult] = {}
        said: list[str] = []

        def progress(line: str) -> None:
            said.append(line)
            print(line)

        def retried() -> int:
            return sum(": retrying: " in line for line in said)

        with routed_load(fresh, stack, "healthy"):
            rollout = threading.Thread(
                target=lambda: outcome.update(
                    # Restarted, Prometheus has a gap in its window: more looks may be
                    # inconclusive than a steady scrape gives, which is not what this tests.
                    result=roll_out(
                        fresh, stack, "healthy", "gs://models/healthy/v3", progress,
                        inconclusive_limit=10,
                    )
                )
            )  # fmt: skip
            rollout.start()
            _wait_for(lambda: _canary_share(fresh, "healthy") == 20)
            stack.prometheus.stop()
            # Down for two looks, counted rather than timed: a loaded machine may stretch a look.
            _wait_for(lambda: retried() >= 2)
            stack.prometheus.start()
            rollout.join(timeout=120)
    result = outcome["result"]
    assert result.decision == "promoted", result.reason
    retries = [look for look in result.looks if look.decision.reason.startswith("retrying:")]
    assert len(retries) >= 2  # a slow restart may cost one more look
    assert len(retries) <= DEFAULT_POLICY.consecutive_error_limit
    assert "is unreachable" in retries[0].decision.reason


# -- Standard mode ----------------------------------------------------------------------------


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


def standard_deployed(cluster: KubernetesApiDouble, stack: Stack, scenario: str) -> None:
    """A stable service annotated with its mode, as spec.canary needs (done once, by hand)."""
    from kubernetes.client import ApiClient

    from conveyor.components.core.rollout.canary import MODE_ANNOTATION, is_ready

    stable_deployed(cluster, stack, scenario)
    annotation = {"metadata": {"annotations": {MODE_ANNOTATION: "Standard"}}}
    services = InferenceServices(ApiClient(cluster.configuration()), NAMESPACE)
    services.patch_fresh(scenario, lambda _: annotation)
    deadline = time.monotonic() + 10
    while not (
        cluster.template_changes(NAMESPACE, scenario) == 2
        and is_ready(cluster.get(NAMESPACE, scenario))
    ):
        assert time.monotonic() < deadline, "the annotated service never became ready"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def standard_cluster() -> Iterator[KubernetesApiDouble]:
    with KubernetesApiDouble(default_mode="Standard", ready_after=0.2, tick=0.02) as double:
        yield double


def test_standard_mode_promotes_a_healthy_spec_canary(
    standard_cluster: KubernetesApiDouble, stack: Stack
) -> None:
    standard_deployed(standard_cluster, stack, "steady")
    canary = standard_canary("steady", STANDARD["steady"])
    load = SplitLoad(standard_split(standard_cluster, "steady"), stack.urls, MODEL, BODY, rate=60)
    with load:
        result = roll_out(standard_cluster, stack, "steady", STANDARD["steady"])
    assert (result.mode, result.decision) == ("Standard", "promoted"), result.reason
    assert (result.stable_revision, result.canary_revision) == ("steady-predictor", canary)
    assert load.sent[canary] > 0
    service = standard_cluster.get(NAMESPACE, "steady")
    assert f"steady-{service['spec']['predictor']['name']}-predictor" == canary
    assert "name" not in service["spec"]["predictor"]["model"]  # KServe forbids it there
    assert "canary" not in service["spec"]


def test_standard_mode_rolls_back_a_failing_spec_canary(
    standard_cluster: KubernetesApiDouble, stack: Stack
) -> None:
    standard_deployed(standard_cluster, stack, "standard")
    canary = standard_canary("standard", STANDARD["standard"])
    load = SplitLoad(standard_split(standard_cluster, "standard"), stack.urls, MODEL, BODY, rate=60)
    with load:
        result = roll_out(standard_cluster, stack, "standard", STANDARD["standard"])
    assert (result.mode, result.decision) == ("Standard", "rolled_back")
    assert (result.stable_revision, result.canary_revision) == ("standard-predictor", canary)
    assert result.reason.startswith("analysis at 20 %: server_errors: worse than stable beyond")
    assert load.sent[canary] > 0
    service = standard_cluster.get(NAMESPACE, "standard")
    assert "canary" not in service["spec"]
    assert service["spec"]["predictor"]["model"]["storageUri"] == "gs://models/standard/v1"


def _canary_share(cluster: KubernetesApiDouble, scenario: str) -> int:
    service = cluster.get(NAMESPACE, scenario) or {}
    entries = (
        service.get("status", {}).get("components", {}).get("predictor", {}).get("traffic", [])
    )
    return next((e.get("percent", 0) for e in entries if e.get("latestRevision")), 0)


def _wait_for(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
