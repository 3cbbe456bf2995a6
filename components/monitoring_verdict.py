"""Monitoring verdict: whether to retrain, and why; pushed to a Pushgateway when one is set."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Markdown, Output

from conveyor.components.images import BASE_IMAGE

__all__ = ["monitoring_verdict"]


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def monitoring_verdict(
    model_name: str,
    drift_summary: Input[Artifact],
    prediction_summary: Input[Artifact],
    quality_summary: Input[Artifact],
    report: Output[Markdown],
    summary: Output[Artifact],
    retrain: bool = True,
    pushgateway_url: str = "",
    mlflow_tracking_uri: str = "",
    pipeline_run_id: str = "",
) -> bool:
    """Weighs the run's findings: feature drift and a quality degradation start retraining
    (when ``retrain`` is on); prediction drift is reported and alerted on only. With
    ``pushgateway_url``, replaces the model's group on the Pushgateway with the run's gauges
    (job ``conveyor_monitoring``), which ``kserve/prometheus-rule.yaml`` alerts on. A push
    that fails is reported (step log, report, ``push_error`` in the summary) but does not
    stop a retraining the findings call for; the rule "monitoring has not run" fires on the
    group's stale ``push_time_seconds``, so the broken alerting path is still seen.

    Args:
        model_name: The monitored model, the Pushgateway group's ``model`` label.
        drift_summary: The drift step's JSON summary.
        prediction_summary: The prediction_drift step's JSON summary.
        quality_summary: The quality step's JSON summary (``measured: false`` without labels).
        report: Output Markdown: each finding, whether it retrains, and why.
        summary: Output JSON: ``retraining``, ``triggers``, ``reason`` and the findings.
        retrain: Whether findings that call for retraining start it.
        pushgateway_url: The Pushgateway (``http://host:9091``); empty pushes nothing.
        mlflow_tracking_uri: MLflow tracking server; empty uses ``$MLFLOW_TRACKING_URI``,
            and with neither the findings are not recorded. Each finding and the retraining
            decision become audit events on the champion's training run, after the
            report and the push: MLflow being down (or read-only) costs the audit trail
            these events, said in one log line, never the alert or the retraining.
        pipeline_run_id: The KFP run, recorded with each event.

    Returns:
        Whether the run retrains.
    """
    import json
    import os
    from pathlib import Path

    from conveyor.components.core.errors import ConveyorError, first_line
    from conveyor.components.core.files import write_text_atomically
    from conveyor.components.core.monitoring.verdict import (
        judge_monitoring,
        push_monitoring,
        record_monitoring,
    )

    def read(artifact: Input[Artifact]) -> dict:
        text = Path(artifact.path).read_text(encoding="utf-8")
        return json.loads(text) if text.strip() else {}

    drift, prediction, quality = map(read, (drift_summary, prediction_summary, quality_summary))
    verdict = judge_monitoring(model_name, drift, prediction, quality, retrain)
    outcome = {**verdict.to_dict(), "pushed": False}
    if pushgateway_url:
        try:
            pushed = push_monitoring(pushgateway_url, verdict, drift, prediction, quality)
            outcome["pushed"] = True
            print(f"monitoring_verdict: pushed {pushed} gauges to {pushgateway_url}")
        except ConveyorError as error:
            outcome["push_error"] = str(error)
            print(f"monitoring_verdict: the findings were not pushed: {error}")
    markdown = verdict.markdown()
    if "push_error" in outcome:
        markdown += f"\n**Not pushed to the Pushgateway:** {outcome['push_error']}\n"
    write_text_atomically(Path(report.path), markdown)
    write_text_atomically(Path(summary.path), json.dumps(outcome, indent=2))
    summary.metadata.update({"retraining": verdict.retraining, "reason": verdict.reason})
    # The audit trail records the verdict; it must not stop the alert or the retraining.
    if mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"):
        try:
            record_monitoring(mlflow_tracking_uri, verdict, pipeline_run_id)
        except Exception as error:  # noqa: BLE001 - an outage, a read-only account
            print(f"monitoring_verdict: not recorded in MLflow's audit trail: {first_line(error)}")
    return verdict.retraining
