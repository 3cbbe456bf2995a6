"""``conveyor audit``: a model's decisions, in time order, from its MLflow runs."""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["add_commands"]


def add_commands(commands: Any) -> None:
    """Adds audit to the ``conveyor`` sub-command parsers."""
    audit = commands.add_parser(
        "audit",
        help="print a model's timeline: which data and run produced each version, what "
        "each gate decided and why, and what replaced it",
    )
    audit.add_argument("--model", required=True, help="the registered model's name")
    audit.add_argument("--version", default="", help="only this version's events")
    audit.add_argument("--json", action="store_true", help="one JSON event per line")
    audit.add_argument("--mlflow-tracking-uri", default="", help="default: $MLFLOW_TRACKING_URI")
    audit.set_defaults(handler=_audit)


def _audit(args: argparse.Namespace) -> int:
    from conveyor.components.core.audit import timeline
    from conveyor.components.core.training import tracking

    unreadable: list[str] = []
    client = tracking.connect(args.mlflow_tracking_uri)
    events = timeline(client, args.model, args.version, unreadable)
    for problem in unreadable:
        print(f"conveyor audit: left out {problem}", file=sys.stderr)
    if args.json:
        print("\n".join(event.to_json(indent=None) for event in events))
        return 0
    produced = {(e.pipeline_run, e.data_hash) for e in events if e.kind == "blessing"}
    print(f"{args.model}{f' version {args.version}' if args.version else ''}: "
          f"{len(events)} decisions from {len(produced)} training runs")  # fmt: skip
    for event in events:
        print(event.line())
        if event.kind == "blessing":
            print(f"{'':27}run {event.pipeline_run or '-'}, data {event.data_hash[:16] or '-'}")
    return 0
