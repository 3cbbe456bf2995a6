"""Prediction drift: the model's logged scores and classes against its evaluation split's."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Output

from conveyor.components.images import BASE_IMAGE

__all__ = ["prediction_drift"]


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def prediction_drift(
    reference_scores: Input[Dataset],
    log: Input[Dataset],
    metrics: Output[Metrics],
    report: Output[Markdown],
    summary: Output[Artifact],
    segment_column: str = "",
    thresholds: dict = {},  # noqa: B006 - KFP reads defaults
    min_segment_rows: int = 100,
    alpha: float = 0.01,
) -> bool:
    """Compares the scores and predicted classes the payload log recorded with the
    champion's on its evaluation split, over all rows and within each segment, with the
    statistics and thresholds of feature drift (PSI for the score, Jensen–Shannon for the
    classes' shares, each beyond what sampling noise explains). A moved output distribution
    is reported even when no labels have arrived. A log written before predictions were
    logged, or a champion trained before its scores were recorded, is "not measured", not a
    failure.

    Args:
        reference_scores: The champion's scores on its evaluation split
            (champion_reference's ``reference_scores``; empty for an older champion).
        log: The payload log's rows with their ``conveyor.*`` columns (ingest_inputs' ``log``).
        metrics: Output metrics: ``prediction_drifted`` (0/1) and each comparison's
            statistic as ``<output>_<test>.<segment>``.
        report: Output Markdown: the verdict and a row per comparison.
        summary: Output JSON: ``measured``, ``drifted``, ``reason``, every comparison.
        segment_column: Also compare within each value of this column.
        thresholds: Test -> threshold, as the drift step's.
        min_segment_rows: Segments with fewer rows on either side are not compared.
        alpha: The false-alarm rate for sampling noise shared by the step's comparisons,
            as the drift step's.

    Returns:
        Whether the model's outputs drifted.
    """
    import json
    from pathlib import Path

    from conveyor.components.core.data.tables import read_parquet
    from conveyor.components.core.errors import step_errors
    from conveyor.components.core.files import write_text_atomically
    from conveyor.components.core.monitoring.drift import DriftSettings
    from conveyor.components.core.monitoring.prediction_drift import compare_predictions
    from conveyor.components.core.training.importance import read_reference_scores

    with step_errors("prediction_drift"):
        settings = DriftSettings(
            thresholds={**thresholds}, min_segment_rows=min_segment_rows, alpha=alpha
        )
        result = compare_predictions(
            read_reference_scores(Path(reference_scores.path)),
            read_parquet(log.path),
            settings,
            segment_column or None,
        )
    write_text_atomically(Path(report.path), result.markdown())
    write_text_atomically(Path(summary.path), json.dumps(result.to_dict(), indent=2))
    metrics.log_metric("prediction_drifted", int(result.drifted))
    for segment, scores in result.scores().items():
        for test, value in scores.items():
            metrics.log_metric(f"{test}.{segment}", value)
    summary.metadata.update({"measured": result.measured, "drifted": result.drifted})
    return result.drifted
