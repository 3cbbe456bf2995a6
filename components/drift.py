"""Drift: compare a current table with a reference, column by column and per segment."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Output

from components.images import BASE_IMAGE

__all__ = ["drift"]


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def drift(
    reference: Input[Dataset],
    current: Input[Dataset],
    metrics: Output[Metrics],
    report: Output[Markdown],
    html_report: Output[HTML],
    summary: Output[Artifact],
    segment_column: str = "",
    exclude_columns: list = [],  # noqa: B006 - KFP reads defaults
    thresholds: dict = {},  # noqa: B006
    numeric_test: str = "psi",
    categorical_test: str = "jensenshannon",
    drift_share: float = 0.5,
    report_sample_rows: int = 50000,
    min_segment_rows: int = 100,
) -> bool:
    """Tests every column for drift and decides whether the dataset has drifted.

    Numeric columns get PSI and Kolmogorov–Smirnov, categorical ones chi-squared and
    Jensen–Shannon, computed on every row; with ``segment_column``, every column is also
    judged within each segment value (of at least ``min_segment_rows`` rows in both
    tables). Times and identifier-like text are not tested; the report lists them. Fails
    the step, with one line, when the tables cannot be compared (different columns, a
    numeric column holding text or infinities, an unreadable file).

    Args:
        reference: The reference table (CSV or Parquet), such as the champion's training data.
        current: The current table, such as recent inference inputs.
        metrics: Output metrics: ``drifted_share``, ``drifted_columns``, and each column's
            deciding score as ``<column>.<test>``.
        report: Output Markdown: the verdict, every column's scores and verdict.
        html_report: Output Evidently data drift report with the same tests and thresholds.
        summary: Output JSON: the verdict and every score, per column and segment.
        segment_column: Also judge each column within each value of this column.
        exclude_columns: Columns not tested (identifiers, the label, timestamps); an
            excluded column may be in one table only.
        thresholds: Test -> threshold, replacing the defaults (psi 0.1, ks 0.05,
            chisquare 0.05, jensenshannon 0.1). A p-value below its threshold, or a
            distance at or above it, is drift.
        numeric_test: The test deciding numeric columns (psi, ks or jensenshannon).
        categorical_test: The test deciding categorical columns (jensenshannon, chisquare, psi).
        drift_share: The share of drifted columns at which the dataset has drifted.
        report_sample_rows: Evidently renders its report on at most this many rows per table.
        min_segment_rows: Segments with fewer rows in either table are not tested.

    Returns:
        Whether the dataset has drifted.
    """
    from pathlib import Path

    from components.core.drift import DriftSettings
    from components.core.drift_report import DriftOutputs, detect_drift
    from components.core.errors import step_errors

    with step_errors("drift"):
        settings = DriftSettings(
            thresholds={**thresholds}, numeric_test=numeric_test,
            categorical_test=categorical_test, drift_share=drift_share,
            min_segment_rows=min_segment_rows,
        )  # fmt: skip
        outputs = DriftOutputs(
            Path(html_report.path), Path(report.path), Path(summary.path), report_sample_rows
        )
        result, _ = detect_drift(
            reference.path, current.path, settings, segment_column or None,
            tuple(exclude_columns), outputs,
        )  # fmt: skip
    for column in result.overall:
        metrics.log_metric(f"{column.column}.{column.deciding_test}", column.score)
    metrics.log_metric("drifted_share", result.drifted_share)
    metrics.log_metric("drifted_columns", len(result.drifted_columns))
    summary.metadata["dataset_drifted"] = result.dataset_drifted
    return result.dataset_drifted
