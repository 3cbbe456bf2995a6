"""Checking a table against a schema: column rules, table rules, and rules per segment.

Each column rule is a function ``(ColumnSchema, ColumnView) -> Violation | None`` in
``COLUMN_RULES``; table rules (row count, unique keys, duplicate rows) see every column.
A violation names the column, the rule, what was observed and what was expected, and up to
three example rows (0-based positions in the table). Its severity comes from the schema.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from conveyor.components.core.data.columns import ColumnView, column_views, combine_hashes
from conveyor.components.core.data.roles import UNDECLARED, DeclaredRoles, date_shaped, role_note
from conveyor.components.core.data.schema import (
    NULL_RATE_FALSE_ALARM,
    ColumnSchema,
    Schema,
    SegmentColumn,
    Severity,
    infer_schema,
    load_schema,
    settle_roles,
)
from conveyor.components.core.data.tables import Source, as_arrow, load_arrow_table
from conveyor.components.core.errors import ConveyorError, plain
from conveyor.components.core.files import write_text_atomically
from conveyor.components.core.markdown import table

__all__ = [
    "COLUMN_RULES",
    "ValidationResult",
    "Violation",
    "check_table",
    "check_training_table",
    "render_report",
    "validate_file",
    "validate_splits",
    "write_schema",
]

_EXAMPLES = 3
# The search for copies narrows to the rows sharing a hash once the columns hashed could
# hold this many times more distinct rows than the table has (numbers counted as all distinct).
_NARROW_REACH = 16
# Roles a model's inputs need not hold: the predictor never logs excluded or free-text
# columns, and a request may omit an id (or the log leave it out, payload_log_exclude).
_NOT_REQUIRED_IN_INPUTS = ("excluded", "free_text", "identifier")
# A text column whose values are numbers but for at most this share is a numeric column
# with stray missing-value markers ("?", "n/a", "-").
_MOSTLY_NUMBERS_TEXT_SHARE = 0.1


@dataclass(frozen=True)
class Violation:
    """One rule a column (or the table, when ``column`` is empty) broke.

    Attributes:
        column: The column; empty for a rule on the whole table.
        rule: The rule's name, as in the schema's ``severity``.
        observed: What the table holds.
        expected: What the schema asks for.
        severity: ``error`` fails the step; ``warning`` is reported only.
        rows: Up to three rows (0-based positions) that break the rule.
        segment: The segment value the rule was checked within; empty for the whole table.
        split: Which table: ``training``, ``evaluation``, or empty for a single table.
    """

    column: str
    rule: str
    observed: str
    expected: str
    severity: Severity = "error"
    rows: tuple[int, ...] = ()
    segment: str = ""
    split: str = ""

    @property
    def detail(self) -> str:
        text = f"{self.observed}; expected {self.expected}"
        if not self.rows:
            return text
        return (
            f"{text} (e.g. row{'s' if len(self.rows) > 1 else ''} {', '.join(map(str, self.rows))})"
        )

    def __str__(self) -> str:
        where = f"{self.split} split: " if self.split else ""
        subject = f"column {self.column!r}" if self.column else "table"
        within = f" in segment {self.segment!r}" if self.segment else ""
        return f"{where}{subject}{within} [{self.rule}]: {self.detail}"


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

    def raise_errors(self) -> None:
        """ConveyorError with one line per error; nothing when there is none."""
        if self.errors:
            lines = "\n".join(map(str, self.errors))
            raise ConveyorError(f"{len(self.errors)} rule(s) violated:\n{lines}")


def validate_splits(
    train_path: Path,
    test_path: Path,
    target: str,
    schema_path: Path,
    report_path: Path,
    schema: Schema | None = None,
    declared: DeclaredRoles = UNDECLARED,
) -> ValidationResult:
    """Checks both splits against ``schema``, or one inferred from the training split (each
    column's role decided there, over what ``declared`` gives), and the training split
    against the rules a table to learn from must meet.

    The schema and the report are written either way; on any error this raises
    ConveyorError with one line per violated rule. Warnings are reported only.
    """
    train_split = load_arrow_table(Source(str(train_path)))
    test_split = load_arrow_table(Source(str(test_path)))
    if schema is None:
        schema = infer_schema(train_split, target, declared=declared, where="training split")
    elif schema.target != target:
        raise ConveyorError(f"the schema's target is {schema.target!r}, the run's {target!r}")
    else:
        schema = settle_roles(schema, train_split, declared, "training split")
    violations = (
        check_training_table(train_split, schema)
        + check_table(train_split, schema, split="training")
        + check_table(test_split, schema, split="evaluation")
    )
    result = ValidationResult(schema, violations)
    rows = {"training": train_split.num_rows, "evaluation": test_split.num_rows}
    write_text_atomically(schema_path, schema.to_json())
    write_text_atomically(report_path, render_report(result, rows))
    result.raise_errors()
    return result


def validate_file(
    data: str, schema_path: Path, inputs_only: bool = False, report_path: Path | None = None
) -> ValidationResult:
    """Checks a table (any path or URI ``load_table`` reads) against a schema file.

    With ``inputs_only`` the table holds a model's inputs (a payload log): the target
    column is not expected. Returns the result; errors are the caller's to act on.
    """
    schema = load_schema(schema_path)
    table = load_arrow_table(Source(data))
    result = ValidationResult(schema, check_table(table, schema, inputs_only=inputs_only))
    if report_path is not None:
        write_text_atomically(report_path, render_report(result, {"checked": table.num_rows}))
    return result


def write_schema(
    data: str,
    schema_path: Path,
    target: str = "",
    segment: str = "",
    keys: tuple[str, ...] = (),
    report_path: Path | None = None,
    declared: DeclaredRoles = UNDECLARED,
) -> ValidationResult:
    """Infers a schema from a table and writes it, to be edited and committed.

    Nothing is written when the table breaks a rule a schema cannot be inferred around (an
    empty column, infinities, numbers mixed with text, a key that is not unique).
    """
    table = load_arrow_table(Source(data))
    schema = infer_schema(table, target, segment=segment, keys=keys, declared=declared, where=data)
    violations = check_training_table(table, schema, split="") + check_table(table, schema)
    result = ValidationResult(schema, violations)
    if report_path is not None:
        write_text_atomically(report_path, render_report(result, {"read": table.num_rows}))
    if not result.errors:
        write_text_atomically(schema_path, schema.to_json())
    return result


def check_table(
    table: pd.DataFrame | pa.Table,
    schema: Schema,
    *,
    inputs_only: bool = False,
    split: str = "",
    where: str = "table",
) -> list[Violation]:
    """Every violation of ``schema`` in ``table``: columns, segments, then the table."""
    arrow = as_arrow(table)
    views = column_views(arrow, where)
    violations = []
    missing = _missing_text(schema, list(views))
    for column in schema.columns:
        if inputs_only and (column.name == schema.target or column.kind in _NOT_REQUIRED_IN_INPUTS):
            continue
        view = views.get(column.name)
        if view is None:
            violations.append(Violation(column.name, "presence", missing, "present"))
            continue
        violations.extend(_column_violations(schema, column, view))
    violations += _segment_violations(schema, views, violations)
    violations += _table_violations(schema, views, arrow.num_rows, inputs_only)
    return _with_severity(schema, violations, split)


def _missing_text(schema: Schema, names: list[str]) -> str:
    """What a missing column's ``presence`` violation observes: the table's columns the
    schema does not know, which may be the missing one renamed."""
    unknown = [name for name in names if schema.column(name) is None]
    return "column is missing" + (
        f" (not in the schema: {_shown(np.asarray(unknown))})" if unknown else ""
    )


def check_training_table(
    table: pd.DataFrame | pa.Table, schema: Schema, split: str = "training"
) -> list[Violation]:
    """Rules the table a model learns from must meet besides the schema: no empty column and
    no numbers mixed with text such as ``?`` (which make a column categorical)."""
    views = column_views(as_arrow(table), "training split")
    violations = []
    for column in schema.columns:
        view = views.get(column.name)
        if view is None:
            continue
        if not view.valid.any():
            violations.append(
                Violation(column.name, "not_all_null", "every value is empty", "some values")
            )
        if (violation := _numbers_as_text_rule(column, view)) is not None:
            violations.append(violation)
    return _with_severity(schema, violations, split)


def _with_severity(schema: Schema, violations: list[Violation], split: str) -> list[Violation]:
    graded = [
        replace(v, severity=schema.severity_of(v.rule, v.column), split=split) for v in violations
    ]
    return [v for v in graded if v.severity != "off"]


def _column_violations(schema: Schema, column: ColumnSchema, view: ColumnView) -> list[Violation]:
    found = []
    for name, rule in COLUMN_RULES.items():
        if schema.severity_of(name, column.name) == "off":
            continue
        if (violation := rule(column, view)) is not None:
            found.append(violation)
    return found


def _type_rule(column: ColumnSchema, view: ColumnView) -> Violation | None:
    if column.kind != "numeric" or view.is_numeric or not view.valid.any():
        return None
    parsed = pd.to_numeric(pd.Series(view.labels), errors="coerce").isna().to_numpy()
    bad_labels = parsed if parsed.any() else np.ones(len(view.labels), dtype=bool)
    return _type_violation(
        column.name, view.dtype, view.labels[bad_labels], _first(_rows(view, bad_labels))
    )


def _type_violation(name: str, dtype: str, labels: np.ndarray, rows: tuple[int, ...]) -> Violation:
    """A numeric column holding text: ``labels`` are its first values that are not numbers
    (or its first values, when each is a number written as text)."""
    return Violation(name, "type", f"{dtype} values such as {_shown(labels)}", "numbers", rows=rows)


def _date_format_rule(column: ColumnSchema, view: ColumnView) -> Violation | None:
    """A date column holds dates (a date type, or ISO 8601 text), what its features are
    made from; other values (sentinels, another format, numbers: an epoch is not one) are
    read as missing, so by default this is a warning."""
    kind = view.array.type
    kind = kind.value_type if pa.types.is_dictionary(kind) else kind
    if column.kind != "datetime" or pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        return None
    labels = view.labels
    bad_labels = ~date_shaped(labels) & (view.label_counts > 0)
    if not bad_labels.any():
        return None
    return _date_format_violation(
        column.name, view.dtype, labels[bad_labels], _first(_rows(view, bad_labels))
    )


def _date_format_violation(
    name: str, dtype: str, labels: np.ndarray, rows: tuple[int, ...]
) -> Violation:
    """A date column holding ``labels`` (its first values that are not dates)."""
    return Violation(
        name,
        "date_format",
        f"{dtype} values that are not dates, such as {_shown(labels)}",
        "dates or times in ISO 8601 form (2024-03-01, 2024-03-01T10:00:00)",
        rows=rows,
    )


def _range_rule(column: ColumnSchema, view: ColumnView) -> Violation | None:
    if not view.is_numeric or column.allowed_min is column.allowed_max is None:
        return None
    low, high = _bounds(column.allowed_min, column.allowed_max)
    outside = _outside(view.numbers, low, high)
    if not outside.any():
        return None
    count = int(outside.sum())
    return _range_violation(column, count, view.numbers[outside][:_EXAMPLES], _first(outside))


def _range_violation(
    column: ColumnSchema, count: int, values: np.ndarray, rows: tuple[int, ...]
) -> Violation:
    """``count`` values outside the column's allowed range, the first of them ``values``."""
    low, high = _bounds(column.allowed_min, column.allowed_max)
    return Violation(
        column.name,
        "range",
        f"{count} value(s) outside the range, such as {_shown(values, count)}",
        f"[{_bound(low)}, {_bound(high)}] "
        f"(training saw [{_bound(column.min)}, {_bound(column.max)}])",
        rows=rows,
    )


def _bounds(low: float | None, high: float | None) -> tuple[float, float]:
    """An allowed range; a bound left empty is open."""
    return (-np.inf if low is None else low), (np.inf if high is None else high)


def _bound(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.6g}"


def _categories_rule(column: ColumnSchema, view: ColumnView) -> Violation | None:
    if column.categories is None:
        return None
    labels = np.asarray([str(label) for label in view.labels], dtype=object)
    unseen = ~np.isin(labels, np.asarray(column.categories, dtype=object))
    counts = view.label_counts
    unseen &= counts > 0
    if not unseen.any():
        return None
    names = sorted(labels[unseen])
    in_rows = int(counts[unseen].sum())
    return _categories_violation(
        column, names[:_EXAMPLES], len(names), in_rows, _first(_rows(view, unseen))
    )


def _categories_violation(
    column: ColumnSchema, names: list[str], distinct: int, in_rows: int, rows: tuple[int, ...]
) -> Violation:
    """``distinct`` values not among the column's categories, in ``in_rows`` rows; ``names``
    are the first of them in sorted order."""
    return Violation(
        column.name,
        "allowed_categories",
        f"{distinct} categor{'y' if distinct == 1 else 'ies'} never seen in training, "
        f"{_shown(np.asarray(names), distinct)}, in {_count(in_rows, 'row')}",
        f"one of {len(column.categories or [])} categories",
        rows=rows,
    )


def _finite_rule(column: ColumnSchema, view: ColumnView) -> Violation | None:
    if column.kind != "numeric" or not view.is_numeric:
        return None
    infinite = np.isinf(view.numbers)
    if not infinite.any():
        return None
    count = int(infinite.sum())
    return _finite_violation(
        column.name, count, view.numbers[infinite][:_EXAMPLES], _first(infinite)
    )


def _finite_violation(
    name: str, count: int, values: np.ndarray, rows: tuple[int, ...]
) -> Violation:
    """``count`` infinite values, the first of them ``values``."""
    return Violation(
        name,
        "finite",
        f"{count} infinite value(s), such as {_shown(values, count)}",
        "finite numbers",
        rows=rows,
    )


def _numbers_as_text_rule(column: ColumnSchema, view: ColumnView) -> Violation | None:
    if column.kind != "categorical" or view.is_numeric:
        return None
    text = pd.to_numeric(pd.Series(view.labels), errors="coerce").isna().to_numpy()
    counts = view.label_counts
    in_rows, total = int(counts[text].sum()), int(counts.sum())
    if total == 0 or in_rows == 0 or in_rows > _MOSTLY_NUMBERS_TEXT_SHARE * total:
        return None
    return Violation(
        column.name,
        "type",
        f"numbers mixed with text in {in_rows} row(s), such as {_shown(view.labels[text])}",
        "numbers only; leave missing values empty or clean the column",
        rows=_first(_rows(view, text)),
    )


def _null_rate_rule(column: ColumnSchema, view: ColumnView) -> Violation | None:
    missing = ~view.valid
    violation = _null_rate_violation(column, view.name, int(missing.sum()), len(missing))
    return None if violation is None else replace(violation, rows=_first(missing))


def _null_rate_violation(
    described: ColumnSchema | SegmentColumn,
    column: str,
    empty: int,
    rows: int,
    level: float = NULL_RATE_FALSE_ALARM,
) -> Violation | None:
    """A ``null_rate`` violation (example rows left to the caller) when ``empty`` of
    ``rows`` is too many for the column's ceiling, re-derived for ``rows`` (at false-alarm
    ``level``) unless a person wrote it."""
    if not described.too_empty(empty, rows, level):
        return None
    expected = _null_ceiling_text(described, rows, level)
    return Violation(column, "null_rate", f"{_percent(empty / rows)} empty", expected)


def _null_ceiling_text(
    described: ColumnSchema | SegmentColumn, rows: int, level: float = NULL_RATE_FALSE_ALARM
) -> str:
    """The ceiling and what it came from, e.g. ``at most 1.86% for 215 rows (derived from
    training: 0.0% of 855 rows)``."""
    training = f"training: {_percent(described.null_rate)}"
    if described.rows is None:  # a schema written before training's rows were recorded
        return f"at most {_percent(described.max_null_rate)} ({training})"
    training += f" of {described.rows} rows"
    if not described.ceiling_derived:
        return f"at most {_percent(described.max_null_rate)} as written ({training})"
    ceiling = described.max_null_rate_for(rows, level)
    return f"at most {_percent(ceiling)} for {rows} rows (derived from {training})"


def _percent(share: float) -> str:
    """Two decimals below 10 % (ceilings there are a few tenths of a point apart)."""
    return f"{share:.1%}" if share == 0 or share >= 0.1 else f"{share:.2%}"


COLUMN_RULES: dict[str, Callable[[ColumnSchema, ColumnView], Violation | None]] = {
    "type": _type_rule,
    "range": _range_rule,
    "allowed_categories": _categories_rule,
    "null_rate": _null_rate_rule,
    "finite": _finite_rule,
    "date_format": _date_format_rule,
}


def _segment_violations(
    schema: Schema, views: dict[str, ColumnView], found: list[Violation]
) -> list[Violation]:
    """``null_rate`` and ``range`` within each segment the schema describes and the table
    holds enough rows of; a column already breaking a rule overall is not repeated."""
    segments = schema.segments
    if segments is None or segments.column not in views:
        return []
    by_segment = views[segments.column]
    labels = [str(label) for label in by_segment.labels]
    counts = by_segment.label_counts
    checked = _checked_segments(schema, labels, counts)
    broken = {(v.column, v.rule) for v in found}
    violations = []
    for name, view in views.items():
        stats = {code: columns[name] for code, columns in checked.items() if name in columns}
        if not stats:
            continue
        if (name, "null_rate") not in broken:
            violations += _segment_null_rates(view, by_segment, labels, counts, stats)
        if (name, "range") not in broken and view.is_numeric:
            violations += _segment_ranges(view, by_segment, labels, stats)
    return violations


def _checked_segments(
    schema: Schema, labels: list[str], counts: np.ndarray
) -> dict[int, dict[str, SegmentColumn]]:
    """Segment value (its index in ``labels``, the values in order of first appearance) ->
    what the schema says of each column there, for the segments checked: an unseen segment
    value is the categories rule's to report; a small segment is noise."""
    segments = schema.segments
    if segments is None:
        return {}
    return {
        code: segments.values[label]
        for code, label in enumerate(labels)
        if label in segments.values and counts[code] >= segments.min_rows
    }


def _segment_null_rates(
    view: ColumnView,
    by_segment: ColumnView,
    labels: list[str],
    counts: np.ndarray,
    stats: dict[int, SegmentColumn],
) -> list[Violation]:
    codes = by_segment.codes
    missing = ~view.valid & (codes >= 0)
    empty = np.bincount(codes[missing], minlength=len(labels))
    violations = []
    # The column's false-alarm rate is shared by its segments: with 25 segments, checking
    # each at the full rate alarmed on one same-distribution table in five.
    level = NULL_RATE_FALSE_ALARM / len(stats)
    for code, described in stats.items():
        found = _null_rate_violation(
            described, view.name, int(empty[code]), int(counts[code]), level
        )
        if found is not None:
            rows = _first(missing & (codes == code))
            violations.append(replace(found, rows=rows, segment=labels[code]))
    return violations


def _segment_ranges(
    view: ColumnView, by_segment: ColumnView, labels: list[str], stats: dict[int, SegmentColumn]
) -> list[Violation]:
    low, high = np.full(len(labels) + 1, -np.inf), np.full(len(labels) + 1, np.inf)
    for code, described in stats.items():
        low[code], high[code] = _bounds(described.allowed_min, described.allowed_max)
    # A value inside every segment's range is inside its own: only the rest are looked up.
    band = (low[:-1].max(), high[:-1].min())
    candidates = np.flatnonzero(_outside(view.numbers, *band))
    codes = by_segment.codes[candidates]  # code -1 (no segment) reads the open last entry
    values = view.numbers[candidates]
    beyond = (values < low[codes]) | (values > high[codes])
    rows, codes, values = candidates[beyond], codes[beyond], values[beyond]
    violations = []
    for code in np.unique(codes[codes >= 0]):
        here = codes == code
        violations.append(_segment_range_violation(
            view.name, int(here.sum()), values[here][:_EXAMPLES], (low[code], high[code]),
            tuple(int(row) for row in rows[here][:_EXAMPLES]), labels[code],
        ))  # fmt: skip
    return violations


def _segment_range_violation(
    name: str,
    count: int,
    values: np.ndarray,
    bounds: tuple[float, float],
    rows: tuple[int, ...],
    segment: str,
) -> Violation:
    """``count`` values outside the segment's allowed ``bounds``, the first of them ``values``."""
    low, high = bounds
    return Violation(
        name, "range",
        f"{count} value(s) outside the segment's range, such as {_shown(values, count)}",
        f"[{low:.6g}, {high:.6g}]", rows=rows, segment=segment,
    )  # fmt: skip


def _table_violations(
    schema: Schema, views: dict[str, ColumnView], rows: int, inputs_only: bool
) -> list[Violation]:
    violations: list[Violation] = []
    if not inputs_only:
        violations += _identifier_violations(schema, views, rows)
    violations += _row_count_violations(schema, rows)
    if _keyed(schema, list(views)):
        violations += _key_violations(schema, [views[name] for name in schema.keys], rows)
    if _duplicates_checked(schema, list(views)):
        repeated = _repeated_rows(list(views.values()), rows)
        violations += _duplicate_rows_violations(int(repeated.sum()), _first(repeated))
    return violations


def _row_count_violations(schema: Schema, rows: int) -> list[Violation]:
    if rows >= schema.min_rows and (schema.max_rows is None or rows <= schema.max_rows):
        return []
    bound = f"at least {schema.min_rows}" + (
        f" and at most {schema.max_rows}" if schema.max_rows is not None else ""
    )
    return [Violation("", "row_count", f"{rows} rows", f"{bound} rows")]


def _keyed(schema: Schema, names: list[str]) -> bool:
    """Whether the key's rule is checked: the schema has a key, the table its columns."""
    keyed = bool(schema.keys) and all(name in names for name in schema.keys)
    return keyed and schema.severity_of("unique_key", "+".join(schema.keys)) != "off"


def _duplicates_checked(schema: Schema, names: list[str]) -> bool:
    return schema.severity_of("duplicate_rows") != "off" and bool(names)


def _identifiers_checked(schema: Schema, names: list[str]) -> list[str]:
    """The identifier columns held to be unique (a key column is the key's rule's)."""
    return [
        column.name
        for column in schema.columns
        if column.kind == "identifier"
        and column.name in names
        and column.name not in schema.keys
        and schema.severity_of("unique_key", column.name) != "off"
    ]


def _duplicate_rows_violations(count: int, rows: tuple[int, ...]) -> list[Violation]:
    if count == 0:
        return []
    observed = f"{count} rows are exact copies of another row"
    return [Violation("", "duplicate_rows", observed, "distinct rows", rows=rows)]


def _identifier_violations(
    schema: Schema, views: dict[str, ColumnView], rows: int
) -> list[Violation]:
    """Each identifier column of a table to learn from is unique where it holds a value (a
    payload log is not held to it: customers come back)."""
    found = []
    for name in _identifiers_checked(schema, list(views)):
        repeated = _repeated_rows([views[name]], rows) & views[name].valid
        found += _identifier_violations_of(name, int(repeated.sum()), _first(repeated))
    return found


def _identifier_violations_of(name: str, count: int, rows: tuple[int, ...]) -> list[Violation]:
    if count == 0:
        return []
    return [Violation(
        name, "unique_key", f"{count} rows share their {name} with another row",
        "a distinct value in each row (an identifier)", rows=rows,
    )]  # fmt: skip


def _key_violations(schema: Schema, keys: list[ColumnView], rows: int) -> list[Violation]:
    """Rows with an empty key, and rows sharing a (complete) key with another row."""
    empty = ~np.logical_and.reduce([view.valid for view in keys])
    repeated = _repeated_rows(keys, rows) & ~empty
    return _key_violations_of(
        schema, (int(empty.sum()), _first(empty)), (int(repeated.sum()), _first(repeated))
    )


def _key_violations_of(
    schema: Schema, empty: tuple[int, tuple[int, ...]], repeated: tuple[int, tuple[int, ...]]
) -> list[Violation]:
    """The key's violations from (count, first rows) of rows with an empty key and of rows
    sharing a complete key with another row."""
    found = [
        (empty, f"{empty[0]} rows have an empty key"),
        (repeated, f"{repeated[0]} rows share their key with another row"),
    ]
    return [
        Violation("+".join(schema.keys), "unique_key", observed, "unique, complete keys", rows=rows)
        for (count, rows), observed in found
        if count
    ]


def _repeated_rows(views: list[ColumnView], rows: int) -> np.ndarray:
    """True for each row equal to another one over ``views``: hashed, then the rows whose
    hashes collide compared value by value, so a hash collision cannot report a copy.

    Only rows sharing their hash over the first columns (numbers, then text with the most
    distinct values: those most likely to tell rows apart) can be copies; once those columns
    may tell every row apart (``_NARROW_REACH``), the others are hashed for those rows only,
    when that leaves at most half of them. The hash is a filter; the values decide.
    """
    candidates = np.arange(rows)
    combined = np.zeros(rows, dtype=np.uint64)
    reach, tried = 1.0, False
    for view in sorted(views, key=_distinctness):
        narrowed = candidates.size < rows
        combine_hashes(combined, view.hashes(candidates if narrowed else None))
        reach *= rows if view.text_labels is None else max(len(view.text_labels), 1)
        if not tried and reach >= _NARROW_REACH * rows:
            tried, shared = True, _shared(combined)
            if shared.mean() <= 0.5:
                candidates, combined = candidates[shared], combined[shared]
    candidates = candidates[_shared(combined)]
    if candidates.size == 0:
        return np.zeros(rows, dtype=bool)
    exact = [array for view in views for array in view.exact(candidates)]
    values = pd.DataFrame(dict(enumerate(exact)))
    repeated = np.zeros(rows, dtype=bool)
    repeated[candidates[values.duplicated(keep=False).to_numpy()]] = True
    return repeated


def _shared(hashes: np.ndarray) -> np.ndarray:
    """True for each hash another one equals."""
    return pd.Series(hashes).duplicated(keep=False).to_numpy()


def _distinctness(view: ColumnView) -> int:
    """Sorts numbers first, then text with more distinct values before text with fewer."""
    return -(2**62) if view.text_labels is None else -len(view.text_labels)


def _outside(numbers: np.ndarray, low: float, high: float) -> np.ndarray:
    """Finite numbers below ``low`` or above ``high`` (NaN is neither; infinities are the
    finite rule's, looked for only when some number is outside)."""
    with np.errstate(invalid="ignore"):
        outside = (numbers < low) | (numbers > high)
    if outside.any():
        outside &= np.isfinite(numbers)
    return outside


def _rows(view: ColumnView, labels: np.ndarray) -> np.ndarray:
    """Rows holding any of the labels flagged True."""
    flagged = np.append(labels, False)  # code -1 (missing) reads the appended False
    return flagged[view.codes]


def _first(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(row) for row in np.flatnonzero(mask)[:_EXAMPLES])


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _shown(values: np.ndarray, total: int | None = None) -> str:
    """The first values, and ``...`` when there are more (``total`` of them, if given; else
    ``len(values)``)."""
    shown = ", ".join(repr(plain(value)) for value in values[:_EXAMPLES])
    more = len(values) if total is None else total
    return shown + (", ..." if more > _EXAMPLES else "")


def render_report(result: ValidationResult, rows: dict[str, int]) -> str:
    """A Markdown page: the verdict, each violation with example rows, then the schema."""
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
            lines += [f"## {title}", "", *_violation_table(found), ""]
    left_out = [role_note(name, kind) for name, kind in schema.roles().items()]
    if any(left_out):
        lines += ["## Columns the model does not learn from", ""]
        lines += [f"- {note}" for note in left_out if note] + [""]
    lines += ["## Schema", ""]
    lines += ["| column | kind | allowed | null rate (max) |", "| --- | --- | --- | --- |"]
    for column in schema.columns:
        role = " (target)" if column.name == schema.target else ""
        lines.append(
            f"| `{column.name}`{role} | {column.kind} | {_allowed(column)} | "
            f"{_percent(column.null_rate)} ({_percent(column.max_null_rate)}) |"
        )
    return "\n".join(lines) + "\n"


def _violation_table(violations: list[Violation]) -> list[str]:
    header = ("split", "column", "segment", "rule", "observed", "expected", "example rows")
    rows = (
        [
            v.split or "-",
            f"`{v.column}`" if v.column else "(table)",
            v.segment or "-",
            v.rule,
            v.observed,
            v.expected,
            ", ".join(map(str, v.rows)) or "-",
        ]  # fmt: skip
        for v in violations
    )
    return table(header, rows)


def _allowed(column: ColumnSchema) -> str:
    if column.categories is not None:
        shown = ", ".join(column.categories[:5])
        more = f", ... ({len(column.categories)})" if len(column.categories) > 5 else ""
        return f"{{{shown}{more}}}"
    if column.allowed_min is column.allowed_max is None:
        return "n/a"
    return f"[{_bound(column.allowed_min)}, {_bound(column.allowed_max)}]"
