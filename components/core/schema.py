"""A table schema inferred from the training split, and the rules that check a table against it.

Each rule is a function ``(ColumnSchema, Series) -> Violation | None`` listed in ``RULES``;
deeper rules (and drift) join that list without touching the rest.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

from components.core.errors import ConveyorError, plain
from components.core.files import write_text_atomically

__all__ = [
    "ColumnSchema",
    "RULES",
    "Schema",
    "ValidationResult",
    "Violation",
    "check_table",
    "check_training_table",
    "column_kind",
    "infer_schema",
    "render_report",
    "validate_splits",
]

Kind = Literal["numeric", "categorical"]
Severity = Literal["error", "warning"]
# Share of the training range by which evaluation values may stray beyond it.
DEFAULT_RANGE_TOLERANCE = 0.25
# Points of null rate an evaluation column may have above its training rate.
DEFAULT_NULL_RATE_TOLERANCE = 0.10
_EXAMPLES = 3
# A text column whose values are numbers but for at most this share is a numeric column
# with stray missing-value markers ("?", "n/a", "-").
_MOSTLY_NUMBERS_TEXT_SHARE = 0.1


@dataclass(frozen=True)
class ColumnSchema:
    """What the training split says one column holds."""

    name: str
    kind: Kind
    dtype: str
    null_rate: float
    max_null_rate: float
    min: float | None = None
    max: float | None = None
    allowed_min: float | None = None
    allowed_max: float | None = None
    categories: list[str] | None = None


@dataclass(frozen=True)
class Schema:
    """The columns of a table, in order, and which one is the target."""

    target: str
    columns: list[ColumnSchema] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> Schema:
        data = json.loads(text)
        return cls(data["target"], [ColumnSchema(**column) for column in data["columns"]])

    def features(self) -> list[ColumnSchema]:
        return [column for column in self.columns if column.name != self.target]


@dataclass(frozen=True)
class Violation:
    """One rule one column broke, with what was seen and what was expected.

    An ``error`` fails the step; a ``warning`` is reported only.
    """

    column: str
    rule: str
    detail: str
    severity: Severity = "error"
    split: str = "evaluation"

    def __str__(self) -> str:
        return f"{self.split} split: column {self.column!r} [{self.rule}]: {self.detail}"


@dataclass(frozen=True)
class ValidationResult:
    schema: Schema
    violations: list[Violation]

    @property
    def errors(self) -> list[Violation]:
        return [v for v in self.violations if v.severity == "error"]

    @property
    def warnings(self) -> list[Violation]:
        return [v for v in self.violations if v.severity == "warning"]


def validate_splits(
    train_path: Path, test_path: Path, target: str, schema_path: Path, report_path: Path
) -> ValidationResult:
    """Infers the schema from the training split and checks both splits against it.

    The schema and the report are written either way; on any error this raises
    ConveyorError with one line per violated rule. Warnings are reported only.
    """
    train_split, test_split = pd.read_parquet(train_path), pd.read_parquet(test_path)
    inferred = infer_schema(train_split, target)
    result = ValidationResult(
        inferred,
        check_training_table(train_split, inferred) + check_table(test_split, inferred),
    )
    rows = {"training": len(train_split), "evaluation": len(test_split)}
    write_text_atomically(schema_path, inferred.to_json())
    write_text_atomically(report_path, render_report(result, rows))
    if result.errors:
        lines = "\n".join(map(str, result.errors))
        raise ConveyorError(f"{len(result.errors)} rule(s) violated:\n{lines}")
    return result


def column_kind(series: pd.Series) -> Kind:
    """Numbers and booleans are numeric; everything else is categorical."""
    return "numeric" if ptypes.is_numeric_dtype(series) else "categorical"


def infer_schema(
    table: pd.DataFrame,
    target: str,
    range_tolerance: float = DEFAULT_RANGE_TOLERANCE,
    null_rate_tolerance: float = DEFAULT_NULL_RATE_TOLERANCE,
) -> Schema:
    """Infers types, ranges, allowed categories and null-rate ceilings from a table."""
    columns = [
        _infer_column(name, table[name], range_tolerance, null_rate_tolerance)
        for name in table.columns
    ]
    return Schema(target=target, columns=columns)


def check_training_table(table: pd.DataFrame, schema: Schema) -> list[Violation]:
    """Rules the training split itself must meet: no empty column, no infinity, no numbers
    mixed with text such as ``?`` (which would make a numeric column categorical)."""
    violations = [
        Violation(column.name, "not_all_null", "every value is empty")
        for column in schema.columns
        if column.null_rate == 1.0
    ]
    for column in schema.columns:
        for rule in (_finite_rule, _numbers_as_text_rule):
            if (violation := rule(column, table[column.name])) is not None:
                violations.append(violation)
    return [replace(v, split="training") for v in violations]


def check_table(table: pd.DataFrame, schema: Schema) -> list[Violation]:
    """Checks a table against a schema; returns every violation found."""
    violations = []
    for column in schema.columns:
        if column.name not in table.columns:
            violations.append(Violation(column.name, "presence", "column is missing"))
            continue
        series = table[column.name]
        violations.extend(v for rule in RULES if (v := rule(column, series)) is not None)
    return violations


def render_report(result: ValidationResult, rows: dict[str, int]) -> str:
    """A Markdown page: the verdict, each violated rule, then the schema."""
    schema = result.schema
    verdict = (
        f"**Failed**: {len(result.errors)} rule(s) violated."
        if result.errors
        else f"**Passed**: all {len(schema.columns)} columns meet every rule that fails a run."
    )
    lines = ["# Data validation", "", verdict, ""]
    lines += [f"Rows: {', '.join(f'{name} {count}' for name, count in rows.items())}.", ""]
    for title, found in (("Errors", result.errors), ("Warnings", result.warnings)):
        if found:
            lines += [f"## {title}", ""] + [f"- {violation}" for violation in found] + [""]
    lines += ["## Schema (from the training split)", ""]
    lines += ["| column | kind | allowed | null rate (max) |", "| --- | --- | --- | --- |"]
    for column in schema.columns:
        role = " (target)" if column.name == schema.target else ""
        lines.append(
            f"| `{column.name}`{role} | {column.kind} | {_allowed(column)} | "
            f"{column.null_rate:.1%} ({column.max_null_rate:.1%}) |"
        )
    return "\n".join(lines) + "\n"


def _infer_column(
    name: str, series: pd.Series, range_tolerance: float, null_rate_tolerance: float
) -> ColumnSchema:
    null_rate = float(series.isna().mean())
    kind = column_kind(series)
    common = dict(
        name=name,
        kind=kind,
        dtype=str(series.dtype),
        null_rate=null_rate,
        max_null_rate=min(1.0, null_rate + null_rate_tolerance),
    )
    values = series.dropna()
    if values.empty:
        return ColumnSchema(**common)
    if kind == "categorical":
        return ColumnSchema(**common, categories=sorted(values.astype(str).unique().tolist()))
    values = values[np.isfinite(values)]  # infinities fail the finite rule instead
    if values.empty:
        return ColumnSchema(**common)
    low, high = float(values.min()), float(values.max())
    margin = (high - low) * range_tolerance
    return ColumnSchema(
        **common, min=low, max=high, allowed_min=low - margin, allowed_max=high + margin
    )


def _type_rule(column: ColumnSchema, series: pd.Series) -> Violation | None:
    if column.kind != "numeric" or ptypes.is_numeric_dtype(series) or series.isna().all():
        return None
    coerced = pd.to_numeric(series, errors="coerce")
    bad = series[coerced.isna() & series.notna()]
    return Violation(
        column.name,
        "type",
        f"expected numbers, found {series.dtype} values such as {_examples(bad)}",
    )


def _range_rule(column: ColumnSchema, series: pd.Series) -> Violation | None:
    if column.allowed_min is None or not ptypes.is_numeric_dtype(series):
        return None
    values = series.dropna()
    outside = values[(values < column.allowed_min) | (values > column.allowed_max)]
    if outside.empty:
        return None
    # Fresh data strays past the training range now and then: worth a look, not a failed run.
    return Violation(
        column.name,
        "range",
        f"{len(outside)} value(s) outside [{column.allowed_min:.6g}, {column.allowed_max:.6g}] "
        f"(training saw [{column.min:.6g}, {column.max:.6g}]), such as {_examples(outside)}",
        severity="warning",
    )


def _categories_rule(column: ColumnSchema, series: pd.Series) -> Violation | None:
    if column.categories is None:
        return None
    seen = series.dropna().astype(str)
    unseen = sorted(set(seen.unique()) - set(column.categories))
    if not unseen:
        return None
    return Violation(
        column.name,
        "allowed_categories",
        f"{len(unseen)} categor{'y' if len(unseen) == 1 else 'ies'} never seen in training: "
        f"{_examples(pd.Series(unseen))} (in {int(seen.isin(unseen).sum())} rows)",
    )


def _finite_rule(column: ColumnSchema, series: pd.Series) -> Violation | None:
    if column.kind != "numeric" or not ptypes.is_float_dtype(series):
        return None
    infinite = series[np.isinf(series)]
    if infinite.empty:
        return None
    return Violation(
        column.name, "finite", f"{len(infinite)} infinite value(s), such as {_examples(infinite)}"
    )


def _numbers_as_text_rule(column: ColumnSchema, series: pd.Series) -> Violation | None:
    if column.kind != "categorical":
        return None
    values = series.dropna().astype(str)
    text = values[pd.to_numeric(values, errors="coerce").isna()]
    if values.empty or text.empty or len(text) > _MOSTLY_NUMBERS_TEXT_SHARE * len(values):
        return None
    return Violation(
        column.name,
        "type",
        f"numbers mixed with text in {len(text)} row(s), such as "
        f"{_examples(text.drop_duplicates())}; leave missing values empty or clean the column",
    )


def _null_rate_rule(column: ColumnSchema, series: pd.Series) -> Violation | None:
    rate = float(series.isna().mean())
    if rate <= column.max_null_rate:
        return None
    return Violation(
        column.name,
        "null_rate",
        f"{rate:.1%} empty, above the ceiling of {column.max_null_rate:.1%} "
        f"(training: {column.null_rate:.1%})",
    )


RULES: tuple[Callable[[ColumnSchema, pd.Series], Violation | None], ...] = (
    _type_rule,
    _range_rule,
    _categories_rule,
    _null_rate_rule,
    _finite_rule,
)


def _allowed(column: ColumnSchema) -> str:
    if column.categories is not None:
        shown = ", ".join(column.categories[:5])
        more = f", ... ({len(column.categories)})" if len(column.categories) > 5 else ""
        return f"{{{shown}{more}}}"
    if column.allowed_min is not None:
        return f"[{column.allowed_min:.4g}, {column.allowed_max:.4g}]"
    return "n/a"


def _examples(values: pd.Series) -> str:
    sample = values.head(_EXAMPLES).tolist()
    shown = ", ".join(repr(plain(v)) for v in sample)
    return shown + (", ..." if len(values) > _EXAMPLES else "")
