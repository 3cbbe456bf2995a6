"""Drift: compare a current table with a reference, column by column and per segment."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Output

from conveyor.components.images import BASE_IMAGE

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
    importance: Input[Artifact] = None,
    rule: str = "importance",
    importance_threshold: float = 0.1,
    weighted_share: float = 0.3,
    alpha: float = 0.01,
    id_columns: list = [],  # noqa: B006
    schema: Input[Artifact] = None,
) -> bool:
    """Tests every column for drift and decides whether the dataset has drifted.

    Numeric columns get PSI and Kolmogorov–Smirnov, categorical ones chi-squared and
    Jensen–Shannon, computed on every row; with ``segment_column``, every column is also
    judged within each segment value (of at least ``min_segment_rows`` rows in both
    tables). A column drifts where its deciding score passes its threshold and its counts
    differ beyond sampling noise at the false-alarm rate ``alpha`` shared by all the run's
    column tests. By default the dataset drifts when a drifted column weighs at least
    ``importance_threshold`` of the champion's importance, or the drifted columns together
    ``weighted_share``. Only numeric and categorical features are tested: dates, free
    text, identifiers and excluded columns (each column's role, as the reference's schema
    records it) are listed as not tested. Fails the step, with one line, when the tables
    cannot be compared (different columns, a numeric column holding text or infinities, an
    unreadable file) or the importance cannot be read.

    Args:
        reference: The reference table (CSV or Parquet), such as the champion's training data.
        current: The current table, such as recent inference inputs.
        metrics: Output metrics: ``drifted_share``, ``weighted_drifted_share``,
            ``drifted_columns``, and each column's deciding score as ``<column>.<test>``.
        report: Output Markdown: the verdict and why, every column's importance, scores
            and verdict.
        html_report: Output Evidently data drift report with the same tests and thresholds.
        summary: Output JSON: the verdict, its reasons, each column's importance, and
            every score and noise p-value, per column and segment.
        segment_column: Also judge each column within each value of this column.
        exclude_columns: Columns not tested (identifiers, the label, timestamps); an
            excluded column may be in one table only.
        thresholds: Test -> threshold, replacing the defaults (psi 0.1, ks 0.05,
            chisquare 0.05, jensenshannon 0.1). A p-value below its threshold, or a
            distance at or above it, is drift.
        numeric_test: The test deciding numeric columns (psi, ks or jensenshannon).
        categorical_test: The test deciding categorical columns (jensenshannon, chisquare, psi).
        drift_share: With rule ``share``: the share of drifted columns at which the
            dataset has drifted.
        report_sample_rows: Evidently renders its report on at most this many rows per table.
        min_segment_rows: Segments with fewer rows in either table are not tested.
        importance: Optional ``importance.json`` (champion_reference's ``importance``)
            whose ``shares`` weigh each column; without it (or empty: a champion trained
            before importance was recorded) every tested column weighs the same; a column
            it does not name weighs 0.
        rule: ``importance`` (the default) or ``share`` (Evidently's share of columns).
        importance_threshold: A drifted column weighing at least this share of the tested
            columns' importance drifts the dataset.
        weighted_share: The dataset drifts when its drifted columns together weigh this.
        alpha: The run's false-alarm rate for sampling noise, shared by all its column
            tests (overall and per segment), in (0, 1).
        id_columns: The model's id columns (never features): not tested, as excluded ones.
        schema: Optional schema of the reference (champion_reference's ``schema``), whose
            column roles say what is tested; without it (or from before roles were
            recorded), roles are decided on the reference as training decides them.

    Returns:
        Whether the dataset has drifted.
    """
    from pathlib import Path

    from conveyor.components.core.data.schema import load_schema
    from conveyor.components.core.errors import step_errors
    from conveyor.components.core.monitoring.drift import DriftSettings, load_importance
    from conveyor.components.core.monitoring.drift_report import (
        DriftOutputs,
        detect_drift,
        step_metrics,
    )

    with step_errors("drift"):
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
        roles = load_schema(schema.path).recorded_roles() if schema is not None else None
        result, _ = detect_drift(
            reference.path, current.path, settings, segment_column or None,
            (*exclude_columns, *id_columns), outputs, roles,
        )  # fmt: skip
    for name, value in step_metrics(result).items():
        metrics.log_metric(name, value)
    summary.metadata["dataset_drifted"] = result.dataset_drifted
    return result.dataset_drifted
