"""A progressive canary rollout of a KServe InferenceService (Serverless/Knative mode).

The new model goes out at ``canaryTrafficPercent = steps[0]``; after each step the
canary is analysed (``components.core.analysis``); it is promoted at 100 % when
every step passes, and rolled back (0 %, then the previous spec re-applied) when
one fails, when it never becomes ready, at the deadline, or on SIGTERM (how KFP
cancels a run). A lock annotation keeps two runs off one service, and a snapshot
annotation lets a re-run after a crash roll the half-done rollout back first.
"""

from __future__ import annotations

import contextlib
import copy
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml

from components.core.analysis import Analysis, AnalysisPolicy, analyse
from components.core.errors import ConveyorError
from components.core.files import write_text_atomically
from components.core.kube import InferenceServices, api_client
from components.core.manifests import (
    ServingSpec,
    render_inference_service,
    validate_inference_service,
)

__all__ = [
    "LOCK_ANNOTATION",
    "SNAPSHOT_ANNOTATION",
    "Rollout",
    "RolloutFailed",
    "RolloutPlan",
    "RolloutResult",
    "StepRecord",
    "deploy_model",
    "describe_plan",
    "parse_steps",
    "render_report",
]

LOCK_ANNOTATION = "conveyor/rollout-lock"
SNAPSHOT_ANNOTATION = "conveyor/rollout-snapshot"
MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
_FAILED_TRANSITIONS = ("BlockedByFailedLoad", "InvalidSpec")
Decision = Literal["created", "promoted", "rolled_back", "failed"]


@dataclass(frozen=True)
class RolloutPlan:
    """How the canary advances.

    Attributes:
        steps: Canary traffic percentages in order, each 1-99, increasing.
        interval_s: Seconds the canary serves at each step before it is analysed.
        ready_timeout_s: Seconds a new revision (or a traffic change) may take to be ready.
        deadline_s: Seconds the whole rollout may take before it is rolled back.
        failure_budget: Failed analyses tolerated (each re-analysed after another interval)
            before the rollout is rolled back.
        poll_s: Seconds between reads of the InferenceService's status.
    """

    steps: tuple[int, ...] = (10, 50)
    interval_s: float = 60.0
    ready_timeout_s: float = 600.0
    deadline_s: float = 3600.0
    failure_budget: int = 0
    poll_s: float = 2.0

    def __post_init__(self) -> None:
        steps = self.steps
        if not steps or any(not isinstance(s, int) or not 1 <= s <= 99 for s in steps):
            raise ConveyorError(f"canary steps {list(steps)} must be whole percentages 1-99")
        if any(later <= earlier for earlier, later in zip(steps, steps[1:], strict=False)):
            raise ConveyorError(f"canary steps {list(steps)} must increase")
        for name in ("interval_s", "ready_timeout_s", "deadline_s", "poll_s"):
            if getattr(self, name) <= 0:
                raise ConveyorError(f"{name} must be positive, not {getattr(self, name)}")
        if self.failure_budget < 0:
            raise ConveyorError(f"failure_budget must be 0 or more, not {self.failure_budget}")


def parse_steps(text: str) -> tuple[int, ...]:
    """``"10,50"`` as ``(10, 50)``."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ConveyorError(
            f"canary steps {text!r} must be comma-separated percentages, such as 10,50"
        ) from None


@dataclass(frozen=True)
class StepRecord:
    """One traffic step: its percentage and the analysis of the canary there."""

    percent: int
    analysis: Analysis


@dataclass
class RolloutResult:
    """What the rollout decided and everything it measured on the way."""

    decision: Decision
    reason: str
    name: str
    namespace: str
    model_uri: str
    mode: str = "Serverless"
    stable_revision: str = ""
    canary_revision: str = ""
    url: str = ""
    steps: list[StepRecord] = field(default_factory=list)
    snapshot: dict[str, Any] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """Every measured value, named ``step<percent>_<revision role>_<measure>``."""
        values: dict[str, float] = {}
        for step in self.steps:
            for role in ("canary", "stable"):
                measured = getattr(step.analysis, role)
                for key in ("requests", "success_rate", "latency_p99"):
                    value = getattr(measured, key) if measured else None
                    if value is not None:
                        values[f"step{step.percent}_{role}_{key}"] = value
        return values


class RolloutFailed(ConveyorError):
    """The rollout ended rolled back or failed; ``result`` says why and what was measured."""

    def __init__(self, result: RolloutResult) -> None:
        super().__init__(f"{result.decision}: {result.reason}")
        self.result = result


class _Abort(Exception):
    """The canary must be rolled back, for the reason given."""


class _Cancelled(BaseException):
    """SIGTERM arrived: KFP is cancelling the run. Not an Exception, so nothing swallows it."""


class Rollout:
    """Rolls one InferenceService manifest out as a canary, or creates it on first deploy."""

    def __init__(
        self,
        services: InferenceServices,
        manifest: dict[str, Any],
        plan: RolloutPlan,
        policy: AnalysisPolicy,
        run_id: str,
        progress: Callable[[str], None] = print,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.services, self.plan, self.policy = services, plan, policy
        self.manifest, self.run_id, self.progress = manifest, run_id, progress
        self.clock, self.sleep = clock, sleep
        self.name = manifest["metadata"]["name"]
        model_uri = manifest["spec"]["predictor"]["model"]["storageUri"]
        self.result = RolloutResult("failed", "", self.name, services.namespace, model_uri)
        self._deadline = 0.0

    def run(self) -> RolloutResult:
        """Creates or rolls out; returns the result when created or promoted, else raises
        RolloutFailed carrying it."""
        self._deadline = self.clock() + self.plan.deadline_s
        try:
            current = self.services.get(self.name)
            if current is None:
                return self._create()
            self._check_mode(current)
            if self._already_serving(current):
                return self.result
            current = self._take_lock(current)
        except RolloutFailed:
            raise
        except (ConveyorError, _Abort) as error:  # no canary was started: nothing to roll back
            self._fail(str(error))
        try:
            with _sigterm_cancels():
                return self._advance(current)
        except _Abort as abort:
            self._roll_back(str(abort))
        except _Cancelled:
            self._roll_back("the run was cancelled (SIGTERM)")
        except ConveyorError as error:
            self._roll_back(str(error))
        raise RolloutFailed(self.result)

    # -- first deploy -------------------------------------------------------------------

    def _create(self) -> RolloutResult:
        body = copy.deepcopy(self.manifest)
        body["spec"]["predictor"].pop("canaryTrafficPercent", None)  # ignored on create
        self.progress(f"creating InferenceService {self.name} in {self.services.namespace}")
        self.services.create(body)
        try:
            status = self._wait("the new InferenceService to be ready", _is_ready)
        except _Abort as abort:
            self._fail(f"{abort}; the InferenceService was left in place for inspection")
        self._record(status, "created", "first deploy: the model serves 100 % of traffic")
        self.result.stable_revision = self.result.canary_revision
        return self.result

    # -- preflight ----------------------------------------------------------------------

    def _already_serving(self, current: dict[str, Any]) -> bool:
        """A repeat of a finished rollout (a KFP retry) changes nothing and succeeds."""
        wanted = _without_percent(self.manifest["spec"]["predictor"])
        serving = _without_percent(current["spec"]["predictor"])
        annotations = current["metadata"].get("annotations", {})
        if wanted != serving or LOCK_ANNOTATION in annotations or not _settled(current):
            return False
        self._record(current, "promoted", "already serving this model at 100 %: nothing to do")
        self.result.stable_revision = self.result.canary_revision
        return True

    def _check_mode(self, current: dict[str, Any]) -> None:
        mode = _deployment_mode(current)
        self.result.mode = mode
        if mode == "Serverless":
            return
        if mode == "ModelMesh":
            self._fail(f"{self.name} runs in ModelMesh mode, which has no canary traffic split")
        try:
            has_canary = self.services.crd_has_canary()
        except ConveyorError:  # reading CRDs is cluster-scoped; the deployer's Role lacks it
            has_canary = True
        self._fail(
            f"{self.name} runs in {mode} mode, where KServe ignores canaryTrafficPercent; "
            + (
                "this release drives canaries in Serverless mode only (spec.canary[] of "
                "KServe >= 0.20 is not supported yet): deploy it in Serverless mode"
                if has_canary
                else "this cluster's InferenceService CRD has no spec.canary (KServe < 0.20), "
                "so no canary is possible: use Serverless mode or upgrade KServe"
            )
        )

    def _take_lock(self, current: dict[str, Any]) -> dict[str, Any]:
        self._refuse_foreign_lock(current)
        lock = _annotation_json(current, LOCK_ANNOTATION)
        if lock:
            current = self._recover(current, lock["run"])
        if not _is_ready(current):
            self._fail(f"{self.name} is not Ready ({_not_ready_reason(current)}); fix it first")
        stable = _predictor_status(current).get("latestRolledoutRevision", "")
        self.result.stable_revision = stable
        return self.services.patch_fresh(self.name, self._lock_patch)

    def _lock_patch(self, current: dict[str, Any]) -> dict[str, Any]:
        """Lock and snapshot in one resourceVersion-checked write, so only one run wins."""
        self._refuse_foreign_lock(current)
        snapshot = {
            "predictor": current["spec"]["predictor"],
            "stable_revision": self.result.stable_revision,
        }
        self.result.snapshot = snapshot
        expires = time.time() + self.plan.deadline_s + self.plan.ready_timeout_s
        return _annotations_patch(
            {
                LOCK_ANNOTATION: json.dumps({"run": self.run_id, "expires": expires}),
                SNAPSHOT_ANNOTATION: json.dumps(snapshot),
            }
        )

    def _refuse_foreign_lock(self, current: dict[str, Any]) -> None:
        lock = _annotation_json(current, LOCK_ANNOTATION)
        if lock and lock["run"] != self.run_id and lock["expires"] > time.time():
            until = datetime.fromtimestamp(lock["expires"], UTC).isoformat(timespec="seconds")
            self._fail(
                f"{self.name} is being rolled out by run {lock['run']} (lock held until {until}); "
                "wait for it to finish"
            )

    def _recover(self, current: dict[str, Any], run: str) -> dict[str, Any]:
        """Rolls an unfinished rollout (a crash, or an expired lease) back to its snapshot."""
        snapshot = _annotation_json(current, SNAPSHOT_ANNOTATION)
        self.progress(f"found an unfinished rollout by run {run}: rolling it back first")
        self.result.stable_revision = snapshot["stable_revision"]
        self._restore(snapshot["predictor"])
        return self.services.get(self.name) or current

    # -- canary steps -------------------------------------------------------------------

    def _advance(self, current: dict[str, Any]) -> RolloutResult:
        before = _predictor_status(current).get("latestCreatedRevision", "")
        failures_left = self.plan.failure_budget
        for index, percent in enumerate(self.plan.steps):
            if index == 0:
                self._apply_new_model(percent)
                status = self._wait(f"a new revision at {percent} %", _canary_at(before, percent))
                self.result.canary_revision = _predictor_status(status)["latestCreatedRevision"]
            else:
                self._set_percent(percent)
                self._wait(f"{percent} % on the canary", _canary_at(before, percent))
            failures_left = self._analyse_step(percent, failures_left)
        self._set_percent(100)
        status = self._wait("the canary to take 100 %", _rolled_out(self.result.canary_revision))
        self._release_lock()
        self._record(status, "promoted", self._promoted_reason())
        return self.result

    def _analyse_step(self, percent: int, failures_left: int) -> int:
        while True:
            self.progress(f"canary at {percent} %: waiting {self.plan.interval_s:g} s to analyse")
            self._sleep_until_deadline(self.plan.interval_s)
            analysis = analyse(
                self.policy,
                self.services.namespace,
                self.result.canary_revision,
                self.result.stable_revision,
            )
            self.result.steps.append(StepRecord(percent, analysis))
            self.progress(f"analysis at {percent} %: {analysis.verdict}: {analysis.reason}")
            verdict = analysis.verdict
            if verdict == "no_data" and self.policy.on_no_data != "fail":
                if self.policy.on_no_data == "pass":
                    return failures_left
                continue  # wait: another interval, until the deadline
            if verdict in ("pass", "skipped"):
                return failures_left
            if failures_left == 0:
                raise _Abort(f"analysis at {percent} %: {analysis.reason}")
            failures_left -= 1

    def _promoted_reason(self) -> str:
        analysed = [step for step in self.result.steps if step.analysis.verdict == "pass"]
        steps = ", ".join(f"{s} %" for s in self.plan.steps)
        if not analysed:
            return f"promoted after steps {steps} with no analysis (no Prometheus URL)"
        return f"every step passed analysis ({steps}); last: {analysed[-1].analysis.reason}"

    # -- rollback -----------------------------------------------------------------------

    def _roll_back(self, reason: str) -> None:
        self.progress(f"rolling back {self.name}: {reason}")
        snapshot = _annotation_json(self.services.get(self.name) or {}, SNAPSHOT_ANNOTATION)
        try:
            with _sigterm_ignored():
                self._restore(snapshot["predictor"])
        except (_Abort, ConveyorError) as error:
            self.result.decision, self.result.reason = "failed", f"{reason}; rollback: {error}"
            return
        self.result.decision, self.result.reason = "rolled_back", reason

    def _restore(self, predictor: dict[str, Any]) -> None:
        """0 % to the canary, stable verified at 100 %, then the previous spec re-applied."""
        stable = self.result.stable_revision
        self._deadline = max(self._deadline, self.clock() + self.plan.ready_timeout_s * 2)
        self._set_percent(0)
        self._wait(f"100 % on the stable revision {stable}", _all_traffic_on(stable), False)
        previous = {**copy.deepcopy(predictor), "canaryTrafficPercent": 100}
        self.services.patch_fresh(self.name, lambda current: _predictor_patch(current, previous))
        self._wait("the previous spec to serve 100 %", _settled, False)
        self._release_lock()

    # -- writes and waits ---------------------------------------------------------------

    def _apply_new_model(self, percent: int) -> None:
        predictor = {**self.manifest["spec"]["predictor"], "canaryTrafficPercent": percent}
        annotations = self.manifest["metadata"].get("annotations", {})
        self.progress(f"applying {self.result.model_uri} as a canary at {percent} %")
        self.services.patch_fresh(
            self.name,
            lambda current: {
                **_predictor_patch(current, predictor),
                **_annotations_patch(annotations),
            },
        )

    def _set_percent(self, percent: int) -> None:
        self.progress(f"canaryTrafficPercent -> {percent}")
        self.services.patch_fresh(
            self.name, lambda _: {"spec": {"predictor": {"canaryTrafficPercent": percent}}}
        )

    def _release_lock(self) -> None:
        self.services.patch_fresh(
            self.name,
            lambda _: _annotations_patch({LOCK_ANNOTATION: None, SNAPSHOT_ANNOTATION: None}),
        )

    def _wait(
        self, what: str, done: Callable[[dict[str, Any]], bool], fail_fast: bool = True
    ) -> dict[str, Any]:
        """Polls until ``done`` holds; with ``fail_fast``, stops when the new revision failed."""
        started = self.clock()
        while True:
            current = self.services.get(self.name) or {}
            failure = fail_fast and _revision_failure(current, self.result.stable_revision)
            if failure:
                raise _Abort(failure)
            if done(current):
                return current
            if self.clock() - started > self.plan.ready_timeout_s:
                raise _Abort(f"timed out after {self.plan.ready_timeout_s:g} s waiting for {what}")
            self._sleep_until_deadline(self.plan.poll_s)

    def _sleep_until_deadline(self, seconds: float) -> None:
        if self.clock() + seconds > self._deadline:
            raise _Abort(f"the rollout passed its deadline of {self.plan.deadline_s:g} s")
        self.sleep(seconds)

    def _record(self, status: dict[str, Any], decision: Decision, reason: str) -> None:
        predictor = _predictor_status(status)
        self.result.decision, self.result.reason = decision, reason
        self.result.canary_revision = predictor.get("latestReadyRevision", "")
        self.result.url = status.get("status", {}).get("url", "")
        self.progress(f"{decision}: {reason}")

    def _fail(self, reason: str) -> None:
        self.result.decision, self.result.reason = "failed", reason
        raise RolloutFailed(self.result)


# -- reading an InferenceService ---------------------------------------------------------


def _predictor_status(service: dict[str, Any]) -> dict[str, Any]:
    return service.get("status", {}).get("components", {}).get("predictor", {})


def _condition(service: dict[str, Any], kind: str) -> dict[str, Any]:
    conditions = service.get("status", {}).get("conditions", [])
    return next((c for c in conditions if c.get("type") == kind), {})


def _is_ready(service: dict[str, Any]) -> bool:
    return _condition(service, "Ready").get("status") == "True"


def _not_ready_reason(service: dict[str, Any]) -> str:
    ready = _condition(service, "Ready")
    return ready.get("message") or ready.get("reason") or "no Ready condition yet"


def _traffic(service: dict[str, Any]) -> dict[str, int]:
    """Percent by revision, entries with 0 % left out."""
    entries = _predictor_status(service).get("traffic", [])
    return {e["revisionName"]: e["percent"] for e in entries if e.get("percent")}


def _canary_at(before: str, percent: int) -> Callable[[dict[str, Any]], bool]:
    def done(service: dict[str, Any]) -> bool:
        predictor = _predictor_status(service)
        canary = predictor.get("latestCreatedRevision", "")
        latest = [e for e in predictor.get("traffic", []) if e.get("latestRevision")]
        return (
            canary != before
            and predictor.get("latestReadyRevision") == canary
            and [(e["revisionName"], e.get("percent", 0)) for e in latest] == [(canary, percent)]
        )

    return done


def _rolled_out(canary: str) -> Callable[[dict[str, Any]], bool]:
    def done(service: dict[str, Any]) -> bool:
        rolled_out = _predictor_status(service).get("latestRolledoutRevision")
        return rolled_out == canary and _traffic(service) == {canary: 100}

    return done


def _all_traffic_on(revision: str) -> Callable[[dict[str, Any]], bool]:
    return lambda service: _traffic(service) == {revision: 100}


def _settled(service: dict[str, Any]) -> bool:
    predictor = _predictor_status(service)
    latest = predictor.get("latestCreatedRevision")
    return (
        _is_ready(service)
        and predictor.get("latestReadyRevision") == latest
        and _traffic(service) == {latest: 100}
    )


def _revision_failure(service: dict[str, Any], stable: str) -> str:
    """Why the newest revision failed, or "" (KServe's Ready alone is not to be trusted)."""
    latest = _predictor_status(service).get("latestCreatedRevision", "")
    if not latest or latest == stable:
        return ""
    model_status = service.get("status", {}).get("modelStatus", {})
    failure = model_status.get("lastFailureInfo") or {}
    if failure and failure.get("modelRevisionName", latest) == latest:
        return f"revision {latest} failed to load: {failure.get('message') or failure['reason']}"
    if model_status.get("transitionStatus") in _FAILED_TRANSITIONS:
        return f"revision {latest} is {model_status['transitionStatus']}"
    for kind in ("PredictorConfigurationReady", "PredictorReady"):
        condition = _condition(service, kind)
        if condition.get("status") == "False":
            return f"revision {latest}: {kind} is False ({condition.get('message', '')})"
    return ""


def _without_percent(predictor: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in predictor.items() if key != "canaryTrafficPercent"}


def _deployment_mode(service: dict[str, Any]) -> str:
    mode = service.get("status", {}).get("deploymentMode") or service.get("metadata", {}).get(
        "annotations", {}
    ).get(MODE_ANNOTATION, "Serverless")
    return "RawDeployment" if mode == "Standard" else mode


def _annotation_json(service: dict[str, Any], key: str) -> dict[str, Any] | None:
    text = service.get("metadata", {}).get("annotations", {}).get(key)
    return json.loads(text) if text else None


# -- building merge patches ---------------------------------------------------------------


def _annotations_patch(annotations: dict[str, str | None]) -> dict[str, Any]:
    return {"metadata": {"annotations": dict(annotations)}}


def _predictor_patch(current: dict[str, Any], predictor: dict[str, Any]) -> dict[str, Any]:
    """A merge patch that makes ``spec.predictor`` exactly ``predictor`` (null drops a key)."""
    return {"spec": {"predictor": _replacing(current["spec"]["predictor"], predictor)}}


def _replacing(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    patch: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(old.get(key), dict):
            patch[key] = _replacing(old[key], value)
        else:
            patch[key] = value
    return patch


# -- signals ------------------------------------------------------------------------------


@contextlib.contextmanager
def _sigterm_cancels() -> Iterator[None]:
    """SIGTERM raises _Cancelled in the rollout (main thread only: elsewhere it is KFP's)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def cancel(signum: int, frame: Any) -> None:
        raise _Cancelled()

    previous = signal.signal(signal.SIGTERM, cancel)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _sigterm_ignored() -> Iterator[None]:
    """A second SIGTERM during the rollback must not leave it half done."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- the report ---------------------------------------------------------------------------


def render_report(result: RolloutResult) -> str:
    """The rollout as Markdown for the KFP UI: decision, why, revisions and every measure."""
    lines = [
        f"# Rollout of `{result.name}`: **{result.decision.replace('_', ' ')}**",
        "",
        result.reason,
        "",
        f"- namespace: `{result.namespace}`, mode: {result.mode}",
        f"- model: `{result.model_uri}`",
        f"- stable revision: `{result.stable_revision or '-'}`",
        f"- canary revision: `{result.canary_revision or '-'}`",
        f"- URL: {result.url or '-'}",
    ]
    if result.steps:
        lines += [
            "",
            "| step | verdict | canary requests | canary success | canary p99 | "
            "stable success | stable p99 | reason |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        lines += [_step_row(step) for step in result.steps]
    if result.snapshot:
        lines += [
            "",
            "## The spec before this rollout (what a rollback re-applies)",
            "",
            "```yaml",
            yaml.safe_dump(result.snapshot, sort_keys=False).rstrip(),
            "```",
        ]
    return "\n".join(lines) + "\n"


def _step_row(step: StepRecord) -> str:
    canary, stable = step.analysis.canary, step.analysis.stable

    def show(measured: Any, key: str, fmt: str) -> str:
        value = getattr(measured, key) if measured else None
        return "-" if value is None else format(value, fmt)

    cells = [
        f"{step.percent} %",
        step.analysis.verdict,
        show(canary, "requests", ".0f"),
        show(canary, "success_rate", ".2%"),
        show(canary, "latency_p99", ".3f"),
        show(stable, "success_rate", ".2%"),
        show(stable, "latency_p99", ".3f"),
        step.analysis.reason,
    ]
    return "| " + " | ".join(cells) + " |"


# -- entry points -------------------------------------------------------------------------


def deploy_model(
    spec: ServingSpec,
    plan: RolloutPlan,
    policy: AnalysisPolicy,
    run_id: str,
    report_path: Path,
    kubeconfig: str = "",
    progress: Callable[[str], None] = print,
) -> RolloutResult:
    """Rolls the model out and writes the Markdown report, whatever the decision; raises
    RolloutFailed (after the report is written) unless the model was created or promoted."""
    manifest = render_inference_service(spec)
    validate_inference_service(manifest)
    services = InferenceServices(api_client(kubeconfig), spec.namespace)
    try:
        result = Rollout(services, manifest, plan, policy, run_id, progress).run()
    except RolloutFailed as failed:
        write_text_atomically(report_path, render_report(failed.result))
        raise
    write_text_atomically(report_path, render_report(result))
    return result


def describe_plan(manifest: dict[str, Any], plan: RolloutPlan, policy: AnalysisPolicy) -> str:
    """What a rollout of ``manifest`` would do, step by step, touching nothing."""
    name = manifest["metadata"]["name"]
    steps = [f"{percent} %" for percent in plan.steps]
    lines = [
        "# InferenceService to apply",
        yaml.safe_dump(manifest, sort_keys=False).rstrip(),
        "# Plan",
        f"- if {name} does not exist: create it and wait until it is Ready (decision: created)",
        f"- else: lock it, snapshot its spec, and send the new model {', then '.join(steps)} "
        f"of traffic, analysing the canary {plan.interval_s:g} s after each step",
        "- promote at 100 % when every step passes; otherwise set 0 %, check the stable "
        "revision holds 100 %, and re-apply the snapshot",
        f"- deadline {plan.deadline_s:g} s; readiness timeout {plan.ready_timeout_s:g} s; "
        f"failure budget {plan.failure_budget}",
    ]
    if policy.prometheus_url:
        lines.append(
            f"- analysis against {policy.prometheus_url}: success rate >= "
            f"{policy.min_success_rate:.2%}, p99 <= {policy.max_latency_p99_s} s, "
            f"at least {policy.min_requests} requests per {policy.window}, "
            f"no data: {policy.on_no_data}"
        )
        lines += [f"  - {key}: {query}" for key, query in policy.queries.items()]
    else:
        lines.append("- no Prometheus URL: steps advance without analysis")
    return "\n".join(lines) + "\n"
