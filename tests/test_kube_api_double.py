"""The Kubernetes API + KServe controller double, driven through the real ``kubernetes`` client.

The rollout tests trust this double to behave like a cluster; these tests pin down the parts
they rely on: Knative revisions and traffic, optimistic concurrency, RBAC and transient
faults, strict validation, watches and kubeconfig access.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from conveyor.components.core.rollout.manifests import ServingSpec, render_inference_service
from tests.doubles.kube_api import TOUCH_ANNOTATION, KubernetesApiDouble

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
NS, NAME = "ml-serving", "fraud"
STABLE, CANARY, BROKEN = "gs://models/fraud/1", "gs://models/fraud/2", "gs://models/fraud/bad"
FIRST, SECOND, THIRD = (f"{NAME}-predictor-{n:05d}" for n in (1, 2, 3))


@pytest.fixture
def cluster() -> Iterator[KubernetesApiDouble]:
    with KubernetesApiDouble(ready_after=0.1, tick=0.02) as double:
        yield double


@pytest.fixture
def api(cluster: KubernetesApiDouble) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(client.ApiClient(cluster.configuration()))


def manifest(uri: str = STABLE) -> dict[str, Any]:
    body = render_inference_service(ServingSpec(NAME, "1", uri, namespace=NS))
    body["spec"]["predictor"].pop("canaryTrafficPercent")
    return body


def read(api: client.CustomObjectsApi) -> dict[str, Any]:
    return api.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, NAME)


def patch(api: client.CustomObjectsApi, body: dict[str, Any], version: str = "") -> dict:
    """A merge patch guarded by ``version`` (the current resourceVersion unless given)."""
    body.setdefault("metadata", {})["resourceVersion"] = (
        version or read(api)["metadata"]["resourceVersion"]
    )
    return api.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, NAME, body)


def roll(api: client.CustomObjectsApi, uri: str, percent: int | None) -> dict:
    predictor = {"model": {"storageUri": uri}, "canaryTrafficPercent": percent}
    return patch(api, {"spec": {"predictor": predictor}})


def predictor(service: dict[str, Any]) -> dict[str, Any]:
    return service.get("status", {}).get("components", {}).get("predictor", {})


def split(service: dict[str, Any]) -> dict[str, int]:
    return {e["revisionName"]: e["percent"] for e in predictor(service).get("traffic", [])}


def condition(service: dict[str, Any], kind: str) -> dict[str, Any]:
    conditions = service.get("status", {}).get("conditions", [])
    return next((c for c in conditions if c["type"] == kind), {})


def wait_until(
    api: client.CustomObjectsApi, done: Callable[[dict[str, Any]], bool], timeout: float = 5
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        service = read(api)
        if done(service):
            return service
        assert time.monotonic() < deadline, f"timed out; status: {service.get('status')}"
        time.sleep(0.01)


def ready_service(api: client.CustomObjectsApi) -> dict[str, Any]:
    api.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, manifest())
    return wait_until(api, lambda s: split(s) == {FIRST: 100})


def status_of(error: pytest.ExceptionInfo[ApiException]) -> dict[str, Any]:
    return json.loads(error.value.body)


# -- the controller: revisions and traffic ---------------------------------------------------


def test_a_new_service_becomes_ready_with_all_traffic_on_its_first_revision(
    api: client.CustomObjectsApi,
) -> None:
    created = api.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, manifest())
    assert "status" not in created and created["metadata"]["generation"] == 1
    service = wait_until(api, lambda s: condition(s, "Ready").get("status") == "True")
    assert split(service) == {FIRST: 100}
    assert predictor(service)["latestRolledoutRevision"] == FIRST
    assert service["status"]["modelStatus"]["transitionStatus"] == "UpToDate"
    assert service["status"]["url"] == f"http://{NAME}.{NS}.example.com"
    assert service["status"]["observedGeneration"] == 1
    status = api.get_namespaced_custom_object_status(GROUP, VERSION, NS, PLURAL, NAME)["status"]
    assert status["components"] == service["status"]["components"]


def test_a_canary_gets_its_share_then_everything_when_promoted(
    cluster: KubernetesApiDouble, api: client.CustomObjectsApi
) -> None:
    ready_service(api)
    roll(api, CANARY, 10)
    service = wait_until(api, lambda s: split(s) == {SECOND: 10, FIRST: 90})
    entries = predictor(service)["traffic"]
    assert [(e["tag"], e["latestRevision"]) for e in entries] == [("latest", True), ("prev", False)]
    assert predictor(service)["latestRolledoutRevision"] == FIRST

    patch(api, {"spec": {"predictor": {"canaryTrafficPercent": 50}}})
    wait_until(api, lambda s: split(s) == {SECOND: 50, FIRST: 50})
    assert cluster.revisions(NS, NAME) == [FIRST, SECOND]  # a new split is no new revision

    patch(api, {"spec": {"predictor": {"canaryTrafficPercent": 100}}})
    service = wait_until(api, lambda s: split(s) == {SECOND: 100})
    assert predictor(service)["traffic"][0]["latestRevision"] is True
    assert predictor(service)["latestRolledoutRevision"] == SECOND
    assert predictor(service)["previousRolledoutRevision"] == FIRST


def test_zero_percent_puts_everything_back_and_a_revert_is_a_new_revision(
    cluster: KubernetesApiDouble, api: client.CustomObjectsApi
) -> None:
    ready_service(api)
    roll(api, CANARY, 10)
    wait_until(api, lambda s: split(s) == {SECOND: 10, FIRST: 90})
    patch(api, {"spec": {"predictor": {"canaryTrafficPercent": 0}}})
    service = wait_until(api, lambda s: split(s) == {SECOND: 0, FIRST: 100})
    assert predictor(service)["latestRolledoutRevision"] == FIRST

    roll(api, STABLE, 100)  # the spec of the first revision, re-applied
    service = wait_until(api, lambda s: split(s) == {THIRD: 100})
    assert cluster.revisions(NS, NAME) == [FIRST, SECOND, THIRD]
    assert predictor(service)["latestRolledoutRevision"] == THIRD


def test_a_revision_that_fails_to_load_gets_no_traffic(
    cluster: KubernetesApiDouble, api: client.CustomObjectsApi
) -> None:
    ready_service(api)
    cluster.revision_behaviour(BROKEN, fails=True)
    roll(api, BROKEN, 10)
    service = wait_until(
        api, lambda s: s["status"]["modelStatus"]["transitionStatus"] == "BlockedByFailedLoad"
    )
    failure = service["status"]["modelStatus"]["lastFailureInfo"]
    assert (failure["reason"], failure["modelRevisionName"]) == ("ModelLoadFailed", SECOND)
    configuration = condition(service, "PredictorConfigurationReady")
    assert (configuration["status"], configuration["reason"]) == ("False", "RevisionFailed")
    assert SECOND in configuration["message"]
    assert condition(service, "Ready")["status"] == "False"
    assert split(service) == {FIRST: 100}
    assert predictor(service)["latestReadyRevision"] == FIRST


def test_a_revision_that_never_becomes_ready_stays_in_progress_without_traffic(
    cluster: KubernetesApiDouble, api: client.CustomObjectsApi
) -> None:
    ready_service(api)
    cluster.revision_behaviour(CANARY, never_ready=True)
    roll(api, CANARY, 10)
    service = wait_until(api, lambda s: predictor(s)["latestCreatedRevision"] == SECOND)
    time.sleep(0.3)  # three times ready_after
    service = read(api)
    assert service["status"]["modelStatus"]["transitionStatus"] == "InProgress"
    assert condition(service, "PredictorConfigurationReady")["status"] == "Unknown"
    assert split(service) == {FIRST: 100}


def test_raw_deployment_has_no_revisions_to_split() -> None:
    with KubernetesApiDouble(default_mode="RawDeployment", ready_after=0.1, tick=0.02) as raw:
        api = client.CustomObjectsApi(client.ApiClient(raw.configuration()))
        api.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, manifest())
        service = wait_until(api, lambda s: condition(s, "Ready").get("status") == "True")
        assert service["status"]["deploymentMode"] == "Standard"  # 0.20 renamed RawDeployment
        assert "traffic" not in predictor(service)
        roll(api, CANARY, 10)
        service = wait_until(api, lambda s: predictor(s).get("latestCreatedRevision") == "2")
        assert "traffic" not in predictor(service)


def canary_entry(uri: str, percent: int, name: str = "canary-1") -> dict[str, Any]:
    model = {"name": "kserve-container", "modelFormat": {"name": "sklearn"}, "storageUri": uri}
    return {"predictor": {"name": name, "model": model}, "trafficPercent": percent}


def test_standard_mode_canaries_are_deployments_with_a_share() -> None:
    with KubernetesApiDouble(default_mode="Standard", ready_after=0.1, tick=0.02) as raw:
        raw.revision_behaviour("gs://models/never", never_ready=True)
        api = client.CustomObjectsApi(client.ApiClient(raw.configuration()))

        def change(body: dict[str, Any]) -> None:  # no resourceVersion: the controller races
            api.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, NAME, body)

        api.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, manifest())
        wait_until(api, lambda s: condition(s, "Ready").get("status") == "True")
        standard = {"metadata": {"annotations": {"serving.kserve.io/deploymentMode": "Standard"}}}
        change({**standard, "spec": {"canary": [canary_entry(CANARY, 10)]}})
        service = wait_until(api, lambda s: s["status"].get("canaryStatuses", [{}])[0].get("ready"))
        assert service["status"]["canaryStatuses"] == [
            {"name": "canary-1", "ready": True, "trafficPercent": 10}
        ]
        assert condition(service, "CanaryPredictorReady")["status"] == "True"
        change({"spec": {"canary": [canary_entry("gs://models/never", 20, "canary-2")]}})
        service = wait_until(api, lambda s: s["status"]["canaryStatuses"][0]["name"] == "canary-2")
        assert condition(service, "CanaryPredictorReady")["reason"] == "CanariesNotReady"
        change({"spec": {"canary": None}})
        service = wait_until(api, lambda s: "canaryStatuses" not in s["status"])
        assert service["spec"]["predictor"]["model"]["storageUri"] == STABLE


def test_the_webhook_refuses_a_canary_outside_standard_mode(api: client.CustomObjectsApi) -> None:
    ready_service(api)
    with pytest.raises(ApiException) as refused:
        patch(api, {"spec": {"canary": [canary_entry(CANARY, 10)]}})
    assert refused.value.status == 400
    assert status_of(refused)["message"].endswith(
        "denied the request: canary is only supported in Standard deployment mode"
    )
    assert "canary" not in read(api)["spec"]


def test_a_seeded_object_is_ready_at_once(cluster: KubernetesApiDouble) -> None:
    stored = cluster.put_object(manifest())
    assert stored["metadata"]["resourceVersion"] and stored["metadata"]["generation"] == 1
    time.sleep(0.06)  # a few ticks, less than ready_after
    assert split(cluster.get(NS, NAME)) == {FIRST: 100}
    assert cluster.get(NS, "absent") is None


# -- the API server: bookkeeping and concurrency ----------------------------------------------


def test_generation_moves_on_spec_changes_only_and_clients_cannot_write_status(
    api: client.CustomObjectsApi,
) -> None:
    service = ready_service(api)
    assert service["metadata"]["generation"] == 1
    annotated = patch(api, {"metadata": {"annotations": {"team": "fraud"}}})
    assert annotated["metadata"]["generation"] == 1
    assert int(annotated["metadata"]["resourceVersion"]) > int(
        service["metadata"]["resourceVersion"]
    )
    forged = patch(api, {"status": {"url": "http://forged"}})
    assert forged["status"]["url"] == f"http://{NAME}.{NS}.example.com"
    assert (
        patch(api, {"spec": {"predictor": {"canaryTrafficPercent": 20}}})["metadata"]["generation"]
        == 2
    )
    service = wait_until(api, lambda s: s["status"]["observedGeneration"] == 2)
    assert service["metadata"]["generation"] == 2  # the status write did not bump it


def test_a_patch_carrying_a_stale_resource_version_conflicts(api: client.CustomObjectsApi) -> None:
    stale = ready_service(api)["metadata"]["resourceVersion"]
    patch(api, {"metadata": {"annotations": {"first": "yes"}}}, version=stale)
    with pytest.raises(ApiException) as error:
        patch(api, {"metadata": {"annotations": {"second": "yes"}}}, version=stale)
    assert error.value.status == 409
    assert status_of(error)["reason"] == "Conflict"
    assert status_of(error)["message"] == (
        f'Operation cannot be fulfilled on inferenceservices.serving.kserve.io "{NAME}": the '
        "object has been modified; please apply your changes to the latest version and try again"
    )
    assert "second" not in read(api)["metadata"]["annotations"]


def test_another_writer_makes_the_next_write_conflict(
    cluster: KubernetesApiDouble, api: client.CustomObjectsApi
) -> None:
    version = ready_service(api)["metadata"]["resourceVersion"]
    cluster.conflict_next_writes(times=1)
    with pytest.raises(ApiException) as error:
        patch(api, {"metadata": {"annotations": {"mine": "1"}}}, version=version)
    assert error.value.status == 409
    assert read(api)["metadata"]["annotations"][TOUCH_ANNOTATION]
    assert (
        patch(api, {"metadata": {"annotations": {"mine": "1"}}})["metadata"]["annotations"]["mine"]
        == "1"
    )  # re-read, retried, through


def test_a_json_patch_applies_and_its_test_guards(api: client.CustomObjectsApi) -> None:
    ready_service(api)
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{NS}/{PLURAL}/{NAME}"

    def json_patch(operations: list[dict[str, Any]]) -> dict[str, Any]:
        return api.api_client.call_api(
            path, "PATCH", header_params={"Content-Type": "application/json-patch+json"},
            body=operations, auth_settings=["BearerToken"], response_type="object",
            _return_http_data_only=True,
        )  # fmt: skip

    pointer = "/spec/predictor/model/storageUri"
    changed = json_patch([{"op": "test", "path": pointer, "value": STABLE},
                          {"op": "replace", "path": pointer, "value": CANARY}])  # fmt: skip
    assert changed["spec"]["predictor"]["model"]["storageUri"] == CANARY
    with pytest.raises(ApiException) as error:
        json_patch([{"op": "test", "path": pointer, "value": STABLE}])
    assert error.value.status == 422


# -- the API server: refusals -----------------------------------------------------------------


def test_a_denied_verb_answers_403_in_rbac_words(
    cluster: KubernetesApiDouble, api: client.CustomObjectsApi
) -> None:
    ready_service(api)
    cluster.deny("patch")
    with pytest.raises(ApiException) as error:
        patch(api, {"metadata": {"annotations": {"x": "y"}}})
    assert error.value.status == 403
    assert status_of(error)["message"] == (
        f'inferenceservices.serving.kserve.io "{NAME}" is forbidden: User '
        f'"system:serviceaccount:{NS}:pipeline-runner" cannot patch resource "inferenceservices" '
        f'in API group "serving.kserve.io" in the namespace "{NS}"'
    )
    assert read(api)["metadata"]["name"] == NAME  # get is still allowed


def test_an_injected_failure_answers_once_then_the_request_goes_through(
    cluster: KubernetesApiDouble, api: client.CustomObjectsApi
) -> None:
    ready_service(api)
    cluster.fail_next("GET", status=503)
    with pytest.raises(ApiException) as error:
        read(api)
    assert (error.value.status, status_of(error)["reason"]) == (503, "ServiceUnavailable")
    assert read(api)["metadata"]["name"] == NAME


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda b: b["spec"]["predictor"]["model"].update(storageUri=5),
         "spec.predictor.model.storageUri: Invalid value: 5 is not of type 'string'"),
        (lambda b: b["spec"]["predictor"].update(modle={}),
         "spec.predictor.modle: Unsupported value: field not declared in schema"),
    ],
)  # fmt: skip
def test_an_invalid_body_is_refused_naming_the_field(
    api: client.CustomObjectsApi, change: Callable[[dict], None], field: str
) -> None:
    body = manifest()
    change(body)
    with pytest.raises(ApiException) as error:
        api.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, body)
    assert error.value.status == 422
    assert status_of(error)["reason"] == "Invalid"
    assert (
        status_of(error)["message"]
        == f'InferenceService.serving.kserve.io "{NAME}" is invalid: {field}'
    )


def test_an_invalid_patch_leaves_the_object_alone(api: client.CustomObjectsApi) -> None:
    before = ready_service(api)
    with pytest.raises(ApiException) as error:
        patch(api, {"spec": {"predictor": {"canaryTrafficPercent": "ten"}}})
    assert error.value.status == 422
    assert "spec.predictor.canaryTrafficPercent" in status_of(error)["message"]
    assert read(api)["spec"] == before["spec"]


def test_create_twice_and_missing_objects(api: client.CustomObjectsApi) -> None:
    api.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, manifest())
    with pytest.raises(ApiException) as twice:
        api.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, manifest())
    assert (twice.value.status, status_of(twice)["reason"]) == (409, "AlreadyExists")
    api.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, NAME)
    with pytest.raises(ApiException) as missing:
        read(api)
    assert (
        status_of(missing)["message"] == f'inferenceservices.serving.kserve.io "{NAME}" not found'
    )


def test_no_token_answers_401(cluster: KubernetesApiDouble) -> None:
    anonymous = client.CustomObjectsApi(client.ApiClient(client.Configuration(host=cluster.url)))
    with pytest.raises(ApiException) as error:
        anonymous.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)
    assert (error.value.status, status_of(error)["reason"]) == (401, "Unauthorized")


# -- watches, kubeconfig, the CRD -------------------------------------------------------------


def test_a_watch_replays_from_its_resource_version_then_follows_live(
    api: client.CustomObjectsApi,
) -> None:
    ready_service(api)
    since = api.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)["metadata"][
        "resourceVersion"
    ]
    events: list[dict[str, Any]] = []

    def follow() -> None:
        stream = watch.Watch().stream(
            api.list_namespaced_custom_object, GROUP, VERSION, NS, PLURAL,
            resource_version=since, timeout_seconds=3,
        )  # fmt: skip
        for event in stream:
            events.append(event)
            if split(event["object"]) == {SECOND: 10, FIRST: 90}:
                return

    watcher = threading.Thread(target=follow)
    watcher.start()
    time.sleep(0.1)
    roll(api, CANARY, 10)
    watcher.join(timeout=5)
    assert events and {e["type"] for e in events} == {"MODIFIED"}
    versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert versions == sorted(versions) and versions[0] > int(since)
    assert split(events[-1]["object"]) == {SECOND: 10, FIRST: 90}


def test_a_watch_without_a_version_lists_first_and_ends_at_its_timeout(
    api: client.CustomObjectsApi,
) -> None:
    ready_service(api)
    started = time.monotonic()
    events = list(
        watch.Watch().stream(
            api.list_namespaced_custom_object, GROUP, VERSION, NS, PLURAL, timeout_seconds=1,
            field_selector=f"metadata.name={NAME}",
        )
    )  # fmt: skip
    assert [e["type"] for e in events] == ["ADDED"]
    assert 0.9 < time.monotonic() - started < 3


def test_the_kubeconfig_reaches_the_server(cluster: KubernetesApiDouble, tmp_path: Path) -> None:
    path = cluster.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(path), client_configuration=configuration)
    api = client.CustomObjectsApi(client.ApiClient(configuration))
    assert api.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)["items"] == []
    _, active = config.list_kube_config_contexts(config_file=str(path))
    assert active["context"]["namespace"] == NS


@pytest.mark.parametrize("has_canary", [True, False])
def test_the_crd_offers_spec_canary_only_when_told(has_canary: bool) -> None:
    with KubernetesApiDouble(crd_has_canary=has_canary) as cluster:
        extensions = client.ApiextensionsV1Api(client.ApiClient(cluster.configuration()))
        crd = extensions.read_custom_resource_definition(f"{PLURAL}.{GROUP}")
    spec = crd.spec.versions[0].schema.open_apiv3_schema.properties["spec"]
    assert ("canary" in spec.properties) is has_canary


# -- revision templates, as KServe builds them ---------------------------------------------


def _settled(cluster: KubernetesApiDouble, api: client.CustomObjectsApi, count: int) -> None:
    _until(lambda: len(cluster.revisions(NS, NAME)) == count and _ready(read(api)))


def _ready(service: dict[str, Any]) -> bool:
    conditions = service.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _until(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.parametrize(
    ("metadata", "revisions"),
    [({"annotations": {"team/owner": "fraud"}}, 2),
     ({"labels": {"team": "fraud"}}, 2),
     ({"annotations": {"autoscaling.knative.dev/min-scale": "2"}}, 1),
     ({"annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}}, 1),
     ({"annotations": {"serving.knative.dev/rollout-duration": "60s"}}, 1),
     ({"labels": {"networking.knative.dev/visibility": "cluster-local"}}, 1)],
)  # fmt: skip
def test_isvc_metadata_outside_kserves_lists_makes_a_revision(
    cluster: KubernetesApiDouble, api: client.CustomObjectsApi, metadata: dict, revisions: int
) -> None:
    api.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, manifest())
    _settled(cluster, api, 1)
    patch(api, {"metadata": metadata})
    time.sleep(0.2)  # ten controller ticks: time to make a revision it should not
    _settled(cluster, api, revisions)


def test_a_canary_traffic_change_makes_no_revision(
    cluster: KubernetesApiDouble, api: client.CustomObjectsApi
) -> None:
    api.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, manifest())
    _settled(cluster, api, 1)
    patch(api, {"spec": {"predictor": {"canaryTrafficPercent": 30}}})
    time.sleep(0.2)
    assert len(cluster.revisions(NS, NAME)) == 1


# -- Leases and ConfigMaps -----------------------------------------------------------------


def _lease(name: str = "lock", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name}, "spec": spec}  # fmt: skip


def test_a_lease_update_needs_the_resource_version_it_read(cluster: KubernetesApiDouble) -> None:
    leases = client.CoordinationV1Api(client.ApiClient(cluster.configuration()))
    created = leases.create_namespaced_lease(NS, _lease(holderIdentity="a"))
    version = created.metadata.resource_version
    unguarded = _lease(holderIdentity="b")
    with pytest.raises(ApiException) as missing:  # AllowUnconditionalUpdate is false
        leases.replace_namespaced_lease("lock", NS, unguarded)
    assert missing.value.status == 422
    guarded = {
        **_lease(holderIdentity="b"),
        "metadata": {"name": "lock", "resourceVersion": version},
    }
    leases.replace_namespaced_lease("lock", NS, guarded)
    with pytest.raises(ApiException) as stale:
        leases.replace_namespaced_lease("lock", NS, guarded)
    assert stale.value.status == 409
    assert cluster.lease(NS, "lock")["spec"]["holderIdentity"] == "b"


@pytest.mark.parametrize(
    ("spec", "problem"),
    [({"renewTime": "2026-12-03T10:00:00Z"}, "spec.renewTime"),
     ({"leaseDurationSeconds": 0}, "must be greater than 0"),
     ({"leaseTransitions": -1}, "spec.leaseTransitions"),
     ({"holder": "a"}, "spec.holder: Unsupported value")],
)  # fmt: skip
def test_a_lease_the_api_server_would_refuse_is_refused(
    cluster: KubernetesApiDouble, spec: dict, problem: str
) -> None:
    import urllib.request

    request = urllib.request.Request(
        f"{cluster.url}/apis/coordination.k8s.io/v1/namespaces/{NS}/leases",
        data=json.dumps(_lease(**spec)).encode(), method="POST",
        headers={"Authorization": f"Bearer {cluster.token}", "Content-Type": "application/json"},
    )  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request)
    assert refused.value.code == 422
    assert problem in json.loads(refused.value.read())["message"]


def test_owned_config_maps_and_leases_go_with_their_owner(
    cluster: KubernetesApiDouble, api: client.CustomObjectsApi
) -> None:
    owner = api.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, manifest())
    reference = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "InferenceService",
                 "name": NAME, "uid": owner["metadata"]["uid"]}  # fmt: skip
    core = client.CoreV1Api(client.ApiClient(cluster.configuration()))
    core.create_namespaced_config_map(NS, {
        "metadata": {"name": "kept", "ownerReferences": [reference]}, "data": {"a": "1"},
    })  # fmt: skip
    core.create_namespaced_config_map(NS, {"metadata": {"name": "unowned"}, "data": {}})
    leases = client.CoordinationV1Api(client.ApiClient(cluster.configuration()))
    lease = _lease(holderIdentity="a")
    lease["metadata"]["ownerReferences"] = [reference]
    leases.create_namespaced_lease(NS, lease)
    api.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, NAME)
    assert cluster.config_map(NS, "kept") is None and cluster.lease(NS, "lock") is None
    assert cluster.config_map(NS, "unowned") is not None


def test_a_config_map_over_a_mebibyte_is_refused(cluster: KubernetesApiDouble) -> None:
    core = client.CoreV1Api(client.ApiClient(cluster.configuration()))
    with pytest.raises(ApiException) as refused:
        core.create_namespaced_config_map(
            NS, {"metadata": {"name": "big"}, "data": {"x": "y" * (1024 * 1024)}}
        )
    assert refused.value.status == 422
