"""A table's columns as the validation rules read them: NumPy arrays over Arrow, built once.

Text is dictionary-encoded, so rules about categories look at each distinct value once and
count rows through the codes; numbers (and booleans) are float64 with NaN for a missing
value, for the rules that measure; integers keep their exact values for the rules that
compare rows (an id past 2**53 is not rounded into another). Parquet read with
``data.tables.load_arrow_table`` arrives dictionary-encoded already, which is what
keeps validation close to the cost of reading the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from conveyor.components.core.errors import ConveyorError

__all__ = ["ColumnView", "column_views", "combine_hashes", "row_hashes"]

_NULL_HASH = np.uint64(0x9E3779B97F4A7C15)  # any fixed value unlike a real hash
_MIX = np.uint64(0x100000001B3)
_FRACTION = np.uint64(0xC2B2AE3D27D4EB4F)  # sets the hashes of non-whole numbers apart


@dataclass(frozen=True)
class ColumnView:
    """One column: ``numbers`` for numbers and booleans, else text ``labels`` and ``codes``.

    Attributes:
        name: The column name.
        dtype: The pandas dtype the column would have (``float64``, ``object``...). An
            integer column with a missing value is ``int64`` when read from Parquet but
            ``float64`` when read from CSV, as pandas reads each.
        array: The column itself.
        numbers: float64 values, NaN where missing; None for text.
        text_labels: A text column's distinct values (``labels`` is the way to read them:
            for a numeric column it builds them on first use).
        text_codes: Per row, the index of its value in ``text_labels``, -1 where missing.
    """

    name: str
    dtype: str
    array: pa.Array
    numbers: np.ndarray | None = None
    text_labels: np.ndarray | None = None
    text_codes: np.ndarray | None = None

    @property
    def is_numeric(self) -> bool:
        return self.numbers is not None

    @property
    def is_integer(self) -> bool:
        return pa.types.is_integer(self.array.type)

    @cached_property
    def valid(self) -> np.ndarray:
        """True where the row holds a value (not null, not NaN)."""
        if self.numbers is not None:
            return ~np.isnan(self.numbers)
        return self.codes >= 0

    @cached_property
    def _encoded(self) -> tuple[np.ndarray, np.ndarray]:
        if self.text_labels is not None:
            return self.text_labels, self.text_codes
        return _encode(pc.cast(self.array, pa.string()))

    @property
    def labels(self) -> np.ndarray:
        return self._encoded[0]

    @property
    def codes(self) -> np.ndarray:
        return self._encoded[1]

    @cached_property
    def label_counts(self) -> np.ndarray:
        """How many rows hold each of ``labels``."""
        codes = self.codes
        return np.bincount(codes[codes >= 0], minlength=len(self.labels))

    def hashes(self, rows: np.ndarray | None = None) -> np.ndarray:
        """A uint64 hash of each row's value (of each of ``rows``, when given); equal values
        hash alike, missing ones too."""
        if self.numbers is None:
            by_label = np.append(pd.util.hash_array(self.labels.astype(object)), _NULL_HASH)
            codes = self.codes if rows is None else self.codes[rows]
            return by_label[codes]  # code -1 picks the appended missing-value hash
        values = _integers(self.array) if self.is_integer else self.numbers
        valid = self.valid
        if rows is not None:
            values, valid = values[rows], valid[rows]
        hashed = pd.util.hash_array(values) if self.is_integer else _number_hashes(values)
        hashed[~valid] = _NULL_HASH
        return hashed

    def exact(self, rows: np.ndarray) -> list[np.ndarray]:
        """Arrays equal at two of ``rows`` exactly where the column's values are."""
        if self.numbers is None:
            return [self.codes[rows]]
        if not self.is_integer:
            return [self.numbers[rows]]
        taken = self.array.take(pa.array(rows))
        return [_integers(taken), ~self.valid[rows]]


def column_views(table: pa.Table, where: str) -> dict[str, ColumnView]:
    """Every column of ``table`` by name; a name given twice is refused."""
    names = table.column_names
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ConveyorError(f"{where}: duplicated column name(s) {duplicated}")
    return {name: _view(name, table.column(name)) for name in names}


def row_hashes(views: list[ColumnView], rows: int) -> np.ndarray:
    """One uint64 per row over ``views`` together: equal rows hash alike."""
    combined = np.zeros(rows, dtype=np.uint64)
    for view in views:
        combine_hashes(combined, view.hashes())
    return combined


def combine_hashes(combined: np.ndarray, hashes: np.ndarray) -> None:
    """Folds one column's ``hashes`` into the rows' ``combined`` hashes, in place."""
    combined *= _MIX
    combined ^= hashes


def _view(name: str, chunked: pa.ChunkedArray) -> ColumnView:
    array = chunked.combine_chunks() if chunked.num_chunks != 1 else chunked.chunk(0)
    kind = array.type
    if pa.types.is_dictionary(kind):
        dtype = "object" if _is_text(kind.value_type) else _pandas_dtype(kind.value_type)
        if _is_text(kind.value_type):
            labels, codes = _dictionary_codes(array)
            return ColumnView(name, dtype, array, text_labels=labels, text_codes=codes)
        array, kind = array.dictionary_decode(), kind.value_type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
        # Unsafe: integers past 2**53 round to the nearest float rather than fail.
        numbers = pc.cast(array, pa.float64(), safe=False).to_numpy(zero_copy_only=False)
        return ColumnView(name, _pandas_dtype(kind), array, numbers=np.asarray(numbers))
    if pa.types.is_null(kind):
        return ColumnView(name, "object", array, numbers=np.full(len(array), np.nan))
    labels, codes = _encode(array if _is_text(kind) else pc.cast(array, pa.string()))
    return ColumnView(name, _pandas_dtype(kind), array, text_labels=labels, text_codes=codes)


def _number_hashes(numbers: np.ndarray) -> np.ndarray:
    """Hashes of floats by value: a whole one as its integer (2.0 as 2, -0.0 as 0), so a
    column read as integers in one file and as floats in another (a gap turns it to
    floats) hashes alike; the others apart from every integer."""
    with np.errstate(invalid="ignore"):
        whole = np.isfinite(numbers) & (numbers == np.round(numbers)) & (np.abs(numbers) < 2**63)
    hashed = pd.util.hash_array(np.where(whole, numbers, 0).astype(np.int64))
    if not whole.all():
        hashed[~whole] = pd.util.hash_array(numbers[~whole]) ^ _FRACTION
    return hashed


def _integers(array: pa.Array) -> np.ndarray:
    """An integer array's exact values, missing ones as 0 (tell them apart by ``valid``)."""
    return pc.fill_null(array, 0).to_numpy(zero_copy_only=False)


def _encode(array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    return _dictionary_codes(pc.dictionary_encode(array))


def _dictionary_codes(array: pa.DictionaryArray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(array.dictionary.to_pylist(), dtype=object)
    codes = array.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    return labels, codes


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _pandas_dtype(kind: pa.DataType) -> str:
    try:
        return str(np.dtype(kind.to_pandas_dtype()))
    except (NotImplementedError, TypeError):
        return str(kind)
