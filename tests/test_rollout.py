"""The canary rollout against the Kubernetes API + KServe controller double: the fault matrix.

Every case ends by checking where the traffic is: on the stable model unless the canary
was promoted. Analysis is off here (``analysis: none``); test_canary_analysis.py runs it
live, and test_canary_judge.py drives the looks with an injected clock.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from components.core.canary_policy import DEFAULT_POLICY, CanaryPolicy
from components.core.errors import ConveyorError
from components.core.kube import InferenceServices
from components.core.manifests import (
    ServingSpec,
    render_inference_service,
    validate_inference_service,
)
from components.core.rollout import (
    LOCK_ANNOTATION,
    SNAPSHOT_ANNOTATION,
    Rollout,
    RolloutFailed,
    RolloutPlan,
    RolloutSettings,
    describe_plan,
    parse_steps,
    render_report,
)
from pipelines.cli import main
from tests.conftest import ROOT
from tests.doubles.kube_api import KubernetesApiDouble

NAMESPACE = "ml-serving"
NAME = "fraud"
STABLE_URI = "gs://models/fraud/stable"
CANARY_URI = "gs://models/fraud/canary"
FAST = RolloutPlan(steps=(10, 50), interval_s=0.2, ready_timeout_s=5, deadline_s=30, poll_s=0.05)
UNJUDGED = CanaryPolicy(analysis="none")


@pytest.fixture
def cluster() -> Iterator[KubernetesApiDouble]:
    with KubernetesApiDouble(ready_after=0.2, tick=0.02) as double:
        yield double


def services(cluster: KubernetesApiDouble) -> InferenceServices:
    from kubernetes.client import ApiClient

    return InferenceServices(ApiClient(cluster.configuration()), NAMESPACE, backoff_s=0.05)


def manifest(uri: str, version: str = "2") -> dict:
    return render_inference_service(ServingSpec(NAME, version, uri, namespace=NAMESPACE))


def rollout(
    cluster: KubernetesApiDouble,
    uri: str = CANARY_URI,
    run_id: str = "run-2",
    policy: CanaryPolicy = UNJUDGED,
    prometheus_url: str = "",
    **plan: float,
) -> Rollout:
    settings = RolloutSettings(RolloutPlan(**{**FAST.__dict__, **plan}), policy, prometheus_url)
    return Rollout(
        services(cluster), manifest(uri), settings, run_id, progress=lambda line: None,
        prometheus=SilentPrometheus() if prometheus_url else None,
    )  # fmt: skip


class SilentPrometheus:
    """A Prometheus that answers every query with no series: queries work, nothing is known.
    (These tests end before any look; test_canary_analysis.py judges for real.)"""

    url = "silent"

    def query(self, query: str, at: float | None = None, label: str = "") -> dict:
        return {}


def deployed(cluster: KubernetesApiDouble) -> dict:
    """A stable service at STABLE_URI, created and ready, as a first rollout leaves it."""
    result = rollout(cluster, STABLE_URI, run_id="run-1").run()
    assert result.decision == "created"
    return cluster.get(NAMESPACE, NAME)


def traffic(cluster: KubernetesApiDouble) -> dict[str, int]:
    entries = cluster.get(NAMESPACE, NAME)["status"]["components"]["predictor"]["traffic"]
    return {e["revisionName"]: e["percent"] for e in entries if e["percent"]}


def assert_stable_serves_everything(cluster: KubernetesApiDouble) -> None:
    """The model that was stable serves 100 %, the spec points at it, and no lock is left."""
    service = cluster.get(NAMESPACE, NAME)
    assert service["spec"]["predictor"]["model"]["storageUri"] == STABLE_URI
    assert list(traffic(cluster).values()) == [100]
    assert service["status"]["components"]["predictor"]["latestReadyRevision"] in traffic(cluster)
    annotations = service["metadata"].get("annotations", {})
    assert LOCK_ANNOTATION not in annotations and SNAPSHOT_ANNOTATION not in annotations


def writes(cluster: KubernetesApiDouble) -> list:
    return [r for r in cluster.requests if r.method in ("POST", "PUT", "PATCH", "DELETE")]


# -- the happy paths ---------------------------------------------------------------------


def test_first_deploy_creates_the_service(cluster: KubernetesApiDouble) -> None:
    service = deployed(cluster)
    assert "canaryTrafficPercent" not in service["spec"]["predictor"]  # ignored on create
    assert traffic(cluster) == {f"{NAME}-predictor-00001": 100}


def test_a_healthy_canary_goes_through_each_step_and_is_promoted(
    cluster: KubernetesApiDouble,
) -> None:
    deployed(cluster)
    seen: list[dict[str, int]] = []
    watcher = threading.Thread(target=lambda: _record_splits(cluster, seen), daemon=True)
    watcher.start()
    result = rollout(cluster).run()
    assert result.decision == "promoted"
    assert (result.stable_revision, result.canary_revision) == (
        "fraud-predictor-00001",
        "fraud-predictor-00002",
    )
    assert [look.percent for look in result.looks] == [10, 50]
    assert [look.decision.reason for look in result.looks] == ["analysis: none"] * 2
    assert {"fraud-predictor-00002": 10, "fraud-predictor-00001": 90} in seen
    assert {"fraud-predictor-00002": 50, "fraud-predictor-00001": 50} in seen
    assert traffic(cluster) == {"fraud-predictor-00002": 100}
    service = cluster.get(NAMESPACE, NAME)
    assert (
        service["status"]["components"]["predictor"]["latestRolledoutRevision"]
        == "fraud-predictor-00002"
    )
    assert service["metadata"]["annotations"]["conveyor/model-version"] == "2"
    assert LOCK_ANNOTATION not in service["metadata"]["annotations"]
    assert "**promoted**" in render_report(result)


def _record_splits(cluster: KubernetesApiDouble, seen: list) -> None:
    for _ in range(400):
        split = traffic(cluster)
        if split not in seen:
            seen.append(split)
        time.sleep(0.01)


def test_every_write_carries_the_resource_version(cluster: KubernetesApiDouble) -> None:
    deployed(cluster)
    rollout(cluster).run()
    patches = [r for r in cluster.requests if r.method == "PATCH"]
    assert patches and all(r.content_type == "application/merge-patch+json" for r in patches)
    assert all(json.loads(r.body)["metadata"]["resourceVersion"] for r in patches)


# -- the fault matrix --------------------------------------------------------------------


def test_a_canary_that_never_becomes_ready_is_rolled_back(cluster: KubernetesApiDouble) -> None:
    deployed(cluster)
    cluster.revision_behaviour(CANARY_URI, never_ready=True)
    with pytest.raises(RolloutFailed) as failed:
        rollout(cluster, ready_timeout_s=1).run()
    assert failed.value.result.decision == "rolled_back"
    assert "timed out after 1 s waiting for a new revision at 10 %" in failed.value.result.reason
    assert_stable_serves_everything(cluster)


def test_a_canary_that_fails_to_load_is_rolled_back_at_once(cluster: KubernetesApiDouble) -> None:
    deployed(cluster)
    cluster.revision_behaviour(CANARY_URI, fails=True)
    started = time.monotonic()
    with pytest.raises(RolloutFailed) as failed:
        rollout(cluster, ready_timeout_s=20).run()
    assert time.monotonic() - started < 10  # failed fast, not at the readiness timeout
    result = failed.value.result
    assert result.decision == "rolled_back"
    assert result.reason.startswith("revision fraud-predictor-00002 failed to load")
    assert_stable_serves_everything(cluster)


def run_in_thread(rollout_: Rollout) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["result"] = rollout_.run()
        except RolloutFailed as failed:
            outcome["result"] = failed.result

    thread = threading.Thread(target=target)
    thread.start()
    return thread, outcome


def test_conflicting_writes_mid_rollout_are_reread_and_retried(
    cluster: KubernetesApiDouble,
) -> None:
    deployed(cluster)
    thread, outcome = run_in_thread(rollout(cluster, interval_s=0.5))
    _wait_for(lambda: traffic(cluster).get("fraud-predictor-00002") == 10)
    cluster.conflict_next_writes(times=2)  # the move to 50 % meets another writer, twice
    thread.join(timeout=30)
    assert outcome["result"].decision == "promoted"
    assert cluster.get(NAMESPACE, NAME)["metadata"]["annotations"]["other-writer/touch"]
    conflicts = [
        r
        for r in cluster.requests
        if r.method == "PATCH" and '"canaryTrafficPercent": 50' in r.body
    ]
    assert len(conflicts) == 3  # two refused with 409, the third applied


def test_transient_server_errors_mid_rollout_are_retried(cluster: KubernetesApiDouble) -> None:
    deployed(cluster)
    thread, outcome = run_in_thread(rollout(cluster, interval_s=0.5))
    _wait_for(lambda: traffic(cluster).get("fraud-predictor-00002") == 10)
    cluster.fail_next("PATCH", status=503, times=2)
    cluster.fail_next("GET", status=500, times=1)
    thread.join(timeout=30)
    assert outcome["result"].decision == "promoted"
    assert traffic(cluster) == {"fraud-predictor-00002": 100}


def test_a_missing_permission_is_named_and_nothing_changes(cluster: KubernetesApiDouble) -> None:
    deployed(cluster)
    before = len(writes(cluster))
    cluster.deny("patch")
    with pytest.raises(ConveyorError) as failed:
        rollout(cluster).run()
    message = str(failed.value)
    assert message.startswith(
        "failed: permission denied: cannot patch inferenceservices.serving.kserve.io in namespace ml-serving"
    )
    assert "grant it with kserve/rbac.yaml" in message
    assert len(writes(cluster)) == before + 1  # the refused patch, and nothing else
    assert_stable_serves_everything(cluster)


def test_a_second_concurrent_rollout_is_refused(cluster: KubernetesApiDouble) -> None:
    deployed(cluster)
    thread, outcome = run_in_thread(rollout(cluster, run_id="run-a", interval_s=1.0))
    _wait_for(lambda: LOCK_ANNOTATION in cluster.get(NAMESPACE, NAME)["metadata"]["annotations"])
    with pytest.raises(RolloutFailed) as refused:
        rollout(cluster, "gs://models/fraud/other", run_id="run-b").run()
    thread.join(timeout=30)
    assert refused.value.result.decision == "failed"
    assert refused.value.result.reason.startswith(
        "fraud is being rolled out by run run-a (lock held until"
    )
    assert outcome["result"].decision == "promoted"  # the first one was not disturbed
    assert cluster.get(NAMESPACE, NAME)["spec"]["predictor"]["model"]["storageUri"] == CANARY_URI


def test_a_service_that_is_not_ready_is_left_alone(cluster: KubernetesApiDouble) -> None:
    cluster.revision_behaviour(STABLE_URI, never_ready=True)
    with pytest.raises(RolloutFailed):
        rollout(cluster, STABLE_URI, run_id="run-1", ready_timeout_s=0.5).run()
    before = len(writes(cluster))
    with pytest.raises(RolloutFailed) as refused:
        rollout(cluster).run()
    assert refused.value.result.reason.startswith("fraud is not Ready (")
    assert len(writes(cluster)) == before


def test_standard_mode_without_spec_canary_fails_clearly() -> None:
    with KubernetesApiDouble(
        default_mode="RawDeployment", crd_has_canary=False, ready_after=0.1
    ) as cluster:
        deployed(cluster)
        before = len(writes(cluster))
        with pytest.raises(RolloutFailed) as failed:
            rollout(cluster).run()
        assert failed.value.result.decision == "failed"
        assert failed.value.result.reason == (
            "fraud runs in Standard mode, where KServe ignores canaryTrafficPercent, and this "
            "cluster's InferenceService CRD has no spec.canary (KServe < 0.20), so no canary is "
            "possible: use Knative (Serverless) mode or upgrade KServe"
        )
        assert len(writes(cluster)) == before  # no canary reported, none attempted
        assert (
            cluster.get(NAMESPACE, NAME)["spec"]["predictor"]["model"]["storageUri"] == STABLE_URI
        )


@pytest.fixture
def standard_cluster() -> Iterator[KubernetesApiDouble]:
    with KubernetesApiDouble(default_mode="Standard", ready_after=0.2, tick=0.02) as double:
        yield double


# Standard mode canaries must prove they served: analysis against Prometheus is required.
ANALYSED = {"policy": DEFAULT_POLICY, "prometheus_url": "http://silent"}


def test_standard_mode_refuses_a_canary_nobody_would_analyse(
    standard_cluster: KubernetesApiDouble,
) -> None:
    deployed(standard_cluster)
    before = len(writes(standard_cluster))
    with pytest.raises(RolloutFailed) as refused:
        rollout(standard_cluster).run()
    assert refused.value.result.reason == (
        "fraud runs in Standard mode, where KServe 0.20 sets a spec.canary entry's replicas "
        "from trafficPercent but routes no traffic by it yet, so a canary must prove it "
        "served requests: analysis: none is refused here"
    )
    assert len(writes(standard_cluster)) == before


def test_standard_mode_refuses_a_canary_of_the_model_already_served(
    standard_cluster: KubernetesApiDouble,
) -> None:
    deployed(standard_cluster)
    with pytest.raises(RolloutFailed) as refused:
        Rollout(
            services(standard_cluster),
            render_inference_service(ServingSpec(NAME, "2", STABLE_URI, namespace=NAMESPACE, cpu="2")),
            RolloutSettings(FAST, **ANALYSED), "run-2", progress=lambda line: None,
            prometheus=SilentPrometheus(),
        ).run()  # fmt: skip
    assert refused.value.result.reason.startswith(
        f"fraud already serves {STABLE_URI}: in Standard mode a canary needs a new model"
    )


def test_standard_mode_on_a_crd_it_cannot_read_and_that_lacks_spec_canary() -> None:
    with KubernetesApiDouble(
        default_mode="Standard", crd_has_canary=False, ready_after=0.1, tick=0.02
    ) as cluster:
        deployed(cluster)
        cluster.deny("get", "customresourcedefinitions")  # as kserve/rbac.yaml grants no more
        with pytest.raises(RolloutFailed) as failed:
            rollout(cluster, **ANALYSED).run()
        assert "the API server dropped spec.canary" in failed.value.result.reason
        assert "no canary is possible in Standard mode" in failed.value.result.reason
        assert "canary" not in cluster.get(NAMESPACE, NAME)["spec"]
        assert (
            cluster.get(NAMESPACE, NAME)["spec"]["predictor"]["model"]["storageUri"] == STABLE_URI
        )


def test_standard_mode_rolls_back_a_canary_that_never_becomes_ready(
    standard_cluster: KubernetesApiDouble,
) -> None:
    deployed(standard_cluster)
    standard_cluster.revision_behaviour(CANARY_URI, never_ready=True)
    with pytest.raises(RolloutFailed) as failed:
        rollout(standard_cluster, **ANALYSED, ready_timeout_s=1).run()
    assert failed.value.result.decision == "rolled_back"
    assert failed.value.result.reason.startswith("timed out after 1 s waiting for canary c")
    service = standard_cluster.get(NAMESPACE, NAME)
    assert service["spec"]["predictor"]["model"]["storageUri"] == STABLE_URI
    assert "canary" not in service["spec"] and not service["status"].get("canaryStatuses")
    assert LOCK_ANNOTATION not in service["metadata"]["annotations"]


def test_modelmesh_mode_fails_clearly() -> None:
    with KubernetesApiDouble(default_mode="ModelMesh", ready_after=0.1) as cluster:
        deployed(cluster)
        with pytest.raises(
            RolloutFailed, match="ModelMesh mode, which has no canary traffic split"
        ):
            rollout(cluster).run()


def test_a_rerun_after_a_crash_rolls_back_then_completes(
    cluster: KubernetesApiDouble, tmp_path: Path
) -> None:
    deployed(cluster)
    crashed = _start_cli(cluster, tmp_path, "--run-id", "run-7", "--interval", "30")
    _wait_for(lambda: traffic(cluster).get("fraud-predictor-00002") == 10)
    crashed.kill()  # SIGKILL: no handler runs, the lock and the 10 % split stay behind
    crashed.wait(timeout=30)
    service = cluster.get(NAMESPACE, NAME)
    assert json.loads(service["metadata"]["annotations"][LOCK_ANNOTATION])["run"] == "run-7"
    result = rollout(cluster, run_id="run-7").run()
    assert result.decision == "promoted"
    assert traffic(cluster) == {result.canary_revision: 100}
    assert cluster.revisions(NAMESPACE, NAME)[-1] == result.canary_revision
    # Rolled back to the snapshot first: a revision of the stable model came in between.
    assert len(cluster.revisions(NAMESPACE, NAME)) == 4


def test_a_rerun_after_a_crash_past_promotion_only_unlocks(cluster: KubernetesApiDouble) -> None:
    deployed(cluster)
    assert rollout(cluster).run().decision == "promoted"
    lock = {"run": "run-2", "expires": time.time() + 600}
    stale = {LOCK_ANNOTATION: json.dumps(lock), SNAPSHOT_ANNOTATION: json.dumps({"predictor": {}})}
    # As if the process had died after the promotion, before it unlocked.
    services(cluster).patch_fresh(NAME, lambda _: {"metadata": {"annotations": stale}})
    again = rollout(cluster).run()
    assert (again.decision, again.reason) == (
        "promoted",
        "already serving this model at 100 %: nothing to do",
    )
    assert traffic(cluster) == {"fraud-predictor-00002": 100}  # the promoted canary stays
    assert cluster.revisions(NAMESPACE, NAME) == ["fraud-predictor-00001", "fraud-predictor-00002"]
    assert LOCK_ANNOTATION not in cluster.get(NAMESPACE, NAME)["metadata"]["annotations"]


def test_sigterm_mid_rollout_rolls_back(cluster: KubernetesApiDouble, tmp_path: Path) -> None:
    deployed(cluster)
    process = _start_cli(cluster, tmp_path, "--interval", "30")
    _wait_for(lambda: traffic(cluster).get("fraud-predictor-00002") == 10)
    process.send_signal(signal.SIGTERM)  # how KFP cancels a run
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 1, output
    assert "rolling back fraud: the run was cancelled (SIGTERM)" in output
    assert "**rolled back**" in output
    assert_stable_serves_everything(cluster)


def _start_cli(cluster: KubernetesApiDouble, tmp_path: Path, *options: str) -> subprocess.Popen:
    kubeconfig = cluster.write_kubeconfig(tmp_path / "kubeconfig", namespace=NAMESPACE)
    policy = tmp_path / "policy.yaml"
    policy.write_text("analysis: none\n")
    command = [
        sys.executable, "-m", "pipelines.cli", "rollout", "--name", NAME, "--namespace", NAMESPACE,
        "--model-uri", CANARY_URI, "--kubeconfig", str(kubeconfig), "--ready-timeout", "10",
        "--policy", str(policy), *options,
    ]  # fmt: skip
    return subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _wait_for(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_the_deadline_rolls_back(cluster: KubernetesApiDouble) -> None:
    deployed(cluster)
    with pytest.raises(RolloutFailed) as failed:
        rollout(cluster, interval_s=2.0, deadline_s=1.0).run()
    assert failed.value.result.reason == "the rollout passed its deadline of 1 s"
    assert_stable_serves_everything(cluster)


# -- plan, report, and the command line ---------------------------------------------------


@pytest.mark.parametrize(
    ("steps", "message"),
    [((), "must be whole percentages 1-99"), ((10, 100), "must be whole percentages 1-99"),
     ((50, 10), "must increase"), ((0, 50), "must be whole percentages 1-99")],
)  # fmt: skip
def test_bad_steps_are_refused(steps: tuple, message: str) -> None:
    with pytest.raises(ConveyorError, match=message):
        RolloutPlan(steps=steps)


def test_steps_parse_from_text() -> None:
    assert parse_steps("5,25,60") == (5, 25, 60)
    with pytest.raises(ConveyorError, match="comma-separated percentages, such as 10,50"):
        parse_steps("ten")


def test_dry_run_prints_a_yaml_stream_the_api_server_accepts(
    cluster: KubernetesApiDouble, capsys: pytest.CaptureFixture
) -> None:
    from kubernetes.client import ApiClient, CustomObjectsApi
    from kubernetes.client.exceptions import ApiException

    code = main([
        "rollout", "--name", NAME, "--namespace", NAMESPACE, "--model-uri", CANARY_URI,
        "--steps", "5,20,60", "--prometheus", "http://prometheus:9090",
        "--kubeconfig", "/nonexistent/kubeconfig", "--dry-run",
    ])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    documents = [document for document in yaml.safe_load_all(printed) if document is not None]
    assert len(documents) == 1
    (service,) = documents
    validate_inference_service(service)  # KServe's CRD schema
    assert service["spec"]["predictor"]["model"]["storageUri"] == CANARY_URI
    plan = [line for line in printed.splitlines() if line.startswith("#")]
    assert "send the new model 5 %, then 20 %, then 60 % of traffic" in plan[1]
    assert "# judged from Prometheus at http://prometheus:9090:" in plan
    assert any(
        line.startswith("# - `server_errors` (proportion, lower, margin 0.01") for line in plan
    )
    api = CustomObjectsApi(ApiClient(cluster.configuration()))
    arguments = ("serving.kserve.io", "v1beta1", NAMESPACE, "inferenceservices", service)
    accepted = api.create_namespaced_custom_object(*arguments, dry_run="All")
    assert accepted["metadata"]["name"] == NAME and "resourceVersion" not in accepted["metadata"]
    assert cluster.get(NAMESPACE, NAME) is None  # validated, admitted, and not stored
    with pytest.raises(ApiException) as refused:
        api.create_namespaced_custom_object(*arguments, dry_run="Yes")
    assert refused.value.status == 422


def test_describe_plan_with_analysis_none_says_nothing_is_judged() -> None:
    text = describe_plan(manifest(CANARY_URI), RolloutSettings(FAST, UNJUDGED))
    assert "# - **analysis: none**: the canary is NOT judged" in text


def test_a_rollout_with_nothing_to_judge_by_is_refused_before_anything(
    cluster: KubernetesApiDouble,
) -> None:
    deployed(cluster)
    before = len(cluster.requests)
    with pytest.raises(RolloutFailed) as refused:
        rollout(cluster, policy=DEFAULT_POLICY).run()
    assert refused.value.result.reason.startswith("no Prometheus URL to judge the canary with")
    assert len(cluster.requests) == before  # not even read


def test_cli_without_credentials_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    code = main([
        "rollout", "--name", NAME, "--model-uri", CANARY_URI, "--prometheus", "http://p:9090",
        "--kubeconfig", str(tmp_path / "missing"),
    ])  # fmt: skip
    error = capsys.readouterr().err.strip()
    assert code == 2
    assert error.startswith("conveyor rollout: no Kubernetes credentials (")
    assert len(error.splitlines()) == 1


def test_repeating_a_finished_rollout_changes_nothing(cluster: KubernetesApiDouble) -> None:
    deployed(cluster)
    assert rollout(cluster).run().decision == "promoted"
    before = len(writes(cluster))
    again = rollout(cluster, run_id="run-2-retry").run()
    assert (again.decision, again.reason) == (
        "promoted",
        "already serving this model at 100 %: nothing to do",
    )
    assert len(writes(cluster)) == before


# -- the deploy component, as KFP calls it ------------------------------------------------


def deploy_step(tmp_path: Path, uri: str, version: str, **options):
    from kfp.dsl import Artifact, Markdown, Metrics

    from components.deploy import deploy
    from tests.conftest import artifact

    outputs = tmp_path / f"v{version}"
    report = artifact(Markdown, outputs, "report")
    metrics = artifact(Metrics, outputs, "rollout_metrics")
    decision = None
    try:
        decision = deploy.python_func(
            model_name=NAME, model_version=version, storage_uri=uri, run_id=f"run-{version}",
            manifest=artifact(Artifact, outputs, "manifest"), report=report,
            rollout_metrics=metrics, namespace=NAMESPACE,
            canary_interval_s=0.2, ready_timeout_s=5, canary_policy={"analysis": "none"},
            **options,
        )  # fmt: skip
    finally:
        text = Path(report.path).read_text() if Path(report.path).exists() else ""
    return decision, report, text, metrics


def test_the_deploy_step_creates_then_promotes_and_reports(
    cluster: KubernetesApiDouble, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kubeconfig = cluster.write_kubeconfig(tmp_path / "kubeconfig", namespace=NAMESPACE)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    decision, report, text, _ = deploy_step(tmp_path, STABLE_URI, "1")
    assert decision == "created" and "**created**" in text
    decision, report, text, metrics = deploy_step(tmp_path, CANARY_URI, "2", canary_steps="20,60")
    assert decision == "promoted_without_analysis"
    assert report.metadata["canary_revision"] == "fraud-predictor-00002"
    assert report.metadata["stable_revision"] == "fraud-predictor-00001"
    assert report.metadata["analysis"] == "none"
    assert "promoted WITHOUT ANALYSIS" in text and "the canary is NOT judged" in text
    looks = [line for line in text.splitlines() if line.endswith("| pass | analysis: none |")]
    assert [line.split(" | ")[0] for line in looks] == ["| 20 %", "| 60 %"]
    assert metrics.metadata == {"analysis_performed": 0.0}
    assert f"storageUri: {STABLE_URI}" in text  # the snapshot a rollback would re-apply
    assert traffic(cluster) == {"fraud-predictor-00002": 100}


def test_a_rolled_back_deploy_fails_the_step_with_its_reason_and_report(
    cluster: KubernetesApiDouble, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kubeconfig = cluster.write_kubeconfig(tmp_path / "kubeconfig", namespace=NAMESPACE)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    deploy_step(tmp_path, STABLE_URI, "1")
    cluster.revision_behaviour(CANARY_URI, fails=True)
    with pytest.raises(SystemExit) as exit_info:
        deploy_step(tmp_path, CANARY_URI, "2")
    assert str(exit_info.value).startswith(
        "deploy: rolled_back: revision fraud-predictor-00002 failed to load"
    )
    assert "**rolled back**" in (tmp_path / "v2" / "report").read_text()
    assert_stable_serves_everything(cluster)


def test_restoring_after_a_promotion_hands_traffic_back_to_the_old_model(
    cluster: KubernetesApiDouble,
) -> None:
    """A failure after the promotion (the unlock, say) still rolls back: setting 0 % would
    leave everything on the promoted canary, so the old spec takes over from it instead."""
    from components.core.canary import KnativeCanary

    stable = deployed(cluster)
    snapshot = {
        "predictor": stable["spec"]["predictor"],
        "stable_revision": "fraud-predictor-00001",
    }
    assert rollout(cluster).run().decision == "promoted"

    def wait(what: str, done) -> dict:
        _wait_for(lambda: done(cluster.get(NAMESPACE, NAME)), timeout=10)
        return cluster.get(NAMESPACE, NAME)

    KnativeCanary(services(cluster), NAME).restore(snapshot, wait)
    assert traffic(cluster) == {"fraud-predictor-00003": 100}
    assert cluster.get(NAMESPACE, NAME)["spec"]["predictor"]["model"]["storageUri"] == STABLE_URI
