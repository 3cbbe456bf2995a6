"""What a monitoring run decided from its steps' summaries: whether to retrain and why, the
Markdown a person reads, and the gauges pushed to a Prometheus Pushgateway.

Three findings are weighed. Feature drift (``monitoring.drift_report``'s summary) and
a quality degradation (``monitoring.quality``'s, measured only where labels were
given) start retraining when it is on; prediction drift
(``monitoring.prediction_drift``'s) is reported and alerted on but starts nothing by
itself, since a model whose answers moved with its inputs is usually right to (the feature
drift is what to act on) and one whose answers moved without them is a bug a retraining
would hide. Every finding is pushed, when a Pushgateway is configured, as one group per
model that each run replaces: a finding that clears takes its alert with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from conveyor.components.core.errors import ConveyorError
from conveyor.components.core.monitoring.pushgateway import Gauge, push_group

__all__ = [
    "MONITORING_JOB",
    "Finding",
    "MonitoringVerdict",
    "judge_monitoring",
    "monitoring_gauges",
    "push_monitoring",
    "record_monitoring",
]

# The Pushgateway job of every monitoring run; kserve/prometheus-rule.yaml alerts on it.
MONITORING_JOB = "conveyor_monitoring"
_ALL = "all"


@dataclass(frozen=True)
class Finding:
    """One thing a monitoring run looked for.

    Attributes:
        name: ``feature drift``, ``prediction drift`` or ``quality degradation``.
        measured: False when it could not be looked for (no labels, no logged scores).
        found: Whether it was found (never when not measured).
        reason: Its step's verdict in one sentence.
        retrains: Whether finding it starts retraining (when retraining is on).
    """

    name: str
    measured: bool
    found: bool
    reason: str
    retrains: bool

    def __post_init__(self) -> None:
        if self.found and not self.measured:
            raise ConveyorError(f"monitoring: {self.name} found without being measured")


@dataclass(frozen=True)
class MonitoringVerdict:
    """The run's findings, and whether they start retraining."""

    model: str
    findings: tuple[Finding, ...]
    retrain: bool

    @property
    def triggers(self) -> list[str]:
        """The findings that call for retraining."""
        return [f.name for f in self.findings if f.found and f.retrains]

    @property
    def retraining(self) -> bool:
        return self.retrain and bool(self.triggers)

    @property
    def reason(self) -> str:
        """Why the run retrains, or does not, in one sentence."""
        if not self.triggers:
            return "nothing to retrain: " + "; ".join(_shown(f) for f in self.findings)
        because = " and ".join(self.triggers)
        if not self.retrain:
            return f"{because} found; retraining is off"
        return f"retraining on {because}"

    def finding(self, name: str) -> Finding:
        return next(f for f in self.findings if f.name == name)

    def markdown(self) -> str:
        rows = [
            f"| {f.name} | {_status(f)} | {'yes' if f.retrains else 'no'} | {f.reason} |"
            for f in self.findings
        ]
        return "\n\n".join([
            f"# Monitoring of {self.model}",
            f"**{self.reason[0].upper() + self.reason[1:]}.**",
            "\n".join([
                "| finding | status | retrains | why |", "|---|---|---|---|", *rows,
            ]),
        ]) + "\n"  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "retraining": self.retraining,
            "triggers": self.triggers,
            "reason": self.reason,
            "findings": [vars(f) for f in self.findings],
        }


def judge_monitoring(
    model: str,
    drift: dict[str, Any],
    prediction: dict[str, Any] | None,
    quality: dict[str, Any] | None,
    retrain: bool,
) -> MonitoringVerdict:
    """The verdict from the drift, prediction drift and quality steps' JSON summaries
    (None, or ``measured: false``, for what the run did not measure)."""
    findings = (
        Finding("feature drift", True, bool(drift["dataset_drifted"]), drift["verdict"], True),
        _optional("prediction drift", prediction, "drifted", retrains=False),
        _optional("quality degradation", quality, "degraded", retrains=True),
    )
    return MonitoringVerdict(model, findings, retrain)


def _optional(name: str, summary: dict[str, Any] | None, key: str, retrains: bool) -> Finding:
    if not summary or not summary.get("measured", True):
        reason = (summary or {}).get("reason") or "not measured"
        return Finding(name, False, False, reason, retrains)
    reason = summary.get("verdict") or summary.get("reason") or ""
    return Finding(name, True, bool(summary[key]), reason, retrains)


def monitoring_gauges(
    verdict: MonitoringVerdict,
    drift: dict[str, Any],
    prediction: dict[str, Any] | None,
    quality: dict[str, Any] | None,
) -> list[Gauge]:
    """The gauges of one run (contract: kserve/prometheus-rule.yaml alerts on them). What was
    not measured is left out, so a group replaced by a run without labels holds no quality
    series and the degradation alert clears."""
    model = {"model": verdict.model}
    gauges = [
        Gauge("conveyor_drift_detected", verdict.finding("feature drift").found, model,
              "1 when the inputs drifted (Conveyor's verdict)"),
        Gauge("conveyor_retrain_triggered", verdict.retraining, model,
              "1 when the run started retraining"),
    ]  # fmt: skip
    gauges += [
        Gauge(
            "conveyor_drift_score",
            column["scores"][column["deciding_test"]],
            {
                **model,
                "column": column["column"],
                "segment": column["segment"] or _ALL,
                "test": column["deciding_test"],
            },
            "A column's deciding drift statistic (PSI, Jensen-Shannon) or p-value (KS, chi2)",
        )  # fmt: skip
        for column in drift["columns"]
    ]
    if verdict.finding("prediction drift").measured:
        gauges += _prediction_gauges(verdict, prediction or {}, model)
    if verdict.finding("quality degradation").measured:
        gauges += _quality_gauges(verdict, quality or {}, model)
    return gauges


def _prediction_gauges(
    verdict: MonitoringVerdict, prediction: dict[str, Any], model: dict[str, str]
) -> list[Gauge]:
    found = verdict.finding("prediction drift").found
    return [
        Gauge("conveyor_prediction_drift_detected", found, model,
              "1 when the model's scores or predicted classes drifted"),
        *(
            Gauge(
                "conveyor_prediction_drift_score",
                result["value"],
                {**model, "segment": result["segment"],
                 "test": f"{result['output']}_{result['test']}"},
                "The deciding statistic of the logged scores or classes against evaluation's",
            )
            for result in prediction.get("results", [])
        ),
    ]  # fmt: skip


def _quality_gauges(
    verdict: MonitoringVerdict, quality: dict[str, Any], model: dict[str, str]
) -> list[Gauge]:
    gauges = [
        Gauge("conveyor_quality_degraded", verdict.finding("quality degradation").found, model,
              "1 when an online metric's interval lies past the offline value by the margin"),
        Gauge("conveyor_label_coverage", quality["coverage"]["share"], model,
              "Share of logged predictions joined to a label"),
    ]  # fmt: skip
    gauges += [
        Gauge("conveyor_quality_offline", value, {**model, "metric": metric},
              "The champion's offline evaluation value of a metric")
        for metric, value in quality.get("offline", {}).items()
    ]  # fmt: skip
    # Overall and per segment only: days and revisions come and go, a series per each would
    # grow without bound.
    for group in quality["groups"]:
        if group["dimension"] not in ("overall", "segment"):
            continue
        segment = _ALL if group["dimension"] == "overall" else str(group["group"])
        for metric, interval in group["metrics"].items():
            labels = {**model, "metric": metric, "segment": segment}
            gauges += [
                Gauge("conveyor_quality_metric", interval["value"], labels,
                      "An online metric over the joined rows"),
                Gauge("conveyor_quality_metric_lower", interval["lower"], labels,
                      "Lower bound of the online metric's interval"),
                Gauge("conveyor_quality_metric_upper", interval["upper"], labels,
                      "Upper bound of the online metric's interval"),
            ]  # fmt: skip
    return gauges


def push_monitoring(
    url: str,
    verdict: MonitoringVerdict,
    drift: dict[str, Any],
    prediction: dict[str, Any] | None,
    quality: dict[str, Any] | None,
) -> int:
    """Replaces the model's group on the Pushgateway at ``url``; returns the gauges pushed."""
    gauges = monitoring_gauges(verdict, drift, prediction, quality)
    push_group(url, MONITORING_JOB, {"model": verdict.model}, gauges)
    return len(gauges)


def _status(finding: Finding) -> str:
    if not finding.measured:
        return "not measured"
    return "**found**" if finding.found else "not found"


def _shown(finding: Finding) -> str:
    return f"{finding.name} {_status(finding).strip('*')}"


def record_monitoring(tracking_uri: str, verdict: MonitoringVerdict, pipeline_run: str) -> str:
    """Records each finding and the retraining decision as audit events on the champion's
    training run (the version being watched); returns the version, empty without a
    champion (nothing registered to be watched)."""
    from conveyor.components.core.audit import AuditEvent, record_events
    from conveyor.components.core.training import tracking
    from conveyor.components.core.training.registry import find_champion

    client = tracking.connect(tracking_uri)
    champion = find_champion(client, verdict.model)
    if champion is None:
        return ""
    common = {
        "model": verdict.model, "step": "monitoring_verdict",
        "version": champion.version, "pipeline_run": pipeline_run,
    }  # fmt: skip
    events = [
        AuditEvent(
            kind="quality" if finding.name == "quality degradation" else "drift",
            decision=_status(finding).strip("*"), reason=finding.reason,
            parameters={"finding": finding.name, "retrains": finding.retrains}, **common,
        )
        for finding in verdict.findings
    ]  # fmt: skip
    decision = "started" if verdict.retraining else "not started"
    events.append(
        AuditEvent(
            kind="retraining", decision=decision, reason=verdict.reason,
            parameters={"retrain": verdict.retrain}, measurements={"triggers": verdict.triggers},
            **common,
        )
    )  # fmt: skip
    record_events(client, champion.run_id, events)
    return champion.version
