"""The audit trail's events: they check themselves, survive concurrent writers, and read
back as a timeline that names what replaced a version."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conveyor.components.core.audit import AuditEvent, read_events, record_event, timeline
from conveyor.components.core.errors import ConveyorError
from conveyor.pipelines.cli import main

NAME = "audited"


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"kind": ""}, "audit event kind must be non-empty text"),
        ({"decision": ""}, "audit event decision must be non-empty text"),
        ({"reason": None}, "audit event reason must be text"),
        ({"time": "2026-12-04T10:00:00"}, "expected a time zone"),
        ({"time": "yesterday"}, "expected ISO 8601"),
    ],
)
def test_an_event_checks_itself(change: dict, named: str) -> None:
    fields = {"kind": "blessing", "decision": "blessed", "reason": "ok", "model": NAME,
              "step": "evaluate", **change}  # fmt: skip
    with pytest.raises(ConveyorError, match=named):
        AuditEvent(**fields)


def test_a_reason_is_one_line_and_the_json_strict() -> None:
    """A reason quoting production values (a segment "a\nb") still reads as one line; a
    NaN measured is written as null, so every line of `audit --json` parses."""
    event = AuditEvent(kind="shadow", decision="failed", reason="segment 'a\nb':\n 12 %",
                       model=NAME, step="shadow", measurements={"psi": float("nan")})  # fmt: skip
    assert event.reason == "segment 'a b': 12 %"
    assert json.loads(event.to_json(), parse_constant=pytest.fail)["measurements"] == {"psi": None}
    newer = AuditEvent.from_json(event.to_json().replace('"shadow"', '"explanation"', 1), "here")
    assert newer.kind == "explanation"  # a newer Conveyor's kind reads; it is never written


def test_a_file_that_is_no_event_is_named() -> None:
    with pytest.raises(ConveyorError, match=r"^run r: audit/x.json: not JSON"):
        AuditEvent.from_json("{", "run r: audit/x.json")
    with pytest.raises(ConveyorError, match=r"^here: audit event decision must be"):
        AuditEvent.from_json('{"kind": "drift", "decision": "", "reason": "r", "model": "m", '
                             '"step": "s"}', "here")  # fmt: skip


def _registered(client: MlflowClient, tmp_path: Path, tag: str) -> tuple[str, str]:
    """A training run and the version registered from it."""
    experiment = client.get_experiment_by_name(NAME)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(NAME)
    run = client.create_run(experiment_id, tags={"pipeline_run_id": tag, "data_hash": "d" * 64})
    client.log_text(run.info.run_id, "model", "model/file.txt")
    if not client.search_registered_models(f"name = '{NAME}'"):
        client.create_registered_model(NAME)
    version = client.create_model_version(NAME, f"runs:/{run.info.run_id}/model", run.info.run_id)
    return run.info.run_id, str(version.version)


def test_concurrent_writers_lose_no_event_and_the_timeline_names_the_successor(
    mlflow_server: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    client = MlflowClient(mlflow_server)
    first_run, first = _registered(client, tmp_path, "pipeline-1")

    def bless(number: int) -> None:
        record_event(client, first_run, AuditEvent(
            kind="drift", decision="no drift", reason=f"look {number}", model=NAME, step="drift"))  # fmt: skip

    writers = [threading.Thread(target=bless, args=(n,)) for n in range(8)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    assert sorted(e.reason for e in read_events(client, first_run)) == [
        f"look {n}" for n in range(8)
    ]
    assert {e.pipeline_run for e in read_events(client, first_run)} == {"pipeline-1"}

    record_event(client, first_run, AuditEvent(
        kind="rollout", decision="created", reason="first deploy", model=NAME, step="deploy",
        version=first, measurements={"champion_after": first}))  # fmt: skip
    tags = client.get_model_version(NAME, first).tags
    assert (tags["audit.kind"], tags["audit.decision"]) == ("rollout", "created")
    second_run, second = _registered(client, tmp_path, "pipeline-2")
    record_event(client, second_run, AuditEvent(
        kind="rollout", decision="promoted", reason="every step passed", model=NAME,
        step="deploy", version=second, measurements={"champion_after": second}))  # fmt: skip

    assert [e.decision for e in timeline(client, NAME)][-2:] == ["created", "promoted"]
    # Version 1's own events, then what replaced it; version 2's, and nothing after.
    own = timeline(client, NAME, first)
    assert [(e.version, e.decision) for e in own][-2:] == [(first, "created"), (second, "promoted")]
    assert len(own) == 10
    assert [(e.version, e.decision) for e in timeline(client, NAME, second)] == [
        (second, "promoted")
    ]

    with pytest.raises(ConveyorError, match=r"^audit event kind 'promotion': expected one of"):
        record_event(client, first_run, AuditEvent(
            kind="promotion", decision="d", reason="r", model=NAME, step="deploy"))  # fmt: skip
    # A file under audit/ that is no event is left out of the timeline, and named.
    client.log_text(first_run, "\u00e9t\u00e9", "audit/notes.json")
    unreadable: list[str] = []
    assert len(timeline(client, NAME, first, unreadable)) == len(own)
    assert unreadable == [f"run {first_run}: audit/notes.json: not JSON (Expecting value)"]

    with pytest.raises(ConveyorError, match=r"^no model 'nobody' in MLflow at "):
        timeline(client, "nobody")
    audit = ["audit", "--mlflow-tracking-uri", mlflow_server, "--model"]
    capsys.readouterr()
    assert main([*audit, "nobody"]) == 2
    assert capsys.readouterr().err.startswith("conveyor audit: no model 'nobody'")
    assert main([*audit, NAME, "--version", "9"]) == 2
    assert f"model '{NAME}' has no version '9' (versions: 1, 2)" in capsys.readouterr().err
