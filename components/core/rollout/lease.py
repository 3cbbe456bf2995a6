"""The rollout's lock: a ``coordination.k8s.io/v1`` Lease per InferenceService.

One process of one run holds it (``holderIdentity`` is the run id, the host and a nonce:
a KFP retry whose first pod still runs is another holder) for ``leaseDurationSeconds``
after its last renewal, plus ``CLOCK_SKEW_S``, because the renewal time was read off
another machine's clock. A run renews it before each write to the service (and on a
heartbeat while it waits) with an update that carries the Lease's resourceVersion, then
reads the service and writes it with the service's resourceVersion. A renewal that finds
another holder raises LeaseLost, and the run stops without touching the service. Kubernetes
has no transaction across two objects: between a renewal and the write that follows it
another run could take an expired Lease, so the window is at most one write.

The Lease also keeps the record of the last rollout (annotation ``conveyor/rollout``): the
run whose changes it describes, their state (``rolling_out``, ``promoting``,
``rolling_back``, ``rollback_failed`` or ``finished``) and why. A state other than
``finished`` left by a run that stopped is unfinished business, which the next holder
settles before anything else; until it has (``adopt``), the next holder's renewals carry
that record on, so a second run dying mid-recovery still leaves it for a third.

The Lease is owned by the InferenceService, so it is deleted with it, and a record written
for an earlier service of the same name is ignored. No ``blockOwnerDeletion``: that needs
``update`` on the owner's finalizers under the OwnerReferencesPermissionEnforcement
admission plugin, which also asks for ``delete`` on an object created with an owner (see
``kserve/rbac.yaml``).
"""

from __future__ import annotations

import json
import math
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from conveyor.components.core.errors import ConveyorError
from conveyor.components.core.rollout.kube import Conflict, Gone, Objects, Unavailable

__all__ = [
    "CLOCK_SKEW_S",
    "LEASE_PREFIX",
    "RECORD_ANNOTATION",
    "LeaseLost",
    "LeaseRecord",
    "LeaseRefused",
    "RolloutLease",
    "describe",
    "holder",
    "lease_name",
    "owner_reference",
    "record_of",
]

LEASE_PREFIX = "conveyor-rollout-"
RECORD_ANNOTATION = "conveyor/rollout"
# Another machine's renewTime is trusted only this far: its clock may run this fast.
CLOCK_SKEW_S = 60
State = Literal["rolling_out", "promoting", "rolling_back", "rollback_failed", "finished"]


class LeaseLost(ConveyorError):
    """Another holder has the Lease now: this one must not touch the service again."""


class LeaseRefused(ConveyorError):
    """Another holder has the Lease and it has not expired: nothing was changed."""


@dataclass(frozen=True)
class LeaseRecord:
    """What the last holder was doing, and why it stopped where it did."""

    run: str
    state: State
    reason: str = ""
    snapshot: str = ""  # the sha256 of the run's snapshot, checked before it is restored

    @property
    def unfinished(self) -> bool:
        return self.state != "finished"


def lease_name(service: str) -> str:
    """The Lease (and snapshot ConfigMap) of an InferenceService."""
    return f"{LEASE_PREFIX}{service}"


def owner_reference(service: dict[str, Any]) -> dict[str, Any]:
    """An ownerReference to the InferenceService, so its dependents go with it."""
    meta = service["metadata"]
    return {
        "apiVersion": service.get("apiVersion", "serving.kserve.io/v1beta1"),
        "kind": "InferenceService",
        "name": meta["name"],
        "uid": meta["uid"],
    }


class RolloutLease:
    """The Lease of one InferenceService, as held by this process of ``run_id``.

    Args:
        leases: Leases in the service's namespace.
        service: The InferenceService (its owner).
        run_id: This run.
        duration_s: How long a renewal holds it; longer than the longest wait between
            renewals, so a live run never loses it to expiry.
        wall: The wall clock (renewal times are written for other machines to read).
    """

    def __init__(
        self,
        leases: Objects,
        service: dict[str, Any],
        run_id: str,
        duration_s: float,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.leases, self.service, self.run_id = leases, service, run_id
        self.identity = f"{run_id}@{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self.name = lease_name(service["metadata"]["name"])
        self.duration_s = max(1, math.ceil(duration_s))
        self.wall = wall
        self.state: State = "rolling_out"
        self.reason = ""
        self.record_run = run_id  # whose changes the record describes
        self.snapshot = ""  # and the sha256 of their snapshot
        self._lease: dict[str, Any] | None = None
        self._renewed = 0.0

    def acquire(self) -> LeaseRecord | None:
        """Takes the Lease; returns the previous record (None for the first rollout).
        Raises LeaseRefused while another holder has it."""
        current = self.leases.get(self.name)
        if current is None:
            self._take(None, self.leases.create)
            return None
        self._refuse_if_held(current)
        previous = self._record(current)
        if previous is not None and previous.unfinished:  # carried on until settled
            self.record_run, self.state, self.reason = previous.run, previous.state, previous.reason
            self.snapshot = previous.snapshot
        self._take(current, self.leases.replace)
        return previous

    def renew(self, state: State | None = None, reason: str | None = None) -> None:
        """Renews (and records ``state``); raises LeaseLost when another holder has it."""
        if state is not None:
            self.state = state
        if reason is not None:
            self.reason = reason
        self._write(self._body)
        self._renewed = self.wall()

    def heartbeat(self) -> None:
        """Renews when a third of the duration has passed since the last renewal; an API
        outage is outlasted while a third of the duration is still left."""
        if self.wall() - self._renewed < self.duration_s / 3:
            return
        try:
            self.renew()
        except Unavailable:
            if self._renewed + self.duration_s - self.wall() < self.duration_s / 3:
                raise

    def adopt(self) -> None:
        """What an earlier run left is settled: from the next renewal on, the record
        describes this run's own rollout."""
        self.record_run, self.state, self.reason = self.run_id, "rolling_out", ""
        self.snapshot = ""

    def release(self, state: State, reason: str) -> None:
        """Records how the rollout ended and lets the next run take the Lease at once."""
        self.state, self.reason = state, reason

        def released(current: dict[str, Any]) -> dict[str, Any]:
            body = self._body(current)
            body["spec"].pop("holderIdentity", None)
            return body

        self._write(released)

    def _take(self, current: dict[str, Any] | None, write: Callable[[Any], Any]) -> None:
        transitions = 0 if current is None else current["spec"].get("leaseTransitions", 0) + 1
        try:
            self._lease = write(self._body(current, acquired=True, transitions=transitions))
        except Conflict:  # another run's write won, or this one's landed and answered late
            self._lease = self._ours_after_a_race()
        self._renewed = self.wall()

    def _write(self, build: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        """Replaces the Lease with ``build(held)``; a conflict from another tool's edit (not
        a new holder) is re-read and retried."""
        for _ in range(3):
            try:
                self._lease = self.leases.replace(build(self._held()))
                return
            except Conflict:
                self._lease = self._reread()
            except Gone:
                raise LeaseLost(
                    f"the rollout Lease {self.name} was deleted under run {self.run_id}"
                ) from None
        raise LeaseLost(f"the rollout Lease {self.name} kept changing under run {self.run_id}")

    def _ours_after_a_race(self) -> dict[str, Any]:
        current = self.leases.get(self.name)
        if current is not None and holder(current) == self.identity:
            return current
        raise LeaseRefused(
            f"{self.service['metadata']['name']}: another run took the rollout Lease "
            f"{self.name} at the same moment; try again"
        )

    def _refuse_if_held(self, lease: dict[str, Any]) -> None:
        other = holder(lease)
        if not other:
            return
        expires = renewed_at(lease) + lease["spec"].get("leaseDurationSeconds", 0) + CLOCK_SKEW_S
        if expires > self.wall():
            until = datetime.fromtimestamp(expires, UTC).isoformat(timespec="seconds")
            raise LeaseRefused(
                f"{self.service['metadata']['name']} is being rolled out by {describe(other)} "
                f"(its Lease {self.name} runs until {until} unless renewed); wait for it"
            )

    def _record(self, lease: dict[str, Any]) -> LeaseRecord | None:
        """The Lease's record, unless it was written for an earlier service of this name."""
        owners = lease["metadata"].get("ownerReferences") or []
        if any(owner.get("uid") != self.service["metadata"]["uid"] for owner in owners):
            return None
        return record_of(lease)

    def _held(self) -> dict[str, Any]:
        if self._lease is None or holder(self._lease) != self.identity:
            self._lost(holder(self._lease or {}))
        return self._lease

    def _reread(self) -> dict[str, Any]:
        current = self.leases.get(self.name)
        if current is None:
            raise LeaseLost(f"the rollout Lease {self.name} was deleted under run {self.run_id}")
        if holder(current) != self.identity:
            self._lost(holder(current))
        return current

    def _lost(self, other: str) -> None:
        raise LeaseLost(
            f"run {self.run_id} lost the rollout Lease {self.name} to "
            f"{describe(other) if other else 'nobody'}"
        )

    def _body(
        self, current: dict[str, Any] | None, acquired: bool = False, transitions: int = 0
    ) -> dict[str, Any]:
        now = _micro_time(self.wall())
        metadata = {
            "name": self.name,
            "namespace": self.leases.namespace,
            "ownerReferences": [owner_reference(self.service)],
        }
        spec = dict(current["spec"]) if current else {}
        if current is not None:
            metadata = {**current["metadata"], **metadata}
        metadata["labels"] = {
            **(metadata.get("labels") or {}),
            "app.kubernetes.io/managed-by": "conveyor",
        }
        record = LeaseRecord(self.record_run, self.state, self.reason, self.snapshot)
        metadata["annotations"] = {
            **(metadata.get("annotations") or {}),
            RECORD_ANNOTATION: json.dumps(asdict(record)),
        }
        spec.update(
            holderIdentity=self.identity, leaseDurationSeconds=self.duration_s, renewTime=now
        )
        if acquired:
            spec.update(acquireTime=now, leaseTransitions=transitions)
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": spec,
        }


def holder(lease: dict[str, Any]) -> str:
    return (lease.get("spec") or {}).get("holderIdentity") or ""


def describe(identity: str) -> str:
    """``run R (process P)`` for a holder ``R@P``; another tool's identity as it is."""
    run, _, process = identity.partition("@")
    return f"run {run} (process {process})" if process else f"run {run}"


def renewed_at(lease: dict[str, Any]) -> float:
    """The last renewal as a Unix time (0 when never renewed)."""
    spec = lease.get("spec") or {}
    text = spec.get("renewTime") or spec.get("acquireTime")
    if not text:
        return 0.0
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def record_of(lease: dict[str, Any]) -> LeaseRecord | None:
    """The rollout record a Lease carries, or None (a Lease another tool wrote)."""
    text = ((lease.get("metadata") or {}).get("annotations") or {}).get(RECORD_ANNOTATION)
    if not text:
        return None
    try:
        fields = json.loads(text)
        return LeaseRecord(
            str(fields["run"]), str(fields["state"]), str(fields.get("reason", "")),
            str(fields.get("snapshot", "")),
        )  # fmt: skip
    except (ValueError, KeyError, TypeError):
        raise ConveyorError(
            f"the Lease {lease['metadata']['name']} has an unreadable {RECORD_ANNOTATION} "
            "annotation: check what the service serves, then delete the Lease"
        ) from None


def _micro_time(seconds: float) -> str:
    """Kubernetes' MicroTime: RFC 3339 with exactly six fractional digits, in UTC."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
