"""A loopback Kubernetes API server with the KServe controller installed, for tests.

``KubernetesApiDouble`` serves InferenceServices over HTTP the way the real API server
does (bearer-token auth, resourceVersion concurrency, merge and JSON patches, watches,
``Status`` errors, strict validation against KServe's own CRD schema), so code using the
``kubernetes`` client runs against it unchanged. It also serves the two built-in kinds a
rollout keeps its own state in, ``coordination.k8s.io/v1`` Leases and ``v1`` ConfigMaps,
garbage-collected with the InferenceService that owns them, and ``v1`` Events, validated
as the API server validates them and listed with its field selectors (not owned: a real
cluster drops them after its event TTL).

A background thread plays the KServe controller. In Knative (formerly Serverless) mode
every change of the *revision template* becomes a new Knative revision that gets ready
(or fails) after a delay, and ``canaryTrafficPercent`` splits traffic between the newest
ready revision and the last rolled-out one. The template is what KServe builds it from
(checked against KServe's source at v0.20.0 and master as of 2026-08, commit aaac4e294):

- ``pkg/controller/v1beta1/inferenceservice/components/predictor.go``,
  ``buildPredictorResources``: the InferenceService's annotations, filtered through
  ``ServiceAnnotationDisallowedList``, become the component's annotations, and
  ``buildObjectMeta`` joins the ISVC's labels with the predictor's (``utils.Union``);
- ``pkg/constants/constants.go``: ``ServiceAnnotationDisallowedList`` is the Knative
  min-scale and max-scale keys, ``internal.serving.kserve.io/storage-initializer-sourceuri``,
  ``kubectl.kubernetes.io/last-applied-configuration`` and ``modelFormat``;
  ``RevisionTemplateLabelDisallowedList`` is ``networking.knative.dev/visibility``;
- ``pkg/controller/v1beta1/inferenceservice/reconcilers/knative/ksvc_reconciler.go``,
  ``createKnativeService``: those annotations go into ``spec.template.metadata`` (only the
  managed ksvc keys, ``serving.knative.dev/rollout-duration`` and OpenShift's passthrough
  key, move to the Knative Service's own metadata), the labels minus the disallowed ones
  too; Knative makes a revision for every template change.

So any change of the predictor spec (``canaryTrafficPercent`` is routing, not template),
or of an ISVC annotation or label outside those lists, makes a revision. (A cluster can
add to both lists in its ``inferenceservice-config``; the double keeps KServe's defaults.) In Standard mode
the same template is the Deployment's pod template: a change rolls the Deployment (counted
as a revision too), and each ``spec.canary`` entry is a Deployment of its own built from
its predictor and the same annotations.

Tests inject faults: RBAC denials, transient 5xx answers, a whole-API outage, a stalled
answer, and another writer racing each write.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import yaml
from jsonschema import Draft7Validator

from conveyor.components.core.rollout.manifests import (
    inference_service_schema,
    packaged_crd,
)
from tests.doubles.http import DoubleServer, MethodHandler

__all__ = ["ApiError", "KubernetesApiDouble", "RecordedRequest"]

GROUP, VERSION = "serving.kserve.io", "v1beta1"
PLURAL, KIND = "inferenceservices", "InferenceService"
CRD_GROUP, CRD_PLURAL = "apiextensions.k8s.io", "customresourcedefinitions"
CRD_NAME = f"{PLURAL}.{GROUP}"
MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
# KServe 0.20 renamed the modes; its webhook rewrites the old names to the new.
_MODE_NAMES = {"Serverless": "Knative", "RawDeployment": "Standard"}
# Another writer's touch: kubectl's own annotation, which KServe keeps out of revisions.
TOUCH_ANNOTATION = "kubectl.kubernetes.io/last-applied-configuration"
SERVICE_ANNOTATION_DISALLOWED = (
    "autoscaling.knative.dev/min-scale", "autoscaling.knative.dev/max-scale",
    "internal.serving.kserve.io/storage-initializer-sourceuri",
    "kubectl.kubernetes.io/last-applied-configuration", "modelFormat",
)  # fmt: skip
REVISION_TEMPLATE_LABEL_DISALLOWED = ("networking.knative.dev/visibility",)
# KServe sets these on the Knative Service itself, outside the template.
MANAGED_KSVC_ANNOTATIONS = (
    "serving.knative.dev/rollout-duration", "serving.knative.openshift.io/enablePassthrough",
)  # fmt: skip
USER = "system:serviceaccount:{namespace}:pipeline-runner"
_ISVC_PATH = re.compile(
    rf"^/apis/{re.escape(GROUP)}/{VERSION}(?:/namespaces/([^/]+))?/{PLURAL}(?:/([^/]+))?(/status)?$"
)
_CRD_PATH = f"/apis/{CRD_GROUP}/v1/{CRD_PLURAL}/{CRD_NAME}"
_BUILTIN_PATH = re.compile(
    r"^/(?:api/v1|apis/coordination\.k8s\.io/v1)/namespaces/([^/]+)/(configmaps|leases|events)"
    r"(?:/([^/]+))?$"
)
_CORE_BUILTINS = ("configmaps", "events")
# kind -> (API group, Kind, whether a PUT without resourceVersion is allowed, whether a PUT
# of a missing object creates it): the registry strategies' AllowUnconditionalUpdate and
# AllowCreateOnUpdate, pkg/registry/coordination/lease/strategy.go (false, true),
# pkg/registry/core/configmap/strategy.go (true, false) and
# pkg/registry/core/event/strategy.go (true, true) in kubernetes/kubernetes.
_BUILTINS = {
    "leases": ("coordination.k8s.io", "Lease", False, True),
    "configmaps": ("", "ConfigMap", True, False),
    "events": ("", "Event", True, True),
}
# The field selectors each kind's list takes: metadata's (generic.ObjectMetaFieldsSet), and
# for Events those of ToSelectableFields in pkg/registry/core/event/strategy.go; any other
# label is refused ("field label not supported").
_SELECTABLE = {
    "events": (
        "involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
        "involvedObject.uid", "involvedObject.apiVersion", "involvedObject.resourceVersion",
        "involvedObject.fieldPath", "reason", "reportingComponent", "source", "type",
    ),
}  # fmt: skip
# core/v1 Event's fields; the API server drops any other (no strict field validation asked).
_EVENT_FIELDS = (
    "apiVersion", "kind", "metadata", "involvedObject", "reason", "message", "source",
    "firstTimestamp", "lastTimestamp", "count", "type", "eventTime", "series", "action",
    "related", "reportingComponent", "reportingInstance",
)  # fmt: skip
# pkg/apis/core/validation/events.go: ReportingInstanceLengthLimit, ActionLengthLimit,
# ReasonLengthLimit, NoteLengthLimit (bytes: Go's len of the message).
_EVENT_LIMITS = {"reportingInstance": 128, "action": 128, "reason": 128, "message": 1024}
_QUALIFIED_NAME = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_LEASE_SPEC = {
    "holderIdentity": str, "leaseDurationSeconds": int, "acquireTime": str, "renewTime": str,
    "leaseTransitions": int, "strategy": str, "preferredHolder": str,
}  # fmt: skip
# metav1.MicroTime's JSON form: RFC 3339 with exactly six fractional digits.
_MICRO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(Z|[+-]\d\d:\d\d)$")
_CONFIG_MAP_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_DNS_1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_MAX_CONFIG_MAP_BYTES = 1024 * 1024  # core.MaxSecretSize, which ValidateConfigMap applies
_MAX_ANNOTATION_BYTES = 256 * 1024  # apimachinery's TotalAnnotationSizeLimitB
_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
_REASONS = {
    400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
    405: "MethodNotAllowed", 409: "Conflict", 410: "Expired", 415: "UnsupportedMediaType",
    422: "Invalid", 429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable",
    504: "Timeout",
}  # fmt: skip
_TRANSIENT = {
    429: "the server has received too many requests and has asked us to try again later",
    503: "the server is currently unable to handle the request",
    504: "the server was unable to return a response in the time allotted",
}
_SERVER_FIELDS = ("uid", "creationTimestamp", "generation", "resourceVersion")


@dataclass(frozen=True)
class RecordedRequest:
    """One request as it reached the server (before auth), for assertions."""

    method: str
    path: str
    query: dict[str, str]
    content_type: str
    body: str


class ApiError(Exception):
    """An answer other than 2xx, rendered as a Kubernetes ``Status``."""

    def __init__(
        self, code: int, message: str, name: str = "", reason: str = "", group: str = GROUP,
        kind: str = PLURAL,
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.code, self.message, self.name = code, message, name
        self.reason = reason or _REASONS.get(code, "InternalError")
        self.group, self.kind = group, kind

    def status(self) -> dict[str, Any]:
        details = {"group": self.group, "kind": self.kind}
        if self.name:
            details["name"] = self.name
        return {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "details": details, "code": self.code,
        }  # fmt: skip


def _not_found(name: str) -> ApiError:
    return ApiError(404, f'{CRD_NAME} "{name}" not found', name)


def _conflict(name: str) -> ApiError:
    return ApiError(
        409,
        f'Operation cannot be fulfilled on {CRD_NAME} "{name}": the object has been modified; '
        "please apply your changes to the latest version and try again",
        name,
    )


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- patches --------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, null deletes a key, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def json_patch(document: Any, operations: list[dict[str, Any]]) -> Any:
    """RFC 6902 ``add``, ``replace``, ``remove`` and ``test``; raises ApiError(422) on failure."""
    document = copy.deepcopy(document)
    for operation in operations:
        op, path = operation.get("op"), _pointer(operation.get("path", ""))
        if not path:
            if op in ("add", "replace"):
                document = copy.deepcopy(operation["value"])
                continue
            raise ApiError(422, f"json patch {op} of the whole document is not supported")
        parent, key = _resolve(document, path[:-1]), path[-1]
        if op == "test" and _child(parent, key) != operation.get("value"):
            raise ApiError(422, f"json patch test failed at {operation['path']}")
        if op in ("remove", "replace"):
            _child(parent, key)  # must exist
            del parent[_index(parent, key)]
        if op in ("add", "replace"):
            _insert_child(parent, key, copy.deepcopy(operation["value"]))
        elif op not in ("remove", "test"):
            raise ApiError(422, f"json patch operation {op!r} is not supported")
    return document


def _pointer(text: str) -> list[str]:
    parts = text.split("/")[1:] if text else []
    return [part.replace("~1", "/").replace("~0", "~") for part in parts]


def _resolve(document: Any, path: list[str]) -> Any:
    for key in path:
        document = _child(document, key)
    return document


def _child(parent: Any, key: str) -> Any:
    try:
        return parent[_index(parent, key)]
    except (KeyError, IndexError, TypeError, ValueError):
        raise ApiError(422, f"json patch path /{key} does not exist") from None


def _index(parent: Any, key: str) -> Any:
    return int(key) if isinstance(parent, list) else key


def _insert_child(parent: Any, key: str, value: Any) -> None:
    if isinstance(parent, list):
        parent.insert(len(parent) if key == "-" else int(key), value)
    else:
        parent[key] = value


# -- the CRD and validation -----------------------------------------------------------------


@functools.cache
def _installed_crd() -> dict[str, Any]:
    text = packaged_crd().read_text()
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _served_crd(has_canary: bool) -> dict[str, Any]:
    """The CRD as the API server returns it, without ``spec.canary`` for KServe < 0.20."""
    crd = dict(_installed_crd()) if has_canary else copy.deepcopy(_installed_crd())
    for version in [] if has_canary else crd["spec"]["versions"]:
        version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"].pop("canary")
    crd["metadata"] = {**crd["metadata"], "uid": str(uuid.uuid4()), "resourceVersion": "1"}
    crd["status"] = {
        "acceptedNames": crd["spec"]["names"],
        "storedVersions": [v["name"] for v in crd["spec"]["versions"]],
        "conditions": [{"type": "Established", "status": "True", "reason": "InitialNamesAccepted"}],
    }
    return crd


def _strict_schema(has_canary: bool) -> dict[str, Any]:
    schema = inference_service_schema()
    if has_canary:
        return schema
    schema = copy.deepcopy(schema)
    schema["properties"]["spec"]["properties"].pop("canary", None)
    return schema


def _problems(validator: Draft7Validator, document: dict[str, Any]) -> list[str]:
    """Each schema violation as ``field.path: what is wrong``, in Kubernetes' wording."""
    problems = []
    errors = sorted(validator.iter_errors(document), key=lambda e: [str(p) for p in e.path])
    for error in errors:
        path = list(error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            known = error.schema.get("properties", {})
            problems += [
                f"{_dotted([*path, key])}: Unsupported value: field not declared in schema"
                for key in sorted(set(error.instance) - set(known))
            ]
        else:
            problems.append(f"{_dotted(path)}: Invalid value: {error.message}")
    return problems


def _dotted(path: list[Any]) -> str:
    text = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)
    return text.lstrip(".") or "<root>"


# -- the store: objects, resourceVersions and watch history ----------------------------------


Key = tuple[str, str]


class _Store:
    """Objects by (namespace, name) under one lock, with a bounded history of watch events."""

    def __init__(self, history: int = 1000) -> None:
        self.lock = threading.Condition()
        self.objects: dict[Key, dict[str, Any]] = {}
        self.version = 0
        self.events: deque[tuple[int, str, dict[str, Any]]] = deque(maxlen=history)
        self.closed = False

    def save(self, obj: dict[str, Any], kind: str) -> dict[str, Any]:
        """Stores (or, for DELETED, drops) ``obj`` at a new resourceVersion; caller holds lock."""
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)
        key = _key(obj)
        if kind == "DELETED":
            self.objects.pop(key, None)
        else:
            self.objects[key] = obj
        self.events.append((self.version, kind, copy.deepcopy(obj)))
        self.lock.notify_all()
        return copy.deepcopy(obj)

    def since(self, version: int) -> list[tuple[int, str, dict[str, Any]]]:
        """Events after ``version``; raises ApiError(410) when the history no longer has them."""
        full = len(self.events) == self.events.maxlen
        if full and version < self.events[0][0] - 1:
            raise ApiError(410, f"too old resource version: {version} ({self.version})")
        return [event for event in self.events if event[0] > version]


def _key(obj: dict[str, Any]) -> Key:
    return obj["metadata"]["namespace"], obj["metadata"]["name"]


# -- the KServe controller ------------------------------------------------------------------


@dataclass
class _Behaviour:
    fails: bool = False
    never_ready: bool = False
    ready_after: float | None = None


@dataclass
class _Revision:
    """A Knative revision (Knative mode) or a Deployment rollout (Standard, ModelMesh)."""

    name: str
    storage_uri: str
    created: float
    state: str = "pending"  # then "ready" or "failed", for good

    def advance(self, now: float, behaviour: _Behaviour, default_wait: float) -> None:
        if self.state != "pending" or behaviour.never_ready:
            return
        wait = default_wait if behaviour.ready_after is None else behaviour.ready_after
        if now - self.created >= wait:
            self.state = "failed" if behaviour.fails else "ready"


@dataclass
class _Track:
    """What the controller remembers about one InferenceService (by uid)."""

    predictor: dict[str, Any] | None = None
    revisions: list[_Revision] = field(default_factory=list)
    rolled_out: str = ""
    previous: str = ""
    failure: dict[str, Any] | None = None
    canaries: dict[str, _Revision] = field(default_factory=dict)  # Standard: by canary name
    canary_templates: dict[str, Any] = field(default_factory=dict)
    canary_rollouts: int = 0  # Standard: Deployments (re)built for spec.canary entries


class _Controller:
    """Computes an InferenceService's status from its spec and the passage of time."""

    def __init__(self, double: KubernetesApiDouble, status_schema: dict[str, Any]) -> None:
        self.double = double
        self.tracks: dict[str, _Track] = {}
        self.seeded: set[str] = set()
        self.status_validator = Draft7Validator(status_schema)

    def status(self, obj: dict[str, Any], now: float) -> dict[str, Any]:
        meta, predictor = obj["metadata"], obj.get("spec", {}).get("predictor", {})
        track = self.tracks.setdefault(meta["uid"], _Track())
        requested = meta.get("annotations", {}).get(MODE_ANNOTATION, self.double.default_mode)
        mode = _MODE_NAMES.get(requested, requested)
        serverless = mode == "Knative"
        self._new_revision_if_changed(track, obj, serverless, now)
        for revision in track.revisions:
            behaviour = self.double.behaviours.get(revision.storage_uri, _Behaviour())
            revision.advance(now, behaviour, self.double.ready_after)
        latest = track.revisions[-1]
        self._note_failure(track, latest)
        if serverless:
            component = self._knative(track, latest, predictor.get("canaryTrafficPercent"), obj)
        else:
            component = {"latestCreatedRevision": latest.name, "url": _url(obj, "-predictor")}
        canaries = obj.get("spec", {}).get("canary") or []
        status = {
            "deploymentMode": mode,
            "observedGeneration": meta["generation"],
            "url": _url(obj),
            "address": {"url": f"http://{meta['name']}.{meta['namespace']}.svc.cluster.local"},
            "components": {"predictor": component},
            "conditions": _conditions(track, latest, serverless, obj.get("status", {})),
            "modelStatus": _model_status(track, latest),
        }
        if canaries and not serverless:
            status["canaryStatuses"] = self._canary_statuses(track, obj, canaries, now)
            ready = all(entry["ready"] for entry in status["canaryStatuses"])
            status["conditions"].append(
                {"type": "CanaryPredictorReady", "status": str(ready),
                 "reason": "AllCanariesReady" if ready else "CanariesNotReady",
                 "lastTransitionTime": _now()}
            )  # fmt: skip
        self._check(status)
        return status

    def _canary_statuses(
        self, track: _Track, obj: dict[str, Any], canaries: list[dict[str, Any]], now: float
    ) -> list[dict[str, Any]]:
        """Standard mode: each spec.canary entry is a Deployment that becomes available
        (or never does: a canary that fails to load just stays unready)."""
        statuses = []
        for entry in canaries:
            name = entry["predictor"]["name"]
            uri = entry["predictor"].get("model", {}).get("storageUri", "")
            # KServe's buildCanaryPredictor: the stable predictor, the entry merged over it.
            merged = merge_patch(obj["spec"]["predictor"], entry["predictor"])
            template = revision_template(obj, merged)
            deployment = track.canaries.get(name)
            if deployment is None or track.canary_templates.get(name) != template:
                deployment = track.canaries[name] = _Revision(name, uri, now)
                track.canary_templates[name] = template
                track.canary_rollouts += 1
            deployment.advance(
                now, self.double.behaviours.get(uri, _Behaviour()), self.double.ready_after
            )
            ready = deployment.state == "ready"
            statuses.append(
                {"name": name, "ready": ready, "trafficPercent": entry["trafficPercent"]}
            )
        return statuses

    def _new_revision_if_changed(
        self, track: _Track, obj: dict[str, Any], serverless: bool, now: float
    ) -> None:
        predictor = dict(obj.get("spec", {}).get("predictor", {}))
        predictor.pop("canaryTrafficPercent", None)
        template = revision_template(obj, predictor)
        if template == track.predictor:
            return
        number = len(track.revisions) + 1
        name = f"{obj['metadata']['name']}-predictor-{number:05d}" if serverless else str(number)
        uri = predictor.get("model", {}).get("storageUri", "")
        created = now - 1e9 if obj["metadata"]["uid"] in self.seeded else now
        self.seeded.discard(obj["metadata"]["uid"])
        track.revisions.append(_Revision(name, uri, created))
        track.predictor = template

    def _note_failure(self, track: _Track, latest: _Revision) -> None:
        """KServe keeps lastFailureInfo after a failure, until another failure replaces it."""
        if (
            latest.state != "failed"
            or (track.failure or {}).get("modelRevisionName") == latest.name
        ):
            return
        track.failure = {
            "reason": "ModelLoadFailed",
            "message": f"failed to load the model from {latest.storage_uri}",
            "modelRevisionName": latest.name,
            "time": _now(),
        }

    def _knative(
        self, track: _Track, latest: _Revision, percent: int | None, obj: dict[str, Any]
    ) -> dict[str, Any]:
        """Revisions and traffic as KServe reports them from the Knative Service.

        The route's ``latestRevision: true`` entry is Knative's latest *ready* revision,
        which is not the newest one while that one is still starting or has failed.
        """
        full = percent is None or percent >= 100
        ready = [r.name for r in track.revisions if r.state == "ready"]
        newest_ready = ready[-1] if ready else ""
        promote = newest_ready and (full or not track.rolled_out)
        if promote and track.rolled_out != newest_ready:
            track.previous, track.rolled_out = track.rolled_out, newest_ready
        component: dict[str, Any] = {
            "latestCreatedRevision": latest.name,
            "latestReadyRevision": newest_ready or None,
            "latestRolledoutRevision": track.rolled_out or None,
            "previousRolledoutRevision": track.previous or None,
            "traffic": _traffic(track, newest_ready, percent or 0, obj)
            if track.rolled_out
            else None,
            "url": _url(obj, "-predictor"),
        }
        return {key: value for key, value in component.items() if value is not None}

    def _check(self, status: dict[str, Any]) -> None:
        problems = _problems(self.status_validator, status)
        if problems:
            raise AssertionError(f"the controller double wrote an invalid status: {problems}")


def revision_template(obj: dict[str, Any], predictor: dict[str, Any]) -> dict[str, Any]:
    """What a Knative revision (or a Standard Deployment's pod template) is built from:
    the predictor, the ISVC's annotations and labels KServe passes on (see the module)."""
    meta = obj.get("metadata", {})
    hidden = (*SERVICE_ANNOTATION_DISALLOWED, *MANAGED_KSVC_ANNOTATIONS)
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k not in hidden}
    labels = {
        k: v
        for k, v in (meta.get("labels") or {}).items()
        if k not in REVISION_TEMPLATE_LABEL_DISALLOWED
    }
    return {"predictor": predictor, "annotations": annotations, "labels": labels}


def _traffic(
    track: _Track, newest_ready: str, percent: int, obj: dict[str, Any]
) -> list[dict[str, Any]]:
    """The latest ready revision gets ``percent``, the rolled-out one the rest."""
    rolled = track.rolled_out
    if newest_ready == rolled:
        return [{"revisionName": rolled, "percent": 100, "latestRevision": True}]
    return [
        {"revisionName": newest_ready, "percent": percent, "latestRevision": True, "tag": "latest",
         "url": _url(obj, "-predictor", "latest-")},
        {"revisionName": rolled, "percent": 100 - percent, "latestRevision": False, "tag": "prev",
         "url": _url(obj, "-predictor", "prev-")},
    ]  # fmt: skip


def _canary_refusal(obj: dict[str, Any], old: dict[str, Any] | None = None) -> str:
    """What KServe 0.20's webhook says against the predictor or a spec.canary list, or ""
    (``pkg/apis/serving/v1beta1/inference_service_validation.go``, ``validateCanarySpecs``,
    at v0.20.0: no autoscaling fields in an entry, its minReplicas at most the stable's)."""
    spec = obj.get("spec", {})
    if "name" in spec.get("predictor", {}).get("model", {}):
        return "the 'name' field is not allowed in standard predictor"
    if old and _renamed_without_a_new_model(old["spec"]["predictor"], spec["predictor"]):
        return "predictor.name can only change together with the model's storageUri"
    canaries = spec.get("canary") or []
    if not canaries:
        return ""
    if obj["metadata"].get("annotations", {}).get(MODE_ANNOTATION) != "Standard":
        return "canary is only supported in Standard deployment mode"
    names = [entry["predictor"].get("name", "") for entry in canaries]
    if "" in names or len(set(names)) != len(names):
        return "each canary needs a predictor.name of its own"
    if spec["predictor"].get("name", "") in names:
        return "a canary predictor.name conflicts with the stable predictor name"
    if sum(entry["trafficPercent"] for entry in canaries) > 100:
        return "canary trafficPercent values must add up to 100 or less"
    stable_min = spec["predictor"].get("minReplicas", 1)
    for entry in canaries:
        predictor, name = entry["predictor"], entry["predictor"]["name"]
        for field_name in ("maxReplicas", "scaleTarget", "scaleMetric", "autoScaling"):
            if predictor.get(field_name):
                return f'canary "{name}" must not set {field_name} (canary uses fixed replicas)'
        if predictor.get("minReplicas", 0) > stable_min:
            return (
                f'canary "{name}" minReplicas ({predictor["minReplicas"]}) must not exceed '
                f"stable predictor minReplicas ({stable_min})"
            )
    return ""


def _renamed_without_a_new_model(old: dict[str, Any], new: dict[str, Any]) -> bool:
    def uri(predictor: dict[str, Any]) -> str:
        return predictor.get("model", {}).get("storageUri", "")

    return old.get("name", "") != new.get("name", "") and uri(old) == uri(new)


def _url(obj: dict[str, Any], suffix: str = "", tag: str = "") -> str:
    meta = obj["metadata"]
    return f"http://{tag}{meta['name']}{suffix}.{meta['namespace']}.example.com"


def _conditions(
    track: _Track, latest: _Revision, serverless: bool, old: dict[str, Any]
) -> list[dict[str, Any]]:
    """Ready and its parts; a lastTransitionTime moves only when the condition's status does."""
    if latest.state == "failed":
        message = f'Revision "{latest.name}" failed with message: {track.failure["message"]}.'
        health = {"status": "False", "reason": "RevisionFailed", "message": message}
    elif latest.state == "pending":
        message = f'Revision "{latest.name}" is not ready yet.'
        health = {"status": "Unknown", "reason": "Deploying", "message": message}
    else:
        health = {"status": "True"}
    serving = any(r.state == "ready" for r in track.revisions)
    route = {"status": "True"} if serving else {"status": "Unknown", "reason": "Deploying"}
    kinds = {"IngressReady": route, "PredictorReady": health, "Ready": health}
    if serverless:
        kinds |= {"PredictorConfigurationReady": health, "PredictorRouteReady": route}
    previous = {c["type"]: c for c in old.get("conditions", [])}
    conditions = []
    for kind in sorted(kinds):
        condition = {"type": kind, **kinds[kind]}
        before = previous.get(kind, {})
        same = before.get("status") == condition["status"]
        condition["lastTransitionTime"] = before["lastTransitionTime"] if same else _now()
        conditions.append(condition)
    return conditions


def _model_status(track: _Track, latest: _Revision) -> dict[str, Any]:
    target = {"ready": "Loaded", "pending": "Pending", "failed": "FailedToLoad"}[latest.state]
    transition = {"ready": "UpToDate", "pending": "InProgress", "failed": "BlockedByFailedLoad"}
    loaded = any(r.state == "ready" for r in track.revisions)
    status: dict[str, Any] = {
        "transitionStatus": transition[latest.state],
        "states": {"activeModelState": "Loaded" if loaded else target, "targetModelState": target},
    }
    if track.failure:
        status["lastFailureInfo"] = dict(track.failure)
    return status


# -- HTTP ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Route:
    kind: str  # "version", "crd", "isvc", or a built-in kind's plural ("leases", "configmaps")
    namespace: str = ""
    name: str = ""
    status: bool = False


def _route(path: str) -> _Route:
    if path == "/version":
        return _Route("version")
    if path == _CRD_PATH:
        return _Route("crd", name=CRD_NAME)
    builtin = _BUILTIN_PATH.match(path)
    if builtin and (builtin[2] in _CORE_BUILTINS) == path.startswith("/api/v1/"):
        return _Route(builtin[2], builtin[1], builtin[3] or "")
    match = _ISVC_PATH.match(path)
    if not match or (match[3] and not match[2]):
        raise ApiError(404, "the server could not find the requested resource", kind="")
    return _Route("isvc", match[1] or "", match[2] or "", bool(match[3]))


def _dry_run(query: dict[str, str]) -> bool:
    """``dryRun=All`` processes a write without persisting it. It is the only value the API
    server knows (apimachinery's ``ValidateDryRun``, ``allowedDryRunValues``, in
    ``pkg/apis/meta/v1/validation/validation.go``); any other is refused before the body is
    read, as the create handler turns ``ValidateCreateOptions`` errors into
    ``errors.NewInvalid`` (422) for kind CreateOptions (apiserver's
    ``pkg/endpoints/handlers/create.go``)."""
    value = query.get("dryRun")
    if value is None:
        return False
    if value != "All":
        raise ApiError(
            422,
            f'CreateOptions.meta.k8s.io "" is invalid: dryRun: Unsupported value: '
            f'["{value}"]: supported values: "All"',
            group="meta.k8s.io",
            kind="CreateOptions",
        )
    return True


def _verb(method: str, route: _Route, query: dict[str, str]) -> str:
    if method != "GET":
        return _VERBS.get(method, method.lower())
    if route.name:
        return "get"
    return "watch" if query.get("watch", "").lower() in ("true", "t", "1") else "list"


def _resource(route: _Route) -> str:
    group = _BUILTINS[route.kind][0]
    return f"{route.kind}.{group}" if group else route.kind


def _builtin_error(code: int, route: _Route, message: str, reason: str = "") -> ApiError:
    group = _BUILTINS[route.kind][0]
    return ApiError(code, message, route.name, reason, group=group, kind=route.kind)


def _builtin_problems(kind: str, obj: dict[str, Any]) -> list[str]:
    """What the API server's validation (pkg/apis/coordination/validation and
    pkg/apis/core/validation, ValidateObjectMeta) says against a Lease, ConfigMap or
    Event."""
    if kind == "events":
        return _event_problems(obj)
    meta = obj["metadata"]
    problems = _meta_problems(meta)
    if kind == "leases":
        problems += _lease_problems(obj)
    else:
        problems += _config_map_problems(obj)
    return problems


def _event_problems(obj: dict[str, Any]) -> list[str]:
    """``legacyValidateEvent`` (pkg/apis/core/validation/events.go), all that a core/v1
    create is held to, then the generic registry's name check (``BeforeCreate`` in
    apiserver's pkg/registry/rest/create.go: ``ValidatePathSegmentName``)."""
    meta, involved = obj["metadata"], obj.get("involvedObject") or {}
    namespace = meta.get("namespace", "")
    if obj.get("eventTime"):
        problems = _new_event_problems(obj, involved, namespace)
    elif involved.get("namespace", "") != namespace and (
        involved.get("namespace") or namespace not in ("", "default")
    ):
        problems = ["involvedObject.namespace: Invalid value: does not match event.namespace"]
    else:
        problems = []
    if not _DNS_1123_SUBDOMAIN.match(namespace):
        problems.append(f"namespace: Invalid value: {namespace!r}: a lowercase RFC 1123 subdomain")
    name = meta.get("name", "")
    if not name or name in (".", "..") or any(c in name for c in "/%"):
        problems.append(f"metadata.name: Invalid value: {name!r}: not a path segment name")
    return problems


def _new_event_problems(obj: dict[str, Any], involved: dict[str, Any], namespace: str) -> list[str]:
    """The rules for an Event with ``eventTime``: who reported it, and the length limits."""
    problems = []
    if not involved.get("namespace") and namespace not in ("default", "kube-system"):
        problems.append("involvedObject.namespace: Invalid value: does not match event.namespace")
    if not isinstance(obj["eventTime"], str) or not _MICRO_TIME.match(obj["eventTime"]):
        problems.append(f"eventTime: Invalid value: {obj['eventTime']!r}: not a MicroTime")
    component = obj.get("reportingComponent") or ""
    if not component:
        problems.append("reportingController: Required value")
    elif not _QUALIFIED_NAME.match(component):
        problems.append(f"reportingController: Invalid value: {component!r}: not a qualified name")
    for key in ("reportingInstance", "action", "reason"):
        if not obj.get(key):
            problems.append(f"{key}: Required value")
    for key, limit in _EVENT_LIMITS.items():
        if len(str(obj.get(key) or "").encode()) > limit:
            problems.append(f"{key}: Invalid value: can have at most {limit} characters")
    return problems


def _selected(kind: str, query: dict[str, str]) -> Callable[[dict[str, Any]], bool]:
    """The list's ``fieldSelector`` (``a=b``, ``a==b``, ``a!=b``, comma-joined) as a test."""
    terms = []
    for term in filter(None, query.get("fieldSelector", "").split(",")):
        parsed = re.match(r"^([^!=]+)(!=|==|=)(.*)$", term)
        if parsed is None:
            raise ApiError(400, f"invalid field selector: {term!r}", kind="")
        label, operator, value = parsed.groups()
        if label not in ("metadata.name", "metadata.namespace", *_SELECTABLE.get(kind, ())):
            raise ApiError(400, f"field label not supported: {label}", kind="")
        terms.append((label, operator == "!=", value))
    return lambda obj: all((_field_value(obj, label) == value) != negated
                           for label, negated, value in terms)  # fmt: skip


def _field_value(obj: dict[str, Any], label: str) -> str:
    if label == "source":  # the older field, or the newer one where it is empty
        return (obj.get("source") or {}).get("component") or obj.get("reportingComponent", "")
    found: Any = obj
    for key in label.split("."):
        found = found.get(key) if isinstance(found, dict) else None
    return found if isinstance(found, str) else ""


def _meta_problems(meta: dict[str, Any]) -> list[str]:
    name = meta.get("name", "")
    problems = []
    if not _DNS_1123_SUBDOMAIN.match(name) or len(name) > 253:
        problems.append(f"metadata.name: Invalid value: {name!r}: a lowercase RFC 1123 subdomain")
    annotations = meta.get("annotations") or {}
    if any(not isinstance(v, str) for v in annotations.values()):
        problems.append("metadata.annotations: Invalid value: values must be strings")
    elif sum(len(k) + len(v) for k, v in annotations.items()) > _MAX_ANNOTATION_BYTES:
        problems.append("metadata.annotations: Too long: must have at most 262144 bytes")
    for index, owner in enumerate(meta.get("ownerReferences") or []):
        for field_name in ("apiVersion", "kind", "name", "uid"):
            if not owner.get(field_name):
                problems.append(f"metadata.ownerReferences[{index}].{field_name}: Required value")
    return problems


def _lease_problems(obj: dict[str, Any]) -> list[str]:
    spec = obj.get("spec") or {}
    problems = [
        f"spec.{key}: Unsupported value: field not declared in schema"
        for key in spec
        if key not in _LEASE_SPEC
    ]
    for key, kind in _LEASE_SPEC.items():
        value = spec.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            problems.append(f"spec.{key}: Invalid value: {value!r}: not a {kind.__name__}")
    for key in ("acquireTime", "renewTime"):
        if isinstance(spec.get(key), str) and not _MICRO_TIME.match(spec[key]):
            problems.append(f"spec.{key}: Invalid value: {spec[key]!r}: not a MicroTime")
    if isinstance(spec.get("leaseDurationSeconds"), int) and spec["leaseDurationSeconds"] <= 0:
        problems.append("spec.leaseDurationSeconds: Invalid value: must be greater than 0")
    if isinstance(spec.get("leaseTransitions"), int) and spec["leaseTransitions"] < 0:
        problems.append("spec.leaseTransitions: Invalid value: must be greater than or equal to 0")
    return problems


def _config_map_problems(obj: dict[str, Any]) -> list[str]:
    known = {"apiVersion", "kind", "metadata", "data", "binaryData", "immutable"}
    problems = [
        f"{key}: Unsupported value: field not declared in schema" for key in obj if key not in known
    ]
    data = obj.get("data") or {}
    for key, value in data.items():
        if not _CONFIG_MAP_KEY.match(key) or len(key) > 253:
            problems.append(
                f"data[{key}]: Invalid value: {key!r}: a valid config key must consist of alphanumeric characters, '-', '_' or '.'"
            )
        if not isinstance(value, str):
            problems.append(f"data[{key}]: Invalid value: not a string")
    size = sum(len(k) + len(v) for k, v in data.items() if isinstance(v, str))
    if size > _MAX_CONFIG_MAP_BYTES:
        problems.append(f"[]: Too long: must have at most {_MAX_CONFIG_MAP_BYTES} bytes")
    return problems


class _Handler(MethodHandler):
    """Reads a request, lets the double answer it, and writes JSON (or a watch stream)."""

    server: DoubleServer

    def _serve(self, method: str) -> None:
        double = self.server.double
        url = urlsplit(self.path)
        query = dict(parse_qsl(url.query))
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        double.requests.append(RecordedRequest(method, url.path, query, content_type, body))
        try:
            if self.headers.get("Authorization") != f"Bearer {double.token}":
                raise ApiError(401, "Unauthorized", kind="")
            route = _route(url.path)
            double._stall(method, answered=False)
            double._admit(method, route, query)
            if _verb(method, route, query) == "watch":
                self._stream(double._watch(route, query))
                return
            code, payload = double._answer(method, route, body, content_type, query)
            double._stall(method, answered=True)
        except ApiError as error:
            code, payload = error.code, error.status()
        try:
            self._send_json(code, payload)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up waiting for the answer

    def _send_json(self, code: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, events: Iterator[dict[str, Any]]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for event in events:
                line = json.dumps(event).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client stopped watching


# -- the double ------------------------------------------------------------------------------


class KubernetesApiDouble:
    """A Kubernetes API server with the KServe controller, on 127.0.0.1; a context manager."""

    def __init__(
        self, *, token: str = "test-token", default_mode: str = "Knative",
        crd_has_canary: bool = True, ready_after: float = 0.3, tick: float = 0.05,
    ) -> None:  # fmt: skip
        self.token, self.default_mode, self.ready_after, self.tick = (
            token, default_mode, ready_after, tick,
        )  # fmt: skip
        self.url = ""
        self.requests: list[RecordedRequest] = []
        self.behaviours: dict[str, _Behaviour] = {}
        self.crd_has_canary = crd_has_canary
        schema = _strict_schema(crd_has_canary)
        self._validator = Draft7Validator(schema)
        self._crd = _served_crd(crd_has_canary)
        self._store = _Store()
        self._controller = _Controller(self, schema["properties"]["status"])
        self._denied: set[tuple[str, str]] = set()
        self._failures: dict[tuple[str, str], list[int]] = {}
        self._builtins: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._outage_until, self._outage_status = 0.0, 503
        self._stalls: dict[tuple[str, bool], list[float]] = {}
        self._conflicts = 0
        self._errors: list[BaseException] = []
        self._stop = threading.Event()
        self._server: DoubleServer | None = None
        self._threads: list[threading.Thread] = []

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> KubernetesApiDouble:
        self._server = DoubleServer(self, _Handler).start()
        self.url = self._server.url
        self._threads = [threading.Thread(target=self._control_loop, daemon=True)]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        self._stop.set()
        with self._store.lock:
            self._store.closed = True
            self._store.lock.notify_all()
        if self._server:
            self._server.stop()
        for thread in self._threads:
            thread.join(timeout=5)
        if self._errors and exc_type is None:
            raise self._errors[0]

    # -- client configuration --------------------------------------------------------------

    def configuration(self) -> Any:
        """A ``kubernetes.client.Configuration`` for this server and token."""
        from kubernetes import client

        configuration = client.Configuration(host=self.url)
        configuration.retries = False  # as conveyor.components.core.rollout.kube.api_client sets it
        configuration.api_key = {"authorization": self.token}
        configuration.api_key_prefix = {"authorization": "Bearer"}
        return configuration

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        """A kubeconfig with this server, the bearer token and ``namespace`` as the default."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "double", "cluster": {"server": self.url}}],
            "users": [{"name": "pipeline-runner", "user": {"token": self.token}}],
            "contexts": [
                {
                    "name": "double",
                    "context": {
                        "cluster": "double",
                        "user": "pipeline-runner",
                        "namespace": namespace,
                    },
                }
            ],
            "current-context": "double",
        }
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    # -- direct access for tests -----------------------------------------------------------

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A copy of the stored InferenceService, or None."""
        with self._store.lock:
            found = self._store.objects.get((namespace, name))
            return copy.deepcopy(found)

    def put_object(self, body: dict[str, Any]) -> dict[str, Any]:
        """Stores ``body`` as if created earlier: its first revision is ready at once."""
        namespace = body.get("metadata", {}).get("namespace", "default")
        with self._store.lock:
            return self._create(namespace, body, seeded=True)

    def revisions(self, namespace: str, name: str) -> list[str]:
        """Revision names created so far, oldest first (Deployment revisions in Raw mode)."""
        with self._store.lock:
            found = self._store.objects.get((namespace, name))
            track = self._controller.tracks.get(found["metadata"]["uid"]) if found else None
            return [revision.name for revision in track.revisions] if track else []

    def lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A copy of the stored Lease, or None."""
        with self._store.lock:
            return copy.deepcopy(self._builtins.get(("leases", namespace, name)))

    def config_map(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A copy of the stored ConfigMap, or None."""
        with self._store.lock:
            return copy.deepcopy(self._builtins.get(("configmaps", namespace, name)))

    def take_lease(self, namespace: str, name: str, holder: str) -> None:
        """Another run takes the Lease, as its own update would (a new resourceVersion)."""
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        self._edit_lease(namespace, name, holderIdentity=holder, renewTime=stamp, acquireTime=stamp)

    def template_changes(self, namespace: str, name: str) -> int:
        """Revisions (Knative) or Deployment rollouts (Standard, spec.canary entries included)."""
        with self._store.lock:
            found = self._store.objects.get((namespace, name))
            track = self._controller.tracks.get(found["metadata"]["uid"]) if found else None
            return len(track.revisions) + track.canary_rollouts if track else 0

    # -- fault injection -------------------------------------------------------------------

    def heal(self) -> None:
        """Ends every injected failure: queued answers, an outage, stalls."""
        with self._store.lock:
            self._failures.clear()
            self._stalls.clear()
            self._outage_until = 0.0

    def expire_lease(self, namespace: str, name: str) -> None:
        """The Lease's holder stopped renewing long ago (its process died)."""
        self._edit_lease(namespace, name, renewTime="2000-01-01T00:00:00.000000Z")

    def _edit_lease(self, namespace: str, name: str, **spec: Any) -> None:
        """The stored Lease with ``spec`` fields changed, at a new resourceVersion."""
        with self._store.lock:
            lease = copy.deepcopy(self._builtins[("leases", namespace, name)])
            lease["spec"].update(spec)
            self._save_builtin(_Route("leases", namespace, name), lease, lease)

    def outage(self, seconds: float, status: int = 503) -> None:
        """Every API request answers ``status`` for the next ``seconds``."""
        with self._store.lock:
            self._outage_until, self._outage_status = time.monotonic() + seconds, status

    def stall_next(
        self, method: str, seconds: float, times: int = 1, after_answering: bool = False
    ) -> None:
        """The next ``times`` requests with ``method`` wait ``seconds`` before they are
        handled, or (``after_answering``) after they were handled, before the answer is
        sent: a write that lands though its client saw a timeout."""
        with self._store.lock:
            queue = self._stalls.setdefault((method.upper(), after_answering), [])
            queue.extend([seconds] * times)

    def _stall(self, method: str, answered: bool) -> None:
        with self._store.lock:
            queued = self._stalls.get((method, answered), [])
            seconds = queued.pop(0) if queued else 0.0
        time.sleep(seconds)

    def revision_behaviour(
        self, storage_uri: str, *, fails: bool = False, never_ready: bool = False,
        ready_after: float | None = None,
    ) -> None:  # fmt: skip
        """How revisions serving ``storage_uri`` turn out (while they are still pending)."""
        self.behaviours[storage_uri] = _Behaviour(fails, never_ready, ready_after)

    def deny(self, verb: str, resource: str = PLURAL) -> None:
        """RBAC: requests for ``verb`` on ``resource`` now answer 403."""
        with self._store.lock:
            self._denied.add((verb, resource))

    def fail_next(
        self, method: str, status: int = 503, times: int = 1, resource: str = "isvc"
    ) -> None:
        """The next ``times`` requests with ``method`` for ``resource`` (``isvc``, or a
        built-in kind's plural such as ``events``) answer ``status``."""
        with self._store.lock:
            self._failures.setdefault((method.upper(), resource), []).extend([status] * times)

    def conflict_next_writes(self, times: int = 1) -> None:
        """Another writer touches the object just before each of the next ``times`` writes."""
        with self._store.lock:
            self._conflicts += times

    # -- the API ---------------------------------------------------------------------------

    def _admit(self, method: str, route: _Route, query: dict[str, str]) -> None:
        """Injected transient failures first, then RBAC."""
        verb = _verb(method, route, query)
        with self._store.lock:
            if route.kind != "version" and time.monotonic() < self._outage_until:
                code = self._outage_status
                raise ApiError(code, _TRANSIENT.get(code, "Internal error occurred"), route.name)
            queued = self._failures.get((method, route.kind), [])
            if queued:
                code = queued.pop(0)
                raise ApiError(code, _TRANSIENT.get(code, "Internal error occurred"), route.name)
            resource = {"isvc": PLURAL, "crd": CRD_PLURAL}.get(route.kind, route.kind)
            if (verb, resource) in self._denied:
                raise _forbidden(verb, route)

    def _answer(
        self, method: str, route: _Route, body: str, content_type: str, query: dict[str, str]
    ) -> tuple[int, dict[str, Any]]:
        if route.kind == "version":
            return 200, {"major": "1", "minor": "30", "gitVersion": "v1.30.0"}
        if method != "GET" and (route.kind == "crd" or route.status):
            raise ApiError(405, f"the server does not allow this method on {route.kind}")
        if route.kind == "crd":
            return 200, self._crd
        dry_run = _dry_run(query)
        with self._store.lock:
            if route.kind in _BUILTINS:
                return self._builtin(method, route, body, content_type, query)
            return self._isvc(method, route, body, content_type, dry_run)

    def _isvc(
        self, method: str, route: _Route, body: str, content_type: str, dry_run: bool
    ) -> tuple[int, dict[str, Any]]:
        if method == "GET" and not route.name:
            return 200, self._list(route.namespace)
        if method == "POST" and not route.name and route.namespace:
            return 201, self._create(route.namespace, _json(body), dry_run=dry_run)
        if dry_run and method != "PATCH":
            raise ApiError(400, f"dryRun is not supported by this double for {method}")
        key = (route.namespace, route.name)
        if not route.namespace or not route.name:
            raise ApiError(405, f"{method} needs a namespaced object path")
        if method in ("PUT", "PATCH"):
            self._touch_if_asked(key)
        stored = self._store.objects.get(key)
        if stored is None:
            raise _not_found(route.name)
        if method == "GET":
            return 200, copy.deepcopy(stored)
        if method == "DELETE":
            self._collect_garbage(stored["metadata"]["uid"])
            return 200, self._store.save(copy.deepcopy(stored), "DELETED")
        if method == "PUT":
            return 200, self._replace(stored, _json(body))
        return 200, self._patch(stored, body, content_type, dry_run)

    def _list(self, namespace: str) -> dict[str, Any]:
        items = [
            copy.deepcopy(obj)
            for (ns, _), obj in sorted(self._store.objects.items())
            if not namespace or ns == namespace
        ]
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": f"{KIND}List",
            "metadata": {"resourceVersion": str(self._store.version)},
            "items": items,
        }

    def _create(
        self, namespace: str, body: Any, seeded: bool = False, dry_run: bool = False
    ) -> dict[str, Any]:
        obj = copy.deepcopy(body) if isinstance(body, dict) else {}
        meta = obj.setdefault("metadata", {})
        meta.setdefault("namespace", namespace)
        name = meta.get("name", "")
        if meta["namespace"] != namespace:
            raise ApiError(400, "the namespace of the provided object does not match the "
                           "namespace sent on the request", name)  # fmt: skip
        if not name:
            raise ApiError(422, f"{KIND}.{GROUP} is invalid: metadata.name: Required value")
        if meta.get("resourceVersion"):
            raise ApiError(422, f'{KIND}.{GROUP} "{name}" is invalid: metadata.resourceVersion: '
                           "Invalid value: must be empty on create", name)  # fmt: skip
        obj.pop("status", None)
        self._validate(obj)
        if (namespace, name) in self._store.objects:
            raise ApiError(409, f'{CRD_NAME} "{name}" already exists', name, "AlreadyExists")
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
        if dry_run:  # validated and admitted like any create, and not stored
            return obj
        if seeded:
            self._controller.seeded.add(meta["uid"])
        return self._store.save(obj, "ADDED")

    def _replace(self, stored: dict[str, Any], body: Any) -> dict[str, Any]:
        name = stored["metadata"]["name"]
        version = (
            body.get("metadata", {}).get("resourceVersion") if isinstance(body, dict) else None
        )
        if not version:
            raise ApiError(422, f'{KIND}.{GROUP} "{name}" is invalid: metadata.resourceVersion: '
                           "Invalid value: 0: must be specified for an update", name)  # fmt: skip
        if version != stored["metadata"]["resourceVersion"]:
            raise _conflict(name)
        return self._update(stored, body)

    def _patch(
        self, stored: dict[str, Any], body: str, content_type: str, dry_run: bool = False
    ) -> dict[str, Any]:
        name, patch = stored["metadata"]["name"], _json(body)
        if content_type == "application/merge-patch+json" and isinstance(patch, dict):
            merged = merge_patch(stored, patch)
        elif content_type == "application/json-patch+json" and isinstance(patch, list):
            merged = json_patch(stored, patch)
        elif content_type in ("application/merge-patch+json", "application/json-patch+json"):
            raise ApiError(400, f"the body of a {content_type} patch has the wrong shape", name)
        else:
            raise ApiError(415, f"the body of the request was in an unknown format ({content_type})"
                           " - accepted media types include: application/json-patch+json, "
                           "application/merge-patch+json", name)  # fmt: skip
        version = (
            merged.get("metadata", {}).get("resourceVersion") if isinstance(merged, dict) else None
        )
        if version and version != stored["metadata"]["resourceVersion"]:
            raise _conflict(name)
        return self._update(stored, merged, dry_run)

    def _update(
        self, stored: dict[str, Any], candidate: Any, dry_run: bool = False
    ) -> dict[str, Any]:
        """Writes a client's new version; status and server-set metadata stay the server's.
        A dry run is validated and admitted the same way, and not stored."""
        meta, name = stored["metadata"], stored["metadata"]["name"]
        if not isinstance(candidate, dict) or not isinstance(candidate.get("metadata"), dict):
            raise ApiError(400, "the object has no metadata", name)
        obj = copy.deepcopy(candidate)
        obj.pop("status", None)
        if obj["metadata"].get("name", name) != name:
            raise ApiError(400, f'the name of the object ({obj["metadata"]["name"]}) does not '
                           f"match the name on the URL ({name})", name)  # fmt: skip
        self._validate(obj, stored)
        obj["metadata"].update(namespace=meta["namespace"], name=name)
        obj["metadata"].update({key: meta[key] for key in _SERVER_FIELDS if key in meta})
        if "status" in stored:
            obj["status"] = copy.deepcopy(stored["status"])
        if obj == stored or dry_run:
            return copy.deepcopy(stored if obj == stored else obj)  # no new resourceVersion
        if obj.get("spec") != stored.get("spec"):
            obj["metadata"]["generation"] = meta["generation"] + 1
        return self._store.save(obj, "MODIFIED")

    def _validate(self, obj: dict[str, Any], old: dict[str, Any] | None = None) -> None:
        if not self.crd_has_canary:
            # A real API server prunes what its CRD's schema lacks (with a warning); the
            # double refuses other unknown fields, to catch the project's own mistakes.
            obj.get("spec", {}).pop("canary", None)
        problems = _problems(self._validator, obj)
        name = obj.get("metadata", {}).get("name", "")
        if problems:
            listed = problems[0] if len(problems) == 1 else f"[{', '.join(problems)}]"
            raise ApiError(422, f'{KIND}.{GROUP} "{name}" is invalid: {listed}', name)
        refusal = _canary_refusal(obj, old)
        if refusal:  # KServe's validating webhook
            message = f'admission webhook "inferenceservice.kserve-webhook-server.validator" denied the request: {refusal}'
            raise ApiError(400, message, name, "BadRequest")

    def _touch_if_asked(self, key: Key) -> None:
        stored = self._store.objects.get(key)
        if not self._conflicts or stored is None:
            return
        self._conflicts -= 1
        touched = copy.deepcopy(stored)
        annotations = touched["metadata"].setdefault("annotations", {})
        annotations[TOUCH_ANNOTATION] = str(self._store.version + 1)
        self._store.save(touched, "MODIFIED")

    # -- Leases and ConfigMaps -------------------------------------------------------------

    def _builtin(
        self, method: str, route: _Route, body: str, content_type: str, query: dict[str, str]
    ) -> tuple[int, dict[str, Any]]:
        group, kind, unconditional, create_on_update = _BUILTINS[route.kind]
        if _dry_run(query):
            raise ApiError(400, f"dryRun is not supported by this double for {route.kind}")
        if method == "GET" and not route.name:
            selected = _selected(route.kind, query)
            items = [
                copy.deepcopy(obj)
                for (plural, ns, _), obj in sorted(self._builtins.items())
                if plural == route.kind and ns == route.namespace and selected(obj)
            ]
            return 200, {"kind": f"{kind}List", "items": items,
                         "metadata": {"resourceVersion": str(self._store.version)}}  # fmt: skip
        if method == "POST" and not route.name:
            return 201, self._create_builtin(route, _json(body))
        key = (route.kind, route.namespace, route.name)
        stored = self._builtins.get(key)
        if method == "PUT" and stored is None and create_on_update:
            return 201, self._create_builtin(route, _json(body), on_update=True)
        if stored is None:
            raise _builtin_error(404, route, f'{_resource(route)} "{route.name}" not found')
        if method == "GET":
            return 200, copy.deepcopy(stored)
        if method == "DELETE":
            del self._builtins[key]
            return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success",
                         "details": {"name": route.name, "kind": route.kind}}  # fmt: skip
        if method == "PUT":
            candidate = _json(body)
        elif method == "PATCH" and content_type == "application/merge-patch+json":
            candidate = merge_patch(stored, _json(body))
        else:
            raise ApiError(415, f"this double patches {route.kind} with merge patches only")
        if not isinstance(candidate, dict) or not isinstance(candidate.get("metadata"), dict):
            raise _builtin_error(400, route, "the object has no metadata")
        version = candidate["metadata"].get("resourceVersion")
        if not version and not unconditional and method == "PUT":
            raise _builtin_error(
                422, route, f'{kind}.{group or "core"} "{route.name}" is invalid: '
                "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update",
            )  # fmt: skip
        if version and version != stored["metadata"]["resourceVersion"]:
            raise _builtin_error(
                409, route, f'Operation cannot be fulfilled on {_resource(route)} "{route.name}": '
                "the object has been modified; please apply your changes to the latest version "
                "and try again", reason="Conflict",
            )  # fmt: skip
        return 200, self._save_builtin(route, candidate, stored)

    def _create_builtin(self, route: _Route, body: Any, on_update: bool = False) -> dict[str, Any]:
        obj = copy.deepcopy(body) if isinstance(body, dict) else {}
        meta = obj.setdefault("metadata", {})
        name = meta.get("name", "")
        if on_update and name != route.name:
            raise _builtin_error(400, route, "the name of the object does not match the URL")
        if meta.get("resourceVersion") and not on_update:
            raise _builtin_error(422, route, "metadata.resourceVersion: must be empty on create")
        if (route.kind, route.namespace, name) in self._builtins:
            raise _builtin_error(
                409, route, f'{_resource(route)} "{name}" already exists', reason="AlreadyExists"
            )
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now())
        return self._save_builtin(route, obj, None)

    def _save_builtin(
        self, route: _Route, obj: dict[str, Any], stored: dict[str, Any] | None
    ) -> dict[str, Any]:
        group, kind, _, _ = _BUILTINS[route.kind]
        obj = copy.deepcopy(obj)
        if route.kind == "events":
            obj = {key: value for key, value in obj.items() if key in _EVENT_FIELDS}
        meta = obj["metadata"]
        meta.setdefault("namespace", route.namespace)
        if meta["namespace"] != route.namespace:
            raise _builtin_error(400, route, "the namespace of the object does not match the URL")
        problems = _builtin_problems(route.kind, obj)
        if problems:
            name = meta.get("name", "")
            raise _builtin_error(
                422, route, f'{kind}.{group or "core"} "{name}" is invalid: {problems[0]}'
            )
        if stored is not None:
            meta.update(uid=stored["metadata"]["uid"],
                        creationTimestamp=stored["metadata"]["creationTimestamp"])  # fmt: skip
        obj.update(apiVersion=f"{group}/v1" if group else "v1", kind=kind)
        self._store.version += 1
        meta["resourceVersion"] = str(self._store.version)
        self._builtins[(route.kind, route.namespace, meta["name"])] = obj
        return copy.deepcopy(obj)

    def _collect_garbage(self, owner_uid: str) -> None:
        """Deletes what the deleted object owned (the garbage collector, at once)."""
        for key, obj in list(self._builtins.items()):
            owners = obj["metadata"].get("ownerReferences") or []
            if any(owner.get("uid") == owner_uid for owner in owners):
                del self._builtins[key]

    # -- watch -----------------------------------------------------------------------------

    def _watch(self, route: _Route, query: dict[str, str]) -> Iterator[dict[str, Any]]:
        """Replays what the watcher missed (or the current objects), then follows live."""
        deadline = time.monotonic() + float(query.get("timeoutSeconds") or 1800)
        name = dict(parse_qsl(query.get("fieldSelector", ""))).get("metadata.name", "")
        since = query.get("resourceVersion", "")

        def wanted(obj: dict[str, Any]) -> bool:
            ns, obj_name = _key(obj)
            return (not route.namespace or ns == route.namespace) and name in ("", obj_name)

        with self._store.lock:
            cursor = self._store.version
            if since in ("", "0"):
                first = [("ADDED", o) for _, o in sorted(self._store.objects.items())]
            elif not since.isdigit():
                raise ApiError(400, f"invalid resourceVersion {since!r}")
            else:
                first = [(kind, o) for _, kind, o in self._store.since(int(since))]
        return self._follow(first, cursor, deadline, wanted)

    def _follow(
        self,
        first: list[tuple[str, dict[str, Any]]],
        cursor: int,
        deadline: float,
        wanted: Callable[[dict[str, Any]], bool],
    ) -> Iterator[dict[str, Any]]:
        store, pending = self._store, first
        while True:
            for kind, obj in pending:
                if wanted(obj):
                    yield {"type": kind, "object": copy.deepcopy(obj)}
            with store.lock:
                store.lock.wait_for(
                    lambda seen=cursor: store.version > seen or store.closed,
                    timeout=max(0.0, deadline - time.monotonic()),
                )
                try:
                    pending = [(kind, o) for _, kind, o in store.since(cursor)]
                except ApiError as error:  # the watcher fell behind the history
                    pending = [("ERROR", error.status())]
                cursor = store.version
            if pending and pending[0][0] == "ERROR":
                yield {"type": "ERROR", "object": pending[0][1]}
                return
            if not pending and (store.closed or time.monotonic() >= deadline):
                return

    # -- the controller loop ---------------------------------------------------------------

    def _control_loop(self) -> None:
        while not self._stop.wait(self.tick):
            try:
                self._reconcile()
            except Exception as error:  # surfaced by __exit__; a dead loop would only hang tests
                self._errors.append(error)
                return

    def _reconcile(self) -> None:
        now = time.monotonic()
        with self._store.lock:
            live = {obj["metadata"]["uid"] for obj in self._store.objects.values()}
            for uid in set(self._controller.tracks) - live:
                del self._controller.tracks[uid]
            for obj in list(self._store.objects.values()):
                status = self._controller.status(obj, now)
                if status != obj.get("status"):
                    self._store.save({**copy.deepcopy(obj), "status": status}, "MODIFIED")


def _forbidden(verb: str, route: _Route) -> ApiError:
    user = USER.format(namespace=route.namespace or "default")
    if route.kind == "crd":
        return ApiError(
            403,
            f'{CRD_PLURAL}.{CRD_GROUP} "{CRD_NAME}" is forbidden: User "{user}" cannot {verb} '
            f'resource "{CRD_PLURAL}" in API group "{CRD_GROUP}" at the cluster scope',
            CRD_NAME, group=CRD_GROUP, kind=CRD_PLURAL,
        )  # fmt: skip
    where = f'in the namespace "{route.namespace}"' if route.namespace else "at the cluster scope"
    if route.kind in _BUILTINS:
        group = _BUILTINS[route.kind][0]
        subject = f'{_resource(route)} "{route.name}"' if route.name else _resource(route)
        return ApiError(
            403,
            f'{subject} is forbidden: User "{user}" cannot {verb} resource "{route.kind}" in '
            f'API group "{group}" {where}',
            route.name, group=group, kind=route.kind,
        )  # fmt: skip
    subject = f'{CRD_NAME} "{route.name}"' if route.name else CRD_NAME
    return ApiError(
        403,
        f'{subject} is forbidden: User "{user}" cannot {verb} resource "{PLURAL}" in API group '
        f'"{GROUP}" {where}',
        route.name,
    )


def _json(body: str) -> Any:
    try:
        return json.loads(body) if body else None
    except ValueError as error:
        raise ApiError(400, f"the request body is not JSON: {error}") from None
