"""``conveyor validate`` and ``conveyor drift``: a table checked against a schema, and a
current table compared with a reference, from a shell or a CI job.

Both exit 0 when the data is fine, 3 when it is not (a rule that fails the run is broken, or
the dataset drifted), and 2 when they could not tell (an unreadable file, a bad option).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from components.core.errors import ConveyorError

__all__ = ["DATA_FAILED", "add_commands"]

DATA_FAILED = 3


def add_commands(commands: Any) -> None:
    """Adds validate and drift to the ``conveyor`` sub-command parsers."""
    _add_validate(commands)
    _add_drift(commands)


def _add_validate(commands: Any) -> None:
    validate = commands.add_parser(
        "validate",
        help="check a table against a schema file (or write one); exit 0 when it passes, 3 not",
    )
    validate.add_argument("--data", required=True, help="CSV or Parquet path or URI")
    validate.add_argument("--schema", required=True, type=Path, help="the schema JSON file")
    validate.add_argument(
        "--write-schema", action="store_true",
        help="infer the schema from --data and write it to --schema, to edit and commit",
    )  # fmt: skip
    written = validate.add_argument_group("with --write-schema")
    written.add_argument("--target", default="", help="the label column, if the table has one")
    written.add_argument("--segment", default="", help="also check rules within each value")
    written.add_argument(
        "--key", action="append", default=[], metavar="COLUMN",
        help="a column of the key that must be unique (repeat for a key of several)",
    )  # fmt: skip
    validate.add_argument(
        "--inputs", action="store_true",
        help="the table holds model inputs only (a payload log): no target column expected",
    )  # fmt: skip
    validate.add_argument("--report", type=Path, help="write the Markdown report here")
    validate.set_defaults(handler=_validate)


def _validate(args: argparse.Namespace) -> int:
    from components.core.validation import validate_file, write_schema

    if not args.write_schema and (args.target or args.segment or args.key):
        raise ConveyorError(
            "--target, --segment and --key describe a new schema: add --write-schema"
        )
    if args.write_schema:
        result = write_schema(
            args.data, args.schema, args.target, args.segment, tuple(args.key), args.report
        )
    else:
        result = validate_file(args.data, args.schema, args.inputs, args.report)
    for violation in result.errors + result.warnings:
        print(f"{violation.severity:<8} {violation}")
    if result.errors:
        print(f"Failed: {len(result.errors)} rule(s) violated, {len(result.warnings)} warning(s)")
        return DATA_FAILED
    done = f"Wrote {args.schema}" if args.write_schema else "Passed"
    print(f"{done}: {len(result.schema.columns)} columns, {len(result.warnings)} warning(s)")
    return 0


def _add_drift(commands: Any) -> None:
    drift = commands.add_parser(
        "drift",
        help="compare a current table with a reference; exit 0 without drift, 3 with drift",
    )
    drift.add_argument("--reference", required=True, help="CSV or Parquet path or URI")
    drift.add_argument("--current", required=True, help="CSV or Parquet path or URI")
    drift.add_argument("--segment", default="", help="also judge columns within each value")
    drift.add_argument("--exclude", action="append", default=[], metavar="COLUMN")
    drift.add_argument(
        "--threshold", action="append", default=[], metavar="TEST=VALUE",
        help="psi, ks, chisquare or jensenshannon (defaults 0.1, 0.05, 0.05, 0.1)",
    )  # fmt: skip
    drift.add_argument("--numeric-test", default="psi", help="decides numeric columns")
    drift.add_argument(
        "--categorical-test", default="jensenshannon", help="decides categorical columns"
    )
    drift.add_argument("--drift-share", type=float, default=0.5)
    drift.add_argument("--report", type=Path, help="write Evidently's HTML report here")
    drift.add_argument("--sample-rows", type=int, default=50_000, help="rows the report renders")
    drift.add_argument(
        "--min-segment-rows", type=int, default=100, help="smaller segments are not tested"
    )
    drift.set_defaults(handler=_drift)


def _drift(args: argparse.Namespace) -> int:
    from components.core.drift import DriftSettings
    from components.core.drift_report import DriftOutputs, describe, detect_drift, table_lines
    from pipelines.parameters import option_pairs

    thresholds = {}
    for test, value in option_pairs(args.threshold, "--threshold", "TEST=NUMBER").items():
        try:
            thresholds[test] = float(value)
        except ValueError:
            raise ConveyorError(f"--threshold {test}={value}: not a number") from None
    settings = DriftSettings(
        thresholds, args.numeric_test, args.categorical_test, args.drift_share,
        args.min_segment_rows,
    )  # fmt: skip
    outputs = DriftOutputs(html=args.report, sample_rows=args.sample_rows)
    segment = args.segment or None
    report, note = detect_drift(
        args.reference, args.current, settings, segment, tuple(args.exclude), outputs
    )
    print("\n".join(table_lines(report)))
    print(describe(report))
    if args.report:
        print(f"Report: {args.report}{f' ({note})' if note else ''}")
    return DATA_FAILED if report.dataset_drifted else 0
