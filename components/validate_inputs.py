"""Validate inputs: check inference inputs against the champion's schema."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Output

from conveyor.components.images import BASE_IMAGE

__all__ = ["validate_inputs"]


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def validate_inputs(
    inputs: Input[Dataset],
    schema: Input[Artifact],
    report: Output[Markdown],
):
    """Checks a table of model inputs against a schema; no label column is expected.

    Fails the step, one line per violated rule of severity ``error`` (a missing column,
    a wrong type, an unseen category, a null spike, overall or within a segment), so a
    broken feed is caught before drift is measured on it. Warnings are reported only.

    Args:
        inputs: The inputs (Parquet), as ingest_inputs writes them.
        schema: The schema, such as champion_reference's.
        report: Output Markdown report: the verdict, every violation, the schema.
    """
    from pathlib import Path

    from conveyor.components.core.data.validation import validate_file
    from conveyor.components.core.errors import step_errors

    with step_errors("validate_inputs"):
        result = validate_file(inputs.path, Path(schema.path), True, Path(report.path))
        result.raise_errors()
    report.metadata["warnings"] = len(result.warnings)
