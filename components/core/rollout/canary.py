"""How a canary moves through an InferenceService, in each KServe deployment mode.

Knative mode (Serverless before KServe 0.20): the new predictor becomes a Knative
revision, ``spec.predictor.canaryTrafficPercent`` splits traffic between it and the
last rolled-out revision, 100 promotes it, and a rollback sets 0 and re-applies the
previous spec. Standard mode (RawDeployment before 0.20) ignores that field; KServe
0.20 added ``spec.canary[]`` there instead: each entry is a Deployment of its own,
named ``<service>-<predictor.name>-predictor``, meant to get ``trafficPercent`` of the
traffic (KServe 0.20 scales its replicas by it; weighted routing is not released yet,
so a Standard canary must prove by analysis that it served); promoting makes it the
predictor (same name, so no restart) and drops the entry; a rollback drops the entry.

Each mode is a class with the same methods; the rollout (``rollout.runner``)
drives them and owns locking, analysis, deadlines and the report.

Conveyor owns only the predictor fields it renders (``applied``): a canary is the current
predictor with those laid over it (``overlay``), and a rollback puts back only those
fields as the snapshot had them (``restored``), so replicas, autoscaling, tolerations,
node selectors, affinity, other tools' annotations and extra env survive both.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from typing import Any, Protocol

from conveyor.components.core.errors import ConveyorError, first_line
from conveyor.components.core.rollout.kube import InferenceServices
from conveyor.components.core.rollout.manifests import RENDERED_ENV
from conveyor.components.core.rollout.snapshot import Snapshot

__all__ = [
    "MODE_ANNOTATION",
    "Canary",
    "KnativeCanary",
    "StandardCanary",
    "deployment_mode",
    "last_failure",
    "overlay",
    "predictor_status",
    "promotion_landed",
    "replacing",
    "restored",
    "serves",
    "standard_canary_name",
]

MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
# KServe 0.20 renamed Serverless to Knative and RawDeployment to Standard.
_MODE_NAMES = {"Serverless": "Knative", "RawDeployment": "Standard"}
_FAILED_TRANSITIONS = ("BlockedByFailedLoad", "InvalidSpec")

Service = dict[str, Any]
Done = Callable[[Service], bool]
Wait = Callable[[str, Done], Service]  # (what is awaited, when it is done) -> the service
Annotations = dict[str, str | None]  # a merge patch of the service's annotations


class Canary(Protocol):
    """The moves of a canary in one deployment mode; every ``wait`` raises on a timeout."""

    mode: str

    def refusal(self, service: Service, predictor: dict[str, Any], analysed: bool) -> str: ...
    def stable_revision(self, service: Service) -> str: ...
    def settled(self, service: Service) -> bool: ...
    def failure(self, service: Service, stable: str, known: dict[str, Any]) -> str: ...
    def start(
        self, applied: dict[str, Any], annotations: Annotations, stable: str, percent: int,
        wait: Wait,
    ) -> str: ...  # fmt: skip
    def move(self, canary: str, percent: int, wait: Wait) -> None: ...
    def promote(self, canary: str, wait: Wait) -> Service: ...
    def restore(self, snapshot: Snapshot, wait: Wait) -> None: ...


class KnativeCanary:
    """``canaryTrafficPercent`` over Knative revisions."""

    mode = "Knative"

    def __init__(self, services: InferenceServices, name: str) -> None:
        self.services, self.name = services, name

    def refusal(self, service: Service, predictor: dict[str, Any], analysed: bool) -> str:
        return ""

    def stable_revision(self, service: Service) -> str:
        return predictor_status(service).get("latestRolledoutRevision", "")

    def settled(self, service: Service) -> bool:
        """Ready, the newest revision rolled out with all traffic, and no canary share set."""
        predictor = predictor_status(service)
        latest = predictor.get("latestCreatedRevision")
        percent = service.get("spec", {}).get("predictor", {}).get("canaryTrafficPercent", 100)
        return (
            is_ready(service)
            and percent == 100
            and predictor.get("latestReadyRevision") == latest
            and predictor.get("latestRolledoutRevision") == latest
            and _traffic(service) == {latest: 100}
        )

    def failure(self, service: Service, stable: str, known: dict[str, Any]) -> str:
        """Why the newest revision failed, or "" (KServe's Ready alone is not to be trusted)."""
        latest = predictor_status(service).get("latestCreatedRevision", "")
        if not latest or latest == stable:
            return ""
        failure = last_failure(service)
        if failure and failure != known and failure.get("modelRevisionName", latest) == latest:
            detail = failure.get("message") or failure.get("reason") or "no reason given"
            return f"revision {latest} failed to load: {first_line(detail)}"
        transition = service.get("status", {}).get("modelStatus", {}).get("transitionStatus")
        if transition in _FAILED_TRANSITIONS:
            return f"revision {latest} is {transition}"
        for kind in ("PredictorConfigurationReady", "PredictorReady"):
            condition = _condition(service, kind)
            if condition.get("status") == "False":
                detail = condition.get("message") or condition.get("reason") or "no reason given"
                return f"revision {latest}: {kind} is False ({first_line(detail)})"
        return ""

    def start(
        self, applied: dict[str, Any], annotations: Annotations, stable: str, percent: int,
        wait: Wait,
    ) -> str:  # fmt: skip
        """The new predictor, and the annotations naming its model, in one write: one revision."""

        def build(current: Service) -> dict[str, Any]:
            new = overlay(current["spec"]["predictor"], applied)
            new["canaryTrafficPercent"] = percent
            return _with_annotations(_predictor_patch(current, new), annotations)

        self.services.patch_fresh(self.name, build)
        status = wait(f"a new revision at {percent} %", _new_canary_at(stable, percent))
        return predictor_status(status)["latestCreatedRevision"]

    def move(self, canary: str, percent: int, wait: Wait) -> None:
        self._set_percent(percent)
        wait(f"{percent} % on the canary", _canary_at(canary, percent))

    def promote(self, canary: str, wait: Wait) -> Service:
        """100 % to the canary: a traffic change only, which makes no revision."""
        self._set_percent(100)
        return wait("the canary to take 100 %", _rolled_out(canary))

    def restore(self, snapshot: Snapshot, wait: Wait) -> None:
        """0 % to the canary, the stable revision verified at 100 %, the previous spec
        re-applied at 0 % until ready (Knative's latest ready revision is still the
        canary until then), then moved to 100 %."""
        stable = snapshot.stable_revision
        current = self.services.get(self.name) or {"spec": {"predictor": {}}}
        # Unless the canary was already rolled out (a failure after its promotion), where
        # 0 % would leave everything on it: the re-applied spec takes over from it instead.
        if self.stable_revision(current) == stable:
            self._set_percent(0)
            wait(f"100 % on the stable revision {stable}", lambda s: _traffic(s) == {stable: 100})

        def previous(latest: Service) -> dict[str, Any]:
            predictor = restored(latest["spec"]["predictor"], snapshot.predictor, snapshot.applied)
            return {**predictor, "canaryTrafficPercent": 0}

        # A changed template makes a new revision: wait for that one, not the status before it.
        unchanged = _without_percent(current["spec"]["predictor"]) == _without_percent(
            previous(current)
        ) and _has_annotations(current, snapshot.annotations)
        before = predictor_status(current).get("latestCreatedRevision")
        self.services.patch_fresh(
            self.name,
            lambda latest: _with_annotations(
                _predictor_patch(latest, previous(latest)), snapshot.annotations
            ),
        )
        wait(
            "the previous spec's revision to be ready",
            lambda s: (
                _latest_is_ready(s)
                and (unchanged or predictor_status(s).get("latestCreatedRevision") != before)
            ),
        )
        self._set_percent(100)
        wait("the previous spec to serve 100 %", self.settled)

    def _set_percent(self, percent: int) -> None:
        self.services.patch_fresh(
            self.name, lambda _: {"spec": {"predictor": {"canaryTrafficPercent": percent}}}
        )


class StandardCanary:
    """``spec.canary[]`` entries, a Deployment each (KServe >= 0.20, Standard mode)."""

    mode = "Standard"

    def __init__(self, services: InferenceServices, name: str) -> None:
        self.services, self.name = services, name

    def refusal(self, service: Service, predictor: dict[str, Any], analysed: bool) -> str:
        if not analysed:
            return (
                f"{self.name} runs in Standard mode, where KServe 0.20 sets a spec.canary "
                "entry's replicas from trafficPercent but routes no traffic by it yet, so a "
                "canary must prove it served requests: analysis: none is refused here"
            )
        mode = service.get("metadata", {}).get("annotations", {}).get(MODE_ANNOTATION)
        if mode not in ("Standard", "RawDeployment"):
            return (
                f"{self.name} runs in Standard mode by the cluster's default, and KServe accepts "
                f"spec.canary only where the service is annotated {MODE_ANNOTATION}: Standard; "
                "the rollout writes no annotation of its own (each one restarts the stable "
                f"Deployment), so annotate it once: kubectl annotate isvc {self.name} "
                f"{MODE_ANNOTATION}=Standard"
            )
        current_uri = service["spec"]["predictor"].get("model", {}).get("storageUri")
        if predictor["model"]["storageUri"] == current_uri:
            return (
                f"{self.name} already serves {current_uri}: in Standard mode a canary needs a "
                "new model (KServe refuses a new predictor name without one); apply other "
                "changes to spec.predictor directly"
            )
        dropped = _owned_names(service["spec"]["predictor"]) - _owned_names(predictor)
        if dropped:  # an empty env in a canary entry overrides nothing in KServe's merge
            return (
                f"{self.name} serves with {', '.join(sorted(dropped))}, which a Standard canary "
                "cannot drop (KServe merges the entry over the stable predictor): render it "
                "for the new model too (the pipeline's deploy, or conveyor rollout "
                "--model-sha256)"
            )
        label = f"isvc.{self._deployment(self._canary_name(predictor))}"
        if len(label) > 63:
            return (
                f"the canary's pod label {label!r} would be {len(label)} characters, over "
                f"Kubernetes' 63: shorten the InferenceService name by {len(label) - 63}"
            )
        return ""

    def stable_revision(self, service: Service) -> str:
        return self._deployment(service["spec"]["predictor"].get("name", ""))

    def settled(self, service: Service) -> bool:
        """Ready, with no canary entry left in the spec or the status."""
        return (
            is_ready(service)
            and not service.get("spec", {}).get("canary")
            and not service.get("status", {}).get("canaryStatuses")
        )

    def failure(self, service: Service, stable: str, known: dict[str, Any]) -> str:
        return ""  # a canary Deployment only reports ready or not: its timeout tells

    def start(
        self, applied: dict[str, Any], annotations: Annotations, stable: str, percent: int,
        wait: Wait,
    ) -> str:  # fmt: skip
        """A spec.canary entry holding only the fields Conveyor renders: KServe builds the
        canary's Deployment from the stable predictor with the entry merged over it
        (``buildCanaryPredictor``), so the stable's tuning carries over, and its webhook
        refuses autoscaling fields in an entry."""
        canary = self._canary_name(applied)

        def build(current: Service) -> dict[str, Any]:
            predictor = self._canary_predictor(current["spec"]["predictor"], applied)
            patch = {"spec": {"canary": [{"predictor": predictor, "trafficPercent": percent}]}}
            return _with_annotations(patch, annotations)

        patched = self.services.patch_fresh(self.name, build)
        if not patched["spec"].get("canary"):  # an API server whose CRD lacks it drops it
            raise ConveyorError(
                f"{self.name}: the API server dropped spec.canary, so its InferenceService CRD "
                "has none (KServe < 0.20) and no canary is possible in Standard mode: use "
                "Knative (Serverless) mode or upgrade KServe"
            )
        wait(f"canary {canary} ready at {percent} %", _standard_canary_at(canary, percent))
        return self._deployment(canary)

    def move(self, canary: str, percent: int, wait: Wait) -> None:
        def moved(current: Service) -> dict[str, Any]:
            (entry,) = current["spec"]["canary"]
            return {"spec": {"canary": [{**entry, "trafficPercent": percent}]}}

        self.services.patch_fresh(self.name, moved)
        wait(f"{percent} % on the canary", _standard_canary_at(self._entry_name(canary), percent))

    def promote(self, canary: str, wait: Wait) -> Service:
        """The canary's predictor (its name too: its Deployment stays) becomes the predictor."""

        def promoted(current: Service) -> dict[str, Any]:
            (entry,) = current["spec"]["canary"]
            fields = copy.deepcopy(entry["predictor"])
            fields["model"].pop("name", None)  # KServe forbids it in spec.predictor
            predictor = overlay(current["spec"]["predictor"], fields)
            return {"spec": {"predictor": _replacing(current, predictor), "canary": None}}

        self.services.patch_fresh(self.name, promoted)
        name = self._entry_name(canary)
        return wait(
            "the canary to become the predictor",
            lambda s: self.settled(s) and s["spec"]["predictor"].get("name") == name,
        )

    def restore(self, snapshot: Snapshot, wait: Wait) -> None:
        """The canary entry dropped and the fields Conveyor owns put back as they were."""

        def build(current: Service) -> dict[str, Any]:
            now = current["spec"]["predictor"]
            predictor = restored(now, snapshot.predictor, snapshot.applied)
            patch = {"spec": {"predictor": replacing(now, predictor), "canary": None}}
            return _with_annotations(patch, snapshot.annotations)

        self.services.patch_fresh(self.name, build)
        wait("the canary to be removed", self.settled)

    def _canary_predictor(self, current: dict[str, Any], applied: dict[str, Any]) -> dict[str, Any]:
        """The rendered fields as they are to serve (merged into the current ones: KServe's
        merge would replace a list such as env whole), and nothing else."""
        merged = overlay(current, applied)
        spec = {key: merged[key] for key in applied if key != "canaryTrafficPercent"}
        # The CRD wants a container name in a canary's model; KServe's own is kserve-container.
        model = {**spec["model"], "name": "kserve-container"}
        return {**spec, "model": model, "name": self._canary_name(applied)}

    def _canary_name(self, predictor: dict[str, Any]) -> str:
        return standard_canary_name(predictor)

    def _deployment(self, predictor_name: str) -> str:
        """KServe's Deployment (and metrics revision) name for a predictor name."""
        return (
            f"{self.name}-{predictor_name}-predictor"
            if predictor_name
            else f"{self.name}-predictor"
        )

    def _entry_name(self, deployment: str) -> str:
        return deployment.removeprefix(f"{self.name}-").removesuffix("-predictor")


def standard_canary_name(predictor: dict[str, Any]) -> str:
    """A Standard canary's predictor name: short, and derived from the predictor, so a re-run
    names (and reuses) the same Deployment and names stay within Kubernetes' 63 characters."""
    spec = _without_percent(predictor)
    model = {key: value for key, value in spec.get("model", {}).items() if value != []}
    spec = {**spec, "model": model}  # an empty env renders nothing: the same name
    return "c" + hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:7]


# -- reading an InferenceService ---------------------------------------------------------


def predictor_status(service: Service) -> dict[str, Any]:
    return service.get("status", {}).get("components", {}).get("predictor", {})


def is_ready(service: Service) -> bool:
    return _condition(service, "Ready").get("status") == "True"


def last_failure(service: Service) -> dict[str, Any]:
    return service.get("status", {}).get("modelStatus", {}).get("lastFailureInfo") or {}


def deployment_mode(service: Service) -> str:
    """Knative, Standard or ModelMesh, under KServe's names before and since 0.20."""
    annotations = service.get("metadata", {}).get("annotations", {})
    mode = service.get("status", {}).get("deploymentMode") or annotations.get(MODE_ANNOTATION)
    if not mode:  # an older KServe: Knative services report a traffic split
        mode = "Knative" if "traffic" in predictor_status(service) else "Standard"
    return _MODE_NAMES.get(mode, mode)


def serves(service: Service, predictor: dict[str, Any], canary: Canary) -> bool:
    """Whether the service runs this predictor with all traffic and no canary in flight
    (fields KServe's webhooks add, such as defaults, do not count against it)."""
    return _contains(service["spec"]["predictor"], _without_percent(predictor)) and canary.settled(
        service
    )


def _condition(service: Service, kind: str) -> dict[str, Any]:
    conditions = service.get("status", {}).get("conditions", [])
    return next((c for c in conditions if c.get("type") == kind), {})


def _traffic(service: Service) -> dict[str, int]:
    """Percent by revision, entries with 0 % left out."""
    entries = predictor_status(service).get("traffic", [])
    return {e["revisionName"]: e["percent"] for e in entries if e.get("percent")}


def _canary_at(canary: str, percent: int) -> Done:
    """The canary is the latest ready revision and its route entry holds ``percent``."""

    def done(service: Service) -> bool:
        predictor = predictor_status(service)
        latest = [e for e in predictor.get("traffic", []) if e.get("latestRevision")]
        return (
            predictor.get("latestCreatedRevision") == canary
            and predictor.get("latestReadyRevision") == canary
            and [(e["revisionName"], e.get("percent", 0)) for e in latest] == [(canary, percent)]
        )

    return done


def _new_canary_at(stable: str, percent: int) -> Done:
    def done(service: Service) -> bool:
        canary = predictor_status(service).get("latestCreatedRevision", "")
        return canary != stable and _canary_at(canary, percent)(service)

    return done


def _rolled_out(canary: str) -> Done:
    def done(service: Service) -> bool:
        rolled_out = predictor_status(service).get("latestRolledoutRevision")
        return rolled_out == canary and _traffic(service) == {canary: 100}

    return done


def _latest_is_ready(service: Service) -> bool:
    predictor = predictor_status(service)
    return predictor.get("latestReadyRevision") == predictor.get("latestCreatedRevision")


def _standard_canary_at(name: str, percent: int) -> Done:
    def done(service: Service) -> bool:
        statuses = service.get("status", {}).get("canaryStatuses") or []
        return [(s["name"], s["ready"], s["trafficPercent"]) for s in statuses] == [
            (name, True, percent)
        ]

    return done


def _without_percent(predictor: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in predictor.items() if key != "canaryTrafficPercent"}


def _contains(actual: Any, wanted: Any) -> bool:
    """Whether ``actual`` has everything ``wanted`` has (a list: each wanted item, in any
    order, such as env entries among other tools' own; an empty one: nothing)."""
    if isinstance(wanted, dict):
        return isinstance(actual, dict) and all(
            value == [] or (key in actual and _contains(actual[key], value))
            for key, value in wanted.items()
        )
    if isinstance(wanted, list) and isinstance(actual, list):
        return all(any(_contains(item, want) for item in actual) for want in wanted)
    return actual == wanted


def promotion_landed(service: Service, applied: dict[str, Any]) -> bool:
    """Whether the write promoting a canary of ``applied`` reached the spec (in either mode:
    the predictor holds it with no canary share and no canary entry left)."""
    spec = service.get("spec", {})
    predictor = spec.get("predictor", {})
    return (
        _contains(predictor, applied)
        and predictor.get("canaryTrafficPercent", 100) == 100
        and not spec.get("canary")
    )


def _has_annotations(service: Service, annotations: Annotations) -> bool:
    present = service.get("metadata", {}).get("annotations") or {}
    return all(present.get(key) == value for key, value in annotations.items())


# -- the fields Conveyor owns ---------------------------------------------------------------


def overlay(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``top`` laid over it: objects merge key by key, ``env`` lists by name
    (the variables Conveyor renders replaced as a set: ``top``'s, or none), anything else is
    replaced."""
    return copy.deepcopy(_overlay(base, top))


def _overlay(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``overlay`` sharing the inputs' values (the caller copies the result once)."""
    result = dict(base)
    for key, value in top.items():
        if key == "env" and isinstance(value, list):
            names = {entry["name"] for entry in value}
            kept = [e for e in base.get(key) or [] if e["name"] not in names and not _owned(e)]
            result[key] = kept + value
            if not result[key]:
                result.pop(key)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            result[key] = _overlay(base[key], value)
        else:
            result[key] = value
    return result


def restored(
    current: dict[str, Any], before: dict[str, Any], applied: dict[str, Any]
) -> dict[str, Any]:
    """``current`` with each field ``applied`` sets put back as ``before`` had it (dropped
    where it had none); every other field stays as it is now."""
    return copy.deepcopy(_restored(current, before, applied))


def _restored(
    current: dict[str, Any], before: dict[str, Any], applied: dict[str, Any]
) -> dict[str, Any]:
    """``restored`` sharing the inputs' values (the caller copies the result once)."""
    result = dict(current)
    for key, value in applied.items():
        if key == "env" and isinstance(value, list):
            env = _restored_env(current.get(key) or [], before.get(key) or [], value)
            result[key] = env
            if not env:
                result.pop(key)
        elif all(isinstance(d.get(key), dict) for d in (current, before)) and isinstance(
            value, dict
        ):
            result[key] = _restored(current[key], before[key], value)
        elif key in before:
            result[key] = before[key]
        else:
            result.pop(key, None)
    return result


def _restored_env(
    current: list[dict[str, Any]], before: list[dict[str, Any]], applied: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Other tools' entries as they are now, then Conveyor's as they were before."""
    names = {entry["name"] for entry in applied}

    def ours(entry: dict[str, Any]) -> bool:
        return entry["name"] in names or _owned(entry)

    return [e for e in current if not ours(e)] + [e for e in before if ours(e)]


def _owned_names(predictor: dict[str, Any]) -> set[str]:
    """The names of the variables Conveyor renders that ``predictor`` sets."""
    return {e["name"] for e in predictor.get("model", {}).get("env") or [] if _owned(e)}


def _owned(entry: dict[str, Any]) -> bool:
    return entry.get("name") in RENDERED_ENV


# -- building merge patches ---------------------------------------------------------------


def _predictor_patch(current: Service, predictor: dict[str, Any]) -> dict[str, Any]:
    return {"spec": {"predictor": _replacing(current, predictor)}}


def _with_annotations(patch: dict[str, Any], annotations: Annotations) -> dict[str, Any]:
    """``patch`` also setting (None: removing) the service's ``annotations``."""
    if annotations:
        patch.setdefault("metadata", {})["annotations"] = dict(annotations)
    return patch


def _replacing(current: Service, predictor: dict[str, Any]) -> dict[str, Any]:
    """The merge patch of ``spec.predictor`` that makes it exactly ``predictor``."""
    return replacing(current["spec"]["predictor"], predictor)


def replacing(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A merge patch turning ``old`` into ``new`` (null drops a key)."""
    patch: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(old.get(key), dict):
            patch[key] = replacing(old[key], value)
        else:
            patch[key] = value
    return patch
