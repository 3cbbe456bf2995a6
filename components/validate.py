"""Validate: infer a schema from the training split and check the evaluation split against it."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Output

from components.images import BASE_IMAGE

__all__ = ["validate"]


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def validate(
    train: Input[Dataset],
    test: Input[Dataset],
    target_column: str,
    schema: Output[Artifact],
    report: Output[Markdown],
):
    """Infers types, ranges, categories and null rates, then checks both splits.

    Fails the step, one line per violated rule naming the split, column and rule,
    when the training split has an entirely empty column or the evaluation split
    breaks the schema (missing column, wrong type, unseen category, too many
    nulls). Values beyond the training range are reported as warnings. The schema
    and the report are written in either case.

    Args:
        train: The training split (Parquet) from ingest.
        test: The evaluation split (Parquet) from ingest.
        target_column: The label column.
        schema: Output JSON schema inferred from the training split.
        report: Output Markdown report: the verdict, every violation, the schema.
    """
    from pathlib import Path

    from components.core.errors import step_errors
    from components.core.schema import validate_splits

    with step_errors("validate"):
        result = validate_splits(
            Path(train.path), Path(test.path), target_column, Path(schema.path), Path(report.path)
        )
    schema.metadata["columns"] = len(result.schema.columns)
    report.metadata["warnings"] = len(result.warnings)
