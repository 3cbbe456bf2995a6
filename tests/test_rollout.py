"""The canary rollout against the Kubernetes API + KServe controller double: the fault matrix.

Every case ends by checking where the traffic is (on the stable model unless the canary
was promoted) and how many revisions the rollout made: the double makes one for every
change of the revision template, as KServe and Knative do. Analysis is off here (``analysis: none``); test_canary_analysis.py runs it
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

from conveyor.components.core.errors import ConveyorError
from conveyor.components.core.rollout.canary import StandardCanary, is_ready
from conveyor.components.core.rollout.kube import InferenceServices, Objects
from conveyor.components.core.rollout.lease import (
    LeaseRecord,
    RolloutLease,
    holder,
    lease_name,
    record_of,
)
from conveyor.components.core.rollout.manifests import (
    ServingSpec,
    render_inference_service,
    validate_inference_service,
)
from conveyor.components.core.rollout.policy import DEFAULT_POLICY, CanaryPolicy
from conveyor.components.core.rollout.runner import (
    Rollout,
    RolloutFailed,
    RolloutPlan,
    RolloutSettings,
    describe_plan,
    parse_steps,
    render_report,
    rendered_fields,
)
from conveyor.components.core.rollout.snapshot import Snapshot
from conveyor.pipelines.cli import main
from tests.conftest import ROOT
from tests.doubles.kube_api import PLURAL, TOUCH_ANNOTATION, KubernetesApiDouble

NAMESPACE = "ml-serving"
NAME = "fraud"
STABLE_URI = "gs://models/fraud/stable"
CANARY_URI = "gs://models/fraud/canary"
LEASE = lease_name(NAME)
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


def applied(uri: str) -> dict:
    """The predictor fields a rollout of ``uri`` applies."""
    return rendered_fields(manifest(uri))


def waiter(cluster: KubernetesApiDouble):
    """A canary's ``wait``: polls the service until ``done`` holds (10 s at most)."""

    def wait(what: str, done) -> dict:
        _wait_for(lambda: done(cluster.get(NAMESPACE, NAME)), timeout=10)
        return cluster.get(NAMESPACE, NAME)

    return wait


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


def assert_stable_serves_everything(cluster: KubernetesApiDouble, revisions: int) -> None:
    """The model that was stable serves 100 %, the spec points at it, the Lease is free,
    and ``revisions`` revisions exist (a rollback: the canary's and the restored spec's)."""
    service = cluster.get(NAMESPACE, NAME)
    assert service["spec"]["predictor"]["model"]["storageUri"] == STABLE_URI
    assert list(traffic(cluster).values()) == [100]
    assert service["status"]["components"]["predictor"]["latestReadyRevision"] in traffic(cluster)
    assert not holder(cluster.lease(NAMESPACE, LEASE) or {})
    assert len(cluster.revisions(NAMESPACE, NAME)) == revisions


def writes(cluster: KubernetesApiDouble) -> list:
    return [r for r in cluster.requests if r.method in ("POST", "PUT", "PATCH", "DELETE")]


def service_writes(cluster: KubernetesApiDouble) -> list:
    """Writes to the InferenceService itself (not its Lease or snapshot; no dry runs)."""
    return [
        r for r in writes(cluster) if "/inferenceservices" in r.path and "dryRun" not in r.query
    ]


def lease_record(cluster: KubernetesApiDouble) -> LeaseRecord | None:
    return record_of(cluster.lease(NAMESPACE, LEASE) or {"metadata": {"name": LEASE}})


# -- the happy paths ---------------------------------------------------------------------


def test_first_deploy_creates_the_service(cluster: KubernetesApiDouble) -> None:
    service = deployed(cluster)
    assert "canaryTrafficPercent" not in service["spec"]["predictor"]  # ignored on create
    assert traffic(cluster) == {f"{NAME}-predictor-00001": 100}
    assert cluster.revisions(NAMESPACE, NAME) == [f"{NAME}-predictor-00001"]
    assert cluster.lease(NAMESPACE, LEASE) is None  # a create needs no lock: 409 decides


def test_a_create_whose_answer_was_lost_is_not_taken_for_another_runs(
    cluster: KubernetesApiDouble,
) -> None:
    """The create lands after the client gave up on its answer; the retry meets a 409."""
    from kubernetes.client import ApiClient

    impatient = InferenceServices(
        ApiClient(cluster.configuration()), NAMESPACE, backoff_s=0.05, timeout_s=(1.0, 0.5)
    )
    cluster.stall_next("POST", seconds=1.0, after_answering=True)
    settings = RolloutSettings(FAST, UNJUDGED)
    lines: list[str] = []
    created = Rollout(impatient, manifest(STABLE_URI), settings, "run-1", lines.append).run()
    assert created.decision == "created"
    # The retry met a 409 (the first create had landed), and the model was this run's.
    creates = [r for r in cluster.requests if r.method == "POST" and PLURAL in r.path]
    assert len(creates) == 2
    assert cluster.revisions(NAMESPACE, NAME) == [f"{NAME}-predictor-00001"]


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
    assert service["spec"]["predictor"]["annotations"]["conveyor/model-version"] == "2"
    # Exactly one new revision, the canary's: the one analysed is the one that serves.
    assert cluster.revisions(NAMESPACE, NAME) == ["fraud-predictor-00001", "fraud-predictor-00002"]
    record = lease_record(cluster)
    assert (record.run, record.state, record.reason) == ("run-2", "finished", result.reason)
    assert not holder(cluster.lease(NAMESPACE, LEASE))
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
    assert len(cluster.revisions(NAMESPACE, NAME)) == 2  # promoted: the canary's, one
    patches = [r for r in service_writes(cluster) if r.method == "PATCH"]
    assert patches and all(r.content_type == "application/merge-patch+json" for r in patches)
    assert all(json.loads(r.body)["metadata"]["resourceVersion"] for r in patches)
    lease_writes = [r for r in writes(cluster) if "/leases/" in r.path]
    assert lease_writes and all(
        json.loads(r.body)["metadata"]["resourceVersion"] for r in lease_writes
    )


def test_only_the_write_that_starts_the_canary_touches_the_service_metadata(
    cluster: KubernetesApiDouble,
) -> None:
    """The lock and snapshot live elsewhere, and the model's annotations move with its spec:
    what earlier releases kept on the service goes in the canary's own write (and revision)."""
    deployed(cluster)
    legacy = {"conveyor/model-version": "1", "conveyor/rollout-lock": "{}"}
    services(cluster).patch_fresh(NAME, lambda _: {"metadata": {"annotations": legacy}})
    _wait_for(lambda: len(traffic(cluster)) == 1 and "00002" in next(iter(traffic(cluster))))
    rollout(cluster).run()
    patches = [r for r in service_writes(cluster) if r.method == "PATCH"][1:]
    with_metadata = [
        json.loads(r.body) for r in patches
        if set(json.loads(r.body).get("metadata", {})) - {"resourceVersion"}
    ]  # fmt: skip
    assert len(with_metadata) == 1
    assert with_metadata[0]["spec"]["predictor"]["model"]["storageUri"] == CANARY_URI
    assert with_metadata[0]["metadata"]["annotations"] == dict.fromkeys(legacy)
    assert not set(legacy) & set(cluster.get(NAMESPACE, NAME)["metadata"].get("annotations", {}))
    assert len(cluster.revisions(NAMESPACE, NAME)) == 3  # the annotated stable, the canary


def test_the_snapshot_and_the_lease_belong_to_the_service(cluster: KubernetesApiDouble) -> None:
    from kubernetes.client import ApiClient, CustomObjectsApi

    deployed(cluster)
    rollout(cluster).run()
    assert len(cluster.revisions(NAMESPACE, NAME)) == 2
    service = cluster.get(NAMESPACE, NAME)
    snapshot = cluster.config_map(NAMESPACE, LEASE)
    assert snapshot["data"]["run"] == "run-2"
    saved = Snapshot(**yaml.safe_load(snapshot["data"]["snapshot.yaml"]))
    assert saved.predictor["model"]["storageUri"] == STABLE_URI
    assert saved.stable_revision == "fraud-predictor-00001"
    for owned in (snapshot, cluster.lease(NAMESPACE, LEASE)):
        (owner,) = owned["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["uid"]) == ("InferenceService", service["metadata"]["uid"])
    CustomObjectsApi(ApiClient(cluster.configuration())).delete_namespaced_custom_object(
        "serving.kserve.io", "v1beta1", NAMESPACE, "inferenceservices", NAME
    )
    assert cluster.config_map(NAMESPACE, LEASE) is None and cluster.lease(NAMESPACE, LEASE) is None


# -- the fault matrix --------------------------------------------------------------------


def test_a_canary_that_never_becomes_ready_is_rolled_back(cluster: KubernetesApiDouble) -> None:
    deployed(cluster)
    cluster.revision_behaviour(CANARY_URI, never_ready=True)
    with pytest.raises(RolloutFailed) as failed:
        rollout(cluster, ready_timeout_s=1).run()
    assert failed.value.result.decision == "rolled_back"
    assert "timed out after 1 s waiting for a new revision at 10 %" in failed.value.result.reason
    assert_stable_serves_everything(cluster, revisions=3)
    assert lease_record(cluster).state == "finished"


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
    assert_stable_serves_everything(cluster, revisions=3)


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
    assert cluster.get(NAMESPACE, NAME)["metadata"]["annotations"][TOUCH_ANNOTATION]
    assert len(cluster.revisions(NAMESPACE, NAME)) == 2  # KServe keeps kubectl's out
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
    assert len(cluster.revisions(NAMESPACE, NAME)) == 2


def test_a_stalled_answer_times_out_and_is_retried(cluster: KubernetesApiDouble) -> None:
    from kubernetes.client import ApiClient

    deployed(cluster)
    patient = InferenceServices(
        ApiClient(cluster.configuration()), NAMESPACE, backoff_s=0.05, timeout_s=(1.0, 0.5)
    )
    cluster.stall_next("GET", seconds=2.0)
    before = len(cluster.requests)
    started = time.monotonic()
    assert patient.get(NAME)["metadata"]["name"] == NAME
    assert time.monotonic() - started < 1.9  # the stalled answer was not waited for
    # The stalled request and one retry: no retries of urllib3's own on top of the budget.
    assert len(cluster.requests) - before == 2


@pytest.mark.parametrize(
    ("verb", "resource", "named"),
    [("patch", "inferenceservices", "patch inferenceservices.serving.kserve.io"),
     ("create", "leases", "create leases.coordination.k8s.io"),
     ("create", "configmaps", "create configmaps")],
)  # fmt: skip
def test_a_missing_permission_is_named_and_nothing_changes(
    cluster: KubernetesApiDouble, verb: str, resource: str, named: str
) -> None:
    deployed(cluster)
    before = len(service_writes(cluster))
    cluster.deny(verb, resource)
    with pytest.raises(ConveyorError) as failed:
        rollout(cluster).run()
    message = str(failed.value)
    assert message.startswith(f"failed: permission denied: cannot {named} in namespace ml-serving")
    assert "grant it with kserve/rbac.yaml" in message
    assert len(service_writes(cluster)) == before  # refused before any write to the service
    assert_stable_serves_everything(cluster, revisions=1)


def service_events(cluster: KubernetesApiDouble, selector: str = "") -> list:
    from kubernetes.client import ApiClient, CoreV1Api

    api = CoreV1Api(ApiClient(cluster.configuration()))
    return api.list_namespaced_event(NAMESPACE, field_selector=selector).items


def test_each_step_is_an_event_on_the_service(cluster: KubernetesApiDouble) -> None:
    uid = deployed(cluster)["metadata"]["uid"]
    rollout(cluster).run()
    events = service_events(cluster, f"involvedObject.name={NAME},involvedObject.uid={uid}")
    assert [(e.reason, e.type) for e in events] == [
        ("ModelDeployed", "Normal"), ("CanaryStarted", "Normal"),
        ("CanaryStepPassed", "Normal"), ("CanaryStep", "Normal"),
        ("CanaryStepPassed", "Normal"), ("CanaryPromoted", "Normal"),
    ]  # fmt: skip
    assert [e.reporting_instance for e in events] == ["run-1"] + ["run-2"] * 5
    assert events[3].message == "canary fraud-predictor-00002 at 50 % of traffic"
    assert service_events(cluster, "type=Warning") == []


def test_events_are_a_record_not_a_step(cluster: KubernetesApiDouble) -> None:
    """Without create on events, the rollout says so once and goes on."""
    deployed(cluster)
    cluster.deny("create", "events")
    said: list[str] = []
    settings = RolloutSettings(FAST, UNJUDGED, "")
    result = Rollout(services(cluster), manifest(CANARY_URI), settings, "run-2", said.append).run()
    assert result.decision == "promoted"
    refused = [line for line in said if line.startswith("could not record a Kubernetes Event")]
    assert len(refused) == 1 and "permission denied: cannot create events" in refused[0]
    assert [e.reason for e in service_events(cluster)] == ["ModelDeployed"]


def test_an_event_that_fails_costs_only_itself(cluster: KubernetesApiDouble) -> None:
    """One Event refused (not for want of permission): said, and the next ones written."""
    deployed(cluster)
    cluster.fail_next("POST", status=400, resource="events")
    said: list[str] = []
    settings = RolloutSettings(FAST, UNJUDGED, "")
    result = Rollout(services(cluster), manifest(CANARY_URI), settings, "run-2", said.append).run()
    assert result.decision == "promoted"
    (failed,) = [line for line in said if "Kubernetes Event" in line]
    assert failed.startswith("could not record the Kubernetes Event CanaryStarted (the ")
    assert failed.endswith("in namespace ml-serving (400): Internal error occurred)")
    assert [e.reason for e in service_events(cluster)] == [
        "ModelDeployed", "CanaryStepPassed", "CanaryStep", "CanaryStepPassed", "CanaryPromoted"
    ]  # fmt: skip


def test_the_double_holds_events_to_the_api_servers_rules(cluster: KubernetesApiDouble) -> None:
    """pkg/apis/core/validation/events.go: the length limits count bytes, and an Event
    with an eventTime names who reported it; a field the list cannot select on is a 400."""
    from kubernetes.client import ApiClient, CoreV1Api
    from kubernetes.client.exceptions import ApiException

    from conveyor.components.core.rollout.events import ServiceEvents

    api = CoreV1Api(ApiClient(cluster.configuration()))
    events = ServiceEvents(Objects(api.api_client, NAMESPACE, "event"), "run-1")
    events.bind(deployed(cluster))
    body = events.body("CanaryStepPassed", "é" * 2000, warning=False)
    assert len(body["message"].encode()) <= 1024  # cut on bytes, at a character
    api.create_namespaced_event(NAMESPACE, body)
    for key, value in [("reason", "R" * 129), ("message", "é" * 513),
                       ("reportingComponent", ""), ("action", "")]:  # fmt: skip
        bad = {**events.body("CanaryStep", "ok", False), key: value}
        with pytest.raises(ApiException) as refused:
            api.create_namespaced_event(NAMESPACE, bad)
        assert refused.value.status == 422, key
    with pytest.raises(ApiException) as refused:
        api.list_namespaced_event(NAMESPACE, field_selector="message=ok")
    assert (
        refused.value.status == 400 and "field label not supported: message" in refused.value.body
    )


def test_a_second_concurrent_rollout_is_refused(cluster: KubernetesApiDouble) -> None:
    deployed(cluster)
    thread, outcome = run_in_thread(rollout(cluster, run_id="run-a", interval_s=1.0))
    _wait_for(lambda: holder(cluster.lease(NAMESPACE, LEASE) or {}).startswith("run-a@"))
    with pytest.raises(RolloutFailed) as refused:
        rollout(cluster, "gs://models/fraud/other", run_id="run-b").run()
    thread.join(timeout=30)
    assert refused.value.result.decision == "failed"
    assert refused.value.result.reason.startswith(
        "fraud is being rolled out by run run-a (process "
    )
    assert outcome["result"].decision == "promoted"  # the first one was not disturbed
    assert traffic(cluster) == {"fraud-predictor-00002": 100}
    assert len(cluster.revisions(NAMESPACE, NAME)) == 2  # none for the refused one
    assert cluster.get(NAMESPACE, NAME)["spec"]["predictor"]["model"]["storageUri"] == CANARY_URI


HAND_TUNED = {
    "minReplicas": 2, "maxReplicas": 6, "scaleTarget": 70, "scaleMetric": "concurrency",
    "nodeSelector": {"pool": "inference"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
    "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 50, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname"}}]}},
    "annotations": {"other-tool/owner": "team-a"},
}  # fmt: skip
EXTRA_ENV = {"name": "OMP_NUM_THREADS", "value": "2"}


def assert_hand_tuned(cluster: KubernetesApiDouble) -> None:
    predictor = cluster.get(NAMESPACE, NAME)["spec"]["predictor"]
    for key, value in HAND_TUNED.items():
        if key == "annotations":
            assert predictor[key]["other-tool/owner"] == "team-a"
        else:
            assert predictor[key] == value, key
    assert EXTRA_ENV in predictor["model"]["env"]
    assert predictor["model"]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_a_hand_tuned_service_keeps_its_settings_through_promote_and_rollback(
    cluster: KubernetesApiDouble,
) -> None:
    """Conveyor changes only the predictor fields it renders."""
    deployed(cluster)
    tuned = {**HAND_TUNED, "model": {"env": [EXTRA_ENV],
             "resources": {"limits": {"nvidia.com/gpu": "1"}}}}  # fmt: skip
    services(cluster).patch_fresh(NAME, lambda _: {"spec": {"predictor": tuned}})
    _wait_for(lambda: traffic(cluster) == {"fraud-predictor-00002": 100})
    assert rollout(cluster).run().decision == "promoted"
    assert_hand_tuned(cluster)
    assert cluster.get(NAMESPACE, NAME)["spec"]["predictor"]["model"]["storageUri"] == CANARY_URI
    cluster.revision_behaviour("gs://models/fraud/bad", fails=True)
    # Another tool scales the service while the canary is out: the rollback keeps that too.
    scaled = {"spec": {"predictor": {"maxReplicas": 8}}}
    failing = rollout(cluster, "gs://models/fraud/bad", run_id="run-3")
    with pytest.raises(RolloutFailed):
        _on_restore(failing, lambda: cluster_patch(cluster, scaled)).run()
    tuned_after = {**HAND_TUNED, "maxReplicas": 8}
    predictor = cluster.get(NAMESPACE, NAME)["spec"]["predictor"]
    assert {key: predictor[key] for key in tuned_after if key != "annotations"} == {
        key: value for key, value in tuned_after.items() if key != "annotations"
    }
    assert predictor["annotations"]["other-tool/owner"] == "team-a"
    assert EXTRA_ENV in predictor["model"]["env"]
    assert predictor["model"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert predictor["model"]["storageUri"] == CANARY_URI
    assert predictor["annotations"]["conveyor/model-version"] == "2"
    # 4: the bad canary, then the restored spec, serving; the other tool's write may make a
    # revision of its own in between, unless the controller sees it only with the restore.
    revisions = cluster.revisions(NAMESPACE, NAME)
    assert len(revisions) in (5, 6)
    assert traffic(cluster) == {revisions[-1]: 100}


def cluster_patch(cluster: KubernetesApiDouble, patch: dict) -> None:
    """A write by another tool, straight to the API."""
    from kubernetes.client import ApiClient, CustomObjectsApi

    CustomObjectsApi(ApiClient(cluster.configuration())).patch_namespaced_custom_object(
        "serving.kserve.io", "v1beta1", NAMESPACE, "inferenceservices", NAME, patch
    )


def _on_restore(rollout_: Rollout, action) -> Rollout:
    """``action`` runs as the rollback starts."""

    def progress(line: str) -> None:
        if line.startswith("restoring the spec"):
            action()

    rollout_.progress = progress
    return rollout_


def test_an_api_outage_longer_than_the_retry_budget_mid_rollback_is_outlasted(
    cluster: KubernetesApiDouble,
) -> None:
    deployed(cluster)
    cluster.outage(4.0)
    with pytest.raises(ConveyorError, match="503"):  # more than one call's retries last
        services(cluster).get(NAME)
    cluster.heal()
    stranded = rollout(cluster, interval_s=2.0, deadline_s=1.0, ready_timeout_s=10)
    with pytest.raises(RolloutFailed) as failed:
        _on_restore(stranded, lambda: cluster.outage(4.0)).run()
    assert failed.value.result.decision == "rolled_back"
    assert_stable_serves_everything(cluster, revisions=3)
    assert lease_record(cluster).state == "finished"


def test_a_rollback_that_cannot_finish_is_recorded_and_the_next_deploy_finishes_it(
    cluster: KubernetesApiDouble,
) -> None:
    deployed(cluster)
    stranded = rollout(cluster, interval_s=2.0, deadline_s=1.0, ready_timeout_s=1.5)
    with pytest.raises(RolloutFailed) as failed:  # the service refuses writes past the timeout
        _on_restore(stranded, lambda: cluster.fail_next("PATCH", 503, times=10_000)).run()
    result = failed.value.result
    assert result.decision == "failed"
    assert len(result.reason.splitlines()) == 1
    assert "the rollback failed too" in result.reason
    assert "`conveyor rollout --recover fraud --namespace ml-serving`" in result.reason
    assert traffic(cluster) == {"fraud-predictor-00002": 10, "fraud-predictor-00001": 90}
    assert lease_record(cluster).state == "rollback_failed"
    assert not holder(cluster.lease(NAMESPACE, LEASE))  # the next run need not wait
    cluster.heal()
    lines: list[str] = []
    following = rollout(cluster, "gs://models/fraud/next", run_id="run-3")
    following.progress = lines.append
    assert following.run().decision == "promoted"
    assert (
        "found an unfinished rollout by run run-2 (rollback_failed): rolling it back first" in lines
    )
    # The canary, the restored stable spec, then the next model, promoted.
    assert len(cluster.revisions(NAMESPACE, NAME)) == 4
    assert traffic(cluster) == {"fraud-predictor-00004": 100}


def test_a_canary_no_rollout_records_is_never_taken_for_the_stable_spec(
    cluster: KubernetesApiDouble,
) -> None:
    """Its spec would be what a rollback restores at 100 %: refused before any change."""
    deployed(cluster)
    stray = {"model": {"storageUri": "gs://models/fraud/stray"}, "canaryTrafficPercent": 10}
    cluster_patch(cluster, {"spec": {"predictor": stray}})  # by hand, or an older release
    _wait_for(
        lambda: traffic(cluster) == {"fraud-predictor-00002": 10, "fraud-predictor-00001": 90}
    )
    before = len(service_writes(cluster))
    with pytest.raises(RolloutFailed) as refused:
        rollout(cluster).run()
    assert refused.value.result.reason == (
        "fraud has a canary in flight that no Conveyor rollout records (fraud-predictor-00002 "
        "10 %, fraud-predictor-00001 90 %): settle it first (100 % to one revision)"
    )
    assert len(service_writes(cluster)) == before
    assert len(cluster.revisions(NAMESPACE, NAME)) == 2


def test_a_rollout_owns_only_the_variables_it_renders(cluster: KubernetesApiDouble) -> None:
    """A pin from a pipeline deploy does not outlive it into an unpinned rollout (the new
    model would be refused under the old hash), and an operator's own settings stay."""
    deployed(cluster)
    tuned = {"name": "CONVEYOR_LATENCY_BUCKETS", "value": "0.01,0.1,1"}
    cluster_patch(cluster, {"spec": {"predictor": {"model": {"env": [tuned]}}}})
    _wait_for(lambda: traffic(cluster) == {"fraud-predictor-00002": 100})
    pinned = render_inference_service(
        ServingSpec(NAME, "2", CANARY_URI, namespace=NAMESPACE, model_sha256="ab" * 32)
    )
    settings = RolloutSettings(FAST, UNJUDGED)
    Rollout(services(cluster), pinned, settings, "run-2", progress=lambda _: None).run()
    env = cluster.get(NAMESPACE, NAME)["spec"]["predictor"]["model"]["env"]
    assert env == [tuned, {"name": "CONVEYOR_MODEL_SHA256", "value": "ab" * 32}]
    assert rollout(cluster, "gs://models/fraud/next", run_id="run-3").run().decision == "promoted"
    assert cluster.get(NAMESPACE, NAME)["spec"]["predictor"]["model"]["env"] == [tuned]
    # The tuned stable, the pinned canary, the next one: one revision each, the last serving.
    assert traffic(cluster) == {"fraud-predictor-00004": 100}
    assert len(cluster.revisions(NAMESPACE, NAME)) == 4


def test_a_snapshot_changed_behind_the_rollouts_back_is_not_restored(
    cluster: KubernetesApiDouble,
) -> None:
    """Whoever may write ConfigMaps cannot choose what the next run rolls back to."""
    from kubernetes.client import ApiClient

    deployed(cluster)
    stranded = rollout(cluster, interval_s=2.0, deadline_s=1.0, ready_timeout_s=1.5)
    with pytest.raises(RolloutFailed):
        _on_restore(stranded, lambda: cluster.fail_next("PATCH", 503, times=10_000)).run()
    cluster.heal()
    config_maps = Objects(ApiClient(cluster.configuration()), NAMESPACE, "config_map")
    forged = config_maps.get(LEASE)
    forged["data"]["snapshot.yaml"] = forged["data"]["snapshot.yaml"].replace(
        STABLE_URI, "gs://evil/model"
    )
    config_maps.replace(forged)
    before = len(service_writes(cluster))
    with pytest.raises(RolloutFailed) as refused:
        rollout(cluster, "gs://models/fraud/next", run_id="run-3").run()
    assert refused.value.result.reason.startswith(
        f"the snapshot ConfigMap {LEASE} of run run-2 is not one Conveyor wrote (its sha256 "
        "is not the one the run recorded in its Lease)"
    )
    assert len(service_writes(cluster)) == before
    assert lease_record(cluster).state == "rollback_failed"  # still there for a person
    assert traffic(cluster) == {"fraud-predictor-00002": 10, "fraud-predictor-00001": 90}
    assert len(cluster.revisions(NAMESPACE, NAME)) == 2  # left stranded, for a person


def test_a_lease_lost_mid_rollout_stops_without_touching_the_service(
    cluster: KubernetesApiDouble,
) -> None:
    deployed(cluster)
    thread, outcome = run_in_thread(rollout(cluster, interval_s=0.5))
    _wait_for(lambda: traffic(cluster).get("fraud-predictor-00002") == 10)
    before = len(service_writes(cluster))
    cluster.take_lease(NAMESPACE, LEASE, "run-other")
    thread.join(timeout=30)
    result = outcome["result"]
    assert result.decision == "failed"
    assert f"run run-2 lost the rollout Lease {LEASE} to run run-other" in result.reason
    assert result.reason.endswith("stopped without touching fraud again")
    assert len(service_writes(cluster)) == before
    assert traffic(cluster) == {"fraud-predictor-00002": 10, "fraud-predictor-00001": 90}
    assert holder(cluster.lease(NAMESPACE, LEASE)) == "run-other"
    assert len(cluster.revisions(NAMESPACE, NAME)) == 2


def test_a_service_that_is_not_ready_is_left_alone(cluster: KubernetesApiDouble) -> None:
    cluster.revision_behaviour(STABLE_URI, never_ready=True)
    with pytest.raises(RolloutFailed):
        rollout(cluster, STABLE_URI, run_id="run-1", ready_timeout_s=0.5).run()
    before = len(service_writes(cluster))
    with pytest.raises(RolloutFailed) as refused:
        rollout(cluster).run()
    assert refused.value.result.reason.startswith("fraud is not Ready (")
    assert len(service_writes(cluster)) == before
    assert len(cluster.revisions(NAMESPACE, NAME)) == 1
    assert lease_record(cluster).reason.startswith("refused: fraud is not Ready")


def test_standard_mode_without_spec_canary_fails_clearly() -> None:
    with KubernetesApiDouble(
        default_mode="RawDeployment", crd_has_canary=False, ready_after=0.1
    ) as cluster:
        deployed(cluster)
        before = len(service_writes(cluster))
        with pytest.raises(RolloutFailed) as failed:
            rollout(cluster).run()
        assert failed.value.result.decision == "failed"
        assert failed.value.result.reason == (
            "fraud runs in Standard mode, where KServe ignores canaryTrafficPercent, and this "
            "cluster's InferenceService CRD has no spec.canary (KServe < 0.20), so no canary is "
            "possible: use Knative (Serverless) mode or upgrade KServe"
        )
        assert len(service_writes(cluster)) == before  # no canary reported, none attempted
        assert (
            cluster.get(NAMESPACE, NAME)["spec"]["predictor"]["model"]["storageUri"] == STABLE_URI
        )


@pytest.fixture
def standard_cluster() -> Iterator[KubernetesApiDouble]:
    with KubernetesApiDouble(default_mode="Standard", ready_after=0.2, tick=0.02) as double:
        yield double


# Standard mode canaries must prove they served: analysis against Prometheus is required.
ANALYSED = {"policy": DEFAULT_POLICY, "prometheus_url": "http://silent"}
MODE = "serving.kserve.io/deploymentMode"


def deployed_standard(cluster: KubernetesApiDouble) -> dict:
    """A stable Standard-mode service, annotated with its mode as spec.canary needs (which
    rolls its Deployment once)."""
    deployed(cluster)
    services(cluster).patch_fresh(NAME, lambda _: {"metadata": {"annotations": {MODE: "Standard"}}})
    return rolled_out(cluster, template_changes=2)


def tuned_standard(cluster: KubernetesApiDouble) -> dict:
    """``deployed_standard`` with HAND_TUNED applied to its predictor (a third rollout)."""
    deployed_standard(cluster)
    services(cluster).patch_fresh(NAME, lambda _: {"spec": {"predictor": HAND_TUNED}})
    return rolled_out(cluster, template_changes=3)


def rolled_out(cluster: KubernetesApiDouble, template_changes: int) -> dict:
    """The service once the controller has made its ``template_changes``-th revision (or
    Deployment rollout) and the service is Ready again."""
    _wait_for(lambda: cluster.template_changes(NAMESPACE, NAME) == template_changes)
    _wait_for(lambda: is_ready(cluster.get(NAMESPACE, NAME)))
    return cluster.get(NAMESPACE, NAME)


def test_standard_mode_refuses_a_service_without_the_mode_annotation(
    standard_cluster: KubernetesApiDouble,
) -> None:
    """Writing it would restart the stable Deployment as the canary starts."""
    deployed(standard_cluster)
    with pytest.raises(RolloutFailed) as refused:
        rollout(standard_cluster, **ANALYSED).run()
    assert refused.value.result.reason.startswith(
        "fraud runs in Standard mode by the cluster's default, and KServe accepts spec.canary "
        f"only where the service is annotated {MODE}: Standard"
    )
    assert f"kubectl annotate isvc fraud {MODE}=Standard" in refused.value.result.reason
    assert standard_cluster.template_changes(NAMESPACE, NAME) == 1


def test_standard_mode_refuses_a_canary_nobody_would_analyse(
    standard_cluster: KubernetesApiDouble,
) -> None:
    deployed_standard(standard_cluster)
    before = len(service_writes(standard_cluster))
    with pytest.raises(RolloutFailed) as refused:
        rollout(standard_cluster).run()
    assert refused.value.result.reason == (
        "fraud runs in Standard mode, where KServe 0.20 sets a spec.canary entry's replicas "
        "from trafficPercent but routes no traffic by it yet, so a canary must prove it "
        "served requests: analysis: none is refused here"
    )
    assert len(service_writes(standard_cluster)) == before
    assert standard_cluster.template_changes(NAMESPACE, NAME) == 2  # created, annotated
    assert "canary" not in standard_cluster.get(NAMESPACE, NAME)["spec"]


def test_standard_mode_refuses_a_canary_of_the_model_already_served(
    standard_cluster: KubernetesApiDouble,
) -> None:
    deployed_standard(standard_cluster)
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
    assert standard_cluster.template_changes(NAMESPACE, NAME) == 2
    assert "canary" not in standard_cluster.get(NAMESPACE, NAME)["spec"]


def test_standard_mode_on_a_crd_it_cannot_read_and_that_lacks_spec_canary() -> None:
    with KubernetesApiDouble(
        default_mode="Standard", crd_has_canary=False, ready_after=0.1, tick=0.02
    ) as cluster:
        deployed_standard(cluster)
        cluster.deny("get", "customresourcedefinitions")  # without kserve/rbac-crd-reader.yaml
        with pytest.raises(RolloutFailed) as failed:
            rollout(cluster, **ANALYSED).run()
        assert "the API server dropped spec.canary" in failed.value.result.reason
        assert "no canary is possible in Standard mode" in failed.value.result.reason
        assert "canary" not in cluster.get(NAMESPACE, NAME)["spec"]
        assert cluster.template_changes(NAMESPACE, NAME) == 2  # created, annotated
        assert (
            cluster.get(NAMESPACE, NAME)["spec"]["predictor"]["model"]["storageUri"] == STABLE_URI
        )


def test_standard_mode_rolls_back_a_canary_that_never_becomes_ready(
    standard_cluster: KubernetesApiDouble,
) -> None:
    tuned_standard(standard_cluster)
    standard_cluster.revision_behaviour(CANARY_URI, never_ready=True)
    entries: list[dict] = []
    failing = rollout(standard_cluster, **ANALYSED, ready_timeout_s=1)
    _on_restore(
        failing, lambda: entries.extend(standard_cluster.get(NAMESPACE, NAME)["spec"]["canary"])
    )
    with pytest.raises(RolloutFailed) as failed:
        failing.run()
    # The entry holds only what Conveyor renders (KServe merges it over the stable predictor,
    # and its webhook refuses autoscaling fields there); other tools' annotations carry over.
    (entry,) = entries
    assert not set(HAND_TUNED) - {"annotations"} & set(entry["predictor"])
    assert entry["predictor"]["annotations"]["other-tool/owner"] == "team-a"
    assert entry["predictor"]["model"]["storageUri"] == CANARY_URI
    assert failed.value.result.decision == "rolled_back"
    assert failed.value.result.reason.startswith("timed out after 1 s waiting for canary c")
    service = standard_cluster.get(NAMESPACE, NAME)
    assert service["spec"]["predictor"]["model"]["storageUri"] == STABLE_URI
    assert "canary" not in service["spec"] and not service["status"].get("canaryStatuses")
    assert not holder(standard_cluster.lease(NAMESPACE, LEASE))
    assert service["spec"]["predictor"]["minReplicas"] == HAND_TUNED["minReplicas"]
    # The stable Deployment, then rolled for the annotation and for the tuning; then the
    # canary's Deployment only: the rollout itself restarted nothing.
    assert standard_cluster.template_changes(NAMESPACE, NAME) == 4


def test_standard_mode_refuses_a_canary_that_would_keep_the_stables_pin(
    standard_cluster: KubernetesApiDouble,
) -> None:
    """KServe merges a canary entry over the stable predictor: an unpinned entry would run
    the new model under the old model's hash, and never load."""
    deployed_standard(standard_cluster)
    pin = {"name": "CONVEYOR_MODEL_SHA256", "value": "ab" * 32}
    cluster_patch(standard_cluster, {"spec": {"predictor": {"model": {"env": [pin]}}}})
    rolled_out(standard_cluster, template_changes=3)
    with pytest.raises(RolloutFailed) as refused:
        rollout(standard_cluster, **ANALYSED).run()
    assert refused.value.result.reason.startswith(
        "fraud serves with CONVEYOR_MODEL_SHA256, which a Standard canary cannot drop"
    )
    assert "canary" not in standard_cluster.get(NAMESPACE, NAME)["spec"]


def test_a_standard_promotion_keeps_the_stable_predictors_tuning(
    standard_cluster: KubernetesApiDouble,
) -> None:
    tuned_standard(standard_cluster)
    fields = applied(CANARY_URI)

    canary, wait = StandardCanary(services(standard_cluster), NAME), waiter(standard_cluster)
    deployment = canary.start(
        fields, {}, canary.stable_revision(standard_cluster.get(NAMESPACE, NAME)), 10, wait
    )
    canary.promote(deployment, wait)
    predictor = standard_cluster.get(NAMESPACE, NAME)["spec"]["predictor"]
    assert {key: predictor[key] for key in HAND_TUNED if key != "annotations"} == {
        key: value for key, value in HAND_TUNED.items() if key != "annotations"
    }
    assert predictor["annotations"]["other-tool/owner"] == "team-a"
    assert predictor["annotations"]["conveyor/model-version"] == "2"
    assert predictor["model"]["storageUri"] == CANARY_URI and "name" not in predictor["model"]
    assert f"{NAME}-{predictor['name']}-predictor" == deployment  # its Deployment stays


def test_modelmesh_mode_fails_clearly() -> None:
    with KubernetesApiDouble(default_mode="ModelMesh", ready_after=0.1) as cluster:
        deployed(cluster)
        with pytest.raises(
            RolloutFailed, match="ModelMesh mode, which has no canary traffic split"
        ):
            rollout(cluster).run()
        assert len(cluster.revisions(NAMESPACE, NAME)) == 1


def test_a_rerun_after_a_crash_rolls_back_then_completes(
    cluster: KubernetesApiDouble, tmp_path: Path
) -> None:
    deployed(cluster)
    crashed = _start_cli(cluster, tmp_path, "--run-id", "run-7", "--interval", "30")
    _wait_for(lambda: traffic(cluster).get("fraud-predictor-00002") == 10)
    crashed.kill()  # SIGKILL: no handler runs, the Lease and the 10 % split stay behind
    crashed.wait(timeout=30)
    assert holder(cluster.lease(NAMESPACE, LEASE)).startswith("run-7@")
    assert lease_record(cluster).state == "rolling_out"
    # A retry of the same run is another process: it waits for the Lease too.
    with pytest.raises(RolloutFailed, match="is being rolled out by run run-7 \\(process"):
        rollout(cluster, run_id="run-7").run()
    cluster.expire_lease(NAMESPACE, LEASE)
    result = rollout(cluster, run_id="run-7").run()
    assert result.decision == "promoted"
    assert traffic(cluster) == {result.canary_revision: 100}
    assert cluster.revisions(NAMESPACE, NAME)[-1] == result.canary_revision
    # Rolled back to the snapshot first: a revision of the stable model came in between.
    assert len(cluster.revisions(NAMESPACE, NAME)) == 4


def test_another_run_waits_for_a_crashed_runs_lease_then_rolls_it_back(
    cluster: KubernetesApiDouble, tmp_path: Path
) -> None:
    deployed(cluster)
    crashed = _start_cli(cluster, tmp_path, "--run-id", "run-7", "--interval", "30")
    _wait_for(lambda: traffic(cluster).get("fraud-predictor-00002") == 10)
    crashed.kill()
    crashed.wait(timeout=30)
    with pytest.raises(RolloutFailed, match="is being rolled out by run run-7"):
        rollout(cluster, run_id="run-8").run()
    assert traffic(cluster) == {"fraud-predictor-00002": 10, "fraud-predictor-00001": 90}
    cluster.expire_lease(NAMESPACE, LEASE)  # run-7 stopped renewing it long ago
    # run-8 takes the Lease, then dies before settling anything: run-7's record carries on.
    from kubernetes.client import ApiClient

    leases = Objects(ApiClient(cluster.configuration()), NAMESPACE, "lease")
    dying = RolloutLease(leases, cluster.get(NAMESPACE, NAME), "run-8", duration_s=60)
    assert dying.acquire().state == "rolling_out"
    assert holder(cluster.lease(NAMESPACE, LEASE)) == dying.identity
    assert (lease_record(cluster).run, lease_record(cluster).state) == ("run-7", "rolling_out")
    cluster.expire_lease(NAMESPACE, LEASE)
    recovered = _recover_cli(cluster, tmp_path, "run-9")
    assert recovered.returncode == 0, recovered.stdout
    assert "rolled_back: recovered the rollout run run-7 left rolling_out" in recovered.stdout
    assert_stable_serves_everything(cluster, revisions=3)
    assert lease_record(cluster).run == "run-9"


def _recover_cli(cluster: KubernetesApiDouble, tmp_path: Path, run_id: str):
    kubeconfig = cluster.write_kubeconfig(tmp_path / "kubeconfig", namespace=NAMESPACE)
    command = [
        sys.executable, "-m", "conveyor.pipelines.cli", "rollout", "--recover", NAME,
        "--namespace", NAMESPACE, "--kubeconfig", str(kubeconfig), "--run-id", run_id,
        "--ready-timeout", "10",
    ]  # fmt: skip
    return subprocess.run(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60
    )


def _set_lease(cluster: KubernetesApiDouble, run: str, state: str) -> None:
    """The Lease as a run that stopped at ``state`` would have left it."""
    from kubernetes.client import ApiClient

    leases = Objects(ApiClient(cluster.configuration()), NAMESPACE, "lease")
    lease = leases.get(LEASE)
    lease["spec"]["holderIdentity"] = run
    record = json.loads(lease["metadata"]["annotations"]["conveyor/rollout"])
    record.update(run=run, state=state, reason="")  # its snapshot's sha256 as it was
    lease["metadata"]["annotations"]["conveyor/rollout"] = json.dumps(record)
    leases.replace(lease)
    cluster.expire_lease(NAMESPACE, LEASE)


def test_a_rerun_after_a_crash_past_promotion_keeps_it(cluster: KubernetesApiDouble) -> None:
    deployed(cluster)
    assert rollout(cluster).run().decision == "promoted"
    _set_lease(cluster, "run-2", "promoting")  # died after the promotion, before releasing
    before = len(service_writes(cluster))
    again = rollout(cluster).run()
    assert (again.decision, again.reason) == (
        "promoted",
        "already serving this model at 100 %: nothing to do",
    )
    assert traffic(cluster) == {"fraud-predictor-00002": 100}  # the promoted canary stays
    assert cluster.revisions(NAMESPACE, NAME) == ["fraud-predictor-00001", "fraud-predictor-00002"]
    assert len(service_writes(cluster)) == before
    assert not holder(cluster.lease(NAMESPACE, LEASE))


def test_a_landed_promotion_stands_even_while_the_service_is_busy(
    cluster: KubernetesApiDouble,
) -> None:
    """A run died after its promotion write, before releasing; another tool's change is
    still rolling out: the promotion is not mistaken for an unfinished canary."""
    deployed(cluster)
    assert rollout(cluster).run().decision == "promoted"
    _set_lease(cluster, "run-2", "promoting")
    cluster.revision_behaviour(CANARY_URI, never_ready=True)  # affects new revisions only
    cluster_patch(cluster, {"spec": {"predictor": {"minReplicas": 2}}})
    _wait_for(lambda: len(cluster.revisions(NAMESPACE, NAME)) == 3)
    lines: list[str] = []
    busy = rollout(cluster, run_id="run-3")
    busy.progress = lines.append
    with pytest.raises(RolloutFailed, match="^failed: fraud is not Ready"):
        busy.run()
    assert "run run-2 had promoted its canary before it stopped: it stays" in lines
    assert cluster.get(NAMESPACE, NAME)["spec"]["predictor"]["model"]["storageUri"] == CANARY_URI
    assert traffic(cluster) == {"fraud-predictor-00002": 100}
    assert len(cluster.revisions(NAMESPACE, NAME)) == 3


def test_sigterm_mid_rollout_rolls_back(cluster: KubernetesApiDouble, tmp_path: Path) -> None:
    deployed(cluster)
    process = _start_cli(cluster, tmp_path, "--interval", "30")
    _wait_for(lambda: traffic(cluster).get("fraud-predictor-00002") == 10)
    process.send_signal(signal.SIGTERM)  # how KFP cancels a run
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 1, output
    assert "rolling back fraud: the run was cancelled (SIGTERM)" in output
    assert "**rolled back**" in output
    assert_stable_serves_everything(cluster, revisions=3)


def _start_cli(cluster: KubernetesApiDouble, tmp_path: Path, *options: str) -> subprocess.Popen:
    kubeconfig = cluster.write_kubeconfig(tmp_path / "kubeconfig", namespace=NAMESPACE)
    policy = tmp_path / "policy.yaml"
    policy.write_text("analysis: none\n")
    command = [
        sys.executable, "-m", "conveyor.pipelines.cli", "rollout", "--name", NAME, "--namespace", NAMESPACE,
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
    assert_stable_serves_everything(cluster, revisions=3)


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
    assert_stable_serves_everything(cluster, revisions=1)


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
    before = len(service_writes(cluster))
    again = rollout(cluster, run_id="run-2-retry").run()
    assert (again.decision, again.reason) == (
        "promoted",
        "already serving this model at 100 %: nothing to do",
    )
    assert len(service_writes(cluster)) == before
    assert len(cluster.revisions(NAMESPACE, NAME)) == 2


# -- the deploy component, as KFP calls it ------------------------------------------------


def registry(tmp_path: Path) -> str:
    """An MLflow registry holding versions 1 and 2 of the model, as register leaves them
    (version 2 judged against version 1)."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri, registry_uri=uri)
    client.create_registered_model(NAME)
    for judged in ("", "1"):
        run = client.create_run("0")
        client.create_model_version(
            NAME, f"runs:/{run.info.run_id}/model", run.info.run_id,
            tags={"judged_against": judged},
        )  # fmt: skip
    return uri


def deploy_step(tmp_path: Path, uri: str, version: str, **options):
    from kfp.dsl import Artifact, Markdown, Metrics

    from conveyor.components.deploy import deploy
    from tests.conftest import artifact

    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    if not (tmp_path / "mlflow.db").exists():
        tracking = registry(tmp_path)

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
            mlflow_tracking_uri=tracking, **options,
        )  # fmt: skip
    finally:
        text = Path(report.path).read_text() if Path(report.path).exists() else ""
    return decision, report, text, metrics


def in_cluster(
    cluster: KubernetesApiDouble, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deploy step's kubeconfig points at the double, as a pod's would at its cluster."""
    kubeconfig = cluster.write_kubeconfig(tmp_path / "kubeconfig", namespace=NAMESPACE)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


def test_the_deploy_step_creates_then_promotes_and_reports(
    cluster: KubernetesApiDouble, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_cluster(cluster, tmp_path, monkeypatch)
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
    assert len(cluster.revisions(NAMESPACE, NAME)) == 2


def test_a_rolled_back_deploy_fails_the_step_with_its_reason_and_report(
    cluster: KubernetesApiDouble, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_cluster(cluster, tmp_path, monkeypatch)
    deploy_step(tmp_path, STABLE_URI, "1")
    cluster.revision_behaviour(CANARY_URI, fails=True)
    with pytest.raises(SystemExit) as exit_info:
        deploy_step(tmp_path, CANARY_URI, "2")
    assert str(exit_info.value).startswith(
        "deploy: rolled_back: revision fraud-predictor-00002 failed to load"
    )
    assert "**rolled back**" in (tmp_path / "v2" / "report").read_text()
    assert_stable_serves_everything(cluster, revisions=3)


def test_restoring_after_a_promotion_hands_traffic_back_to_the_old_model(
    cluster: KubernetesApiDouble,
) -> None:
    """A failure after the promotion (the unlock, say) still rolls back: setting 0 % would
    leave everything on the promoted canary, so the old spec takes over from it instead."""
    from conveyor.components.core.rollout.canary import KnativeCanary

    stable = deployed(cluster)
    fields = applied(CANARY_URI)
    snapshot = Snapshot("run-2", "fraud-predictor-00001", stable["spec"]["predictor"], fields)
    assert rollout(cluster).run().decision == "promoted"

    KnativeCanary(services(cluster), NAME).restore(snapshot, waiter(cluster))
    assert traffic(cluster) == {"fraud-predictor-00003": 100}
    assert len(cluster.revisions(NAMESPACE, NAME)) == 3  # stable, canary, restored
    assert cluster.get(NAMESPACE, NAME)["spec"]["predictor"]["model"]["storageUri"] == STABLE_URI


def test_a_registry_outage_after_a_promotion_keeps_the_outcome_first(
    cluster: KubernetesApiDouble, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service is promoted either way; the step says so, then that MLflow failed."""
    from mlflow.exceptions import MlflowException

    import conveyor.components.core.training.registry

    in_cluster(cluster, tmp_path, monkeypatch)
    deploy_step(tmp_path, STABLE_URI, "1")

    def unreachable(*args: object) -> str:
        raise MlflowException("API request to the tracking server failed: connection refused")

    monkeypatch.setattr(conveyor.components.core.training.registry, "record_rollout", unreachable)
    with pytest.raises(SystemExit) as exit_info:
        deploy_step(tmp_path, CANARY_URI, "2")
    message = str(exit_info.value)
    assert message.startswith("deploy: promoted: promoted WITHOUT ANALYSIS")
    assert "but the registry was not updated (API request to the tracking server failed" in message
    assert traffic(cluster) == {"fraud-predictor-00002": 100}
    assert len(cluster.revisions(NAMESPACE, NAME)) == 2
