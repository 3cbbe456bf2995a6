"""Judge drift: drift of the whole inputs from their partitions' counts."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Output

from conveyor.components.images import BASE_IMAGE

__all__ = ["judge_drift"]


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def judge_drift(
    counts: Input[list[Artifact]],
    plan: Input[Artifact],
    merged: Input[Artifact],
    reference: Input[Dataset],
    metrics: Output[Metrics],
    report: Output[Markdown],
    html_report: Output[HTML],
    summary: Output[Artifact],
    thresholds: dict = {},  # noqa: B006 - KFP reads defaults
    numeric_test: str = "psi",
    categorical_test: str = "jensenshannon",
    drift_share: float = 0.5,
    report_sample_rows: int = 50000,
    min_segment_rows: int = 100,
    importance: Input[Artifact] = None,
    rule: str = "importance",
    importance_threshold: float = 0.1,
    weighted_share: float = 0.3,
    alpha: float = 0.01,
) -> bool:
    """Tests every column for drift from the partitions' counts and decides whether the
    inputs have drifted: the report drift gives on the whole table, with the same
    settings. PSI, Jensen–Shannon, chi-squared and the noise test are exact; a
    Kolmogorov–Smirnov verdict that the grid's error bound leaves open is listed in the
    report. Fails in one line when the counts, plan or importance cannot be read.

    Args:
        counts: Every count_partition's ``counts`` (``dsl.Collected`` over the loop), whose
            samples Evidently's report is rendered on.
        plan: check_partitions' ``plan``.
        merged: check_partitions' ``merged``.
        reference: The reference table (Parquet).
        metrics: Output metrics, as drift's: ``drifted_share``,
            ``weighted_drifted_share``, ``drifted_columns``, each column's deciding score.
        report: Output Markdown, as drift's, listing any approximation.
        html_report: Output Evidently data drift report on the samples.
        summary: Output JSON, as drift's, with ``approximations``.
        thresholds: Test -> threshold, as drift's.
        numeric_test: The test deciding numeric columns (psi, ks or jensenshannon).
        categorical_test: The test deciding categorical columns (jensenshannon, chisquare, psi).
        drift_share: With rule ``share``: the share of drifted columns that drifts the inputs.
        report_sample_rows: Evidently renders its report on at most this many rows per table.
        min_segment_rows: Segments with fewer rows in either table are not tested.
        importance: Optional ``importance.json`` whose ``shares`` weigh each column.
        rule: ``importance`` (the default) or ``share``.
        importance_threshold: A drifted column weighing at least this share drifts the inputs.
        weighted_share: The inputs drift when their drifted columns together weigh this.
        alpha: The run's false-alarm rate for sampling noise, in (0, 1).

    Returns:
        Whether the inputs have drifted.
    """
    from pathlib import Path

    from conveyor.components.core.errors import step_errors
    from conveyor.components.core.monitoring.drift import DriftSettings, load_importance
    from conveyor.components.core.monitoring.drift_report import DriftOutputs, step_metrics
    from conveyor.components.core.monitoring.partitioned import judge_drift as run

    with step_errors("judge_drift"):
        settings = DriftSettings(
            thresholds={**thresholds}, numeric_test=numeric_test,
            categorical_test=categorical_test, drift_share=drift_share,
            min_segment_rows=min_segment_rows,
            importance=load_importance(importance.path) if importance is not None else {},
            importance_threshold=importance_threshold, weighted_share=weighted_share,
            rule=rule, alpha=alpha,
        )  # fmt: skip
        outputs = DriftOutputs(
            Path(html_report.path), Path(report.path), Path(summary.path), report_sample_rows
        )
        folders = [Path(item.path) for item in counts]
        result = run(
            folders, Path(plan.path), Path(merged.path), Path(reference.path), settings, outputs
        )
    for name, value in step_metrics(result).items():
        metrics.log_metric(name, value)
    summary.metadata["dataset_drifted"] = result.dataset_drifted
    summary.metadata["approximations"] = len(result.approximations)
    return result.dataset_drifted
