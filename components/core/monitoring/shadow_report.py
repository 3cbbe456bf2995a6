"""What a shadow replay is read as: terminal lines, Markdown for the KFP UI, a JSON summary,
and a self-contained HTML page with the disagreement by segment and the two models' score
distributions (inline SVG, no scripts); for two regressors, their relative difference by
segment and their predicted values' distributions."""

from __future__ import annotations

import html as escape
import json
import math
from dataclasses import dataclass
from pathlib import Path

from conveyor.components.core.files import write_text_atomically
from conveyor.components.core.markdown import table
from conveyor.components.core.markdown import text as markdown_text
from conveyor.components.core.monitoring.shadow import ShadowPolicy, ShadowReport

__all__ = ["ShadowOutputs", "html", "log_to_run", "markdown", "table_lines", "write_outputs"]

_WIDTH, _BAR_HEIGHT, _PAD = 560, 18, 140
_COLOURS = {"champion": "#4e79a7", "challenger": "#e15759"}


@dataclass(frozen=True)
class ShadowOutputs:
    """Where ``write_outputs`` writes: the Markdown report, the HTML page, the JSON summary."""

    markdown: Path | None = None
    html: Path | None = None
    summary: Path | None = None


def write_outputs(report: ShadowReport, outputs: ShadowOutputs) -> None:
    """Writes each output that is set, each whole or not at all, all rendered first."""
    texts = {
        outputs.markdown: markdown(report),
        outputs.html: html(report),
        outputs.summary: json.dumps(report.to_dict(), indent=2, allow_nan=False, default=str),
    }
    for path, text in texts.items():
        if path:
            write_text_atomically(path, text)


def log_to_run(tracking_uri: str, run_id: str, model: str, report: ShadowReport) -> None:
    """Records the verdict on the challenger's training run, beside evaluate's: the tags
    ``shadow.passed`` and ``shadow.reason``, the report as ``shadow.md``, and an audit
    event."""
    from dataclasses import asdict

    from conveyor.components.core.audit import AuditEvent, record_event
    from conveyor.components.core.training import tracking

    client = tracking.connect(tracking_uri)
    client.set_tag(run_id, "shadow.passed", str(report.passed).lower())
    client.set_tag(run_id, "shadow.reason", report.reason[: tracking.TAG_VALUE_LIMIT])
    client.log_text(run_id, markdown(report), "shadow.md")
    decision = (
        "passed"
        if report.passed and report.judged
        else "failed"
        if not report.passed
        else "not judged"
    )
    event = AuditEvent(
        kind="shadow", decision=decision, reason=report.reason, model=model, step="shadow",
        parameters=asdict(report.policy), measurements=report.metrics(),
    )  # fmt: skip
    record_event(client, run_id, event)


def table_lines(report: ShadowReport) -> list[str]:
    """The comparison as terminal lines: disagreement per group, score shift, online metrics,
    scoring time."""
    lines = [
        f"{'disagreement ' + d.segment:<32} {d.rate:7.2%}  [{d.lower:.2%}, {d.upper:.2%}]  "
        f"{d.rows:,} rows{'  FAILED' if d.failed else '' if d.judged else '  (not judged)'}"
        for d in report.disagreement
    ]
    lines += [
        f"{'relative difference ' + d.segment:<32} {d.relative:7.2%}  [{d.lower:.2%}, "
        f"{d.upper:.2%}]  mean |diff| {d.mean_absolute_difference:.4g}, {d.rows:,} rows"
        f"{'  FAILED' if d.failed else '' if d.judged else '  (not judged)'}"
        for d in report.differences
    ]
    score = "score PSI " if report.task == "classification" else "prediction PSI "
    lines += [f"{score + s.segment:<32} {s.psi:7.3f}" for s in report.shifts]
    digits = ".4f" if report.task == "classification" else ".4g"
    lines += [
        f"{'online ' + o.metric:<32} {o.champion:{digits}} -> {o.challenger:{digits}}  "
        f"({o.difference:+{digits}}, [{o.lower:+{digits}}, {o.upper:+{digits}}], "
        f"{o.rows:,} labelled rows){'  FAILED' if o.failed else ''}"
        for o in report.online
    ]
    if report.timing is not None:
        lines.append(f"{'batch scoring time ratio':<32} {report.timing.ratio:7.2f}x")
    return lines


def markdown(report: ShadowReport) -> str:
    """The verdict and why, then every comparison, the thresholds, and the notes."""
    verdict = "Passed" if report.passed else "Failed"
    parts = ["# Shadow replay", f"**{verdict}.** {markdown_text(report.reason)}."]
    if report.window:
        parts.append(
            f"{report.rows:,} logged rows replayed, {report.window[0]} to {report.window[1]}."
        )
    if report.disagreement:
        rows = [
            (
                d.segment, f"{d.rows:,}", f"{d.rate:.2%}", f"{d.lower:.2%} to {d.upper:.2%}",
                "**fails**" if d.failed else "ok" if d.judged else "not judged",
            )
            for d in report.disagreement
        ]  # fmt: skip
        parts.append("## Disagreement (different predicted class)")
        parts.append("\n".join(table(("segment", "rows", "rate", "interval", "verdict"), rows)))
    if report.differences:
        parts.append(_differences(report))
    if report.shifts:
        regression = report.task == "regression"
        number = _value if regression else _number
        rows = [
            (s.segment, f"{s.rows:,}", f"{s.psi:.3g}", number(s.champion_mean),
             number(s.challenger_mean), number(s.mean_absolute_difference))
            for s in report.shifts
        ]  # fmt: skip
        header = ("segment", "rows", "PSI", "champion mean", "challenger mean", "mean |diff|")
        parts.append(
            "## Prediction shift (PSI on the champion's deciles)"
            if regression
            else "## Score shift"
        )
        parts.append("\n".join(table(header, rows)))
    if report.online:
        digits = ".4f" if report.task == "classification" else ".4g"
        rows = [
            (o.metric, f"{o.rows:,}", f"{o.champion:{digits}}", f"{o.challenger:{digits}}",
             f"{o.difference:+{digits}} ({o.lower:+{digits}} to {o.upper:+{digits}})",
             "**fails**" if o.failed else "ok" if o.judged else "reported")
            for o in report.online
        ]  # fmt: skip
        header = ("metric", "labelled rows", "champion", "challenger", "difference", "verdict")
        parts.append("## Online metrics on the same rows")
        parts.append("\n".join(table(header, rows)))
    if report.timing is not None:
        t = report.timing
        parts.append(
            "## Batch scoring time (not serving latency)\n\n"
            f"Champion {t.champion_s_per_row * 1e6:.1f} µs per row, challenger "
            f"{t.challenger_s_per_row * 1e6:.1f} µs per row: {t.ratio:.2f}x."
        )
    if report.top_rows:
        header = tuple(report.top_rows[0])
        rows = [tuple(_cell(row[name]) for name in header) for row in report.top_rows]
        parts.append("## Rows where the models differ most")
        parts.append("\n".join(table(header, rows)))
    parts.append(_policy(report))
    if report.notes:
        parts.append("Notes:\n\n" + "\n".join(f"- {markdown_text(n)}" for n in report.notes))
    return "\n\n".join(parts) + "\n"


def _differences(report: ShadowReport) -> str:
    """The regressors' relative difference per group, as a Markdown section."""
    rows = [
        (
            d.segment, f"{d.rows:,}", _value(d.mean_absolute_difference), f"{d.relative:.2%}",
            f"{d.lower:.2%} to {d.upper:.2%}",
            "**fails**" if d.failed else "ok" if d.judged else "not judged",
        )
        for d in report.differences
    ]  # fmt: skip
    header = ("segment", "rows", "mean abs. difference", "relative", "interval", "verdict")
    return (
        "## Difference of the predicted values\n\n"
        "Mean |challenger - champion| per row, and relative: over the champion's mean absolute "
        "deviation over all rows.\n\n" + "\n".join(table(header, rows))
    )


def _policy(report: ShadowReport) -> str:
    p = report.policy
    if report.task == "regression":
        return _regression_policy(p)
    return (
        "## The gate\n\n"
        f"Fails when the disagreement is above {p.max_disagreement:.1%} beyond noise, the score "
        f"PSI reaches {p.max_score_shift:g}, the online accuracy is lower by more than "
        f"{p.max_metric_drop:g} beyond noise, or batch scoring takes more than "
        f"{p.max_latency_ratio:g}x the champion's time; groups under {p.min_rows:,} rows are "
        f"not judged. The statistical tests share a {1 - p.confidence:.0%} chance of failing "
        "a challenger exactly at the limits."
    )


def _regression_policy(p: ShadowPolicy) -> str:
    return (
        "## The gate\n\n"
        "Fails when the mean absolute difference between the two models' predicted values is "
        f"above {p.max_relative_difference:.0%} of the champion's mean absolute deviation "
        f"beyond noise, the PSI of the predicted values reaches {p.max_score_shift:g}, the "
        f"online MAE is higher by more than {p.max_metric_drop:.1%} of the champion's beyond "
        f"noise, or batch scoring takes more than {p.max_latency_ratio:g}x the champion's time; "
        f"groups under {p.min_rows:,} rows are not judged. The statistical tests share a "
        f"{1 - p.confidence:.0%} chance of failing a challenger exactly at the limits."
    )


def _number(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.4f}"


def _value(value: float) -> str:
    """A regressor's value, in its target's units (any scale)."""
    return "" if math.isnan(value) else f"{value:.4g}"


def _cell(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def html(report: ShadowReport) -> str:
    """A page with the verdict, the disagreement (regressors: relative difference) by
    segment (bars with intervals) and the two score (predicted value) histograms."""
    title = "Passed" if report.passed else "Failed"
    body = [
        f"<h1>Shadow replay: {title}</h1>",
        f"<p>{escape.escape(report.reason)}.</p>",
        _disagreement_chart(report),
        _histogram_chart(report),
    ]
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Shadow replay</title>"
        "<style>body{font-family:sans-serif;max-width:760px;margin:2em auto}</style></head>"
        f"<body>{''.join(part for part in body if part)}</body></html>\n"
    )


def _disagreement_chart(report: ShadowReport) -> str:
    if report.differences:
        bars = [
            (d.segment, d.rows, d.relative, d.lower, d.upper, d.failed)
            for d in report.differences
            if math.isfinite(d.relative)
        ]
        limit = report.policy.max_relative_difference
        return _interval_chart("Relative difference by segment", bars, limit)
    bars = [(d.segment, d.rows, d.rate, d.lower, d.upper, d.failed) for d in report.disagreement]
    return _interval_chart("Disagreement by segment", bars, report.policy.max_disagreement)


def _interval_chart(
    title: str, bars: list[tuple[str, int, float, float, float, bool]], limit_value: float
) -> str:
    """Bars (segment, rows, value, lower, upper, failed) of shares, each with its interval,
    and the limit as a dashed line."""
    if not bars:
        return ""
    top = max([upper for *_, upper, _ in bars] + [limit_value]) or 1.0
    height = _BAR_HEIGHT * 1.6 * len(bars) + 30

    def x(rate: float) -> float:
        return _PAD + (_WIDTH - _PAD - 20) * rate / top

    marks = []
    for index, (segment, rows, value, lower, upper, failed) in enumerate(bars):
        y = 10 + index * _BAR_HEIGHT * 1.6
        colour = "#e15759" if failed else "#4e79a7"
        marks.append(
            f"<text x='{_PAD - 6}' y='{y + 13}' text-anchor='end' font-size='12'>"
            f"{escape.escape(segment)} ({rows:,})</text>"
            f"<rect x='{_PAD}' y='{y}' width='{x(value) - _PAD:.1f}' height='{_BAR_HEIGHT}' "
            f"fill='{colour}'><title>{value:.2%}</title></rect>"
            f"<line x1='{x(max(lower, 0.0)):.1f}' x2='{x(upper):.1f}' y1='{y + 9}' "
            f"y2='{y + 9}' stroke='black'/>"
        )
    limit = x(limit_value)
    marks.append(
        f"<line x1='{limit:.1f}' x2='{limit:.1f}' y1='0' y2='{height - 20}' stroke='#999' "
        f"stroke-dasharray='4'/><text x='{limit:.1f}' y='{height - 6}' font-size='11' "
        f"text-anchor='middle'>limit {limit_value:.1%}</text>"
    )
    return (
        f"<h2>{title}</h2>"
        f"<svg width='{_WIDTH}' height='{height:.0f}' role='img'>{''.join(marks)}</svg>"
    )


def _histogram_chart(report: ShadowReport) -> str:
    histograms = report.histograms
    if not histograms:
        return ""
    edges = histograms["edges"]
    tallest = max(histograms["champion"] + histograms["challenger"]) or 1.0
    width, height, bins = _WIDTH - 40, 180, len(edges) - 1
    step = width / bins
    digits = ".2f" if report.task == "classification" else ".4g"
    bars = []
    for offset, role in enumerate(("champion", "challenger")):
        for index, count in enumerate(histograms[role]):
            tall = (height - 20) * count / tallest
            bars.append(
                f"<rect x='{20 + index * step + offset * step / 2:.1f}' y='{height - tall:.1f}' "
                f"width='{step / 2 - 1:.1f}' height='{tall:.1f}' fill='{_COLOURS[role]}'>"
                f"<title>{role} {edges[index]:{digits}}-{edges[index + 1]:{digits}}: "
                f"{count:.0f}</title></rect>"
            )
    legend = " ".join(
        f"<span style='color:{colour}'>■ {role}</span>" for role, colour in _COLOURS.items()
    )
    what = (
        "positive-class probability, 0 to 1"
        if report.task == "classification"
        else "predicted value, on the champion's deciles"
    )
    return (
        f"<h2>{'Scores' if report.task == 'classification' else 'Predicted values'} on the "
        "same rows</h2>"
        f"<p>{legend} ({what})</p>"
        f"<svg width='{_WIDTH}' height='{height}' role='img'>{''.join(bars)}</svg>"
    )
