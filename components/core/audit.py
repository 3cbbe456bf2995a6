"""The audit trail: every decision Conveyor makes about a model, as one append-only event.

An event is one JSON file under the ``audit/`` artifacts of the MLflow run that produced
the model it is about (the training run), never rewritten: each gets a name of its own
(time, kind, a random suffix), so concurrent writers lose nothing, and one shared file
would. MLflow model versions hold no artifacts, so a version carries its latest decision
as tags instead (``audit.kind``, ``audit.decision``, ``audit.reason``, ``audit.time``).
``timeline`` reads a model's events back from every training run of its experiment, in
time order: which data and run produced each version, what each gate decided and why,
and what replaced it.
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.components.core.errors import ConveyorError, first_line
from conveyor.components.core.files import finite_json
from conveyor.components.core.training import tracking

if TYPE_CHECKING:
    from mlflow import MlflowClient

__all__ = [
    "AUDIT_DIR",
    "KINDS",
    "AuditEvent",
    "read_events",
    "record_event",
    "record_events",
    "timeline",
    "validation_event",
]

AUDIT_DIR = "audit"
# What is decided, in the order a model meets the decisions.
KINDS = (
    "validation",
    "blessing",
    "shadow",
    "registration",
    "rollout",
    "drift",
    "quality",
    "retraining",
)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def _conveyor_version() -> str:
    return metadata.version("conveyor")


@dataclass(frozen=True)
class AuditEvent:
    """One decision; checks itself.

    Attributes:
        kind: What was decided (one of ``KINDS``).
        decision: The outcome in a word or two (``blessed``, ``failed``, ``promoted``...).
        reason: Why, in one line.
        model: The registered model's name.
        step: The pipeline step (or command) that decided.
        version: The model version, once registered; empty before.
        pipeline_run: The pipeline run that decided (the training run's tag when empty).
        data_hash: The training data's content hash (the training run's tag when empty).
        parameters: The settings that decided it (thresholds, policy).
        measurements: What it was decided on (metrics, rates).
        time: When, ISO 8601 in UTC.
        conveyor_version: The deciding Conveyor's version.
    """

    kind: str
    decision: str
    reason: str
    model: str
    step: str
    version: str = ""
    pipeline_run: str = ""
    data_hash: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    measurements: dict[str, Any] = field(default_factory=dict)
    time: str = field(default_factory=_now)
    conveyor_version: str = field(default_factory=_conveyor_version)

    def __post_init__(self) -> None:
        for name in ("kind", "decision", "model", "step"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ConveyorError(f"audit event {name} must be non-empty text")
        if not isinstance(self.reason, str):
            raise ConveyorError("audit event reason must be text")
        # One line, whatever the decider wrote (a reason may quote production values).
        object.__setattr__(self, "reason", " ".join(self.reason.split()))
        try:
            when = dt.datetime.fromisoformat(self.time)
        except (TypeError, ValueError):
            raise ConveyorError(f"audit event time {self.time!r}: expected ISO 8601") from None
        if when.utcoffset() is None:
            raise ConveyorError(f"audit event time {self.time!r}: expected a time zone")

    @property
    def moment(self) -> dt.datetime:
        """The time, as a datetime (events may carry any UTC offset)."""
        return dt.datetime.fromisoformat(self.time)

    def to_json(self, indent: int | None = 2) -> str:
        """Strict JSON: a NaN or infinite measurement is written as null."""
        return json.dumps(finite_json(asdict(self)), indent=indent, sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str, where: str) -> AuditEvent:
        """Reads an event, naming ``where`` when it is not one; unknown keys and kinds are
        taken as they are (a newer Conveyor's events stay readable)."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConveyorError(f"{where}: not JSON ({error.msg})") from None
        if not isinstance(data, dict):
            raise ConveyorError(f"{where}: not an audit event")
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{key: value for key, value in data.items() if key in known})
        except TypeError as error:
            raise ConveyorError(f"{where}: not an audit event ({error})") from None
        except ConveyorError as error:
            raise ConveyorError(f"{where}: {error}") from None

    def line(self) -> str:
        """The event as one timeline line."""
        when = self.time[:19].replace("T", " ")
        version = f"v{self.version}" if self.version else "-"
        return f"{when}  {version:<5} {self.kind:<12} {self.decision:<12} {self.reason}"


def validation_event(model: str, schema_metadata: dict[str, Any]) -> AuditEvent:
    """The validation verdict, from the metadata validate gave its schema (train, which
    opens the run, records it: validate runs before there is one to write to)."""
    warnings = int(schema_metadata.get("warnings", 0))
    columns = schema_metadata.get("columns", "?")  # KFP may hand its numbers over as floats
    columns = int(columns) if isinstance(columns, float) and columns.is_integer() else columns
    source = str(schema_metadata.get("source", "an unknown schema"))
    return AuditEvent(
        kind="validation", decision="passed", model=model, step="validate",
        reason=f"both splits meet the schema ({source}): {columns} "
        f"columns, {warnings} warning(s)",
        parameters={"schema": source}, measurements={"warnings": warnings},
    )  # fmt: skip


def record_event(client: MlflowClient, run_id: str, event: AuditEvent) -> AuditEvent:
    """``record_events`` of one event; returns it as written."""
    return record_events(client, run_id, [event])[0]


def record_events(
    client: MlflowClient, run_id: str, events: Sequence[AuditEvent]
) -> list[AuditEvent]:
    """Writes one decision's ``events`` under the run's ``audit/``, filling each one's
    pipeline run and data hash from the run's tags (read once) when it has none, and tags
    each version with its latest event unless the version already carries a later
    decision; returns them as written."""
    for event in events:
        if event.kind not in KINDS:
            raise ConveyorError(f"audit event kind {event.kind!r}: expected one of {KINDS}")
    tags = client.get_run(run_id).data.tags
    filled = [
        replace(
            event,
            pipeline_run=event.pipeline_run or tags.get("pipeline_run_id", ""),
            data_hash=event.data_hash or tags.get("data_hash", ""),
        )
        for event in events
    ]
    latest: dict[tuple[str, str], AuditEvent] = {}
    for event in filled:
        stamp = event.time.replace(":", "").replace("+", "p")
        name = f"{AUDIT_DIR}/{stamp}-{event.kind}-{uuid.uuid4().hex[:8]}.json"
        client.log_text(run_id, event.to_json(), name)
        held = latest.get((event.model, event.version))
        if event.version and (held is None or event.moment >= held.moment):
            latest[(event.model, event.version)] = event
    for event in latest.values():
        if _latest_on_version(client, event):
            _tag_version(client, event)
    return filled


def _tag_version(client: MlflowClient, event: AuditEvent) -> None:
    tags = {
        "audit.kind": event.kind,
        "audit.decision": event.decision,
        "audit.reason": event.reason[: tracking.TAG_VALUE_LIMIT],
        "audit.time": event.time,
    }
    for key, value in tags.items():
        client.set_model_version_tag(event.model, event.version, key, value)


def _latest_on_version(client: MlflowClient, event: AuditEvent) -> bool:
    """Whether ``event`` is no older than the decision its version's tags hold (a canary
    step recorded after the fact is not its latest)."""
    held = client.get_model_version(event.model, event.version).tags.get("audit.time", "")
    try:
        return not held or event.moment >= dt.datetime.fromisoformat(held)
    except (TypeError, ValueError):  # a tag someone else wrote: this event replaces it
        return True


def read_events(
    client: MlflowClient, run_id: str, unreadable: list[str] | None = None
) -> list[AuditEvent]:
    """Every event under a run's ``audit/``, in time order; a file that is no event is
    left out, and named in ``unreadable`` when given."""
    listed = client.list_artifacts(run_id, AUDIT_DIR)
    if not listed:
        return []
    events = []
    with tempfile.TemporaryDirectory(prefix="audit-") as scratch:
        local = Path(client.download_artifacts(run_id, AUDIT_DIR, scratch))
        for path in sorted(local.glob("*.json")):
            where = f"run {run_id}: {AUDIT_DIR}/{path.name}"
            try:
                events.append(AuditEvent.from_json(path.read_text(encoding="utf-8"), where))
            except (ConveyorError, UnicodeDecodeError) as error:
                if unreadable is not None:
                    unreadable.append(str(error) if isinstance(error, ConveyorError) else
                                      f"{where}: not UTF-8 text")  # fmt: skip
    return sorted(events, key=_time)


def timeline(
    client: MlflowClient, model: str, version: str = "", unreadable: list[str] | None = None
) -> list[AuditEvent]:
    """A model's events from every training run of its experiment, in time order; with
    ``version``, those of the run that produced it and those naming it, then the rollout
    that replaced it as champion, if one has. Files under ``audit/`` that are no event
    are left out, and named in ``unreadable`` when given.

    Raises:
        ConveyorError: No such model, or no such version of it.
    """
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(model)
    try:
        found = client.search_model_versions(f"name='{model}'")
    except MlflowException as error:
        raise ConveyorError(
            f"MLflow could not look up model {model!r}: {first_line(error)}"
        ) from None
    versions = {str(v.version): v.run_id for v in found}
    if experiment is None and not versions:
        raise ConveyorError(f"no model {model!r} in MLflow at {client.tracking_uri}")
    if version and version not in versions:
        known = ", ".join(sorted(versions, key=int)) or "none"
        raise ConveyorError(f"model {model!r} has no version {version!r} (versions: {known})")
    runs = [run.info.run_id for run in _runs(client, experiment)] if experiment else []
    runs += [run for run in versions.values() if run not in runs]
    by_run = {run: read_events(client, run, unreadable) for run in runs}
    events = sorted((e for run_events in by_run.values() for e in run_events), key=_time)
    if not version:
        return events
    own = [e for e in by_run[versions[version]] if e.version in ("", version)]
    return sorted(own + _replaced(events, version), key=_time)


def _time(event: AuditEvent) -> dt.datetime:
    return event.moment


def _replaced(events: list[AuditEvent], version: str) -> list[AuditEvent]:
    """The first rollout that made another version champion after ``version`` was."""
    became = [e.moment for e in events if _champion_after(e) == version]
    if not became:
        return []
    later = [e for e in events if e.moment > became[-1] and _champion_after(e) not in ("", version)]
    return later[:1]


def _champion_after(event: AuditEvent) -> str:
    """The champion an event left (a registration or a rollout's outcome), or ""."""
    if event.kind == "registration" and event.decision == "champion":
        return event.version
    if event.kind == "rollout" and not event.decision.startswith("canary"):
        return str(event.measurements.get("champion_after", ""))
    return ""


def _runs(client: MlflowClient, experiment: Any) -> list[Any]:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment.experiment_id], max_results=500, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs
