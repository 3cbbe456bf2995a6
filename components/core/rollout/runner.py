"""A progressive canary rollout of a KServe InferenceService.

The new model goes out at the first of the plan's steps; at each step the canary is judged
against the stable revision every interval (``rollout.analysis``), over all its
traffic so far, until the step passes; it is promoted when every step passes, and rolled
back when one fails, when it never becomes ready, at the deadline, or on SIGTERM (how KFP
cancels a run). How a canary moves depends on the service's deployment mode
(``rollout.canary``).

Nothing of the rollout's own lives on the InferenceService, whose every annotation KServe
copies into the Knative revision template (so each write there makes a revision): a Lease
(``rollout.lease``) keeps two runs off one service and records how the last
rollout ended, and a ConfigMap (``rollout.snapshot``) keeps the spec a rollback
restores. The annotations naming the model change only in the write that starts the
canary, so a promotion makes exactly one new revision (the canary's) and a rollback two
(the canary's, then the restored spec's). A run that stopped half-way, or whose rollback
could not finish, is settled by the next run (or ``conveyor rollout --recover``) first.

The canary is judged by the policy's metrics that apply to the model's task
(``CanaryPolicy.for_task``): ``deploy_model`` reads the task from the model card
(``model.json``) at the storage URI KServe pulls, a card without one (written before
regression models were) being a classifier's; a card it cannot read is taken for a
classifier's too, which the report says, and a regressor taken for a classifier is never
promoted by it: its ``predicted_class`` and ``score`` have no series, so they stay
inconclusive until the step fails.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from conveyor.components.core.errors import ConveyorError, first_line
from conveyor.components.core.files import write_text_atomically
from conveyor.components.core.markdown import table
from conveyor.components.core.rollout.analysis import (
    AnalysisRun,
    Decision,
    Judgement,
    analyse,
    render_table,
)
from conveyor.components.core.rollout.canary import (
    Canary,
    KnativeCanary,
    StandardCanary,
    deployment_mode,
    is_ready,
    last_failure,
    promotion_landed,
    serves,
)
from conveyor.components.core.rollout.events import ServiceEvents
from conveyor.components.core.rollout.kube import (
    Conflict,
    InferenceServices,
    Objects,
    Unavailable,
    api_client,
)
from conveyor.components.core.rollout.lease import (
    LeaseLost,
    LeaseRecord,
    RolloutLease,
    State,
    lease_name,
)
from conveyor.components.core.rollout.manifests import (
    ServingSpec,
    render_inference_service,
    validate_inference_service,
)
from conveyor.components.core.rollout.policy import (
    CLASSIFICATION,
    DEFAULT_POLICY,
    TASKS,
    CanaryPolicy,
    describe_policy,
)
from conveyor.components.core.rollout.prometheus import Prometheus, Window, measure
from conveyor.components.core.rollout.settings import SETTING_NAMES, setting
from conveyor.components.core.rollout.snapshot import Snapshot, load_snapshot, save_snapshot

__all__ = [
    "LEGACY_ANNOTATIONS",
    "Look",
    "Rollout",
    "RolloutFailed",
    "RolloutPlan",
    "RolloutResult",
    "RolloutSettings",
    "deploy_model",
    "describe_plan",
    "model_task",
    "parse_steps",
    "render_report",
    "require_prometheus",
]

# What earlier releases kept on the service; cleared in the write that starts a canary (a
# rollback puts the model's back, never the lock's).
LEGACY_LOCK_ANNOTATIONS = ("conveyor/rollout-lock", "conveyor/rollout-snapshot")
LEGACY_ANNOTATIONS = ("conveyor/model-name", "conveyor/model-version", *LEGACY_LOCK_ANNOTATIONS)
# "unchanged": a recovery (``Rollout.recover``) that found nothing left to do.
RolloutDecision = Literal["created", "promoted", "rolled_back", "failed", "unchanged"]
# How long the model card may take to read before the task is taken for classification.
CARD_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class RolloutPlan:
    """How the canary advances.

    Attributes:
        steps: Canary traffic percentages in order, each 1-99, increasing.
        interval_s: Seconds between looks at the canary; its first interval is warm-up.
        ready_timeout_s: Seconds a new revision (or a traffic change) may take to be ready.
        deadline_s: Seconds the whole rollout may take before it is rolled back.
        poll_s: Seconds between reads of the InferenceService's status.
    """

    steps: tuple[int, ...] = (10, 50)
    interval_s: float = 60.0
    ready_timeout_s: float = 600.0
    deadline_s: float = 3600.0
    poll_s: float = 2.0

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConveyorError("\n".join(problems))

    def problems(self) -> list[str]:
        """Every way the plan is out of range, a line each, named by its parameter."""
        steps, problems = self.steps, []
        if not steps or any(not isinstance(s, int) or not 1 <= s <= 99 for s in steps):
            problems.append(f"canary steps {list(steps)} must be whole percentages 1-99")
        elif any(later <= earlier for earlier, later in zip(steps, steps[1:], strict=False)):
            problems.append(f"canary steps {list(steps)} must increase")
        for name, parameter in _PLAN_PARAMETERS.items():
            seconds = getattr(self, name)
            if not _positive_seconds(seconds):
                problems.append(f"{parameter} must be a positive number of seconds, not {seconds}")
        return problems


def _positive_seconds(seconds: Any) -> bool:
    # NaN compares false with everything, so `seconds <= 0` alone would let it through; an
    # int past any float (10**400) cannot be one.
    try:
        return math.isfinite(seconds) and seconds > 0
    except (OverflowError, TypeError):
        return False


# RolloutPlan's fields -> the parameters (and flags) that set them.
_PLAN_PARAMETERS = {
    "interval_s": "canary_interval_s (--interval)",
    "ready_timeout_s": "ready_timeout_s (--ready-timeout)",
    "deadline_s": "rollout_deadline_s (--deadline)",
    "poll_s": "poll_s",
}


@dataclass(frozen=True)
class RolloutSettings:
    """What a rollout needs besides the manifest: the plan, the policy, and where the
    canary's metrics are read.

    Attributes:
        plan: How the canary advances.
        policy: How it is judged.
        prometheus_url: Prometheus' base URL; required unless the policy says
            ``analysis: none``.
    """

    plan: RolloutPlan
    policy: CanaryPolicy
    prometheus_url: str = ""

    def __post_init__(self) -> None:
        if not self.policy.analysed:
            return
        plan, limit = self.plan, self.policy.inconclusive_limit
        looks = len(plan.steps) * (limit + 1) + 1  # each step to its limit, and the warm-up
        if looks * plan.interval_s > plan.deadline_s:
            raise ConveyorError(
                f"the plan may take {looks} looks of {plan.interval_s:g} s "
                f"({looks * plan.interval_s:g} s), past rollout_deadline_s "
                f"{plan.deadline_s:g}: raise the deadline, or lower canary_policy's "
                "inconclusive_limit"
            )

    @classmethod
    def from_parameters(
        cls, parameters: Mapping[str, Any], policy_source: str = "canary_policy"
    ) -> RolloutSettings:
        """The settings from a step's, a pipeline's or a command's parameters, by name.

        Args:
            parameters: Settings declared in ``rollout.settings``, by name; one not given
                takes its declared default, and the serving ones are not read here.
            policy_source: What a mistake in the policy is named after (a parameter, a file).

        Raises:
            ConveyorError: A name that is no declared setting, or a value out of range.
        """
        unknown = sorted(set(parameters) - set(SETTING_NAMES))
        if unknown:
            raise ConveyorError(
                f"{', '.join(unknown)}: no such rollout setting (the settings are "
                f"{', '.join(SETTING_NAMES)})"
            )

        def value(name: str) -> Any:
            return parameters[name] if name in parameters else setting(name).default

        plan = RolloutPlan(
            steps=parse_steps(value("canary_steps")),
            interval_s=value("canary_interval_s"),
            ready_timeout_s=value("ready_timeout_s"),
            deadline_s=value("rollout_deadline_s"),
        )
        policy = CanaryPolicy.from_dict(value("canary_policy"), policy_source)
        return cls(plan, policy, value("prometheus_url"))

    def prometheus(self, given: Prometheus | None = None) -> Prometheus | None:
        """Where the canary is measured (``given``, else the URL's); None with ``analysis:
        none``; refuses a rollout that would judge nothing."""
        if not self.policy.analysed:
            return None
        if given is not None:
            return given
        require_prometheus(self.policy, self.prometheus_url)
        return Prometheus(self.prometheus_url)


def require_prometheus(policy: CanaryPolicy, prometheus_url: str) -> None:
    """Refuses a judged rollout with no Prometheus to judge it from."""
    if policy.analysed and not prometheus_url:
        raise ConveyorError(
            "no Prometheus URL to judge the canary with (prometheus_url, --prometheus): "
            "give one, or set analysis: none in the canary policy to roll out unjudged"
        )


def parse_steps(text: str) -> tuple[int, ...]:
    """``"10,50"`` as ``(10, 50)``."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ConveyorError(
            f"canary steps {text!r} must be comma-separated percentages, such as 10,50"
        ) from None


@dataclass(frozen=True)
class Look:
    """One look at the canary: its step, how long it had served, what the judge found
    (None with ``analysis: none``) and what the step decided."""

    percent: int
    elapsed_s: float
    judgement: Judgement | None
    decision: Decision

    def measurements(self) -> dict[str, float]:
        """Every value the judge measured, ``<metric>_<canary|stable|...>``."""
        values: dict[str, float] = {}
        for result in self.judgement.results if self.judgement else ():
            measured = {"canary": result.canary, "stable": result.stable, **result.extra}
            values |= {f"{result.name}_{k}": v for k, v in measured.items() if v is not None}
        return values


@dataclass(frozen=True)
class StepRecord:
    """What one canary step came to: its share of traffic, when its last look was (wall
    seconds), ``passed``, ``failed`` or ``stopped`` (the rollout ended while it waited),
    why, after how many looks, and what that last look measured."""

    percent: int
    time: float
    verdict: str
    reason: str
    looks: int
    measurements: dict[str, float]


@dataclass
class RolloutResult:
    """What the rollout decided and everything it measured on the way."""

    decision: RolloutDecision
    reason: str
    name: str
    namespace: str
    model_uri: str
    mode: str = "Serverless"
    stable_revision: str = ""
    canary_revision: str = ""
    url: str = ""
    policy: CanaryPolicy = DEFAULT_POLICY
    looks: list[Look] = field(default_factory=list)
    snapshot: dict[str, Any] = field(default_factory=dict)
    canary_started: float = 0.0  # wall time the canary first took traffic
    task_source: str = ""  # where the model's task (policy.task) was learnt

    @property
    def succeeded(self) -> bool:
        return self.decision in ("created", "promoted")

    def check(self) -> None:
        """Raises RolloutFailed unless the model was created or promoted."""
        if not self.succeeded:
            raise RolloutFailed(self)

    def metrics(self) -> dict[str, float]:
        """``analysis_performed`` (0 with ``analysis: none``) and every value the judge
        measured, ``step<percent>_look<n>_<metric>_<canary|stable|...>``."""
        values = {"analysis_performed": float(self.policy.analysed)}
        counts: dict[int, int] = {}
        for look in self.looks:
            counts[look.percent] = number = counts.get(look.percent, 0) + 1
            prefix = f"step{look.percent}_look{number}"
            values |= {f"{prefix}_{key}": v for key, v in look.measurements().items()}
        return values

    def steps(self) -> list[StepRecord]:
        """Each step the canary reached, in order, as its last look left it."""
        verdicts = {"pass": "passed", "fail": "failed", "wait": "stopped"}
        by_step: dict[int, list[Look]] = {}
        for look in self.looks:
            by_step.setdefault(look.percent, []).append(look)
        return [
            StepRecord(
                percent,
                self.canary_started + looks[-1].elapsed_s,
                verdicts[looks[-1].decision.action],
                looks[-1].decision.reason,
                len(looks),
                looks[-1].measurements(),
            )
            for percent, looks in by_step.items()
        ]


class RolloutFailed(ConveyorError):
    """The rollout ended rolled back or failed; ``result`` says why and what was measured."""

    def __init__(self, result: RolloutResult) -> None:
        super().__init__(f"{result.decision}: {result.reason}")
        self.result = result


class _Abort(Exception):
    """The canary must be rolled back, for the reason given."""


class _Refused(Exception):
    """The rollout cannot start, for the reason given; nothing was changed."""


class _Cancelled(BaseException):
    """SIGTERM arrived: KFP is cancelling the run. Not an Exception, so nothing swallows it."""


class Rollout:
    """Rolls one InferenceService manifest out as a canary, or creates it on first deploy."""

    def __init__(
        self,
        services: InferenceServices,
        manifest: dict[str, Any],
        settings: RolloutSettings,
        run_id: str,
        progress: Callable[[str], None] = print,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        wall: Callable[[], float] = time.time,
        prometheus: Prometheus | None = None,
        task: str = CLASSIFICATION,
    ) -> None:
        # Only the metrics that apply to the model's task are judged (and queried).
        self.services, self.plan = services, settings.plan
        self.policy = settings.policy.for_task(task)
        self.settings, self.manifest, self.run_id = settings, manifest, run_id
        self.progress = progress
        self.clock, self.sleep, self.wall = clock, sleep, wall  # wall: Prometheus' and Leases'
        self.name = manifest["metadata"]["name"]
        model_uri = manifest["spec"]["predictor"]["model"]["storageUri"]
        self.result = RolloutResult("failed", "", self.name, services.namespace, model_uri)
        self.result.policy = self.policy
        self.judging = AnalysisRun(self.policy)
        self.prometheus = prometheus  # by default, the settings' URL's
        self.leases = _sibling(services, "lease")
        self.config_maps = _sibling(services, "config_map")
        self.lease: RolloutLease | None = None  # held from the preflight on
        self.snapshot: Snapshot | None = None
        self._previous: LeaseRecord | None = None  # the Lease's record before this run
        self._recovered = ""  # "rolled_back" when this run settled an earlier one
        self._legacy: list[str] = []  # earlier releases' annotations on the service
        self._deadline = 0.0
        self._known_failure: dict[str, Any] = {}  # lastFailureInfo before this rollout
        self.canary: Canary = KnativeCanary(services, self.name)  # set from the service's mode
        self.events = ServiceEvents(_sibling(services, "event"), run_id, progress, wall)

    @classmethod
    def recovery(
        cls, services: InferenceServices, name: str, settings: RolloutSettings, run_id: str,
        progress: Callable[[str], None] = print,
    ) -> Rollout:  # fmt: skip
        """A rollout that only settles what an earlier run left unfinished (``recover``)."""
        stub = {"metadata": {"name": name}, "spec": {"predictor": {"model": {"storageUri": ""}}}}
        return cls(services, stub, settings, run_id, progress)

    def run(self) -> RolloutResult:
        """Creates or rolls out; returns the result when created or promoted, else raises
        RolloutFailed carrying it (rolled back, or failed with nothing changed)."""
        self._deadline = self.clock() + self.plan.deadline_s
        with _sigterm(_raise_cancelled):
            try:
                self.prometheus = self.settings.prometheus(self.prometheus)
                current = self._preflight()
            except _Cancelled:
                self._fail("the run was cancelled (SIGTERM) before the rollout started")
            except (_Refused, _Abort, ConveyorError) as error:
                self._fail(str(error))
            if current is None:
                return self.result
            try:
                return self._advance()
            except _Cancelled:
                reason = "the run was cancelled (SIGTERM)"
            except LeaseLost as lost:  # another run holds the service now: hands off
                self._fail(f"{lost}: stopped without touching {self.name} again")
            except Exception as error:  # noqa: BLE001 - whatever stops a canary sends it back
                reason = _describe(error)
            self._roll_back(reason)
        raise RolloutFailed(self.result)

    def recover(self) -> RolloutResult:
        """Settles what an earlier run left unfinished (rolls its canary back, or notes that
        it had promoted), and nothing else; raises RolloutFailed when that fails."""
        self._deadline = self.clock() + 3 * self.plan.ready_timeout_s
        try:
            with _sigterm(signal.SIG_IGN):
                current = self._take_lease()
                if current is None:
                    raise _Refused(f"there is no InferenceService {self.name} to recover")
                try:
                    self._settle(self._previous, current)
                except BaseException as error:
                    self._release_refused(error)
                    raise
                self.result.decision, self.result.reason = self._recovery_outcome()
                self._release_quietly("finished", self.result.reason)
        except (_Refused, _Abort, ConveyorError) as error:
            self._fail(str(error))
        return self.result

    def _recovery_outcome(self) -> tuple[RolloutDecision, str]:
        previous = self._previous
        if previous is None or not previous.unfinished:
            last = f" (run {previous.run}) finished" if previous else " left no record"
            return "unchanged", f"nothing to recover: the last rollout{last}"
        settled = f"recovered the rollout run {previous.run} left {previous.state}"
        return ("rolled_back" if self._recovered else "unchanged"), settled

    # -- before any traffic moves ---------------------------------------------------------

    def _preflight(self) -> dict[str, Any] | None:
        """The service, locked and ready for a canary, its spec saved; None when created or
        already serving the model."""
        current = self._take_lease()
        if current is None:
            self._create()
            return None
        try:
            current = self._settle(self._previous, current)
            return self._ready_for_canary(current)
        except BaseException as error:
            self._release_refused(error)
            raise

    def _take_lease(self) -> dict[str, Any] | None:
        """The service with this run holding its Lease; None when there is no service."""
        current = self.services.get(self.name)
        if current is None:
            return None
        self.events.bind(current)
        self.result.mode = deployment_mode(current)
        self.canary = self._canary_for(self.result.mode)
        self.lease = RolloutLease(
            self.leases, current, self.run_id, self._lease_duration_s(), self.wall
        )
        self._previous = self.lease.acquire()
        self.services.before_write = self.lease.renew
        return current

    def _lease_duration_s(self) -> float:
        """Longer than the longest wait between renewals: an interval (or a poll), a look's
        queries and a call retried through an outage, twice over."""
        return 2 * max(self.plan.interval_s, self.plan.poll_s) + 180

    def _settle(self, previous: LeaseRecord | None, current: dict[str, Any]) -> dict[str, Any]:
        """Finishes what a run that stopped left (its Lease's record unfinished): its
        promotion stands if it had landed, else its canary is rolled back."""
        self._recovered = ""
        if previous is None or not previous.unfinished:
            return current
        run, state = previous.run, previous.state
        snapshot = load_snapshot(self.config_maps, current, run, previous.snapshot)
        if snapshot is None:
            self.progress(f"run {run} stopped before it changed {self.name}: nothing to undo")
            self.lease.adopt()
            return current
        if state == "promoting" and promotion_landed(current, snapshot.applied):
            self.progress(f"run {run} had promoted its canary before it stopped: it stays")
            self.lease.adopt()
            return current
        self.progress(f"found an unfinished rollout by run {run} ({state}): rolling it back first")
        try:
            self._restore(snapshot)
        except LeaseLost:
            raise
        except Exception as error:  # noqa: BLE001 - one line, and the record kept
            reason = f"the rollout run {run} left could not be rolled back: {_describe(error)}"
            self._release_quietly("rollback_failed", reason)
            raise _Refused(f"{reason}; {self._recovery_hint()}") from None
        self._recovered = "rolled_back"
        self.lease.adopt()
        return self.services.get(self.name) or current

    def _ready_for_canary(self, current: dict[str, Any]) -> dict[str, Any] | None:
        """The service when a canary can start (its spec saved first); None when it already
        serves the model."""
        applied = rendered_fields(self.manifest)
        if serves(current, applied, self.canary):
            self.result.stable_revision = self.canary.stable_revision(current)
            self._record(current, "promoted", "already serving this model at 100 %: nothing to do")
            self._release_quietly("finished", self.result.reason)
            return None
        if not is_ready(current):
            raise _Refused(f"{self.name} is not Ready ({_not_ready_reason(current)}); fix it first")
        if not self.canary.settled(current):  # its spec is no stable one to roll back to
            raise _Refused(
                f"{self.name} has a canary in flight that no Conveyor rollout records "
                f"({_split(current)}): settle it first (100 % to one revision)"
            )
        refusal = self.canary.refusal(current, applied, self.prometheus is not None)
        if refusal:
            raise _Refused(refusal)
        self._known_failure = last_failure(current)
        self.result.stable_revision = self.canary.stable_revision(current)
        self._try_queries()
        self.services.check_write(self.name)  # a missing permission, before any change
        self._save_snapshot(current, applied)
        return current

    def _save_snapshot(self, current: dict[str, Any], applied: dict[str, Any]) -> None:
        """The spec before the rollout, in the ConfigMap, before the first write to it."""
        present = _annotations(current)
        self._legacy = [key for key in LEGACY_ANNOTATIONS if key in present]
        self.snapshot = Snapshot(
            run=self.run_id,
            stable_revision=self.result.stable_revision,
            predictor=current["spec"]["predictor"],
            applied=applied,
            annotations={
                key: present[key] for key in self._legacy if key not in LEGACY_LOCK_ANNOTATIONS
            },
        )
        self.result.snapshot = self.snapshot.as_dict()
        self.lease.snapshot = self.snapshot.digest()  # recorded before the ConfigMap is
        self.lease.renew("rolling_out")
        save_snapshot(self.config_maps, current, self.snapshot)

    def _try_queries(self) -> None:
        """Every query once, for the stable revision, before any traffic moves: a typo or
        an unreachable Prometheus is found now, not after the canary has served."""
        if self.prometheus is None:
            return
        interval = self.plan.interval_s
        window = Window(self.wall(), interval, interval)
        stable = self.result.stable_revision
        samples = measure(self.prometheus, self.policy, self.services.namespace, stable, window)
        failed = [f"{name}: {sample.error}" for name, sample in samples.items() if sample.error]
        if failed:
            raise _Refused(f"the canary could not be judged: {failed[0]}")

    def _create(self) -> None:
        body = copy.deepcopy(self.manifest)
        body["spec"]["predictor"].pop("canaryTrafficPercent", None)  # ignored on create
        self.progress(f"creating InferenceService {self.name} in {self.services.namespace}")
        try:
            self.services.create(body)
        except Conflict:  # created since it was read: by this run, if the model is this one
            if not _names_model(self.services.get(self.name) or {}, self.result.model_uri):
                raise _Refused(
                    f"{self.name} was created by another run at the same moment"
                ) from None
        try:
            status = self._wait("the new InferenceService to be ready", is_ready)
        except _Abort as abort:
            raise _Refused(
                f"{abort}; the InferenceService was left in place for inspection"
            ) from None
        self.events.bind(status)
        self.result.mode = deployment_mode(status)
        known = StandardCanary if self.result.mode == "Standard" else KnativeCanary
        self.result.stable_revision = known(self.services, self.name).stable_revision(status)
        self._record(status, "created", "first deploy: the model serves 100 % of traffic")

    def _canary_for(self, mode: str) -> Canary:
        """How a canary moves in this mode; refuses the modes where none can."""
        if mode == "Knative":
            return KnativeCanary(self.services, self.name)
        if mode == "ModelMesh":
            raise _Refused(f"{self.name} runs in ModelMesh mode, which has no canary traffic split")
        try:
            has_canary = self.services.crd_has_canary()
        except ConveyorError:  # reading CRDs is cluster-scoped: try, the API server will tell
            has_canary = True
        if not has_canary:
            raise _Refused(
                f"{self.name} runs in {mode} mode, where KServe ignores canaryTrafficPercent, and "
                "this cluster's InferenceService CRD has no spec.canary (KServe < 0.20), so no "
                "canary is possible: use Knative (Serverless) mode or upgrade KServe"
            )
        return StandardCanary(self.services, self.name)

    def _canary_annotations(self) -> dict[str, None]:
        """The annotation changes that go with the canary's spec: those earlier releases
        kept on the service, removed (the model's now sit on the predictor)."""
        return dict.fromkeys(self._legacy)

    # -- canary steps -------------------------------------------------------------------

    def _advance(self) -> RolloutResult:
        for index, percent in enumerate(self.plan.steps):
            if index == 0:
                self.progress(f"applying {self.result.model_uri} as a canary at {percent} %")
                canary = self.canary.start(
                    self.snapshot.applied, self._canary_annotations(),
                    self.result.stable_revision, percent, self._wait,
                )  # fmt: skip
                self.result.canary_revision = canary
                self.result.canary_started = self.wall()
                self.events.emit(
                    "CanaryStarted",
                    f"canary {canary} serves {self.result.model_uri} at {percent} % of "
                    f"traffic; stable {self.result.stable_revision}",
                )
            else:
                self.progress(f"canary {self.result.canary_revision} -> {percent} %")
                self.canary.move(self.result.canary_revision, percent, self._wait)
                self.events.emit(
                    "CanaryStep", f"canary {self.result.canary_revision} at {percent} % of traffic"
                )
            self._analyse_step(percent)
        return self._promote()

    def _analyse_step(self, percent: int) -> None:
        """Looks at the canary every interval until the step passes; raises _Abort when
        it fails (a metric failed, or stayed inconclusive or in error past its limit)."""
        self.judging.next_step()
        while True:
            self.progress(f"canary at {percent} %: looking again in {self.plan.interval_s:g} s")
            self._sleep_until_deadline(self.plan.interval_s)
            look = self._look(percent)
            self.result.looks.append(look)
            self.progress(f"look at {percent} %: {look.decision.action}: {look.decision.reason}")
            if look.decision.action == "fail":
                raise _Abort(f"analysis at {percent} %: {look.decision.reason}")
            if look.decision.action == "pass":
                self.events.emit("CanaryStepPassed", f"at {percent} %: {look.decision.reason}")
                return

    def _look(self, percent: int) -> Look:
        self.lease.heartbeat()  # a look's queries may take a while
        now = self.wall()
        elapsed = now - self.result.canary_started
        if self.prometheus is None:
            return Look(percent, elapsed, None, Decision("pass", "analysis: none"))
        # The first interval is warm-up: warm-up metrics count from its end.
        warming_up = not self.result.looks
        warm = 0.0 if warming_up else elapsed - self.plan.interval_s
        judgement = analyse(
            self.prometheus,
            self.policy,
            self.services.namespace,
            self.result.canary_revision,
            self.result.stable_revision,
            Window(now, elapsed, warm),
        )
        return Look(percent, elapsed, judgement, self.judging.decide(judgement, warming_up))

    def _promote(self) -> RolloutResult:
        """100 % to the canary: a traffic change, so its revision is the one analysed."""
        canary = self.result.canary_revision
        self.progress(f"promoting {canary} to 100 %")
        self.lease.state = "promoting"  # recorded by the renewal before the write
        with self._patience():  # a good canary is not rolled back for an API blip
            status = self.canary.promote(canary, self._wait)
            self._record(status, "promoted", self._promoted_reason())
            self._release_quietly("finished", self.result.reason)
        return self.result

    def _promoted_reason(self) -> str:
        steps = ", ".join(f"{s} %" for s in self.plan.steps)
        if self.prometheus is None:
            return (
                f"promoted WITHOUT ANALYSIS after steps {steps} (canary_policy says analysis: "
                "none): nothing about the canary was measured"
            )
        last = self.result.looks[-1].decision.reason if self.result.looks else "no look"
        return f"every step passed ({steps}); last look: {last}"

    # -- rollback -----------------------------------------------------------------------

    def _roll_back(self, reason: str) -> None:
        with _sigterm(signal.SIG_IGN):  # a second SIGTERM must not stop it half done
            self._roll_back_now(reason)

    def _roll_back_now(self, reason: str) -> None:
        self.progress(f"rolling back {self.name}: {reason}")
        try:
            self._restore(self.snapshot)
        except LeaseLost as lost:
            self.result.decision = "failed"
            self.result.reason = f"{reason}; the rollback stopped: {lost}"
            return
        except (_Abort, ConveyorError) as error:
            self.result.decision = "failed"
            self.result.reason = (
                f"{reason}; the rollback failed too ({error}): {self.name} may still send "
                f"traffic to the canary; {self._recovery_hint()}"
            )
            self._release_quietly("rollback_failed", self.result.reason)
            self.events.emit("RollbackFailed", self.result.reason, warning=True)
            return
        self.result.decision, self.result.reason = "rolled_back", reason
        self._release_quietly("finished", f"rolled back: {reason}")  # the Lease first
        self.events.emit(
            "CanaryRolledBack",
            f"all traffic back on {self.result.stable_revision}: {reason}",
            warning=True,
        )

    def _restore(self, snapshot: Snapshot) -> None:
        """The fields the rollout changed put back as they were, with all traffic on them;
        API outages are outlasted for as long as the readiness timeout."""
        self._deadline = max(self._deadline, self.clock() + 3 * self.plan.ready_timeout_s)
        self.lease.state = "rolling_back"
        self.progress(f"restoring the spec before the rollout (stable {snapshot.stable_revision})")
        with _sigterm(signal.SIG_IGN), self._patience():  # no stop half done
            self.canary.restore(
                snapshot, lambda what, done: self._wait(what, done, fail_fast=False)
            )

    @contextlib.contextmanager
    def _patience(self) -> Iterator[None]:
        """Every API call retried through outages as long as the readiness timeout."""
        with contextlib.ExitStack() as stack:
            for api in (self.services, self.leases, self.config_maps):
                stack.enter_context(api.patience(self.plan.ready_timeout_s))
            yield

    def _recovery_hint(self) -> str:
        return (
            f"the Lease {lease_name(self.name)} records it, and the next deploy (or `conveyor "
            f"rollout --recover {self.name} --namespace {self.services.namespace}`) rolls it "
            "back first"
        )

    def _release_refused(self, error: BaseException) -> None:
        """Releases the Lease after a refusal; what an earlier run left unsettled, or a
        failed rollback, stays recorded for the next run."""
        lease = self.lease
        if lease is None or lease.state == "rollback_failed":
            return
        if lease.record_run != self.run_id:  # the earlier run's record, carried on
            self._release_quietly(lease.state, lease.reason)
        else:
            self._release_quietly("finished", f"refused: {_describe(error)}")

    def _release_quietly(self, state: State, reason: str) -> None:
        """Releases the Lease; an outage or a lost Lease only delays the next run (the
        Lease expires, and its record still says what was left)."""
        if self.lease is None:
            return
        try:
            self.lease.release(state, reason.strip().splitlines()[0] if reason.strip() else "")
        except ConveyorError as error:
            self.progress(f"could not release the Lease {self.lease.name}: {error}")

    # -- waits ----------------------------------------------------------------------------

    def _wait(
        self, what: str, done: Callable[[dict[str, Any]], bool], fail_fast: bool = True
    ) -> dict[str, Any]:
        """Polls until ``done`` holds; with ``fail_fast``, stops when the new revision failed."""
        started = self.clock()
        while True:
            try:
                current = self.services.get(self.name) or {}
            except Unavailable:  # an outage: not done yet, until the timeout says otherwise
                current = {}
            stable = self.result.stable_revision
            failure = fail_fast and self.canary.failure(current, stable, self._known_failure)
            if failure:
                raise _Abort(failure)
            if done(current):
                return current
            if self.clock() - started > self.plan.ready_timeout_s:
                raise _Abort(f"timed out after {self.plan.ready_timeout_s:g} s waiting for {what}")
            self._sleep_until_deadline(self.plan.poll_s)

    def _sleep_until_deadline(self, seconds: float) -> None:
        if self.clock() + seconds > self._deadline:
            last = (
                f"; last look: {self.result.looks[-1].decision.reason}" if self.result.looks else ""
            )
            raise _Abort(f"the rollout passed its deadline of {self.plan.deadline_s:g} s{last}")
        if self.lease is not None:
            self.lease.heartbeat()
        self.sleep(seconds)

    def _record(self, status: dict[str, Any], decision: RolloutDecision, reason: str) -> None:
        self.result.decision, self.result.reason = decision, reason
        self.result.url = status.get("status", {}).get("url", "")
        self.progress(f"{decision}: {reason}")
        self.events.emit(_EVENT_REASONS[decision], reason)

    def _fail(self, reason: str) -> None:
        self.result.decision, self.result.reason = "failed", reason
        self.events.emit("RolloutFailed", reason, warning=True)
        raise RolloutFailed(self.result)


_EVENT_REASONS = {"created": "ModelDeployed", "promoted": "CanaryPromoted"}


def _sibling(services: InferenceServices, kind: str) -> Objects:
    """Objects of ``kind`` reached as ``services`` reaches InferenceServices."""
    return Objects(
        services.client, services.namespace, kind, retry_s=services.retry_s,
        backoff_s=services.backoff_s, timeout_s=services.timeout_s, sleep=services.sleep,
        clock=services.clock,
    )  # fmt: skip


# -- reading an InferenceService ---------------------------------------------------------


def _annotations(service: dict[str, Any]) -> dict[str, str]:
    return service.get("metadata", {}).get("annotations") or {}


def _names_model(service: dict[str, Any], uri: str) -> bool:
    """Whether the service's predictor names this model (an answer lost in transit)."""
    return service.get("spec", {}).get("predictor", {}).get("model", {}).get("storageUri") == uri


def _split(service: dict[str, Any]) -> str:
    status = service.get("status", {})
    entries = status.get("components", {}).get("predictor", {}).get("traffic") or []
    split = ", ".join(f"{e['revisionName']} {e.get('percent', 0)} %" for e in entries)
    canaries = [entry["name"] for entry in status.get("canaryStatuses") or []]
    return split or f"spec.canary: {', '.join(canaries) or 'set'}"


def _not_ready_reason(service: dict[str, Any]) -> str:
    conditions = service.get("status", {}).get("conditions", [])
    ready = next((c for c in conditions if c.get("type") == "Ready"), {})
    return first_line(ready.get("message") or ready.get("reason") or "no Ready condition yet")


def rendered_fields(manifest: dict[str, Any]) -> dict[str, Any]:
    """The predictor fields a manifest renders (the canary share aside), its ``env`` always
    there (empty when it renders none), so variables Conveyor rendered before go with it."""
    predictor = {
        k: v for k, v in manifest["spec"]["predictor"].items() if k != "canaryTrafficPercent"
    }
    return {**predictor, "model": {"env": [], **predictor["model"]}}


def _describe(error: BaseException) -> str:
    if isinstance(error, ConveyorError | _Abort | _Refused):
        return str(error)
    if isinstance(error, _Cancelled):
        return "the run was cancelled (SIGTERM)"
    return f"{type(error).__name__}: {first_line(error)}"


# -- signals ------------------------------------------------------------------------------


def _raise_cancelled(signum: int, frame: Any) -> None:
    raise _Cancelled()


@contextlib.contextmanager
def _sigterm(handler: Any) -> Iterator[None]:
    """SIGTERM handled by ``handler`` for a while (main thread only: elsewhere it is KFP's)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- the report ---------------------------------------------------------------------------


def render_report(result: RolloutResult) -> str:
    """The rollout as Markdown for the KFP UI: the decision and why, how the canary was
    judged, every look, and each step's last judgement metric by metric."""
    lines = [
        f"# Rollout of `{result.name}`: **{result.decision.replace('_', ' ')}**",
        "",
        result.reason,
        "",
        f"- namespace: `{result.namespace}`, mode: {result.mode}",
        f"- model: `{result.model_uri}`",
        f"- task: {result.policy.task}"
        + (f" ({result.task_source})" if result.task_source else ""),
        f"- stable revision: `{result.stable_revision or '-'}`",
        f"- canary revision: `{result.canary_revision or '-'}`",
        f"- URL: {result.url or '-'}",
        "",
        "## How the canary is judged",
        "",
        *describe_policy(result.policy),
    ]
    if result.looks:
        looks = (
            [
                f"{look.percent} %",
                f"{look.elapsed_s:.0f} s",
                look.decision.action,
                look.decision.reason,
            ]
            for look in result.looks
        )
        lines += ["", "## Looks", "", *table(("step", "after", "decision", "reason"), looks)]
    for percent in dict.fromkeys(look.percent for look in result.looks):
        last = [look for look in result.looks if look.percent == percent][-1]
        if last.judgement:
            lines += ["", f"## At {percent} %: the last look, metric by metric", ""]
            lines += render_table(last.judgement)
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


# -- entry points -------------------------------------------------------------------------


def deploy_model(
    spec: ServingSpec,
    settings: RolloutSettings,
    run_id: str,
    report_path: Path,
    kubeconfig: str = "",
    progress: Callable[[str], None] = print,
    task: str = "",
) -> RolloutResult:
    """Rolls the model out and writes the Markdown report, whatever the decision (the
    caller checks it: ``result.check()``).

    ``task`` (``classification`` or ``regression``) picks the policy's metrics that apply;
    empty reads it from the model card at ``spec.storage_uri`` (``model_task``), unless no
    judged metric depends on it (``analysis: none``, or no metric with a task).
    """
    manifest = render_inference_service(spec)
    validate_inference_service(manifest)
    services = InferenceServices(api_client(kubeconfig), spec.namespace)
    source = "given"
    if not task and _task_matters(settings.policy):
        task, source = model_task(spec.storage_uri)
    elif not task:
        task, source = CLASSIFICATION, "not read: no judged metric depends on it"
    progress(f"model task: {task} ({source})")
    rollout = Rollout(services, manifest, settings, run_id, progress, task=task)
    rollout.result.task_source = source
    try:
        result = rollout.run()
    except RolloutFailed as failed:
        result = failed.result
    write_text_atomically(report_path, render_report(result))
    return result


def _task_matters(policy: CanaryPolicy) -> bool:
    """Whether the model's task changes what ``policy`` judges."""
    return policy.analysed and any(metric.task for metric in policy.metrics if metric.enabled)


def model_task(storage_uri: str, timeout_s: float = CARD_TIMEOUT_S) -> tuple[str, str]:
    """The task the model card at ``storage_uri`` records, and where it was learnt.

    A card without a ``task`` (written before regression models were) is a classifier's;
    so is a card that cannot be read within ``timeout_s`` (no access to the store from
    here, an unknown scheme), the reason said: such a regressor's rollout is judged by the
    classifier's metrics, which have no series for it, and fails inconclusive.

    Raises:
        ConveyorError: The card names a task that is neither classification nor regression.
    """
    from conveyor.components.core.training.trainer import MODEL_CARD

    where = f"{storage_uri.rstrip('/')}/{MODEL_CARD}"
    try:
        card = json.loads(_read_bytes(where, timeout_s))
    except Exception as error:  # noqa: BLE001 - whatever the store's client raises
        return CLASSIFICATION, f"assumed: {where} could not be read: {_describe(error)}"
    task = card.get("task", CLASSIFICATION) if isinstance(card, dict) else CLASSIFICATION
    if task not in TASKS:
        raise ConveyorError(f"{where}: task {task!r} is none of {', '.join(TASKS)}")
    return task, f"from {where}"


def _read_bytes(uri: str, timeout_s: float) -> bytes:
    """A file's bytes through fsspec, given up after ``timeout_s`` (a store client may
    retry for minutes; the thread is left to finish, a daemon)."""
    import fsspec

    found: dict[str, Any] = {}

    def read() -> None:
        try:
            fs, path = fsspec.core.url_to_fs(uri)
            found["bytes"] = fs.cat_file(path)
        except Exception as error:  # noqa: BLE001 - handed to the caller
            found["error"] = error

    worker = threading.Thread(target=read, name="conveyor-model-card", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if "error" in found:
        raise found["error"]
    if "bytes" not in found:
        raise TimeoutError(f"no answer in {timeout_s:g} s")
    return found["bytes"]


def describe_plan(manifest: dict[str, Any], settings: RolloutSettings, task: str = "") -> str:
    """What a rollout of ``manifest`` would do, touching nothing: a YAML stream of the
    InferenceService, the plan in comments above it. ``task`` says which metrics apply;
    empty describes a classifier's, the model card being read only when the rollout starts."""
    plan, name = settings.plan, manifest["metadata"]["name"]
    uri = manifest["spec"]["predictor"]["model"]["storageUri"]
    task_line = (
        f"the model is a {task} model (given)"
        if task
        else f"the model's task is read from its model card at {uri} when the rollout "
        "starts (classification when it cannot be read); judged below as a classifier"
    )
    steps = [f"{percent} %" for percent in plan.steps]
    source = f"Prometheus at {settings.prometheus_url}" if settings.prometheus_url else "no URL"
    lines = [
        f"if {name} does not exist: create it and wait until it is Ready (decision: created)",
        f"else: take its Lease {lease_name(name)}, save its spec in the ConfigMap of that "
        f"name, and send the new model {', then '.join(steps)} of "
        f"traffic, looking at the canary every {plan.interval_s:g} s (the first interval is "
        "warm-up) until each step passes",
        "  Knative mode: as canaryTrafficPercent; Standard mode: as a spec.canary entry "
        "(analysis required); ModelMesh, or Standard without spec.canary: refused",
        "promote when every step passes; otherwise roll back (Knative: 0 %, stable checked at "
        "100 %, the fields the rollout changed put back at 0 % until ready; Standard: the "
        "entry dropped)",
        f"deadline {plan.deadline_s:g} s; readiness timeout {plan.ready_timeout_s:g} s",
        task_line,
        f"judged from {source}:",
        *describe_policy(settings.policy.for_task(task or CLASSIFICATION)),
    ]
    comments = "".join(f"# {line}\n" for line in lines)
    return comments + "---\n" + yaml.safe_dump(manifest, sort_keys=False)
