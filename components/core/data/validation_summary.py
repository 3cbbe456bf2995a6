"""Validation from mergeable summaries: each partition of a table summarised on its own (a
Kubeflow ParallelFor pod per Parquet or CSV file), the summaries merged, then judged once.

``summarize_partition`` reads one partition into a ``ValidationSummary``: what each rule of
``data.validation.check_table`` needs and no more. ``merge_summaries`` merges the summaries of
consecutive partitions exactly and associatively, and ``check_summary`` gives the same
``ValidationResult`` (violations, their text, example rows and severities) as ``check_table``
with ``inputs_only`` (as ``validate_file(..., True)`` checks a payload log) gives on the
partitions concatenated. The text of every violation comes from ``data.validation``'s own
builders, so the two paths cannot drift apart in wording.

**Size.** A summary holds counts, the first three example rows (and values) of each rule, the
first four distinct offending values, per-segment counts and example rows, and the distinct
values a categorical column holds outside its categories (8 bytes each, as hashes). The only
parts that grow with the rows are the hashes of the rules that compare rows: 8 bytes a row for
``duplicate_rows``, 8 for ``unique_key`` when the schema has a key, and (``inputs=False``
only) 8 for each identifier column.

**Hashes stand for values.** ``check_table`` confirms rows whose hashes are equal on their
values; across partitions the values are not at hand, so rows with equal 64-bit hashes
(``data.columns.row_hashes``) count as copies, within a partition as across partitions.
Rows differing in one numeric column only never share a hash (each step is a bijection on
64-bit words); otherwise two distinct rows share one with chance about 2**-64, so among
``n`` rows a false copy has probability at most ``n**2 / 2**65`` (3e-8 at a million rows).
The same bound holds for a complete key (or identifier) read as empty because its hash is
``_EMPTY``, and for two distinct unseen categories counted as one. ``check_training_table``'s
rules (an all-empty column, numbers mixed with text) are not ``check_table``'s and are not
summarised.

**Where it is not ``check_table``.** Every rule is exact from summaries (counts add; example
rows are the first ones; null-rate ceilings are computed from the merged counts), within
the hash bound above, and provided each column has one type across partitions (a partition
where a column holds no value takes any type; otherwise a mismatch is refused when merging).
Offending text values are listed in order of first appearance, as ``check_table`` lists them
for text read from CSV, pandas or Parquet; an Arrow dictionary in another order (or holding
values no row uses) makes ``check_table`` list other examples of the same violation.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import numpy as np
import pandas as pd
import pyarrow as pa

from conveyor.components.core.data.columns import ColumnView, column_views, row_hashes
from conveyor.components.core.data.roles import date_shaped
from conveyor.components.core.data.schema import NULL_RATE_FALSE_ALARM, ColumnSchema, Schema
from conveyor.components.core.data.tables import as_arrow
from conveyor.components.core.data.validation import (
    _NOT_REQUIRED_IN_INPUTS,
    COLUMN_RULES,
    ValidationResult,
    Violation,
    _bounds,
    _categories_violation,
    _checked_segments,
    _date_format_violation,
    _duplicate_rows_violations,
    _duplicates_checked,
    _finite_violation,
    _identifier_violations_of,
    _identifiers_checked,
    _key_violations_of,
    _keyed,
    _missing_text,
    _null_rate_violation,
    _outside,
    _range_violation,
    _row_count_violations,
    _segment_range_violation,
    _type_violation,
    _with_severity,
)
from conveyor.components.core.errors import ConveyorError, first_line
from conveyor.components.core.files import write_text_atomically

__all__ = [
    "ColumnSummary",
    "Examples",
    "IdentifierHashes",
    "Labelled",
    "SegmentFacts",
    "SegmentRows",
    "Unseen",
    "ValidationSummary",
    "check_summary",
    "load_summary",
    "merge_summaries",
    "schema_id",
    "summarize_partition",
    "write_summary",
]

_FORMAT = "conveyor.validation_summary"
_VERSION = 1
_EXAMPLES = 3  # example rows and values a violation shows
_BLOCK_ROWS = 1 << 20  # rows whose copies are looked up at once
_LABELS = _EXAMPLES + 1  # one more, to know whether to write "..."
# The hash of a row with an empty key (or identifier): never a copy of another.
_EMPTY = np.uint64(0xD1B54A32D192ED03)
FAMILIES = ("number", "text", "date", "empty")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConveyorError(message)


def _uint64(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<u8")


@dataclass(frozen=True)
class Examples:
    """How many rows hold something, and the first of them.

    Attributes:
        count: The rows.
        rows: The first three (0-based positions in the whole table), in order.
        values: Their values, for rules that show values (range, finite); else empty.
    """

    count: int = 0
    rows: tuple[int, ...] = ()
    values: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        _require(self.count >= 0, f"count {self.count} is negative")
        _require(
            len(self.rows) == min(self.count, _EXAMPLES),
            f"{len(self.rows)} example rows for a count of {self.count}",
        )
        increasing = all(0 <= a < b for a, b in zip(self.rows, self.rows[1:], strict=False))
        _require(increasing and min(self.rows, default=0) >= 0, f"rows {self.rows} out of order")
        _require(
            not self.values or len(self.values) == len(self.rows),
            f"{len(self.values)} values for {len(self.rows)} rows",
        )

    @classmethod
    def of(cls, mask: np.ndarray, offset: int, values: np.ndarray | None = None) -> Examples:
        """The rows flagged True in ``mask``, with ``values`` at them when given."""
        rows = np.flatnonzero(mask)
        return cls.at(rows, offset, values)

    @classmethod
    def at(cls, rows: np.ndarray, offset: int, values: np.ndarray | None = None) -> Examples:
        """The rows at increasing positions ``rows`` of the partition."""
        first = rows[:_EXAMPLES]
        shown = () if values is None else tuple(float(v) for v in values[first])
        return cls(len(rows), tuple(int(row) + offset for row in first), shown)

    def merged(self, later: Examples) -> Examples:
        return Examples(
            self.count + later.count,
            (self.rows + later.rows)[:_EXAMPLES],
            (self.values + later.values)[:_EXAMPLES],
        )


@dataclass(frozen=True)
class Labelled:
    """Rows holding values of one sort (text that is not a number, not a date...).

    Attributes:
        labels: The first four distinct such values, in order of first appearance.
        rows: The rows holding one.
    """

    labels: tuple[str, ...] = ()
    rows: Examples = Examples()

    def __post_init__(self) -> None:
        _require(len(set(self.labels)) == len(self.labels) <= _LABELS, "labels repeat or overrun")
        _require(bool(self.labels) == bool(self.rows.count), "labels without rows, or rows without")

    @classmethod
    def of(cls, view: ColumnView, flagged: np.ndarray, offset: int) -> Labelled:
        """The rows of ``view`` holding a label flagged True (one flag per label)."""
        rows = np.flatnonzero(np.append(flagged, False)[view.codes])
        first = pd.unique(view.codes[rows[: _LABELS * 64]])[:_LABELS]
        if len(first) < _LABELS:  # the first rows repeat a few values: look through them all
            first = pd.unique(view.codes[rows])[:_LABELS]
        return cls(tuple(str(view.labels[code]) for code in first), Examples.at(rows, offset))

    def merged(self, later: Labelled) -> Labelled:
        labels = tuple(dict.fromkeys(self.labels + later.labels))[:_LABELS]
        return Labelled(labels, self.rows.merged(later.rows))


@dataclass(frozen=True)
class Unseen:
    """The values of a categorical column outside its allowed categories.

    Attributes:
        hashes: Each distinct such value's 64-bit hash, ascending (8 bytes each).
        smallest: The first three distinct such values in sorted order.
        rows: The rows holding one.
    """

    hashes: bytes = b""
    smallest: tuple[str, ...] = ()
    rows: Examples = Examples()

    def __post_init__(self) -> None:
        _require(len(self.hashes) % 8 == 0, "hashes are not 8 bytes each")
        hashes = _uint64(self.hashes)
        _require(bool(np.all(hashes[1:] > hashes[:-1])), "hashes are not ascending")
        _require(list(self.smallest) == sorted(set(self.smallest)), "values are not sorted")
        _require(len(self.smallest) <= _EXAMPLES, "more than three values")
        _require(
            bool(self.smallest) == bool(self.hashes) == bool(self.rows.count),
            "values, hashes and rows disagree",
        )

    @property
    def distinct(self) -> int:
        return len(self.hashes) // 8

    def merged(self, later: Unseen) -> Unseen:
        hashes = np.union1d(_uint64(self.hashes), _uint64(later.hashes)).astype("<u8")
        smallest = tuple(sorted(set(self.smallest + later.smallest))[:_EXAMPLES])
        return Unseen(hashes.tobytes(), smallest, self.rows.merged(later.rows))


@dataclass(frozen=True)
class SegmentFacts:
    """One column within one segment the schema describes.

    Attributes:
        segment: The segment value.
        missing: The segment's rows where the column is empty.
        outside: Its values outside the segment's allowed range (numbers).
    """

    segment: str
    missing: Examples = Examples()
    outside: Examples = Examples()

    def merged(self, later: SegmentFacts) -> SegmentFacts:
        return SegmentFacts(
            self.segment, self.missing.merged(later.missing), self.outside.merged(later.outside)
        )


@dataclass(frozen=True)
class ColumnSummary:
    """What the rules need of one column the schema describes.

    Attributes:
        name: The column.
        family: ``number`` (numbers, booleans), ``text``, ``date`` (a date or time type) or
            ``empty`` (no value at all: any type, so it merges with every other).
        dtype: The pandas dtype, as ``ColumnView.dtype``; empty for ``empty``.
        missing: Rows where the column is empty.
        not_numbers: Text that is not a number (a numeric column read as text).
        labelled: Any value (a numeric column read as text whose every value is a number).
        not_dates: Values that are not ISO 8601 dates (a date column read as text).
        outside: Numbers outside the allowed range.
        infinite: Infinite numbers.
        unseen: Values outside the allowed categories.
        segments: Per segment value, ascending; only those with an empty value or a number
            outside the segment's range.
    """

    name: str
    family: str
    dtype: str
    missing: Examples = Examples()
    not_numbers: Labelled = Labelled()
    labelled: Labelled = Labelled()
    not_dates: Labelled = Labelled()
    outside: Examples = Examples()
    infinite: Examples = Examples()
    unseen: Unseen = Unseen()
    segments: tuple[SegmentFacts, ...] = ()

    def __post_init__(self) -> None:
        where = f"column {self.name!r}"
        _require(self.family in FAMILIES, f"{where}: family {self.family!r} is not known")
        if self.family == "empty":
            values = (self.not_numbers, self.labelled, self.not_dates, self.outside)
            valueless = values == (Labelled(), Labelled(), Labelled(), Examples())
            valueless &= (self.infinite, self.unseen) == (Examples(), Unseen())
            valueless &= not any(segment.outside.count for segment in self.segments)
            _require(self.dtype == "" and valueless, f"{where}: values in an empty column")
        names = [facts.segment for facts in self.segments]
        _require(names == sorted(set(names)), f"{where}: segments are not sorted or repeat")

    def segment(self, value: str) -> SegmentFacts:
        found = (facts for facts in self.segments if facts.segment == value)
        return next(found, SegmentFacts(value))

    def merged(self, later: ColumnSummary) -> ColumnSummary:
        if self.family == "empty":
            typed = later
        elif later.family == "empty" or (later.family, later.dtype) == (self.family, self.dtype):
            typed = self
        elif self.family == later.family == "number":  # int64 and float64 chunks of a CSV
            typed = replace(self, dtype="float64")
        else:
            raise ConveyorError(
                f"column {self.name!r} holds {self.dtype} values in one partition and "
                f"{later.dtype} in a later one; a table's partitions share each column's type"
            )
        segments = {facts.segment: facts for facts in self.segments}
        for facts in later.segments:
            mine = segments.get(facts.segment)
            segments[facts.segment] = facts if mine is None else mine.merged(facts)
        return ColumnSummary(
            self.name,
            typed.family,
            typed.dtype,
            self.missing.merged(later.missing),
            self.not_numbers.merged(later.not_numbers),
            self.labelled.merged(later.labelled),
            self.not_dates.merged(later.not_dates),
            self.outside.merged(later.outside),
            self.infinite.merged(later.infinite),
            self.unseen.merged(later.unseen),
            tuple(segments[name] for name in sorted(segments)),
        )


@dataclass(frozen=True)
class SegmentRows:
    """A segment value the schema describes, and how many rows hold it."""

    segment: str
    rows: int

    def __post_init__(self) -> None:
        _require(self.rows > 0, f"segment {self.segment!r}: {self.rows} rows")


@dataclass(frozen=True)
class IdentifierHashes:
    """An identifier column's 64-bit hash per row (``_EMPTY`` where it is empty)."""

    name: str
    hashes: bytes


@dataclass(frozen=True)
class ValidationSummary:
    """Everything ``check_summary`` needs of a run of consecutive rows of a table.

    Attributes:
        schema_id: The fingerprint of the schema it was made with.
        inputs: Whether it checks a model's inputs (no identifier hashes kept).
        offset: The position of its first row in the whole table.
        rows: Its rows.
        names: The table's columns, in order.
        columns: What the rules need of each column the schema describes, in table order.
        segments: The segment values the schema describes, in order of first appearance.
        empty_keys: Rows with an empty key (when the key's rule is checked).
        key_hashes: Each row's key's 64-bit hash, ``_EMPTY`` where the key is empty.
        row_hashes: Each row's 64-bit hash over every column (when ``duplicate_rows`` is on).
        identifiers: Each identifier column's hashes (``inputs=False`` only).
    """

    schema_id: str
    inputs: bool
    offset: int
    rows: int
    names: tuple[str, ...]
    columns: tuple[ColumnSummary, ...]
    segments: tuple[SegmentRows, ...] = ()
    empty_keys: Examples = Examples()
    key_hashes: bytes = b""
    row_hashes: bytes = b""
    identifiers: tuple[IdentifierHashes, ...] = ()

    def __post_init__(self) -> None:
        _require(self.offset >= 0 and self.rows >= 0, "offset or rows negative")
        _require(len(set(self.names)) == len(self.names), "column names repeat")
        described = [column.name for column in self.columns]
        _require(
            described == [name for name in self.names if name in set(described)],
            "columns are not among the names, in order",
        )
        for column in self.columns:
            _require(column.missing.count <= self.rows, f"column {column.name!r}: missing > rows")
            late = [row for row in column.missing.rows if row >= self.offset + self.rows]
            _require(min(column.missing.rows, default=self.offset) >= self.offset and not late,
                     f"column {column.name!r}: example rows outside the partition")  # fmt: skip
        for name, data in [("key_hashes", self.key_hashes), ("row_hashes", self.row_hashes)] + [
            (f"identifier {item.name!r}", item.hashes) for item in self.identifiers
        ]:
            _require(len(data) in (0, 8 * self.rows), f"{name}: not 8 bytes for each row")
        _require(sum(s.rows for s in self.segments) <= self.rows, "segments hold too many rows")

    def column(self, name: str) -> ColumnSummary | None:
        return next((column for column in self.columns if column.name == name), None)

    def to_json(self) -> str:
        """The summary as JSON (hashes base64-encoded), for ``from_json``."""
        body = {"format": _FORMAT, "version": _VERSION, "summary": _to_plain(self)}
        return json.dumps(body, separators=(",", ":")) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = "summary") -> ValidationSummary:
        """Parses what ``to_json`` wrote; a mistake is one line naming ``where`` and the field."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ConveyorError(f"{where}: not JSON ({first_line(error)})") from None
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ConveyorError(f"{where}: not a Conveyor validation summary")
        if data.get("version") != _VERSION:
            found = data.get("version")
            raise ConveyorError(f"{where}: summary version {found!r}, expected {_VERSION}")
        return _from_plain(cls, data.get("summary"), f"{where}: summary")


def schema_id(schema: Schema) -> str:
    """A fingerprint of ``schema``: summaries are judged by the schema they were made with.
    Remembered for the last schema object (its JSON takes longer than a small partition)."""
    cached = _SCHEMA_IDS.get(id(schema))
    if cached is not None and cached[0] is schema:
        return cached[1]
    digest = hashlib.sha256(schema.to_json().encode()).hexdigest()[:16]
    _SCHEMA_IDS.clear()
    _SCHEMA_IDS[id(schema)] = (schema, digest)
    return digest


_SCHEMA_IDS: dict[int, tuple[Schema, str]] = {}


def summarize_partition(
    table: pa.Table | pd.DataFrame, schema: Schema, offset: int, *, inputs: bool = True
) -> ValidationSummary:
    """What ``check_summary`` needs of one partition of a table.

    Args:
        table: The partition (a file of the table, a Parquet row group...).
        schema: The schema it is checked against.
        offset: The position of its first row in the whole table, so example rows keep
            their positions there.
        inputs: Whether the table holds a model's inputs; ``False`` also keeps identifier
            columns' hashes, for ``check_summary(..., inputs=False)``.

    Returns:
        The summary. Duplicated rows are found by 64-bit hashes (the module's docstring
        bounds the chance of a false copy).
    """
    _require(offset >= 0, f"offset {offset} is negative")
    arrow = as_arrow(table)
    views = column_views(arrow, "partition")
    names = list(views)
    segmenting, segments = _segment_codes(schema, views)
    columns = tuple(
        _column_summary(described, views[name], offset, segmenting, schema)
        for name in names
        if (described := schema.column(name)) is not None
    )
    rows = arrow.num_rows
    empty_keys, key_hashes = Examples(), b""
    if _keyed(schema, names):
        keys = [views[name] for name in schema.keys]
        empty = ~np.logical_and.reduce([view.valid for view in keys])
        empty_keys, key_hashes = Examples.of(empty, offset), _hashes(keys, rows, ~empty)
    duplicates = _hashes(list(views.values()), rows) if _duplicates_checked(schema, names) else b""
    identifiers = () if inputs else tuple(
        IdentifierHashes(name, _hashes([views[name]], rows, views[name].valid))
        for name in _identifiers_checked(schema, names)
    )  # fmt: skip
    return ValidationSummary(
        schema_id(schema), inputs, offset, rows, tuple(names), columns, segments,
        empty_keys, key_hashes, duplicates, identifiers,
    )  # fmt: skip


def merge_summaries(summaries: Sequence[ValidationSummary]) -> ValidationSummary:
    """The summary of consecutive partitions, in their order: exact and associative.

    Raises:
        ConveyorError: When there is none, or they are of different schemas, columns or
            column types, or do not follow one another.
    """
    _require(len(summaries) > 0, "no validation summaries to merge")
    # The hashes are joined once, at the end: merging them pair by pair would copy them
    # once per partition, a square of the rows' bytes over a long log.
    merged = functools.reduce(_merged, [_without_hashes(summary) for summary in summaries])
    identifiers = tuple(
        IdentifierHashes(item.name, b"".join(s.identifiers[index].hashes for s in summaries))
        for index, item in enumerate(summaries[0].identifiers)
    )
    return replace(
        merged,
        key_hashes=b"".join(summary.key_hashes for summary in summaries),
        row_hashes=b"".join(summary.row_hashes for summary in summaries),
        identifiers=identifiers,
    )


def _without_hashes(summary: ValidationSummary) -> ValidationSummary:
    return replace(
        summary,
        key_hashes=b"",
        row_hashes=b"",
        identifiers=tuple(IdentifierHashes(item.name, b"") for item in summary.identifiers),
    )


def check_summary(
    summary: ValidationSummary, schema: Schema, inputs: bool = True
) -> ValidationResult:
    """Every violation of ``schema`` in the table ``summary`` summarises, as ``check_table``
    (``inputs_only=inputs``) finds them on the table itself."""
    _require(summary.schema_id == schema_id(schema), "the summary was made with another schema")
    _require(inputs or not summary.inputs, "the summary was made for inputs only (inputs=True)")
    names = list(summary.names)
    missing = _missing_text(schema, names)
    violations: list[Violation] = []
    for column in schema.columns:
        if inputs and (column.name == schema.target or column.kind in _NOT_REQUIRED_IN_INPUTS):
            continue
        facts = summary.column(column.name)
        if facts is None:
            violations.append(Violation(column.name, "presence", missing, "present"))
            continue
        violations += _column_violations(schema, column, facts, summary.rows)
    violations += _segment_violations(schema, summary, violations)
    violations += _table_violations(schema, summary, inputs)
    return ValidationResult(schema, _with_severity(schema, violations, ""))


def write_summary(summary: ValidationSummary, path: Path) -> None:
    write_text_atomically(path, summary.to_json())


def load_summary(uri: str | Path) -> ValidationSummary:
    """Reads a summary file (a path or any fsspec URI); errors are one line naming it."""
    import fsspec

    try:
        with fsspec.open(str(uri), "rt", encoding="utf-8") as file:
            text = file.read()
    except FileNotFoundError:
        raise ConveyorError(f"{uri}: summary file not found") from None
    except (OSError, UnicodeDecodeError, ImportError, ValueError) as error:
        raise ConveyorError(f"{uri}: cannot read the summary ({first_line(error)})") from None
    return ValidationSummary.from_json(text, str(uri))


# Summarising a partition.


def _family(view: ColumnView) -> str:
    if not view.valid.any():
        return "empty"
    if view.is_numeric:
        return "number"
    kind = view.array.type
    kind = kind.value_type if pa.types.is_dictionary(kind) else kind
    return "date" if pa.types.is_timestamp(kind) or pa.types.is_date(kind) else "text"


def _column_summary(
    column: ColumnSchema,
    view: ColumnView,
    offset: int,
    segmenting: _Segmenting,
    schema: Schema,
) -> ColumnSummary:
    family = _family(view)
    missing = Examples.of(~view.valid, offset)
    segments = _segment_facts(view, family, offset, segmenting, schema)
    if family == "empty":
        return ColumnSummary(column.name, family, "", missing, segments=segments)
    facts: dict[str, Any] = {}
    if column.kind == "numeric" and family != "number":
        numbers = pd.to_numeric(pd.Series(view.labels), errors="coerce").notna().to_numpy()
        facts["not_numbers"] = Labelled.of(view, ~numbers, offset)
        facts["labelled"] = Labelled.of(view, np.ones(len(view.labels), dtype=bool), offset)
    if column.kind == "datetime" and family != "date":
        facts["not_dates"] = Labelled.of(view, ~date_shaped(view.labels), offset)
    if family == "number" and not column.allowed_min is column.allowed_max is None:
        outside = _outside(view.numbers, *_bounds(column.allowed_min, column.allowed_max))
        facts["outside"] = Examples.of(outside, offset, view.numbers)
    if family == "number" and column.kind == "numeric":
        facts["infinite"] = Examples.of(np.isinf(view.numbers), offset, view.numbers)
    if column.categories is not None:
        facts["unseen"] = _unseen(column.categories, view, offset)
    return ColumnSummary(column.name, family, view.dtype, missing, segments=segments, **facts)


def _unseen(categories: list[str], view: ColumnView, offset: int) -> Unseen:
    labels = np.asarray([str(label) for label in view.labels], dtype=object)
    unseen = ~np.isin(labels, np.asarray(categories, dtype=object)) & (view.label_counts > 0)
    if not unseen.any():
        return Unseen()
    names = labels[unseen]
    hashes = np.unique(pd.util.hash_array(names)).astype("<u8")
    rows = np.flatnonzero(np.append(unseen, False)[view.codes])
    return Unseen(hashes.tobytes(), tuple(sorted(names)[:_EXAMPLES]), Examples.at(rows, offset))


# Each row's segment code, and the codes of the segment values the schema describes.
_Segmenting = tuple[np.ndarray, dict[int, str]]


def _segment_codes(
    schema: Schema, views: dict[str, ColumnView]
) -> tuple[_Segmenting, tuple[SegmentRows, ...]]:
    """Each row's segment code and the codes of the values the schema describes -> the
    value; and those values' rows in order of first appearance."""
    segments = schema.segments
    if segments is None or segments.column not in views:
        return (np.zeros(0, dtype=np.int64), {}), ()
    view = views[segments.column]
    labels = [str(label) for label in view.labels]
    described = {code: label for code, label in enumerate(labels) if label in segments.values}
    counts = view.label_counts
    order = [int(code) for code in pd.unique(view.codes) if code in described]
    rows = tuple(SegmentRows(described[code], int(counts[code])) for code in order)
    return (view.codes, described), rows


def _segment_facts(
    view: ColumnView, family: str, offset: int, segmenting: _Segmenting, schema: Schema
) -> tuple[SegmentFacts, ...]:
    """Empty values and numbers outside the segment's range, per described segment."""
    codes, segment_codes = segmenting
    if not segment_codes or schema.segments is None:
        return ()
    stats = {
        code: described[view.name]
        for code, label in segment_codes.items()
        if view.name in (described := schema.segments.values[label])
    }
    if not stats:
        return ()
    missing_rows = np.flatnonzero(~view.valid)
    missing = _grouped(missing_rows, codes[missing_rows], stats, offset)
    outside: dict[int, Examples] = {}
    if family == "number":
        # As data.validation._segment_ranges: code -1 (and a code without a range) is open.
        size = max(stats) + 2
        low, high = np.full(size, -np.inf), np.full(size, np.inf)
        for code, described in stats.items():
            low[code], high[code] = _bounds(described.allowed_min, described.allowed_max)
        band = (low[:-1].max(), high[:-1].min())
        candidates = np.flatnonzero(_outside(view.numbers, *band))
        here = np.minimum(codes[candidates], size - 1)
        here[here < 0] = size - 1
        values = view.numbers[candidates]
        beyond = (values < low[here]) | (values > high[here])
        outside = _grouped(candidates[beyond], here[beyond], stats, offset, view.numbers)
    found = []
    for code in stats:
        facts = SegmentFacts(
            segment_codes[code], missing.get(code, Examples()), outside.get(code, Examples())
        )
        if facts.missing.count or facts.outside.count:
            found.append(facts)
    return tuple(sorted(found, key=lambda facts: facts.segment))


def _grouped(
    rows: np.ndarray,
    codes: np.ndarray,
    stats: dict[int, Any],
    offset: int,
    values: np.ndarray | None = None,
) -> dict[int, Examples]:
    """``rows`` (ascending) grouped by their segment ``codes``, for the codes in ``stats``."""
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    found = {}
    for code in stats:
        start, stop = np.searchsorted(sorted_codes, [code, code + 1])
        if stop > start:
            found[code] = Examples.at(rows[order[start:stop]], offset, values)
    return found


def _hashes(views: list[ColumnView], rows: int, valid: np.ndarray | None = None) -> bytes:
    """Each row's 64-bit hash over ``views``; ``_EMPTY`` where ``valid`` is False."""
    hashed = row_hashes(views, rows)
    if valid is not None:
        hashed[~valid] = _EMPTY
    return hashed.astype("<u8", copy=False).tobytes()


# Merging.


def _merged(first: ValidationSummary, later: ValidationSummary) -> ValidationSummary:
    _require(first.schema_id == later.schema_id, "summaries made with different schemas")
    _require(first.inputs == later.inputs, "summaries made for inputs and for whole tables")
    _require(
        first.names == later.names,
        f"partition at row {later.offset} has columns {list(later.names)}, "
        f"the one before {list(first.names)}",
    )
    end = first.offset + first.rows
    _require(later.offset == end, f"a partition starts at row {later.offset}, expected {end}")
    segments = {s.segment: s.rows for s in first.segments}
    for s in later.segments:
        segments[s.segment] = segments.get(s.segment, 0) + s.rows
    identifiers = tuple(
        IdentifierHashes(mine.name, mine.hashes + theirs.hashes)
        for mine, theirs in zip(first.identifiers, later.identifiers, strict=True)
    )
    return ValidationSummary(
        first.schema_id,
        first.inputs,
        first.offset,
        first.rows + later.rows,
        first.names,
        tuple(a.merged(b) for a, b in zip(first.columns, later.columns, strict=True)),
        tuple(SegmentRows(name, rows) for name, rows in segments.items()),
        first.empty_keys.merged(later.empty_keys),
        first.key_hashes + later.key_hashes,
        first.row_hashes + later.row_hashes,
        identifiers,
    )


# Checking.


def _column_violations(
    schema: Schema, column: ColumnSchema, facts: ColumnSummary, rows: int
) -> list[Violation]:
    """``data.validation._column_violations``, rule by rule in ``COLUMN_RULES``' order."""
    found = []
    for name in COLUMN_RULES:
        if schema.severity_of(name, column.name) == "off":
            continue
        if (violation := _RULES[name](column, facts, rows)) is not None:
            found.append(violation)
    return found


def _type_rule(column: ColumnSchema, facts: ColumnSummary, rows: int) -> Violation | None:
    if column.kind != "numeric" or facts.family in ("number", "empty"):
        return None
    bad = facts.not_numbers if facts.not_numbers.rows.count else facts.labelled
    return _type_violation(column.name, facts.dtype, _objects(bad.labels), bad.rows.rows)


def _date_format_rule(column: ColumnSchema, facts: ColumnSummary, rows: int) -> Violation | None:
    if column.kind != "datetime" or facts.family == "date" or not facts.not_dates.rows.count:
        return None
    bad = facts.not_dates
    return _date_format_violation(column.name, facts.dtype, _objects(bad.labels), bad.rows.rows)


def _range_rule(column: ColumnSchema, facts: ColumnSummary, rows: int) -> Violation | None:
    outside = facts.outside
    if facts.family != "number" or column.allowed_min is column.allowed_max is None:
        return None
    if not outside.count:
        return None
    return _range_violation(column, outside.count, np.asarray(outside.values), outside.rows)


def _categories_rule(column: ColumnSchema, facts: ColumnSummary, rows: int) -> Violation | None:
    unseen = facts.unseen
    if column.categories is None or not unseen.rows.count:
        return None
    return _categories_violation(
        column, list(unseen.smallest), unseen.distinct, unseen.rows.count, unseen.rows.rows
    )


def _null_rate_rule(column: ColumnSchema, facts: ColumnSummary, rows: int) -> Violation | None:
    violation = _null_rate_violation(column, column.name, facts.missing.count, rows)
    return None if violation is None else replace(violation, rows=facts.missing.rows)


def _finite_rule(column: ColumnSchema, facts: ColumnSummary, rows: int) -> Violation | None:
    infinite = facts.infinite
    if column.kind != "numeric" or facts.family != "number" or not infinite.count:
        return None
    return _finite_violation(
        column.name, infinite.count, np.asarray(infinite.values), infinite.rows
    )


_RULES = {
    "type": _type_rule,
    "range": _range_rule,
    "allowed_categories": _categories_rule,
    "null_rate": _null_rate_rule,
    "finite": _finite_rule,
    "date_format": _date_format_rule,
}
assert list(_RULES) == sorted(_RULES, key=list(COLUMN_RULES).index), "rules differ"


def _segment_violations(
    schema: Schema, summary: ValidationSummary, found: list[Violation]
) -> list[Violation]:
    """``data.validation._segment_violations`` from the summary's per-segment facts."""
    segments = schema.segments
    if segments is None or segments.column not in summary.names:
        return []
    labels = [s.segment for s in summary.segments]
    counts = np.array([s.rows for s in summary.segments], dtype=np.int64)
    checked = _checked_segments(schema, labels, counts)
    broken = {(v.column, v.rule) for v in found}
    violations = []
    for name in summary.names:
        facts = summary.column(name)
        stats = {code: columns[name] for code, columns in checked.items() if name in columns}
        if facts is None or not stats:
            continue
        if (name, "null_rate") not in broken:
            level = NULL_RATE_FALSE_ALARM / len(stats)
            for code, described in stats.items():
                missing = facts.segment(labels[code]).missing
                violation = _null_rate_violation(
                    described, name, missing.count, int(counts[code]), level
                )
                if violation is not None:
                    violations.append(replace(violation, rows=missing.rows, segment=labels[code]))
        if (name, "range") not in broken and facts.family in ("number", "empty"):
            for code, described in stats.items():
                outside = facts.segment(labels[code]).outside
                if outside.count:
                    violations.append(_segment_range_violation(
                        name, outside.count, np.asarray(outside.values),
                        _bounds(described.allowed_min, described.allowed_max), outside.rows,
                        labels[code],
                    ))  # fmt: skip
    return violations


def _table_violations(schema: Schema, summary: ValidationSummary, inputs: bool) -> list[Violation]:
    names = list(summary.names)
    violations: list[Violation] = []
    if not inputs:
        for item in summary.identifiers:
            count, rows = _repeated(item.hashes, summary.offset)
            violations += _identifier_violations_of(item.name, count, rows)
    violations += _row_count_violations(schema, summary.rows)
    if _keyed(schema, names):
        repeated = _repeated(summary.key_hashes, summary.offset)
        empty = (summary.empty_keys.count, summary.empty_keys.rows)
        violations += _key_violations_of(schema, empty, repeated)
    if _duplicates_checked(schema, names):
        # Full rows: no row is empty, so no hash is set aside.
        violations += _duplicate_rows_violations(
            *_repeated(summary.row_hashes, summary.offset, skip_empty=False)
        )
    return violations


def _repeated(data: bytes, offset: int, skip_empty: bool = True) -> tuple[int, tuple[int, ...]]:
    """How many rows share their hash with another row, and the first three. Sorted, not
    hashed again: the hashes of 30 million rows fill 229 MiB, a hash table of them four
    times that; here one sorted copy, then a block of rows at a time."""
    hashes = _uint64(data)
    ordered = np.sort(hashes)
    shared = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    del ordered
    if skip_empty:
        shared = shared[shared != _EMPTY]
    if not len(shared):
        return 0, ()
    count, examples = 0, []
    for start in range(0, len(hashes), _BLOCK_ROWS):
        block = hashes[start : start + _BLOCK_ROWS]
        places = np.minimum(np.searchsorted(shared, block), len(shared) - 1)
        rows = np.flatnonzero(shared[places] == block)
        count += len(rows)
        examples += [start + int(row) + offset for row in rows[: _EXAMPLES - len(examples)]]
    return count, tuple(examples)


def _objects(labels: tuple[str, ...]) -> np.ndarray:
    return np.asarray(labels, dtype=object)


# JSON.


def _to_plain(value: Any) -> Any:
    if is_dataclass(value):
        return {f.name: _to_plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, tuple):
        return [_to_plain(item) for item in value]
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return value


def _from_plain(kind: Any, data: Any, where: str) -> Any:
    """``data`` (parsed JSON) as a ``kind``, each field checked; one line on a mistake."""
    if is_dataclass(kind):
        return _dataclass_from_plain(kind, data, where)
    if get_origin(kind) is tuple:
        _expect(isinstance(data, list), where, "a list", data)
        (item,) = {arg for arg in get_args(kind) if arg is not Ellipsis}
        return tuple(_from_plain(item, value, f"{where}[{i}]") for i, value in enumerate(data))
    if kind is bytes:
        _expect(isinstance(data, str), where, "base64 text", data)
        try:
            return base64.b64decode(data, validate=True)
        except binascii.Error:
            raise ConveyorError(f"{where}: not base64") from None
    if kind is float:
        _expect(
            isinstance(data, int | float) and not isinstance(data, bool), where, "a number", data
        )
        return float(data)
    if kind is int:
        _expect(isinstance(data, int) and not isinstance(data, bool), where, "a whole number", data)
        return data
    _expect(isinstance(data, kind), where, kind.__name__, data)
    return data


def _dataclass_from_plain(kind: type, data: Any, where: str) -> Any:
    _expect(isinstance(data, dict), where, "an object", data)
    hints = get_type_hints(kind)
    known = [f.name for f in fields(kind)]
    unknown = sorted(set(data) - set(known))
    missing = [name for name in known if name not in data]
    _require(not unknown, f"{where}: unknown field(s) {unknown}")
    _require(not missing, f"{where}: missing field(s) {missing}")
    values = {name: _from_plain(hints[name], data[name], f"{where}.{name}") for name in known}
    try:
        return kind(**values)
    except ConveyorError as error:
        raise ConveyorError(f"{where}: {error}") from None


def _expect(condition: bool, where: str, expected: str, found: Any) -> None:
    if not condition:
        shown = repr(found) if len(repr(found)) <= 40 else repr(found)[:37] + "..."
        raise ConveyorError(f"{where}: expected {expected}, found {shown}")
