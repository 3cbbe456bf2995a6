"""A table in partitions: the files of a folder (a payload log's day folders, say), listed
with their row counts, grouped into at most ``MAX_PARTITIONS`` partitions, and read back in
batches of bounded size.

A partitioned check reads each partition in a process of its own (a pod of a
``dsl.ParallelFor``) and never holds more than a batch of it: Parquet (a payload log's
format) is read by row groups, in slices of at most ``BATCH_ROWS`` rows. A CSV file is read
whole, one file at a time, as ``tables.load_table`` reads it (compression, separator, byte
order mark), then sliced: read in chunks, pandas would type each chunk apart. Row positions
stay those of the whole table (the files one after another, in name order), so a check's
example rows mean the same as when the table is read at once.

Why at most 90 partitions: Vertex AI Pipelines refuses a task given more than 100 artifacts
("Maximum number of artifacts exceeded. Maximum allowed: 100", reported in
kubeflow/kubeflow#7513 for a ``dsl.Collected`` over a loop of 270), and the step that
gathers the loop's outputs takes four more and writes four. More files than that are
grouped, neighbours together.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from conveyor.components.core.data.tables import Source, folder_tables, load_table
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
_HEADER_ONLY = "the table has no rows (only a header)"  # tables.load_table's refusal
MAX_PARTITIONS = 90


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
    return [str(name) for name in _csv_table(uri).columns]


def read_batches(
    uri: str, columns: Sequence[str] | None = None, rows: int = BATCH_ROWS
) -> Iterator[pd.DataFrame]:
    """The file's ``columns`` (all when None) in batches of at most ``rows`` rows, in order;
    one empty batch for a file of no rows, so its columns are still seen."""
    wanted = None if columns is None else list(columns)
    if not _is_parquet(uri):
        yield from _csv_batches(uri, wanted, rows)
        return
    with _opened(uri) as handle:
        yield from _parquet_batches(_parquet(handle, uri), wanted, rows, uri)


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


def _csv_batches(uri: str, columns: list[str] | None, rows: int) -> Iterator[pd.DataFrame]:
    table = _csv_table(uri)
    if columns is not None:
        table = table[[name for name in columns if name in table.columns]]
    for start in range(0, max(len(table), 1), rows):
        yield table.iloc[start : start + rows]


def _csv_table(uri: str) -> pd.DataFrame:
    """A CSV file as ``load_table`` reads it; one of a header alone (which ``load_table``
    refuses as a table) is a partition of no rows."""
    import fsspec

    try:
        return load_table(Source(uri))
    except ConveyorError as error:
        if not str(error).endswith(_HEADER_ONLY):
            raise
    separator = "\t" if ".tsv" in uri.lower() else ","
    with fsspec.open(uri, "rb", compression="infer") as handle:
        return pd.read_csv(handle, sep=separator, nrows=0, encoding="utf-8-sig")


def _rows(uri: str) -> int:
    if _is_parquet(uri):
        with _opened(uri) as handle:
            return int(_parquet(handle, uri).metadata.num_rows)
    return len(_csv_table(uri))


def _is_parquet(uri: str) -> bool:
    return uri.lower().endswith((".parquet", ".pq"))


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
