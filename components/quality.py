"""Quality: labels joined to the payload log, online metrics judged against the champion's
offline evaluation."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Output

from conveyor.components.images import BASE_IMAGE

__all__ = ["quality"]


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def quality(
    log: Input[Dataset],
    labels_uri: str,
    model_name: str,
    metrics: Output[Metrics],
    report: Output[Markdown],
    html_report: Output[HTML],
    summary: Output[Artifact],
    mlflow_tracking_uri: str = "",
    segment_column: str = "",
    days: int = 7,
    id_column: str = "id",
    label_column: str = "label",
    margin: float = 0.02,
    reference_scores: Input[Dataset] = None,
) -> bool:
    """Joins labels to the model's logged predictions on ``conveyor.id`` and judges the
    online metrics against the champion's offline evaluation.

    Accuracy, precision, recall, false-positive rate, F1, ROC-AUC and log loss are computed
    overall, per day, per revision and per segment, each with a 95 % interval (Wilson for
    rates, the delta method for F1, DeLong for ROC-AUC, a normal one for log loss). The
    offline metrics are computed the same way from the champion's evaluation scores, overall
    and per segment; a metric is a degradation when it is worse than the offline value of
    the same group (a segment's own; overall for overall and revisions) by more than
    ``margin``, both samples' noise counted (overall, revisions and segments are judged;
    at most 5 % of runs of an unchanged model raise one). Without those scores (a champion
    trained before train recorded them with their labels), the champion's offline metrics
    logged in MLflow are taken as exact and every segment is judged against them.

    A regression model's log (its files say so) is judged on its errors: RMSE (the delta
    method on the mean squared error), MAE (mean ± z·sd/√n), R² and MAPE where defined,
    against the same metrics of its evaluation scores, ``margin`` for RMSE and MAE being a
    fraction of the offline value; its labels must be numbers. Labels
    that join no logged row, logged rows without a label and late labels are counted in the
    report. Fails the step, with one line and no output, on labels none of whose ids is
    logged, an id labelled twice, a label that is not one of the model's classes (for a
    regression model, not a number), a labels table without its id column, a log of another
    model, a log without predictions, or offline metrics or evaluation scores of a model of
    another task (a classifier's for a regression log, or the reverse).

    Args:
        log: The payload log's rows: a Parquet file or a folder of them (day folders too).
        labels_uri: The labels table (CSV or Parquet path or URI): an id column, a label
            column, and optionally ``time`` (when the label became known). Empty: quality
            is not measured (the summary says ``measured: false``), which is not a failure.
        model_name: The registered model whose predictions were logged.
        metrics: Output metrics: each overall metric and its ``.lower`` and ``.upper``
            bounds, ``label_coverage``, ``labelled_rows`` and ``degradations``.
        report: Output Markdown: the verdict, the coverage, and every metric per group.
        html_report: Output HTML: each metric per day with its interval and the offline value.
        summary: Output JSON: everything the report shows, per group.
        mlflow_tracking_uri: MLflow tracking server; empty uses ``$MLFLOW_TRACKING_URI``.
        segment_column: Also judge within each value of this column (logged, or in the labels).
        days: The last this many UTC days of the log; a label more than this many days after
            its prediction is counted late. 0 takes every row.
        id_column: The labels' id column.
        label_column: The labels' label column.
        margin: How far (absolute) past the offline value an interval must lie to degrade;
            for a regression model's RMSE and MAE, a fraction of the offline value.
        reference_scores: The champion's evaluation scores with their labels
            (champion_reference's ``reference_scores``); absent or an empty file: the
            champion's offline metrics from MLflow, taken as exact.

    Returns:
        Whether any metric degraded.
    """
    import json
    from pathlib import Path

    from conveyor.components.core.errors import step_errors
    from conveyor.components.core.files import write_text_atomically
    from conveyor.components.core.monitoring.quality import (
        QualitySettings,
        assess_quality,
        has_labels,
        offline_metrics,
    )
    from conveyor.components.core.monitoring.quality_report import (
        QualityOutputs,
        describe,
        write_outputs,
    )
    from conveyor.components.core.training.importance import read_reference_scores

    if not labels_uri:  # a monitoring run without labels: said so, not a failure
        reason = "Quality was not measured: no labels_uri was given"
        write_text_atomically(Path(report.path), f"# Online quality\n\n**{reason}.**\n")
        write_text_atomically(Path(html_report.path), f"<p>{reason}.</p>\n")
        write_text_atomically(
            Path(summary.path), json.dumps({"measured": False, "degraded": False, "reason": reason})
        )
        summary.metadata.update({"degraded": False, "verdict": reason})
        return False
    with step_errors("quality"):
        settings = QualitySettings(
            id_column=id_column, label_column=label_column, segment=segment_column,
            days=days, margin=margin,
        )  # fmt: skip
        scores = None
        if reference_scores is not None:
            scores = read_reference_scores(Path(reference_scores.path))
        offline = {} if has_labels(scores) else offline_metrics(mlflow_tracking_uri, model_name)
        result = assess_quality(log.path, labels_uri, model_name, offline, settings, scores)
        outputs = QualityOutputs(Path(report.path), Path(html_report.path), Path(summary.path))
        write_outputs(result, outputs)
    for name, interval in result.overall().metrics.items():
        metrics.log_metric(name, interval.value)
        metrics.log_metric(f"{name}.lower", interval.lower)
        metrics.log_metric(f"{name}.upper", interval.upper)
    metrics.log_metric("label_coverage", result.coverage.share)
    metrics.log_metric("labelled_rows", result.coverage.labelled_rows)
    metrics.log_metric("degradations", len(result.degradations))
    summary.metadata.update({"degraded": result.degraded, "verdict": describe(result)})
    return result.degraded
