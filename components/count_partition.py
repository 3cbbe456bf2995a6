"""Count partition: drift's second pass over one partition of the inputs."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Output

from conveyor.components.images import BASE_IMAGE

__all__ = ["count_partition"]


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def count_partition(
    partition: dict,
    plan: Input[Artifact],
    merged: Input[Artifact],
    counts: Output[Artifact],
    report_sample_rows: int = 50000,
):
    """Reads one partition in batches and counts each numeric column's values in the
    plan's bins and KS grid; keeps a seeded sample of its rows for the HTML report. Fails
    in one line when the partition changed since it was profiled.

    Args:
        partition: One of plan_partitions' items: ``{"files", "offset", "rows"}``.
        plan: check_partitions' ``plan``.
        merged: check_partitions' ``merged`` (the whole inputs' rows).
        counts: Output folder: ``counts.npz``, the partition's counts, added up by
            judge_drift, and ``sample.parquet``, its share of ``report_sample_rows`` rows (in
            proportion to its rows) for the HTML report.
        report_sample_rows: Rows of the inputs Evidently's report is rendered on.
    """
    from pathlib import Path

    from conveyor.components.core.errors import step_errors
    from conveyor.components.core.monitoring.partitioned import count_partition as run

    with step_errors("count_partition"):
        run(
            partition, Path(plan.path), Path(merged.path), Path(counts.path),
            report_sample_rows,
        )  # fmt: skip
