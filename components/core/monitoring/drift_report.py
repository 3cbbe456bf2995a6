"""What a drift comparison is read as: a sentence, a terminal table, Markdown for the KFP
UI, a JSON summary, and Evidently's HTML report (``detect_drift`` writes them)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from conveyor.components.core.data.roles import Role
from conveyor.components.core.errors import ConveyorError, first_line
from conveyor.components.core.files import write_atomically, write_text_atomically
from conveyor.components.core.monitoring.drift import (
    DRIFTS_WHEN,
    TESTS,
    ColumnDrift,
    DriftReport,
    DriftSettings,
    compare_tables,
)

__all__ = [
    "DriftOutputs",
    "describe",
    "detect_drift",
    "markdown",
    "render_report",
    "step_metrics",
    "table_lines",
    "write_outputs",
]


@dataclass(frozen=True)
class DriftOutputs:
    """Where ``detect_drift`` writes: Evidently's HTML report (rendered on at most
    ``sample_rows`` rows per table), the Markdown report, the JSON summary."""

    html: Path | None = None
    markdown: Path | None = None
    summary: Path | None = None
    sample_rows: int = 50_000


def detect_drift(
    reference: str,
    current: str,
    settings: DriftSettings,
    segment: str | None,
    exclude: tuple[str, ...],
    outputs: DriftOutputs,
    roles: dict[str, Role] | None = None,
) -> tuple[DriftReport, str]:
    """Reads both tables (CSV or Parquet, any URI ``load_table`` reads), compares them (each
    column's role ``roles``', as the reference's schema records them, else decided on the
    reference), and writes the outputs that are set; returns the report and a note on how
    Evidently's was rendered. Nothing is written when a table cannot be compared."""
    from conveyor.components.core.data.tables import Source, load_table

    reference_table = load_table(Source(reference))
    current_table = load_table(Source(current))
    report = compare_tables(reference_table, current_table, settings, segment, exclude, roles)
    return report, write_outputs(report, reference_table, current_table, outputs)


def write_outputs(
    report: DriftReport, reference: pd.DataFrame, current: pd.DataFrame, outputs: DriftOutputs
) -> str:
    """Writes the outputs that are set (Evidently's HTML rendered on ``reference`` and
    ``current``, or samples of them); returns the note on how Evidently's was rendered."""
    note = ""
    if outputs.html:
        note = render_report(reference, current, report, outputs.html, outputs.sample_rows)
    if outputs.markdown:
        write_text_atomically(outputs.markdown, markdown(report, note))
    if outputs.summary:
        summary = {"verdict": describe(report), **report.to_dict()}
        write_text_atomically(outputs.summary, json.dumps(summary, indent=2))
    return note


def step_metrics(report: DriftReport) -> dict[str, float]:
    """What a drift step logs as KFP Metrics: each column's deciding score as
    ``<column>.<test>``, then ``drifted_share``, ``weighted_drifted_share`` and
    ``drifted_columns``."""
    scores = {f"{c.column}.{c.deciding_test}": c.score for c in report.overall}
    return {
        **scores,
        "drifted_share": report.drifted_share,
        "weighted_drifted_share": report.weighted_drifted_share,
        "drifted_columns": len(report.drifted_columns),
    }


def describe(report: DriftReport) -> str:
    """The verdict in one sentence: how many columns drifted, each with its importance and
    where, and which rule decided."""
    drifted, importance = report.drifted_columns, report.importance
    verdict = "Drift" if report.dataset_drifted else "No dataset drift"
    listed = ", ".join(
        f"{name} (importance {importance[name]:.0%}; "
        f"{', '.join(report.place(where) for where in report.drifted_in(name))})"
        for name in drifted
    )
    return (
        f"{verdict}: {len(drifted)} of {len(report.overall)} columns drifted "
        f"({report.drifted_share:.0%}){': ' + listed if listed else ''}; "
        f"decided {report.rule_reason}"
    )


def _verdict(result: ColumnDrift) -> str:
    if result.drifted:
        return "DRIFT"
    return "noise" if result.passes_threshold else "ok"  # past its threshold, within noise


def table_lines(report: DriftReport) -> list[str]:
    """One aligned line per column, and per segment where a column drifted or passed its
    threshold: importance, kind, null shares, every score, the deciding test, the noise
    test's p-value and the verdict (``noise``: past the threshold, within sampling noise);
    then why the verdict went as it did, and what was not tested."""
    header = (
        f"{'column':<22} {'segment':<12} {'importance':>10} {'kind':<11} {'nulls':>11} "
        + " ".join(f"{test:>13}" for test in TESTS)
    )
    lines = [header + "  decided by     noise p  verdict"]
    importance = report.importance
    for result in report.columns:
        if result.segment is not None and not result.passes_threshold:
            continue
        scores = " ".join(
            f"{result.scores[test]:>13.4g}" if test in result.scores else f"{'-':>13}"
            for test in TESTS
        )
        nulls = f"{result.reference_nulls:.0%}>{result.current_nulls:.0%}"
        lines.append(
            f"{result.column:<22} {result.segment or '(all)':<12} "
            f"{importance[result.column]:>10.0%} {result.kind:<11} {nulls:>11} {scores}  "
            f"{result.deciding_test:<14} {result.noise_p_value:>7.2g}  {_verdict(result)}"
        )
    lines += [f"why: {line}" for line in report.column_reasons]
    return lines + [f"not tested: {line}" for line in report.skipped]


def markdown(report: DriftReport, note: str = "") -> str:
    """A report a person reads in the KFP UI: the verdict, what drift means, a row per
    column (and per segment), and what was not tested."""
    settings, importance = report.settings, report.importance
    rows = [
        "| column | segment | importance | kind | nulls (reference → current) | "
        + " | ".join(TESTS)
        + " | decided by | noise p | verdict |",
        "|---|---|---:|---|---|" + "---:|" * len(TESTS) + "---|---:|---|",
    ]
    verdicts = {"DRIFT": "**drift**", "noise": "within noise", "ok": "ok"}
    for result in report.columns:
        scores = " | ".join(
            f"{result.scores[test]:.4g}" if test in result.scores else "" for test in TESTS
        )
        rows.append(
            f"| {result.column} | {result.segment or 'all'} | "
            f"{importance[result.column]:.1%} | {result.kind} | "
            f"{result.reference_nulls:.1%} → {result.current_nulls:.1%} | {scores} | "
            f"{result.deciding_test} | {result.noise_p_value:.2g} | "
            f"{verdicts[_verdict(result)]} |"
        )
    limits = ", ".join(f"{test} {DRIFTS_WHEN[test]} {settings.threshold(test)}" for test in TESTS)
    noise = (
        "and its counts differ beyond sampling noise (a two-sample test's p-value at or "
        f"below {settings.alpha:g} over the run's {report.tests} tests)"
        if settings.alpha is not None
        else "(no noise test)"
    )
    parts = [
        "# Data drift",
        f"**{describe(report)}.**",
        "Why:\n\n" + "\n".join(f"- {line}" for line in report.column_reasons),
        f"A column drifts when its deciding score passes its threshold ({limits}) {noise}; "
        f"numeric columns are decided by {settings.numeric_test}, categorical ones by "
        f"{settings.categorical_test}.",
        "\n".join(rows),
    ]
    if report.skipped:
        parts.append("Not tested:\n\n" + "\n".join(f"- {line}" for line in report.skipped))
    if report.approximations:
        parts.append(
            "Measured from partition summaries, where a verdict may differ from the whole "
            "table's:\n\n" + "\n".join(f"- {line}" for line in report.approximations)
        )
    return "\n\n".join(parts + ([note] if note else [])) + "\n"


def render_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    report: DriftReport,
    path: Path,
    sample_rows: int = 50_000,
    seed: int = 0,
) -> str:
    """Evidently's drift report as HTML at ``path``, for the columns ``report`` tested,
    told their kinds, deciding tests and thresholds; above ``sample_rows`` rows a table is
    sampled (seeded), and the page says so at its top. Returns a note on what was rendered."""
    notes = []
    if max(len(reference), len(current)) > sample_rows:
        reference = reference.sample(min(len(reference), sample_rows), random_state=seed)
        current = current.sample(min(len(current), sample_rows), random_state=seed)
        notes.append(
            f"Evidently's report is rendered on a seeded sample of {sample_rows:,} rows per "
            "table; the verdicts and statistics of Conveyor's report are computed on every row."
        )
    kinds = report.kinds
    empty = [name for name in kinds if reference[name].isna().all() or current[name].isna().all()]
    if empty:
        notes.append(f"Not in Evidently's report (no values in the sample): {', '.join(empty)}.")
    kinds = {name: kind for name, kind in kinds.items() if name not in empty}
    note = " ".join(notes)
    html = _evidently_html(reference[list(kinds)], current[list(kinds)], kinds, report.settings)
    banner = f'<p style="font-family:sans-serif;padding:8px;background:#fff4d6">{note}</p>'
    write_atomically(
        path,
        lambda partial: partial.write_text(
            html.replace("<body>", "<body>" + banner, 1) if note else html
        ),
    )
    return note


def _evidently_html(
    reference: pd.DataFrame, current: pd.DataFrame, kinds: dict[str, str], settings: DriftSettings
) -> str:
    import tempfile

    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    preset = DataDriftPreset(
        num_method=settings.numeric_test,
        cat_method=settings.categorical_test,
        num_threshold=settings.threshold(settings.numeric_test),
        cat_threshold=settings.threshold(settings.categorical_test),
        drift_share=settings.drift_share,
    )
    definition = DataDefinition(
        numerical_columns=[name for name, kind in kinds.items() if kind == "numeric"],
        categorical_columns=[name for name, kind in kinds.items() if kind == "categorical"],
    )
    try:
        datasets = [
            Dataset.from_pandas(t, data_definition=definition) for t in (current, reference)
        ]
        snapshot = Report([preset]).run(*datasets)
        with tempfile.TemporaryDirectory(prefix="conveyor-drift-") as scratch:
            page = Path(scratch) / "report.html"
            snapshot.save_html(str(page))
            return page.read_text(encoding="utf-8")
    except Exception as error:  # Evidently raises bare errors of many kinds
        raise ConveyorError(
            f"Evidently could not render the drift report: {first_line(error)}"
        ) from None
