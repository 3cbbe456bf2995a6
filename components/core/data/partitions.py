"""A table in partitions: the files of a folder (a payload log's day folders, say), listed
with their row counts, grouped into at most ``MAX_PARTITIONS`` partitions, and read back in
batches of bounded size.

A partitioned check reads each partition in a process of its own (a pod of a
``dsl.ParallelFor``) and never holds more than a batch of it: Parquet is read by row
groups, in slices of at most ``BATCH_ROWS`` rows, CSV in chunks of that many rows. Row
positions stay those of the whole table (the files one after another, in name order), so a
check's example rows mean the same as when the table is read at once.

Why at most 96 partitions: Vertex AI Pipelines refuses a task given more than 100 artifacts
("Maximum number of artifacts exceeded. Maximum allowed: 100", reported in
kubeflow/kubeflow#7513 for a ``dsl.Collected`` over a loop of 270), and the step that
gathers the loop's outputs takes four more. More files than that are grouped, neighbours
together.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from conveyor.components.core.data.tables import folder_tables
from conveyor.components.core.errors import ConveyorError, first_line

__all__ = [
    "BATCH_ROWS",
    "MAX_PARTITIONS",
    "Partition",
    "columns_of",
    "list_partitions",
    "read_batches",
]

BATCH_ROWS = 65_536
MAX_PARTITIONS = 96


@dataclass(frozen=True)
class Partition:
    """Neighbouring files of a partitioned table, read in a process of its own.

    Attributes:
        files: The files, in order: local paths or fsspec URIs.
        offset: The position of its first row in the whole table.
        rows: Its rows.
    """

    files: tuple[str, ...]
    offset: int
    rows: int

    def __post_init__(self) -> None:
        if not self.files or not all(self.files) or self.offset < 0 or self.rows < 0:
            raise ConveyorError(
                f"partition {self.files!r}: expected files, and an offset and rows of 0 or more"
            )

    def __str__(self) -> str:
        more = len(self.files) - 1
        return self.files[0] + (f" (and {more} more file{'s' * (more > 1)})" if more else "")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "files": list(self.files)}

    @classmethod
    def from_dict(cls, item: dict[str, Any]) -> Partition:
        """From ``to_dict``'s mapping, as a loop item (whose numbers KFP may turn to floats)."""
        try:
            files = item["files"]
            if not isinstance(files, list):
                raise TypeError(files)
            return cls(tuple(str(f) for f in files), int(item["offset"]), int(item["rows"]))
        except (KeyError, TypeError, ValueError):
            raise ConveyorError(
                f"partition {item!r}: expected files, offset and rows, as list_partitions "
                "gives them"
            ) from None

    def batches(self, columns: Sequence[str] | None, rows: int = BATCH_ROWS):
        """``read_batches`` of each file in turn."""
        for file in self.files:
            yield from read_batches(file, columns, rows)


def list_partitions(files: Sequence[str], most: int = MAX_PARTITIONS) -> list[Partition]:
    """The files of ``files`` (folders are listed, ``folder_tables``) with their rows and
    offsets, one partition each, or at most ``most`` of neighbouring files. Parquet's rows
    are read from its footer; a CSV file is counted in a stream."""
    listed = [file for uri in files for file in (folder_tables(uri) or [uri])]
    if not listed:
        raise ConveyorError(f"{', '.join(files) or 'inputs'}: no CSV or Parquet file to read")
    rows = [_rows(uri) for uri in listed]
    partitions, offset = [], 0
    for group in np.array_split(np.arange(len(listed)), min(most, len(listed))):
        count = sum(rows[i] for i in group)
        partitions.append(Partition(tuple(listed[i] for i in group), offset, count))
        offset += count
    return partitions


def columns_of(uri: str) -> list[str]:
    """The column names of a CSV or Parquet file."""
    if _is_parquet(uri):
        with _opened(uri) as handle:
            return list(_parquet(handle, uri).schema_arrow.names)
    with _opened(uri) as handle:
        header = next(csv.reader(io.TextIOWrapper(handle, encoding="utf-8")), [])
    return header


def read_batches(
    uri: str, columns: Sequence[str] | None = None, rows: int = BATCH_ROWS
) -> Iterator[pd.DataFrame]:
    """The file's ``columns`` (all when None) in batches of at most ``rows`` rows, in order;
    one empty batch for a file of no rows, so its columns are still seen."""
    wanted = None if columns is None else list(columns)
    with _opened(uri) as handle:
        if _is_parquet(uri):
            yield from _parquet_batches(_parquet(handle, uri), wanted, rows, uri)
        else:
            yield from _csv_batches(handle, wanted, rows, uri)


def _parquet_batches(parquet: Any, columns: list[str] | None, rows: int, uri: str):
    if columns is not None:
        columns = [name for name in columns if name in parquet.schema_arrow.names]
    try:
        seen = False
        for batch in parquet.iter_batches(batch_size=rows, columns=columns):
            seen = True
            yield batch.to_pandas()
        if not seen:
            empty = parquet.schema_arrow.empty_table()
            yield (empty if columns is None else empty.select(columns)).to_pandas()
    except (OSError, ValueError, pa.ArrowException) as error:
        raise ConveyorError(f"{uri}: cannot be read as Parquet ({first_line(error)})") from None


def _csv_batches(handle: Any, columns: list[str] | None, rows: int, uri: str):
    try:
        usecols = None if columns is None else lambda name: name in columns
        yield from pd.read_csv(handle, usecols=usecols, chunksize=rows)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise ConveyorError(f"{uri}: cannot be read as CSV ({first_line(error)})") from None


def _rows(uri: str) -> int:
    if _is_parquet(uri):
        with _opened(uri) as handle:
            return int(_parquet(handle, uri).metadata.num_rows)
    first = columns_of(uri)[:1]  # pandas reads no rows when no column is asked for
    with _opened(uri) as handle:
        return sum(len(chunk) for chunk in _csv_batches(handle, first, BATCH_ROWS, uri))


def _is_parquet(uri: str) -> bool:
    return uri.lower().endswith(".parquet")


def _parquet(handle: Any, uri: str) -> Any:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(handle)
    except (OSError, ValueError, pa.ArrowException) as error:
        raise ConveyorError(f"{uri}: cannot be read as Parquet ({first_line(error)})") from None


def _opened(uri: str) -> Any:
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(uri)
        return fs.open(path, "rb")
    except (OSError, ValueError) as error:
        raise ConveyorError(f"{uri}: cannot be opened ({first_line(error)})") from None
