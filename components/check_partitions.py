"""Check partitions: validate the inputs from their partitions' summaries, then fix the
bins drift counts every partition in."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Output

from conveyor.components.images import BASE_IMAGE

__all__ = ["check_partitions"]


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def check_partitions(
    profiles: Input[list[Artifact]],
    reference: Input[Dataset],
    schema: Input[Artifact],
    tested: Input[Artifact],
    report: Output[Markdown],
    plan: Output[Artifact],
    merged: Output[Artifact],
):
    """Checks the inputs against the champion's schema from the partitions' validation
    summaries, with validate_inputs' rules and findings (exact: counts add; duplicate rows
    and keys are compared by 64-bit hashes); fails the step, one line per violated rule of
    severity ``error``, so a broken feed is caught before drift is measured on it. Then
    merges the partitions' drift profiles and decides, per numeric column and segment, the
    bins drift counts in: the Sturges edges or values a single read of the whole table
    would use, and a grid for the Kolmogorov–Smirnov test.

    Args:
        profiles: Every profile_partition's ``profile`` (``dsl.Collected`` over the loop).
        reference: The reference table (Parquet), as plan_partitions read it.
        schema: The schema the inputs are checked against, such as champion_reference's.
        tested: plan_partitions' ``tested``.
        report: Output Markdown: the validation verdict, every violation, the schema.
        plan: Output NumPy archive: each numeric column's bins and KS grid.
        merged: Output JSON: the whole inputs' drift profile.
    """
    from pathlib import Path

    from conveyor.components.core.errors import step_errors
    from conveyor.components.core.monitoring.partitioned import check_partitions as run

    with step_errors("check_partitions"):
        result = run(
            [Path(item.path) for item in profiles], Path(reference.path), Path(schema.path),
            Path(tested.path), (Path(report.path), Path(plan.path), Path(merged.path)),
        )  # fmt: skip
    report.metadata["warnings"] = len(result.warnings)
    plan.metadata["partitions"] = len(profiles)
