"""What an online quality assessment is read as: a sentence, terminal lines, Markdown for the
KFP UI, a JSON summary, and a self-contained HTML page charting each metric per day with its
interval and the offline value (inline SVG, no scripts). A regression model's pages show its
errors (RMSE, MAE, R², MAPE), with no classes."""

from __future__ import annotations

import html as escape
import json
from dataclasses import dataclass
from pathlib import Path

from conveyor.components.core.files import write_text_atomically
from conveyor.components.core.markdown import table
from conveyor.components.core.monitoring.quality import (
    ALL_METRICS,
    DIRECTIONS,
    SCALED_METRICS,
    GroupQuality,
    Interval,
    QualityReport,
    metric_margin,
)

__all__ = ["QualityOutputs", "describe", "html", "markdown", "table_lines", "write_outputs"]

_WIDTH, _HEIGHT, _PAD = 560, 200, 44


@dataclass(frozen=True)
class QualityOutputs:
    """Where ``write_outputs`` writes: the Markdown report, the HTML chart, the JSON summary."""

    markdown: Path | None = None
    html: Path | None = None
    summary: Path | None = None


def write_outputs(report: QualityReport, outputs: QualityOutputs) -> None:
    """Writes each output that is set, each whole or not at all."""
    if outputs.markdown:
        write_text_atomically(outputs.markdown, markdown(report))
    if outputs.html:
        write_text_atomically(outputs.html, html(report))
    if outputs.summary:
        summary = {"verdict": describe(report), **report.to_dict()}
        write_text_atomically(outputs.summary, json.dumps(summary, indent=2))


def describe(report: QualityReport) -> str:
    """The verdict in one sentence, with the label coverage."""
    coverage = report.coverage
    joined = (
        f"{coverage.labelled_rows:,} of {coverage.logged_rows:,} logged predictions labelled "
        f"({coverage.share:.1%}), {coverage.window_start} to {coverage.window_end}"
    )
    if not report.degraded:
        return f"No degradation: {joined}"
    named = "; ".join(d.describe() for d in report.degradations[:3])
    more = len(report.degradations) - 3
    return f"Degraded: {named}{f'; and {more} more' if more > 0 else ''} ({joined})"


def _cell(interval: Interval | None) -> str:
    if interval is None:
        return "-"
    return f"{interval.value:.3f} [{interval.lower:.3f}, {interval.upper:.3f}]"


def _shown_metrics(report: QualityReport) -> list[str]:
    return [metric for metric in ALL_METRICS if metric in report.overall().metrics]


def table_lines(report: QualityReport) -> list[str]:
    """One line per judged group (overall, revisions, segments): rows and each metric with
    its interval; then the coverage and any degradation."""
    metrics = _shown_metrics(report)
    lines = [(f"{'group':<28} {'rows':>9}  " + "  ".join(f"{m:<25}" for m in metrics)).rstrip()]
    for group in report.groups:
        if group.dimension == "day":
            continue
        name = "overall" if group.dimension == "overall" else f"{group.dimension} {group.group}"
        lines.append(_group_line(name, group, metrics))
    if report.offline_groups:  # measured on the evaluation split, with intervals
        for group in report.offline_groups:
            name = "offline" if group.dimension == "overall" else f"offline segment {group.group}"
            lines.append(_group_line(name, group, metrics))
    else:
        offline = "  ".join(f"{_fmt(report.offline.get(m)):<25}" for m in metrics)
        lines.append(f"{'offline (champion)':<28} {'':>9}  {offline}".rstrip())
    lines += [f"coverage: {line}" for line in _coverage_lines(report)]
    lines += [f"DEGRADED {d.describe()}" for d in report.degradations]
    return lines + [f"note: {note}" for note in report.notes]


def _group_line(name: str, group: GroupQuality, metrics: list[str]) -> str:
    cells = "  ".join(f"{_cell(group.metrics.get(m)):<25}" for m in metrics)
    return f"{name[:28]:<28} {group.rows:>9,}  {cells}".rstrip()


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _coverage_lines(report: QualityReport) -> list[str]:
    c, days = report.coverage, report.settings.days
    late = f"more than {days} day(s) after the prediction" if days else "(no window: none late)"
    return [
        f"{c.logged_rows:,} logged predictions from {c.window_start} to {c.window_end}; "
        f"{c.labelled_rows:,} labelled ({c.share:.1%}), {c.unlabelled_rows:,} without a label",
        f"{c.relogged_rows:,} earlier rows of an id logged again (its latest row is joined)",
        f"{c.without_prediction:,} logged rows without a prediction (written before "
        "predictions were logged), left out",
        f"{c.labels:,} labels: {c.unknown_labels:,} without a logged row in the window, "
        f"{c.late_labels:,} late ({late}; joined and counted)",
    ]


def markdown(report: QualityReport) -> str:
    """A page for the KFP UI: the verdict, the coverage, the rule, and a table per dimension
    of every metric with its interval beside the offline value."""
    settings = report.settings
    metrics = _shown_metrics(report)
    parts = [
        f"# Online quality: {report.model}",
        f"**{describe(report)}.**",
        f"{_methods(report)} {_rule(report)} The bound is taken at a one-sided "
        f"{settings.confidence:.0%} shared among the metrics judged (Bonferroni), so a run "
        f"of an unchanged model raises a false alarm at most {1 - settings.confidence:.0%} "
        f"of the time; overall, revisions and segments of at least {settings.min_rows} "
        "labelled rows are judged, days are shown.",
        "## Coverage\n\n" + "\n".join(f"- {line}" for line in _coverage_lines(report)),
    ]
    if report.degradations:
        parts.append(
            "## Degradations\n\n" + "\n".join(f"- {d.describe()}" for d in report.degradations)
        )
    offline = ["offline (champion)", ""] + [_fmt(report.offline.get(m)) for m in metrics]
    flagged = {(d.dimension, d.group, d.metric) for d in report.degradations}
    for dimension in ("overall", "revision", "segment", "day"):
        groups = [g for g in report.groups if g.dimension == dimension]
        if not groups:
            continue
        column = settings.segment if dimension == "segment" else dimension
        heading = "Overall" if dimension == "overall" else f"By {column}"
        rows = [_markdown_row(g, metrics, flagged) for g in groups]
        lines = table(
            ["" if dimension == "overall" else column, "rows", *metrics], rows + [offline]
        )
        parts.append(f"## {heading}\n\n" + "\n".join(lines))
    if report.offline_groups:
        rows = [_markdown_row(g, metrics, set()) for g in report.offline_groups]
        column = settings.segment or "group"
        lines = table([column, "rows", *metrics], rows)
        parts.append("## Offline: the champion's evaluation split\n\n" + "\n".join(lines))
    if report.notes:
        parts.append("Notes:\n\n" + "\n".join(f"- {note}" for note in report.notes))
    return "\n\n".join(parts) + "\n"


def _methods(report: QualityReport) -> str:
    """What is judged (the positive class, the classes, or a regressor's errors) and how
    each metric's interval is made."""
    level = f"{report.settings.confidence:.0%}"
    if report.is_regression:
        return (
            "A regression model: its errors (predicted - true) in the target's units, MAPE "
            f"a fraction (only in groups with no true value of zero). Intervals are {level}: "
            "mean ± z·sd/√n for MAE and MAPE; the delta method for RMSE (on the mean squared "
            "error) and for R² (on the ratio of the mean squared error to the truth's "
            "variance)."
        )
    positive = (
        f"Positive class: `{report.positive_class}`."
        if report.positive_class is not None
        else f"Classes: {', '.join(f'`{c}`' for c in report.classes)}."
    )
    return (
        f"{positive} Intervals are {level}: Wilson for accuracy, precision, "
        "recall and false-positive rate; the delta method for F1; DeLong for ROC-AUC; "
        "mean ± z·sd/√n for log loss."
    )


def _rule(report: QualityReport) -> str:
    margin = _margin_words(report)
    if not report.offline_groups:
        return (
            "The offline values are taken as exact (see the notes): a metric degrades when "
            f"its interval lies wholly on the wrong side of the offline value by more than "
            f"{margin}."
        )
    segments = (
        "each segment against its own (measured on the champion's evaluation split), "
        if any(g.dimension == "segment" for g in report.offline_groups)
        else ""
    )
    return (
        f"Each group is compared with the offline value of the same group ({segments}"
        "overall and revisions against the overall one): a metric degrades when the "
        "difference online - offline, at its bound with both samples' noise counted, is "
        f"worse than {margin}."
    )


def _margin_words(report: QualityReport) -> str:
    """The margin as the rule states it: for a regressor's RMSE and MAE, a share of the
    offline value."""
    margin = report.settings.margin
    scaled = [name.upper() for name in SCALED_METRICS if name in report.overall().metrics]
    if not scaled:
        return f"{margin:g}"
    return f"{margin:g} ({margin:.0%} of the offline value for {' and '.join(scaled)})"


def _markdown_row(
    group: GroupQuality, metrics: list[str], flagged: set[tuple[str, str, str]]
) -> list[str]:
    cells = []
    for metric in metrics:
        cell = _cell(group.metrics.get(metric))
        degraded = (group.dimension, group.group, metric) in flagged
        cells.append(f"**{cell}**" if degraded else cell)
    return [group.group, f"{group.rows:,}", *cells]


def html(report: QualityReport) -> str:
    """A page with one chart per metric: the overall value per day, its interval as a band,
    the offline value as a dashed line and the margin's edge as a dotted one."""
    days = [g for g in report.groups if g.dimension == "day"]
    charts = [_chart(metric, days, report) for metric in _shown_metrics(report)]
    title = escape.escape(f"Online quality: {report.model}")
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{title}</title>"
        "<style>body{font-family:sans-serif;margin:16px}svg{margin:8px 0}"
        ".bad{color:#b00020}</style></head><body>"
        f"<h1>{title}</h1><p class='{'bad' if report.degraded else ''}'>"
        f"{escape.escape(describe(report))}.</p>" + "".join(charts) + "</body></html>\n"
    )


def _chart(metric: str, days: list[GroupQuality], report: QualityReport) -> str:
    points = [(g.group, g.metrics[metric]) for g in days if metric in g.metrics]
    offline = report.offline.get(metric)
    values = [v for _, i in points for v in (i.lower, i.upper)]
    if offline is not None:
        values.append(offline)
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    span = high - low
    low, high = low - 0.05 * span, high + 0.05 * span

    def x(index: int) -> float:
        inner = _WIDTH - 2 * _PAD
        return _PAD + (inner * index / (len(points) - 1) if len(points) > 1 else inner / 2)

    def y(value: float) -> float:
        return _HEIGHT - _PAD / 2 - (_HEIGHT - _PAD) * (value - low) / (high - low)

    shapes = []
    if points:
        upper = [f"{x(k):.1f},{y(i.upper):.1f}" for k, (_, i) in enumerate(points)]
        lower = [f"{x(k):.1f},{y(i.lower):.1f}" for k, (_, i) in reversed(list(enumerate(points)))]
        shapes.append(f"<polygon points='{' '.join(upper + lower)}' fill='#9ecae1' opacity='0.5'/>")
        line = " ".join(f"{x(k):.1f},{y(i.value):.1f}" for k, (_, i) in enumerate(points))
        shapes.append(f"<polyline points='{line}' fill='none' stroke='#08519c' stroke-width='2'/>")
        for k, (day, interval) in enumerate(points):
            tip = escape.escape(f"{day}: {_cell(interval)}, {interval.rows:,} rows")
            shapes.append(
                f"<circle cx='{x(k):.1f}' cy='{y(interval.value):.1f}' r='3' fill='#08519c'>"
                f"<title>{tip}</title></circle>"
            )
        ticks = sorted({0, len(points) - 1, (len(points) - 1) // 2})
        shapes += [
            f"<text x='{x(k):.1f}' y='{_HEIGHT - 4}' font-size='10' text-anchor='middle'>"
            f"{points[k][0]}</text>"
            for k in ticks
        ]
    if offline is not None:
        margin = metric_margin(metric, offline, report.settings.margin)
        edge = offline - margin * (1 if _better_higher(metric) else -1)
        shapes.append(_hline(y(offline), "#d95f02", "6,4", f"offline {offline:.3f}"))
        shapes.append(_hline(y(edge), "#d95f02", "2,3", f"offline ∓ margin {edge:.3f}"))
    axis = [f"<text x='2' y='{y(v) + 3:.1f}' font-size='10'>{v:.3f}</text>" for v in (low, high)]
    return (
        f"<h2>{escape.escape(metric)}</h2>"
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{_WIDTH}' height='{_HEIGHT}' "
        f"role='img' aria-label='{metric} per day'>"
        f"<rect width='{_WIDTH}' height='{_HEIGHT}' fill='white' stroke='#ccc'/>"
        + "".join(axis + shapes)
        + "</svg>"
    )


def _better_higher(metric: str) -> bool:
    return DIRECTIONS[metric] > 0


def _hline(at: float, colour: str, dash: str, label: str) -> str:
    return (
        f"<line x1='{_PAD}' x2='{_WIDTH - _PAD}' y1='{at:.1f}' y2='{at:.1f}' stroke='{colour}' "
        f"stroke-dasharray='{dash}'><title>{escape.escape(label)}</title></line>"
    )
