"""``conveyor validate``, ``conveyor drift``, ``conveyor quality`` and ``conveyor shadow``: a
table checked against a schema, a current table compared with a reference, labels joined to
a model's logged predictions, and a challenger replayed against the champion on its logged
inputs, from a shell or a CI job.

Each exits 0 when the data is fine, 3 when it is not (a rule that fails the run is broken,
the dataset drifted, an online metric degraded, the challenger failed the shadow gate), and
2 when it could not tell (an unreadable file, a bad option, labels that match no logged
prediction).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from conveyor.components.core.errors import ConveyorError

__all__ = ["DATA_FAILED", "add_commands", "add_label_option"]

DATA_FAILED = 3


def add_label_option(parser: Any, help_text: str, default: str | None = None) -> None:
    """``--label COLUMN``, the table's label column, on ``parser`` (or an argument group);
    ``--target``, its older name, still works but says to use ``--label``. Given both, the
    command ends with one line naming them (exit 2) rather than keep whichever came last."""
    parser.add_argument("--label", default=default, metavar="COLUMN", action=_Label, help=help_text)
    parser.add_argument(
        "--target", dest="label", default=default, action=_DeprecatedLabel, help=argparse.SUPPRESS
    )


# Where the namespace records which of --label and --target was given (per parse, so a
# parser parsed twice does not remember the first command line).
_LABEL_FLAG = "_label_flag"
# --<role>-column options of validate --write-schema -> what naming a column there means.
_DECLARED_ROLES = {
    "id": "a column identifying a row: never a feature, checked unique",
    "exclude": "a column never used as a feature",
    "text": "a free-text column to learn from (free text is left out otherwise)",
}


class _Label(argparse.Action):
    """``--label``: stored, unless ``--target`` already named the label column."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
        option_string: str | None = None,
    ) -> None:  # fmt: skip
        _store_label(parser, namespace, self.dest, values, option_string or "--label")


class _DeprecatedLabel(argparse.Action):
    """``--target`` where it meant the label column: stored as ``--label``, with a line on
    stderr, since ``--target`` is the platform in submit, schedule and publish."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
        option_string: str | None = None,
    ) -> None:  # fmt: skip
        _store_label(parser, namespace, self.dest, values, option_string or "--target")
        print(
            f"{parser.prog}: --target is deprecated for the label column; use --label",
            file=sys.stderr,
        )


def _store_label(
    parser: argparse.ArgumentParser, namespace: argparse.Namespace, dest: str, value: Any,
    flag: str,
) -> None:  # fmt: skip
    """Stores the label column; ends the command (exit 2, one line) when the other of
    ``--label`` and ``--target`` gave it too, as the last one would silently win."""
    given = getattr(namespace, _LABEL_FLAG, flag)
    if given != flag:
        parser.exit(
            2,
            f"{parser.prog}: --label and --target both name the label column; give --label only\n",
        )
    setattr(namespace, _LABEL_FLAG, flag)
    setattr(namespace, dest, value)


def add_commands(commands: Any) -> None:
    """Adds validate, drift, quality and shadow to the ``conveyor`` sub-command parsers."""
    _add_validate(commands)
    _add_drift(commands)
    _add_quality(commands)
    _add_shadow(commands)


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
    add_label_option(written, "the label column, if the table has one", default="")
    written.add_argument("--segment", default="", help="also check rules within each value")
    written.add_argument(
        "--key", action="append", default=[], metavar="COLUMN",
        help="a column of the key that must be unique (repeat for a key of several)",
    )  # fmt: skip
    for role, meaning in _DECLARED_ROLES.items():
        written.add_argument(
            f"--{role}-column", action="append", default=[], metavar="COLUMN", dest=role,
            help=f"{meaning} (repeatable; otherwise each column's role is decided from it)",
        )  # fmt: skip
    validate.add_argument(
        "--inputs", action="store_true",
        help="the table holds model inputs only (a payload log): no label column expected",
    )  # fmt: skip
    validate.add_argument("--report", type=Path, help="write the Markdown report here")
    validate.set_defaults(handler=_validate)


def _validate(args: argparse.Namespace) -> int:
    from conveyor.components.core.data.roles import DeclaredRoles
    from conveyor.components.core.data.validation import validate_file, write_schema

    if not args.write_schema and (
        args.label or args.segment or args.key or any(getattr(args, r) for r in _DECLARED_ROLES)
    ):
        raise ConveyorError(
            "--label, --segment, --key and --*-column describe a new schema: add --write-schema"
        )
    if args.write_schema:
        declared = DeclaredRoles(tuple(args.id), tuple(args.exclude), tuple(args.text))
        result = write_schema(
            args.data,
            args.schema,
            args.label,
            args.segment,
            tuple(args.key),
            args.report,
            declared,
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
    drift.add_argument(
        "--exclude", action="append", default=[], metavar="COLUMN",
        help="a column not compared (an id, the label); repeatable",
    )  # fmt: skip
    drift.add_argument(
        "--threshold", action="append", default=[], metavar="TEST=VALUE",
        help="psi, ks, chisquare or jensenshannon (defaults 0.1, 0.05, 0.05, 0.1)",
    )  # fmt: skip
    drift.add_argument("--numeric-test", default="psi", help="decides numeric columns")
    drift.add_argument(
        "--categorical-test", default="jensenshannon", help="decides categorical columns"
    )
    drift.add_argument(
        "--drift-share", type=float, default=0.5, help="with --rule share: the share that drifts"
    )
    drift.add_argument(
        "--importance", type=Path, metavar="FILE",
        help="importance.json (its shares) weighing each column; default: all weigh the same",
    )  # fmt: skip
    drift.add_argument(
        "--rule", default="importance", choices=["importance", "share"],
        help="importance: a column weighing --importance-threshold, or drifted "
        "columns weighing --weighted-share together; share: --drift-share of the columns",
    )  # fmt: skip
    drift.add_argument(
        "--importance-threshold", type=float, default=0.1,
        help="with --rule importance: drift when one drifted column weighs at least this",
    )  # fmt: skip
    drift.add_argument(
        "--weighted-share", type=float, default=0.3,
        help="with --rule importance: drift when the drifted columns together weigh at "
        "least this",
    )  # fmt: skip
    drift.add_argument(
        "--alpha", default="0.01",
        help="false-alarm rate for sampling noise, shared by all column tests; off: none",
    )  # fmt: skip
    drift.add_argument("--report", type=Path, help="write Evidently's HTML report here")
    drift.add_argument("--sample-rows", type=int, default=50_000, help="rows the report renders")
    drift.add_argument(
        "--min-segment-rows", type=int, default=100, help="smaller segments are not tested"
    )
    drift.set_defaults(handler=_drift)


def _drift(args: argparse.Namespace) -> int:
    from conveyor.components.core.monitoring.drift import DriftSettings, load_importance
    from conveyor.components.core.monitoring.drift_report import (
        DriftOutputs,
        describe,
        detect_drift,
        table_lines,
    )
    from conveyor.pipelines.definitions.parameters import option_pairs

    thresholds = {}
    for test, value in option_pairs(args.threshold, "--threshold", "TEST=NUMBER").items():
        try:
            thresholds[test] = float(value)
        except ValueError:
            raise ConveyorError(f"--threshold {test}={value}: not a number") from None
    settings = DriftSettings(
        thresholds, args.numeric_test, args.categorical_test, args.drift_share,
        args.min_segment_rows,
        importance=load_importance(args.importance) if args.importance else {},
        importance_threshold=args.importance_threshold, weighted_share=args.weighted_share,
        rule=args.rule, alpha=_alpha(args.alpha),
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


def _alpha(value: str) -> float | None:
    if value.strip().lower() == "off":
        return None
    try:
        return float(value)
    except ValueError:
        raise ConveyorError(f"--alpha {value}: expected a number in (0, 1) or off") from None


def _add_quality(commands: Any) -> None:
    quality = commands.add_parser(
        "quality",
        help="join labels to a model's logged predictions and judge its online metrics "
        "against its offline evaluation; exit 0 when none degraded, 3 when one did",
    )
    quality.add_argument("--model", required=True, help="the registered model's name")
    quality.add_argument(
        "--log", required=True, help="the payload log: its folder of day folders, a folder or file"
    )
    quality.add_argument("--labels", required=True, help="CSV or Parquet path or URI")
    quality.add_argument("--segment", default="", help="also judge within each value")
    quality.add_argument(
        "--days", type=int, default=7,
        help="the last N days of the log; a label more than N days late is counted late (0: all)",
    )  # fmt: skip
    quality.add_argument("--id-column", default="id", help="the labels' id column")
    quality.add_argument("--label-column", default="label", help="the labels' label column")
    quality.add_argument(
        "--margin", type=float, default=0.02,
        help="how far past the offline value an interval must lie to degrade (absolute)",
    )  # fmt: skip
    quality.add_argument("--report", type=Path, help="write the Markdown report here")
    quality.add_argument("--html", type=Path, help="write the HTML charts here")
    offline = quality.add_mutually_exclusive_group()
    offline.add_argument(
        "--mlflow-tracking-uri", default="",
        help="where the champion is (default: $MLFLOW_TRACKING_URI): its evaluation scores "
        "give the offline metrics per segment; without them, its offline metrics, as exact",
    )  # fmt: skip
    offline.add_argument(
        "--reference-scores", type=Path,
        help="the champion's evaluation scores (train's scores.parquet, with its labels) instead",
    )  # fmt: skip
    offline.add_argument(
        "--offline", type=Path,
        help="offline metrics as a JSON file of metric -> value instead, taken as exact "
        "(every segment judged against them)",
    )  # fmt: skip
    quality.set_defaults(handler=_quality)


def _quality(args: argparse.Namespace) -> int:
    from conveyor.components.core.monitoring.quality import (
        QualitySettings,
        assess_quality,
        champion_scores,
        has_labels,
        offline_metrics,
        read_offline,
    )
    from conveyor.components.core.monitoring.quality_report import (
        QualityOutputs,
        describe,
        table_lines,
        write_outputs,
    )
    from conveyor.components.core.training.importance import LABEL_COLUMN, read_reference_scores

    settings = QualitySettings(
        id_column=args.id_column, label_column=args.label_column, segment=args.segment,
        days=args.days, margin=args.margin,
    )  # fmt: skip
    scores, offline = None, {}
    if args.offline:
        offline = read_offline(args.offline)
    elif args.reference_scores:
        scores = read_reference_scores(args.reference_scores)
        if scores is None:
            raise ConveyorError(f"{args.reference_scores}: no such file, or an empty one")
        if not has_labels(scores):
            raise ConveyorError(
                f"{args.reference_scores}: no {LABEL_COLUMN} column (evaluation scores recorded "
                "before train kept the labels, or not a scores file); give --offline instead"
            )
    else:
        scores = champion_scores(args.mlflow_tracking_uri, args.model)
        if not has_labels(scores):
            offline = offline_metrics(args.mlflow_tracking_uri, args.model)
    report = assess_quality(args.log, args.labels, args.model, offline, settings, scores)
    write_outputs(report, QualityOutputs(markdown=args.report, html=args.html))
    print("\n".join(table_lines(report)))
    print(describe(report))
    for path in (args.report, args.html):
        if path:
            print(f"Report: {path}")
    return DATA_FAILED if report.degraded else 0


def _add_shadow(commands: Any) -> None:
    shadow = commands.add_parser(
        "shadow",
        help="replay a model's logged inputs through its champion and a challenger; exit 0 "
        "when the challenger passes the shadow gate, 3 when it fails",
    )
    shadow.add_argument("--model", required=True, help="the registered model's name")
    shadow.add_argument(
        "--challenger", required=True,
        help="a model directory (train's output, or a store's copy) or the MLflow run id "
        "that logged one",
    )  # fmt: skip
    shadow.add_argument(
        "--inputs", required=True,
        help="the champion's payload log: its folder of day folders, a folder or a file",
    )  # fmt: skip
    shadow.add_argument("--labels", default="", help="labels of logged requests (CSV or Parquet)")
    shadow.add_argument("--id-column", default="id", help="the labels' id column")
    shadow.add_argument("--label-column", default="label", help="the labels' label column")
    shadow.add_argument("--days", type=int, default=7, help="the last N days of the log (0: all)")
    shadow.add_argument("--segment", default="", help="also compare within each value")
    shadow.add_argument(
        "--policy", action="append", default=[], metavar="KEY=VALUE",
        help="a gate threshold (max_disagreement, max_relative_difference, max_score_shift, "
        "max_metric_drop, max_latency_ratio, confidence, min_rows); repeat for more",
    )  # fmt: skip
    shadow.add_argument(
        "--show-rows", type=int, default=0,
        help="list this many rows where the models differ most (production inputs)",
    )  # fmt: skip
    shadow.add_argument(
        "--mlflow-tracking-uri", default="",
        help="where the champion is registered (default: $MLFLOW_TRACKING_URI)",
    )  # fmt: skip
    shadow.add_argument("--report", type=Path, help="write the Markdown report here")
    shadow.add_argument("--html", type=Path, help="write the HTML page here")
    shadow.add_argument("--summary", type=Path, help="write the JSON summary here")
    shadow.set_defaults(handler=_shadow)


def _shadow(args: argparse.Namespace) -> int:
    from conveyor.components.core.monitoring.shadow import (
        ShadowPolicy,
        ShadowRun,
        ShadowSettings,
        replay_against_champion,
    )
    from conveyor.components.core.monitoring.shadow_report import (
        ShadowOutputs,
        table_lines,
        write_outputs,
    )

    settings = ShadowSettings(
        days=args.days, segment=args.segment, show_rows=args.show_rows,
        id_column=args.id_column, label_column=args.label_column,
    )  # fmt: skip
    run = ShadowRun(
        model=args.model,
        log_uri=args.inputs,
        tracking_uri=args.mlflow_tracking_uri,
        policy=ShadowPolicy.from_dict(dict(map(_policy_setting, args.policy))),
        settings=settings,
        labels_uri=args.labels,
    )
    report = replay_against_champion(_challenger(args.challenger, run.tracking_uri), run)
    write_outputs(report, ShadowOutputs(args.report, args.html, args.summary))
    print("\n".join(table_lines(report)))
    print(report.reason)
    for path in (args.report, args.html, args.summary):
        if path:
            print(f"Report: {path}")
    return 0 if report.passed else DATA_FAILED


def _policy_setting(text: str) -> tuple[str, float | int]:
    """``max_disagreement=0.05`` as a name and a number (``min_rows`` an integer)."""
    name, separator, value = text.partition("=")
    if not separator:
        raise ConveyorError(f"--policy {text!r}: expected KEY=VALUE")
    try:
        return name, int(value) if name == "min_rows" else float(value)
    except ValueError:
        raise ConveyorError(f"--policy {text!r}: {value!r} is not a number") from None


def _challenger(source: str, tracking_uri: str) -> Any:
    """The challenger: a model directory, else the model an MLflow run logged."""
    from conveyor.components.core.training import tracking
    from conveyor.components.core.training.registry import load_run_model
    from conveyor.components.core.training.trainer import MODEL_CARD, load_model_dir

    if (Path(source) / MODEL_CARD).is_file():
        return load_model_dir(Path(source))
    if Path(source).exists():
        raise ConveyorError(f"--challenger {source}: a folder without a {MODEL_CARD}")
    return load_run_model(tracking.connect(tracking_uri), source)
