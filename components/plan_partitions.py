"""Plan partitions: list a payload log's files for the monitoring fan-out, and decide on
the reference which columns drift tests."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from conveyor.components.images import BASE_IMAGE

__all__ = ["plan_partitions"]


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def plan_partitions(
    inputs_uri: str,
    reference: Input[Dataset],
    tested: Output[Artifact],
    inputs_days: int = 0,
    retention_days: int = 0,
    segment_column: str = "",
    exclude_columns: list = [],  # noqa: B006 - KFP reads defaults
    id_columns: list = [],  # noqa: B006
    schema: Input[Artifact] = None,
) -> list[dict]:  # KFP types the loop's items (dicts) from this
    """Lists the partitions (files) of recent inference inputs, each with its rows and the
    position of its first row, for ``dsl.ParallelFor``; reads only Parquet footers (a CSV
    file is counted in a stream). Fails in one line when there is no file to read, or the
    tested columns cannot be decided.

    Args:
        inputs_uri: The inputs: a CSV or Parquet file, or a folder of them such as the
            serving runtime's payload log; a local path or an fsspec URI.
        reference: The reference table (Parquet), such as the champion's training split.
        tested: Output JSON: the columns drift tests and their kinds, the segment column,
            and why each other column is not tested.
        inputs_days: With a payload log, only its day folders of the last this many days,
            today (UTC) included; 0 lists all of inputs_uri.
        retention_days: With inputs_days 0, the payload log's retention, once ingest_inputs
            has deleted the days past it: only the days kept are listed.
        segment_column: Also judge drift within each value of this column.
        exclude_columns: Columns not tested for drift.
        id_columns: The model's id columns: not tested, as excluded ones.
        schema: Optional schema of the reference, whose column roles say what is tested;
            without it, roles are decided on the reference as training decides them.

    Returns:
        The partitions, in order: ``{"files", "offset", "rows"}`` each; at most 90, so the
        steps that gather their outputs stay within Vertex's 100 artifacts a task.
    """
    from pathlib import Path

    from conveyor.components.core.data.schema import load_schema
    from conveyor.components.core.errors import step_errors
    from conveyor.components.core.monitoring.partitioned import plan_partitions as plan

    with step_errors("plan_partitions"):
        roles = load_schema(schema.path).recorded_roles() if schema is not None else None
        partitions = plan(
            inputs_uri, inputs_days or retention_days, Path(reference.path), Path(tested.path),
            segment_column or None, (*exclude_columns, *id_columns), roles,
        )  # fmt: skip
    tested.metadata["partitions"] = len(partitions)
    tested.metadata["rows"] = sum(partition["rows"] for partition in partitions)
    return partitions
