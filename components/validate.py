"""Validate: check both splits against the schema, inferred from the training split or given."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Output

from conveyor.components.images import BASE_IMAGE

__all__ = ["validate"]


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def validate(
    train: Input[Dataset],
    test: Input[Dataset],
    target_column: str,
    schema: Output[Artifact],
    report: Output[Markdown],
    schema_uri: str = "",
    id_columns: list = [],  # noqa: B006 - KFP reads defaults from the signature
    exclude_columns: list = [],  # noqa: B006
    text_columns: list = [],  # noqa: B006
):
    """Checks types, ranges, categories, null rates, keys, row counts, duplicate rows and
    per-segment rules on both splits.

    The schema is ``schema_uri``'s (written by ``conveyor validate --write-schema``,
    edited and committed), else inferred from the training split, where each column's role
    is decided: an identifier (checked unique, never a feature), a date (its parts become
    features), free text (left out unless named in ``text_columns``), a number or a
    category; the report lists the columns left out and why. Fails the step, one
    line per violated rule naming the split, column, rule, what was seen and what was
    expected, with example rows, when a rule of severity ``error`` is broken: a missing
    column, a wrong type, an unseen category, too many nulls, an entirely empty or
    infinite training column. Rules of severity ``warning`` (by default: values beyond
    the training range, duplicate rows) are reported only. The schema and the report
    are written in either case.

    Args:
        train: The training split (Parquet) from ingest.
        test: The evaluation split (Parquet) from ingest.
        target_column: The label column; it must match the schema's target.
        schema: Output JSON schema the splits were checked against; train records it
            with the training split as the reference monitoring compares inputs with.
        report: Output Markdown report: the verdict, every violation, the schema.
        schema_uri: A schema file (path or URI); empty infers one from the training split.
        id_columns: Columns that identify a row: never features, checked unique.
        exclude_columns: Columns never used as features.
        text_columns: Free-text columns to learn from (TF-IDF); other free text is left out.
    """
    from pathlib import Path

    from conveyor.components.core.data.roles import DeclaredRoles
    from conveyor.components.core.data.schema import load_schema
    from conveyor.components.core.data.validation import validate_splits
    from conveyor.components.core.errors import step_errors

    with step_errors("validate"):
        given = load_schema(schema_uri) if schema_uri else None
        declared = DeclaredRoles(tuple(id_columns), tuple(exclude_columns), tuple(text_columns))
        result = validate_splits(
            Path(train.path), Path(test.path), target_column, Path(schema.path),
            Path(report.path), given, declared,
        )  # fmt: skip
    schema.metadata["columns"] = len(result.schema.columns)
    schema.metadata["roles"] = result.schema.roles()
    schema.metadata["source"] = schema_uri or "inferred from the training split"
    report.metadata["warnings"] = len(result.warnings)
    schema.metadata["warnings"] = len(result.warnings)
