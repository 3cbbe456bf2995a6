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

from conveyor.components.core.data.columns import ColumnView, column_views, row_hashes
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
    unknown = [name for name in views if schema.column(name) is None]
    missing = "column is missing" + (
        f" (not in the schema: {_shown(np.asarray(unknown))})" if unknown else ""
    )
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
    bad = _rows(view, bad_labels)
    return Violation(
        column.name,
        "type",
        f"{view.dtype} values such as {_shown(view.labels[bad_labels])}",
        "numbers",
        rows=_first(bad),
    )


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
    return Violation(
        column.name,
        "date_format",
        f"{view.dtype} values that are not dates, such as {_shown(labels[bad_labels])}",
        "dates or times in ISO 8601 form (2024-03-01, 2024-03-01T10:00:00)",
        rows=_first(_rows(view, bad_labels)),
    )


def _range_rule(column: ColumnSchema, view: ColumnView) -> Violation | None:
    if not view.is_numeric or column.allowed_min is column.allowed_max is None:
        return None
    low, high = _bounds(column.allowed_min, column.allowed_max)
    outside = _outside(view.numbers, low, high)
    if not outside.any():
        return None
    return Violation(
        column.name,
        "range",
        f"{int(outside.sum())} value(s) outside the range, such as {_shown(view.numbers[outside])}",
        f"[{_bound(low)}, {_bound(high)}] "
        f"(training saw [{_bound(column.min)}, {_bound(column.max)}])",
        rows=_first(outside),
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
    return Violation(
        column.name,
        "allowed_categories",
        f"{len(names)} categor{'y' if len(names) == 1 else 'ies'} never seen in training, "
        f"{_shown(np.asarray(names))}, in {_count(int(counts[unseen].sum()), 'row')}",
        f"one of {len(column.categories)} categories",
        rows=_first(_rows(view, unseen)),
    )


def _finite_rule(column: ColumnSchema, view: ColumnView) -> Violation | None:
    if column.kind != "numeric" or not view.is_numeric:
        return None
    infinite = np.isinf(view.numbers)
    if not infinite.any():
        return None
    return Violation(
        column.name,
        "finite",
        f"{int(infinite.sum())} infinite value(s), such as {_shown(view.numbers[infinite])}",
        "finite numbers",
        rows=_first(infinite),
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
    # An unseen segment value is the categories rule's to report; a small segment is noise.
    checked = {
        code: segments.values[label]
        for code, label in enumerate(labels)
        if label in segments.values and counts[code] >= segments.min_rows
    }
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
        violations.append(Violation(
            view.name, "range",
            f"{int(here.sum())} value(s) outside the segment's range, such as "
            f"{_shown(values[here])}",
            f"[{low[code]:.6g}, {high[code]:.6g}]",
            rows=tuple(int(row) for row in rows[here][:_EXAMPLES]), segment=labels[code],
        ))  # fmt: skip
    return violations


def _table_violations(
    schema: Schema, views: dict[str, ColumnView], rows: int, inputs_only: bool
) -> list[Violation]:
    violations: list[Violation] = []
    if not inputs_only:
        violations += _identifier_violations(schema, views, rows)
    if rows < schema.min_rows or (schema.max_rows is not None and rows > schema.max_rows):
        bound = f"at least {schema.min_rows}" + (
            f" and at most {schema.max_rows}" if schema.max_rows is not None else ""
        )
        violations.append(Violation("", "row_count", f"{rows} rows", f"{bound} rows"))
    key_name = "+".join(schema.keys)
    keyed = bool(schema.keys) and all(name in views for name in schema.keys)
    if keyed and schema.severity_of("unique_key", key_name) != "off":
        violations += _key_violations(key_name, [views[name] for name in schema.keys], rows)
    if schema.severity_of("duplicate_rows") != "off" and views:
        repeated = _repeated_rows(list(views.values()), rows)
        if repeated.any():
            violations.append(Violation(
                "", "duplicate_rows",
                f"{int(repeated.sum())} rows are exact copies of another row", "distinct rows",
                rows=_first(repeated),
            ))  # fmt: skip
    return violations


def _identifier_violations(
    schema: Schema, views: dict[str, ColumnView], rows: int
) -> list[Violation]:
    """Each identifier column of a table to learn from is unique where it holds a value (a
    payload log is not held to it: customers come back)."""
    found = []
    for column in schema.columns:
        view = views.get(column.name)
        if column.kind != "identifier" or view is None or column.name in schema.keys:
            continue  # a key column is the key's rule to check
        if schema.severity_of("unique_key", column.name) == "off":
            continue
        repeated = _repeated_rows([view], rows) & view.valid
        if repeated.any():
            found.append(Violation(
                column.name, "unique_key",
                f"{int(repeated.sum())} rows share their {column.name} with another row",
                "a distinct value in each row (an identifier)", rows=_first(repeated),
            ))  # fmt: skip
    return found


def _key_violations(key_name: str, keys: list[ColumnView], rows: int) -> list[Violation]:
    """Rows with an empty key, and rows sharing a (complete) key with another row."""
    empty = ~np.logical_and.reduce([view.valid for view in keys])
    repeated = _repeated_rows(keys, rows) & ~empty
    found = [
        (empty, f"{int(empty.sum())} rows have an empty key"),
        (repeated, f"{int(repeated.sum())} rows share their key with another row"),
    ]
    return [
        Violation(key_name, "unique_key", observed, "unique, complete keys", rows=_first(mask))
        for mask, observed in found
        if mask.any()
    ]


def _repeated_rows(views: list[ColumnView], rows: int) -> np.ndarray:
    """True for each row equal to another one over ``views``: hashed, then the rows whose
    hashes collide compared value by value, so a hash collision cannot report a copy."""
    hashes = pd.Series(row_hashes(views, rows))
    candidates = np.flatnonzero(hashes.duplicated(keep=False).to_numpy())
    if candidates.size == 0:
        return np.zeros(rows, dtype=bool)
    exact = [array for view in views for array in view.exact(candidates)]
    values = pd.DataFrame(dict(enumerate(exact)))
    repeated = np.zeros(rows, dtype=bool)
    repeated[candidates[values.duplicated(keep=False).to_numpy()]] = True
    return repeated


def _outside(numbers: np.ndarray, low: float, high: float) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.isfinite(numbers) & ((numbers < low) | (numbers > high))


def _rows(view: ColumnView, labels: np.ndarray) -> np.ndarray:
    """Rows holding any of the labels flagged True."""
    flagged = np.append(labels, False)  # code -1 (missing) reads the appended False
    return flagged[view.codes]


def _first(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(row) for row in np.flatnonzero(mask)[:_EXAMPLES])


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _shown(values: np.ndarray) -> str:
    shown = ", ".join(repr(plain(value)) for value in values[:_EXAMPLES])
    return shown + (", ..." if len(values) > _EXAMPLES else "")


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
