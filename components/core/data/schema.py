"""A table schema: what each column holds, and the rules a table must meet, as an editable file.

``infer_schema`` reads it off a table (the training split, or any file through
``conveyor validate --write-schema``); a person may then edit the JSON and commit it:
tighten a range, add a key column, bound the row count, turn a rule off or down to a
warning. ``data.validation`` checks tables against it.

**Null-rate ceilings follow training.** A column's ``null_rate`` is the share ``x / n`` of
empty values among the ``n`` ``rows`` it was inferred from (within a segment: among that
segment's rows). A table checked later, ``e`` empty among its ``m`` rows, breaks the
ceiling when Fisher's exact test, one-sided, rejects at a false-alarm rate of
``NULL_RATE_FALSE_ALARM`` (0.1 %) per column (and per column within each segment): were
the rows of both tables alike, the chance that ``e`` or more of the ``x + e`` empty values
fall among the checked table's rows (hypergeometric: ``n + m`` rows, ``x + e`` empty,
``m`` drawn) is at most 0.1 %. Conditioning on the empty values of both tables accounts
for the training rate's own uncertainty (``n`` rows) and the checked table's binomial noise
(``m`` rows) together: for rows drawn independently at any one rate the false-alarm rate
is at most 0.1 % (exact, not asymptotic; discreteness makes it lower), and a random
train/evaluation split is exactly the hypergeometric draw the test assumes. A table must
also be ``NULL_RATE_MARGIN`` (1 point) emptier than training, so a huge payload log is not
failed for a shift too small to be a broken feed. A column never empty in 855 training rows
alarms at 5 empty values of 215 (ceiling 1.86 %); its ceiling for 20,000 rows is 1 %. A
column 30 % empty in 1,000 rows tolerates 41.5 % in 200 rows, 34.8 % in 20,000. A table
with ``k`` such checks has a false-alarm rate of at most ``k`` × 0.1 % (a column never
empty in training cannot alarm while it stays full). Within segments the 0.1 % is shared
by the segments a column is checked in (Bonferroni), so a column's segments together alarm
at most as often as the column does. Small segments are checked with little power: a
segment never empty in 30 rows alarms at 9 of 30 (checked alone).

The written ``max_null_rate`` is the ceiling derived for a table the size of the training
table (``rows``). While it is that derived value, validation re-derives the ceiling for
each table's own size, so the smaller evaluation split and a large payload log are each
held to the right bound; a person who edits it sets a flat ceiling, used as written for
any table (as TFDV's ``min_fraction`` and Great Expectations' ``mostly`` are). Schemas
written before ``rows`` was recorded keep their ceilings as written.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
import pyarrow as pa
from scipy import stats

from conveyor.components.core.data.columns import ColumnView, column_views
from conveyor.components.core.data.roles import (
    FEATURE_ROLES,
    ROLES,
    UNDECLARED,
    DeclaredRoles,
    Role,
    column_role,
    column_roles,
)
from conveyor.components.core.data.tables import as_arrow
from conveyor.components.core.errors import ConveyorError, first_line, plain

__all__ = [
    "NULL_RATE_FALSE_ALARM",
    "NULL_RATE_MARGIN",
    "RULE_SEVERITY",
    "ColumnSchema",
    "Schema",
    "SegmentColumn",
    "Segments",
    "infer_schema",
    "load_schema",
    "null_rate_ceiling",
    "settle_roles",
]

# A column's kind is its role (``data.roles``): what the model makes of it, decided once.
Kind = Role
Severity = Literal["error", "warning", "off"]
# What breaking each rule means unless the schema says otherwise: an error fails the step,
# a warning is reported only, "off" skips the rule.
RULE_SEVERITY: dict[str, Severity] = {
    "presence": "error",
    "type": "error",
    "finite": "error",
    "allowed_categories": "error",
    "null_rate": "error",
    "range": "warning",  # fresh data strays past the training range now and then
    "not_all_null": "error",
    "row_count": "error",
    "unique_key": "error",
    "duplicate_rows": "warning",
    "date_format": "warning",  # a date column's stray values are read as missing ones
}
# Share of the training range by which new values may stray beyond it.
DEFAULT_RANGE_TOLERANCE = 0.25
# The chance that a column whose rows are like training's breaks its derived null-rate
# ceiling (per column, and per column within each segment).
NULL_RATE_FALSE_ALARM = 0.001
# ... and only when it is also this many points above training's rate: in a payload log of
# millions of rows, 30.0 % against 30.2 % is significant but no broken feed.
NULL_RATE_MARGIN = 0.01
# Segments with fewer rows than this are neither described nor checked: too noisy.
DEFAULT_SEGMENT_MIN_ROWS = 30
MAX_SEGMENTS = 100
# A text column with more distinct values than this, or than half its rows (ids, timestamps,
# free text), gets no list of allowed categories: every new row would break it.
MAX_CATEGORIES = 1000
_IDENTIFIER_MIN_ROWS = 100


class _NullRates:
    """The null-rate ceiling of a column, overall (``ColumnSchema``) or within a segment
    (``SegmentColumn``), both of which hold ``null_rate``, ``max_null_rate`` and ``rows``."""

    null_rate: float
    max_null_rate: float
    rows: int | None

    @property
    def ceiling_derived(self) -> bool:
        """Whether ``max_null_rate`` is the ceiling derived from ``null_rate`` and ``rows``
        (so re-derived for each table's size) rather than a number a person wrote."""
        if self.rows is None:
            return False
        return _is_derived(self.null_rate, self.max_null_rate, self.rows)

    def max_null_rate_for(self, checked_rows: int, level: float = NULL_RATE_FALSE_ALARM) -> float:
        """The ceiling a table of ``checked_rows`` rows is held to, at false-alarm ``level``."""
        if not self.ceiling_derived:
            return self.max_null_rate
        return null_rate_ceiling(self.null_rate, self.rows, checked_rows, level)

    def too_empty(
        self, empty: int, checked_rows: int, level: float = NULL_RATE_FALSE_ALARM
    ) -> bool:
        """Whether ``empty`` empty values among ``checked_rows`` rows break the ceiling."""
        if not self.ceiling_derived:
            return checked_rows > 0 and empty / checked_rows > self.max_null_rate
        return _alarms(_empty(self.null_rate, self.rows), self.rows, empty, checked_rows, level)


@dataclass(frozen=True)
class ColumnSchema(_NullRates):
    """What one column holds.

    Attributes:
        name: The column name.
        kind: The column's role, as ``data.roles.column_role`` decided it on the training
            split: ``numeric``, ``categorical``, ``datetime`` or ``text`` (features),
            ``identifier``, ``excluded`` or ``free_text`` (never features).
        dtype: The pandas dtype it was inferred from.
        null_rate: The share of empty values it was inferred from.
        max_null_rate: The highest share of empty values a table may have: as inferred,
            the ceiling derived for a table of ``rows`` rows, re-derived for each table's
            own size; edited, a flat ceiling for any table.
        rows: The rows ``null_rate`` was measured on; None (schemas written before it was
            recorded) uses ``max_null_rate`` as written.
        min: The smallest value it was inferred from (numeric).
        max: The largest value it was inferred from (numeric).
        allowed_min: The smallest value a table may hold (numeric).
        allowed_max: The largest value a table may hold (numeric).
        categories: The values a table may hold (categorical); None for any value, as
            inferred for a column of ids or free text.
        severity: Rule -> severity for this column, over the schema's.
    """

    name: str
    kind: Kind
    dtype: str
    null_rate: float
    max_null_rate: float
    rows: int | None = None
    min: float | None = None
    max: float | None = None
    allowed_min: float | None = None
    allowed_max: float | None = None
    categories: list[str] | None = None
    severity: dict[str, Severity] = field(default_factory=dict)


@dataclass(frozen=True)
class SegmentColumn(_NullRates):
    """What one column holds within one segment (rules ``null_rate`` and ``range``).

    Attributes:
        null_rate: The share of the segment's rows in which the column is empty.
        max_null_rate: The highest share a table's segment may have, as ``ColumnSchema``'s.
        rows: The segment's rows ``null_rate`` was measured on; None uses
            ``max_null_rate`` as written.
        allowed_min: The smallest value the segment may hold (numeric).
        allowed_max: The largest value the segment may hold (numeric).
    """

    null_rate: float
    max_null_rate: float
    rows: int | None = None
    allowed_min: float | None = None
    allowed_max: float | None = None


@dataclass(frozen=True)
class Segments:
    """Per-segment rules: each column checked within each value of ``column``.

    Attributes:
        column: The segment column (a customer type, a region).
        min_rows: Segments with fewer rows in the checked table are not checked.
        values: Segment value -> column -> what it holds there.
    """

    column: str
    min_rows: int = DEFAULT_SEGMENT_MIN_ROWS
    values: dict[str, dict[str, SegmentColumn]] = field(default_factory=dict)


@dataclass(frozen=True)
class Schema:
    """The columns of a table, in order, and the rules on the table as a whole.

    Attributes:
        target: The label column; empty when the table has none.
        columns: Each column's schema.
        min_rows: The fewest rows a table may have.
        max_rows: The most rows a table may have; None for no bound.
        keys: Columns whose values together must be unique in each row; empty for none.
        segments: Per-segment rules; None for none.
        severity: Rule -> severity, over ``RULE_SEVERITY``.
        roles_recorded: Whether each column's kind is its role as ``data.roles`` decided
            it (and the user declared); false in schemas written before roles were
            recorded, whose kinds say only numeric or categorical: validate decides their
            roles again from the training split (``settle_roles``).
    """

    target: str
    columns: list[ColumnSchema] = field(default_factory=list)
    min_rows: int = 1
    max_rows: int | None = None
    keys: list[str] = field(default_factory=list)
    segments: Segments | None = None
    severity: dict[str, Severity] = field(default_factory=dict)
    roles_recorded: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = "schema") -> Schema:
        """Parses the file, naming the field and where it is on any mistake."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConveyorError(f"{where}: not JSON ({error})") from None
        return _schema_from_dict(data, where)

    def features(self) -> list[ColumnSchema]:
        """The columns a model learns from."""
        return [c for c in self.columns if c.name != self.target and c.kind in FEATURE_ROLES]

    def roles(self) -> dict[str, Kind]:
        """Every column's role but the label's."""
        return {c.name: c.kind for c in self.columns if c.name != self.target}

    def recorded_roles(self) -> dict[str, Kind] | None:
        """``roles``, or None for a schema written before roles were recorded, whose
        roles a reader decides from the table (``data.roles.column_roles``)."""
        return self.roles() if self.roles_recorded else None

    def column(self, name: str) -> ColumnSchema | None:
        return next((column for column in self.columns if column.name == name), None)

    def severity_of(self, rule: str, column: str = "") -> Severity:
        """A column's own setting, else the schema's, else ``RULE_SEVERITY``. The key's
        ``unique_key`` (``column`` is the key's columns joined by ``+``) takes the setting
        of its first column that has one."""
        names = self.keys if rule == "unique_key" and column == "+".join(self.keys) else [column]
        for name in names:
            described = self.column(name) if name else None
            if described is not None and rule in described.severity:
                return described.severity[rule]
        return self.severity.get(rule, RULE_SEVERITY[rule])


def load_schema(uri: str | Path) -> Schema:
    """Reads a schema file (a path or any fsspec URI); raises ConveyorError naming the file
    and the field."""
    import fsspec

    try:
        with fsspec.open(str(uri), "rt", encoding="utf-8") as file:
            text = file.read()
    except FileNotFoundError:
        raise ConveyorError(f"{uri}: schema file not found") from None
    except (OSError, UnicodeDecodeError, ImportError, ValueError) as error:
        raise ConveyorError(f"{uri}: cannot read the schema ({first_line(error)})") from None
    return Schema.from_json(text, str(uri))


def infer_schema(
    table: pd.DataFrame | pa.Table,
    target: str = "",
    *,
    segment: str = "",
    keys: tuple[str, ...] = (),
    range_tolerance: float = DEFAULT_RANGE_TOLERANCE,
    declared: DeclaredRoles = UNDECLARED,
    where: str = "table",
) -> Schema:
    """Infers each column's role (``data.roles``), types, ranges, allowed categories and
    null-rate ceilings from a table, and with ``segment`` the same within each of its
    values."""
    views = column_views(as_arrow(table), where)
    for role, name in [("target", target), ("segment", segment)] + [("key", k) for k in keys]:
        if name and name not in views:
            raise ConveyorError(f"{where}: {role} column {name!r} is not in the table")
    declared.check_present(list(views), target, where)
    kinds = {name: _role(view, target, declared) for name, view in views.items()}
    columns = [_infer_column(view, kinds[name], range_tolerance) for name, view in views.items()]
    segments = _infer_segments(views, kinds, segment, range_tolerance, where)
    return Schema(target, columns, keys=list(keys), segments=segments, roles_recorded=True)


def settle_roles(
    schema: Schema, table: pd.DataFrame | pa.Table, declared: DeclaredRoles, where: str
) -> Schema:
    """A given schema with every column's role recorded: its own (decided from ``table``,
    the training split, for a schema from before roles were recorded), with what
    ``declared`` names over them, so training and drift read the roles validation used."""
    if schema.roles_recorded:
        declared.check_present([c.name for c in schema.columns], schema.target, where)
        recorded = schema.roles()
        roles = {name: declared.declared(name) or role for name, role in recorded.items()}
        numeric_text = [n for n in declared.text_columns if recorded.get(n) == "numeric"]
        if numeric_text:
            raise ConveyorError(f"text_columns: {numeric_text[0]!r} holds numbers, not text")
    else:
        roles = column_roles(table, schema.target, declared, where)
    columns = [_with_kind(column, roles.get(column.name, column.kind)) for column in schema.columns]
    return replace(schema, columns=columns, roles_recorded=True)


def _with_kind(column: ColumnSchema, kind: Kind) -> ColumnSchema:
    """The column as a ``kind``: only a category keeps allowed categories, only a number a
    range."""
    if kind == column.kind:
        return column
    bounds = {} if kind == "numeric" else {"allowed_min": None, "allowed_max": None}
    categories = {} if kind == "categorical" else {"categories": None}
    return replace(column, kind=kind, **bounds, **categories)


def null_rate_ceiling(
    null_rate: float, rows: int, checked_rows: int, level: float = NULL_RATE_FALSE_ALARM
) -> float:
    """The highest share of empty values a table of ``checked_rows`` rows may hold in a
    column that was empty in ``null_rate`` of ``rows`` training rows (the module's
    docstring says how it is derived); 1.0 when even an all-empty table would not alarm."""
    if checked_rows <= 0:
        return 1.0
    return _ceiling_count(_empty(null_rate, rows), rows, checked_rows, level) / checked_rows


def _empty(null_rate: float, rows: int) -> int:
    return round(null_rate * rows)


def _alarms(
    empty: int, rows: int, found: int, checked_rows: int, level: float = NULL_RATE_FALSE_ALARM
) -> bool:
    """Whether ``found`` empty values among ``checked_rows`` rows are more than chance
    allows after ``empty`` among ``rows`` training rows: Fisher's exact test, one-sided."""
    # At or below training's rate the p-value is at least one half: no need to compute it.
    if found * rows <= empty * checked_rows or _within_margin(empty, rows, found, checked_rows):
        return False
    chance = stats.hypergeom.sf(found - 1, rows + checked_rows, empty + found, checked_rows)
    return bool(chance <= level)


def _within_margin(empty: int, rows: int, found: int, checked_rows: int) -> bool:
    return found / checked_rows <= empty / rows + NULL_RATE_MARGIN if rows else False


@functools.lru_cache(maxsize=4096)
def _ceiling_count(empty: int, rows: int, checked_rows: int, level: float) -> int:
    """The most empty values among ``checked_rows`` rows that do not alarm: the test
    alarms on every count from the first that alarms up (more empty values are never
    less evidence), so a bisection finds it."""
    if not _alarms(empty, rows, checked_rows, checked_rows, level):
        return checked_rows
    low, high = 0, checked_rows  # high alarms; the answer is the last count below the first
    while low < high:
        middle = (low + high) // 2
        if _alarms(empty, rows, middle, checked_rows, level):
            high = middle
        else:
            low = middle + 1
    return high - 1


@functools.lru_cache(maxsize=4096)
def _is_derived(null_rate: float, max_null_rate: float, rows: int) -> bool:
    """Whether ``max_null_rate`` is the ceiling derived for a table of ``rows`` rows: a
    count of rows that does not alarm while one more does (two tests, not a bisection)."""
    count = round(max_null_rate * rows)
    if rows == 0 or not math.isclose(max_null_rate, count / rows, rel_tol=1e-9, abs_tol=1e-12):
        return rows == 0 and max_null_rate == 1.0
    empty = _empty(null_rate, rows)
    if _alarms(empty, rows, count, rows):
        return False
    return count == rows or _alarms(empty, rows, count + 1, rows)


def _role(view: ColumnView, target: str, declared: DeclaredRoles) -> Kind:
    """The label is what it holds (numbers or classes); every other column has its role."""
    if view.name == target:
        return "numeric" if view.is_numeric else "categorical"
    return column_role(view, declared)


def _infer_column(view: ColumnView, kind: Kind, range_tolerance: float) -> ColumnSchema:
    rows = len(view.valid)
    null_rate = float(np.count_nonzero(~view.valid) / rows) if rows else 0.0
    common = ColumnSchema(
        view.name,
        kind,
        view.dtype,
        null_rate,
        null_rate_ceiling(null_rate, rows, rows),
        rows=rows,
    )
    if kind == "categorical" and not view.is_numeric:
        return replace(common, categories=_categories(view))
    if kind != "numeric" or not view.is_numeric:
        return common  # an id, a date, text: any value, no range
    low, high = _finite_bounds(view.numbers)
    if low is None:
        return common
    margin = (high - low) * range_tolerance
    return replace(common, min=low, max=high, allowed_min=low - margin, allowed_max=high + margin)


def _categories(view: ColumnView) -> list[str] | None:
    """The values seen, or None when there are too many to be categories."""
    seen = view.labels[view.label_counts > 0]
    rows = int(view.valid.sum())
    if len(seen) > MAX_CATEGORIES or (rows >= _IDENTIFIER_MIN_ROWS and len(seen) > rows / 2):
        return None
    return sorted(str(value) for value in seen)


def _finite_bounds(numbers: np.ndarray) -> tuple[float | None, float | None]:
    finite = numbers[np.isfinite(numbers)]  # infinities break the finite rule instead
    if finite.size == 0:
        return None, None
    return float(finite.min()), float(finite.max())


def _infer_segments(
    views: dict[str, ColumnView],
    kinds: dict[str, Kind],
    segment: str,
    range_tolerance: float,
    where: str,
) -> Segments | None:
    if not segment:
        return None
    by_segment = views[segment]
    counts = by_segment.label_counts
    if len(by_segment.labels) > MAX_SEGMENTS:
        raise ConveyorError(
            f"{where}: segment column {segment!r} has {len(by_segment.labels)} values, "
            f"more than {MAX_SEGMENTS}; segment by a coarser column"
        )
    values = {}
    for code, label in enumerate(by_segment.labels):
        if counts[code] < DEFAULT_SEGMENT_MIN_ROWS:
            continue
        rows = by_segment.codes == code
        values[str(label)] = {
            name: _segment_column(view, rows, range_tolerance, kinds[name] == "numeric")
            for name, view in views.items()
            if name != segment
        }
    return Segments(segment, DEFAULT_SEGMENT_MIN_ROWS, values)


def _segment_column(
    view: ColumnView, rows: np.ndarray, range_tolerance: float, ranged: bool
) -> SegmentColumn:
    count = int(np.count_nonzero(rows))
    null_rate = float(np.count_nonzero(~view.valid[rows]) / count)
    ceiling = SegmentColumn(null_rate, null_rate_ceiling(null_rate, count, count), count)
    ranged = ranged and view.is_numeric
    low, high = _finite_bounds(view.numbers[rows]) if ranged else (None, None)
    if low is None:
        return ceiling
    margin = (high - low) * range_tolerance
    return replace(ceiling, allowed_min=low - margin, allowed_max=high + margin)


def _schema_from_dict(data: Any, where: str) -> Schema:
    body = _fields(Schema, data, where)
    body["columns"] = [
        _column_from_dict(column, f"{where}: columns[{index}]")
        for index, column in enumerate(_typed(body.get("columns", []), list, f"{where}: columns"))
    ]
    if body.get("segments") is not None:
        body["segments"] = _segments_from_dict(body["segments"], f"{where}: segments")
    schema = Schema(**body)
    names = [column.name for column in schema.columns]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConveyorError(f"{where}: column(s) {repeated} described more than once")
    for role, name in [("target", schema.target)] + [("key", key) for key in schema.keys]:
        if name and name not in names:
            raise ConveyorError(f"{where}: {role} column {name!r} is not among the columns")
    if schema.segments is not None:
        _check_segment_columns(schema.segments, names, f"{where}: segments")
    if schema.max_rows is not None and schema.max_rows < schema.min_rows:
        raise ConveyorError(f"{where}: max_rows {schema.max_rows} is below min_rows")
    return schema


def _column_from_dict(data: Any, where: str) -> ColumnSchema:
    name = data.get("name") if isinstance(data, dict) else None
    return _bounded(ColumnSchema, data, f"{where} ({name!r})" if name else where)


def _bounded(cls: type, data: Any, where: str) -> Any:
    """A ``ColumnSchema`` or ``SegmentColumn`` whose allowed range is not inverted."""
    item = cls(**_fields(cls, data, where))
    low, high = item.allowed_min, item.allowed_max
    if low is not None and high is not None and low > high:
        raise ConveyorError(f"{where}: allowed_min {low} is above allowed_max {high}")
    return item


def _segments_from_dict(data: Any, where: str) -> Segments:
    body = _fields(Segments, data, where)
    values = _typed(body.get("values", {}), dict, f"{where}: values")
    body["values"] = {
        str(value): {
            name: _bounded(SegmentColumn, stats, f"{where}: {value}: {name}")
            for name, stats in _typed(columns, dict, f"{where}: {value}").items()
        }
        for value, columns in values.items()
    }
    return Segments(**body)


def _check_segment_columns(segments: Segments, names: list[str], where: str) -> None:
    if segments.column not in names:
        raise ConveyorError(f"{where}: column {segments.column!r} is not among the columns")
    for value, columns in segments.values.items():
        unknown = sorted(set(columns) - set(names))
        if unknown:
            raise ConveyorError(f"{where}: {value}: column(s) {unknown} are not among the columns")


def _fields(cls: type, data: Any, where: str) -> dict[str, Any]:
    """``data`` as keyword arguments of ``cls``: unknown, missing and mistyped fields are
    named."""
    data = _typed(data, dict, where)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConveyorError(f"{where}: unknown field(s) {unknown}; known: {sorted(known)}")
    required = [f.name for f in fields(cls) if f.default is f.default_factory is MISSING]
    missing = [name for name in required if name not in data]
    if missing:
        raise ConveyorError(f"{where}: missing field(s) {missing}")
    for name, value in data.items():
        _FIELD_CHECKS[name](value, f"{where}: {name}")
    return dict(data)


def _typed(value: Any, kind: type, where: str) -> Any:
    if not isinstance(value, kind):
        expected = "a list" if kind is list else "an object"
        raise ConveyorError(f"{where}: expected {expected}, found {plain(value)!r}")
    return value


def _mistyped(value: Any, where: str, expected: str) -> ConveyorError:
    return ConveyorError(f"{where}: expected {expected}, found {plain(value)!r}")


def _text(value: Any, where: str) -> None:
    if not isinstance(value, str):
        raise _mistyped(value, where, "text")


def _number(value: Any, where: str) -> None:
    # JSON as Python reads it admits NaN and Infinity, which would turn a bound off.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _mistyped(value, where, "a number")


def _share(value: Any, where: str) -> None:
    _number(value, where)
    if not 0 <= value <= 1:
        raise _mistyped(value, where, "a share from 0 to 1")


def _count(value: Any, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _mistyped(value, where, "a whole number, 0 or more")


def _names(value: Any, where: str) -> None:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _mistyped(value, where, "a list of text")


def _kind(value: Any, where: str) -> None:
    if value not in ROLES:
        raise _mistyped(value, where, f"one of {', '.join(ROLES)}")


def _flag(value: Any, where: str) -> None:
    if not isinstance(value, bool):
        raise _mistyped(value, where, "true or false")


def _optional(check: Callable[[Any, str], None]) -> Callable[[Any, str], None]:
    return lambda value, where: None if value is None else check(value, where)


def _any(value: Any, where: str) -> None:
    """Checked where it is parsed (lists of columns, segments)."""


def _severity(settings: Any, where: str) -> None:
    for rule, level in _typed(settings, dict, where).items():
        if rule not in RULE_SEVERITY:
            raise ConveyorError(f"{where}: unknown rule {rule!r}; rules: {sorted(RULE_SEVERITY)}")
        if level not in get_args(Severity):
            raise ConveyorError(f"{where}: {rule} is {level!r}, expected error, warning or off")


# How each field of the schema file is checked, by name (a name means one thing throughout).
_FIELD_CHECKS: dict[str, Callable[[Any, str], None]] = {
    "target": _text,
    "name": _text,
    "dtype": _text,
    "column": _text,
    "kind": _kind,
    "columns": _any,
    "values": _any,
    "segments": _any,
    "min_rows": _count,
    "max_rows": _optional(_count),
    "keys": _names,
    "categories": _optional(_names),
    "null_rate": _share,
    "max_null_rate": _share,
    "rows": _optional(_count),
    "min": _optional(_number),
    "max": _optional(_number),
    "allowed_min": _optional(_number),
    "allowed_max": _optional(_number),
    "severity": _severity,
    "roles_recorded": _flag,
}
