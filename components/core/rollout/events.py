"""Kubernetes Events on the InferenceService a rollout moves: where `kubectl describe
inferenceservice` and a cluster's event exporters already look.

Core ``v1`` Events with ``eventTime`` set, so the API server applies the newer rules
(``legacyValidateEvent`` in kubernetes' ``pkg/apis/core/validation/events.go``): a
``reportingComponent`` that is a qualified name, a ``reportingInstance`` and an ``action``
of at most 128 characters, a ``reason`` of at most 128 and a ``message`` of at most 1024.
``involvedObject`` carries the service's uid, which ``kubectl describe`` selects on.

An Event is a record, not a step of the rollout: each write gets a short timeout and one
retry, and one that cannot be written is said in the log and the rollout goes on. A
missing ``create`` on events stops the writes (said once); a passing failure (an outage)
costs only that Event, so the rollback's warning is still tried.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

from conveyor.components.core.errors import ConveyorError
from conveyor.components.core.rollout.kube import GROUP, VERSION, Objects, PermissionDenied

__all__ = ["REPORTING_COMPONENT", "ServiceEvents"]

REPORTING_COMPONENT = "conveyor/rollout"
_ACTION = "Rollout"
_MESSAGE_LIMIT = 1024  # NoteLengthLimit
_INSTANCE_LIMIT = 128  # ReportingInstanceLengthLimit
_RETRY_S = 1.0  # an Event is worth one retry, not a slower rollout
_TIMEOUT_S = (2.0, 5.0)  # (connect, read): the rollout's own calls wait longer


class ServiceEvents:
    """Events about one InferenceService, from one run; silent until ``bind``.

    Args:
        objects: Events in the service's namespace (``Objects`` of kind ``event``).
        run_id: The pipeline run, as the reporting instance.
        progress: Where the one line about an Event that could not be written goes.
        wall: The wall clock (injected by tests).
    """

    def __init__(
        self,
        objects: Objects,
        run_id: str,
        progress: Callable[[str], None] = print,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.objects, self.run_id, self.progress, self.wall = objects, run_id, progress, wall
        self.objects.retry_s = min(self.objects.retry_s, _RETRY_S)
        self.objects.timeout_s = _TIMEOUT_S
        self._involved: dict[str, str] = {}
        self._broken = False

    def bind(self, service: dict[str, Any]) -> None:
        """The service the Events are about, as read from the API (its uid included)."""
        meta = service.get("metadata") or {}
        if meta.get("uid"):
            self._involved = {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "InferenceService",
                "name": meta["name"],
                "namespace": meta.get("namespace", self.objects.namespace),
                "uid": meta["uid"],
            }

    def emit(self, reason: str, message: str, warning: bool = False) -> None:
        """Writes one Event; a failure is logged, and after a refused permission later
        Events are not tried."""
        if not self._involved or self._broken:
            return
        try:
            self.objects.create(self.body(reason, message, warning))
        except PermissionDenied as denied:
            self._broken = True
            self.progress(f"could not record a Kubernetes Event ({denied}); going on without")
        except ConveyorError as error:
            self.progress(f"could not record the Kubernetes Event {reason} ({error})")

    def body(self, reason: str, message: str, warning: bool) -> dict[str, Any]:
        """The Event as the API takes it; named as client-go names them (object.hex-time)."""
        now = dt.datetime.fromtimestamp(self.wall(), dt.UTC)
        stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        data = message.encode()  # the API server counts bytes
        if len(data) > _MESSAGE_LIMIT:
            message = data[: _MESSAGE_LIMIT - 3].decode(errors="ignore") + "…"
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{self._involved['name']}.{time.time_ns():x}",
                "namespace": self.objects.namespace,
            },
            "involvedObject": self._involved,
            "reason": reason,
            "message": message,
            "type": "Warning" if warning else "Normal",
            "eventTime": now.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
            "action": _ACTION,
            "reportingComponent": REPORTING_COMPONENT,
            "reportingInstance": self.run_id[:_INSTANCE_LIMIT] or "conveyor",
            "source": {"component": REPORTING_COMPONENT},
        }
