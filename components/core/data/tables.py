"""Reading a table (a file, a URI, a DVC-tracked file, the embedded default) and splitting it."""

from __future__ import annotations

import contextlib
import csv
import decimal
import hashlib
import io
import math
import os
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pandas.api import types as ptypes

from conveyor.components.core.data.task import (
    AUTO,
    CLASSIFICATION,
    REGRESSION,
    TaskChoice,
    check_task,
    decide_task,
)
from conveyor.components.core.errors import ConveyorError, first_line, plain
from conveyor.components.core.files import write_atomically

__all__ = [
    "DEFAULT_DATA_URI",
    "DEFAULT_TARGET",
    "IngestResult",
    "Source",
    "as_arrow",
    "check_target",
    "content_hash",
    "dataset_name",
    "folder_tables",
    "ingest_table",
    "load_arrow_table",
    "load_table",
    "load_tables",
    "read_parquet",
    "save_table",
    "split_table",
]

BUILTIN_SCHEME = "builtin://"
DEFAULT_DATA_URI = f"{BUILTIN_SCHEME}breast_cancer"
DEFAULT_TARGET = "diagnosis"

_PARQUET_MAGIC = b"PAR1"
_TABLE_FILE = re.compile(r"\.(csv|tsv|parquet|pq)(\.gz|\.bz2|\.zip|\.xz)?$", re.I)
_EXTRAS = {"gs": "gcs", "gcs": "gcs", "s3": "s3", "s3a": "s3"}


@dataclass(frozen=True)
class Source:
    """Where a table comes from.

    Attributes:
        uri: A local path, an fsspec URI (``gs://``, ``s3://``, ``memory://``...),
            ``builtin://<name>``, or a path inside ``dvc_repo``.
        dvc_repo: A git repository (path or URL) tracking ``uri`` with DVC; empty when not DVC.
        revision: The git revision to read ``uri`` at; empty means the repository's HEAD.
    """

    uri: str
    dvc_repo: str = ""
    revision: str = ""

    def describe(self) -> str:
        """The source as a user wrote it, for messages."""
        if not self.dvc_repo:
            return self.uri
        return f"{self.uri} (DVC repo {self.dvc_repo} at {self.revision or 'HEAD'})"

    def resolved_revision(self) -> str:
        """The commit a local DVC repository was read at; else the revision as given."""
        if not self.dvc_repo or not os.path.isdir(self.dvc_repo):
            return self.revision
        from scmrepo.git import Git

        with Git(self.dvc_repo) as repo:
            return repo.resolve_rev(self.revision or "HEAD")


@dataclass(frozen=True)
class IngestResult:
    """Metadata of the two splits, for their Dataset artifacts."""

    train: dict[str, Any]
    test: dict[str, Any]


def ingest_table(
    source: Source,
    target: str,
    test_size: float,
    seed: int,
    train_path: Path,
    test_path: Path,
    task: str = AUTO,
) -> IngestResult:
    """Reads ``source``, checks the target, decides its task (``data.task``) and writes
    seeded splits as Parquet (stratified for classification)."""
    check_task(task)  # before the read
    table = load_table(source)
    where = source.describe()
    choice = check_target(table, target, where, task)
    train_split, test_split = split_table(table, target, test_size, seed, where, choice.task)
    write_atomically(train_path, lambda path: train_split.to_parquet(path, index=False))
    write_atomically(test_path, lambda path: test_split.to_parquet(path, index=False))
    shared = {
        "source": source.uri,
        "dvc_repo": source.dvc_repo,
        "revision": source.resolved_revision(),
        "source_content_hash": content_hash(table),
        "target": target,
        "task": choice.task,
        "task_rule": choice.rule,
        "columns": int(table.shape[1]),
        "seed": seed,
    }
    return IngestResult(
        train={**shared, **_split_metadata("train", train_split)},
        test={**shared, **_split_metadata("test", test_split)},
    )


def load_table(source: Source) -> pd.DataFrame:
    """Reads a CSV or Parquet table, or a folder of them with the same columns (such as a
    payload log); raises ConveyorError naming the source on any problem."""
    where = source.describe()
    if source.uri.startswith(BUILTIN_SCHEME):
        table = _builtin_table(source.uri.removeprefix(BUILTIN_SCHEME))
    elif (files := _folder_files(source)) is None:
        table = _read_file(source, where)
    else:
        table = _concatenated([_read_file(Source(file), file) for file in files], files)
    table = _numpy_dtypes(table)
    _check_shape(table.shape, where)
    return table


def load_tables(sources: list[Source]) -> pd.DataFrame:
    """Several tables (or folders of them) with the same columns, as one."""
    if len(sources) == 1:
        return load_table(sources[0])
    parts = [load_table(source) for source in sources]
    return _numpy_dtypes(_concatenated(parts, [source.describe() for source in sources]))


def read_parquet(path: Path | str) -> pd.DataFrame:
    """A local Parquet file a step wrote (a split, a reference): by path, as ``_native``
    explains (pandas alone would open it as a Python file)."""
    return pd.read_parquet(pa.OSFile(str(path)))


def save_table(source: Source | list[Source], path: Path) -> dict[str, Any]:
    """Reads ``source`` (or several, as one table) and writes it to ``path`` as Parquet;
    returns the Dataset metadata."""
    sources = source if isinstance(source, list) else [source]
    table = load_tables(sources)
    write_atomically(path, lambda partial: table.to_parquet(partial, index=False))
    return {
        "source": ", ".join(source.uri for source in sources),
        "revision": sources[0].resolved_revision(),
        "rows": len(table),
        "columns": int(table.shape[1]),
        "content_hash": content_hash(table),
    }


def load_arrow_table(source: Source) -> pa.Table:
    """As ``load_table``, but Parquet goes straight to Arrow with its text dictionary-encoded,
    skipping the copy into Python strings that pandas makes; CSV is read by pandas."""
    where = source.describe()
    if source.uri.startswith(BUILTIN_SCHEME):
        return as_arrow(load_table(source))
    if (files := _folder_files(source)) is None:
        table = _read_arrow_file(source, where)
    else:
        parts = [_encoded_text(_read_arrow_file(Source(file), file)) for file in files]
        _check_same_columns([part.column_names for part in parts], files)
        try:
            table = pa.concat_tables(parts, promote_options="permissive")
        except pa.ArrowTypeError:  # numbers in one file, text in another: as pandas reads it
            return as_arrow(load_table(source))
    _check_shape(table.shape, where)
    return table


def _encoded_text(table: pa.Table) -> pa.Table:
    """Text columns dictionary-encoded, as Parquet's are read, so tables from CSV and from
    Parquet files concatenate."""
    for index, field in enumerate(table.schema):
        if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
            encoded = pc.dictionary_encode(table.column(index))
            table = table.set_column(index, field.name, encoded)
    return table


def _read_file(source: Source, where: str) -> pd.DataFrame:
    with _opened(source) as file:
        return _parse(file, source.uri, where)


def _read_arrow_file(source: Source, where: str) -> pa.Table:
    with _opened(source) as file:
        if not _is_parquet(file, source.uri):
            return as_arrow(_numpy_dtypes(_parse(file, source.uri, where)))
        return _read_parquet_arrow(file, where)


def _folder_files(source: Source) -> list[str] | None:
    """``folder_tables`` of a source that is a folder, which must hold one; None otherwise."""
    if source.dvc_repo:
        return None
    files = folder_tables(source.uri)
    if files is not None and not files:
        raise ConveyorError(f"{source.uri}: a folder with no CSV or Parquet files in it")
    return files


def folder_tables(uri: str) -> list[str] | None:
    """The CSV and Parquet files in folder ``uri`` and below it, in name order; None when
    ``uri`` is not a folder. Hidden and ``_``-prefixed files and folders (a writer's
    partial files, ``_SUCCESS`` markers) are skipped; a partitioned dataset is refused."""
    import fsspec
    from fsspec.implementations.local import LocalFileSystem

    try:
        fs, root = fsspec.core.url_to_fs(uri)
        if not fs.isdir(root):
            return None
        found = sorted(fs.find(root))
    except ImportError as error:
        raise ConveyorError(f"{uri}: {_missing_extra(uri, error)}") from None
    except ValueError as error:  # an unknown protocol, a malformed URI
        raise ConveyorError(f"{uri}: cannot be read ({first_line(error)})") from None
    relative = {path: path.removeprefix(root.rstrip("/")).strip("/").split("/") for path in found}
    tables = [path for path, parts in relative.items() if _is_table_file(parts)]
    partitions = sorted({part for path in tables for part in relative[path][:-1] if "=" in part})
    if partitions:
        raise ConveyorError(
            f"{uri}: a partitioned dataset (folder {partitions[0]!r}), whose partition "
            "columns are in folder names; give a folder of whole tables"
        )
    local = isinstance(fs, LocalFileSystem)
    return [path if local else fs.unstrip_protocol(path) for path in tables]


def _is_table_file(parts: list[str]) -> bool:
    """A CSV or Parquet file, not hidden nor ``_``-prefixed, in no such folder either."""
    return not any(part.startswith((".", "_")) for part in parts) and bool(
        _TABLE_FILE.search(parts[-1])
    )


def _concatenated(parts: list[pd.DataFrame], names: list[str]) -> pd.DataFrame:
    _check_same_columns([list(part.columns) for part in parts], names)
    return pd.concat(parts, ignore_index=True)


def _check_same_columns(columns: list[list[str]], files: list[str]) -> None:
    for names, file in zip(columns[1:], files[1:], strict=True):
        if names != columns[0]:
            raise ConveyorError(
                f"{file}: columns {_preview(names)} differ from those of {files[0]} "
                f"({_preview(columns[0])}); a folder's tables must share their columns"
            )


def as_arrow(table: pd.DataFrame | pa.Table, skip: Collection[str] = ()) -> pa.Table:
    """An Arrow table of the same columns but ``skip``'s; a column mixing numbers and text
    becomes text, which the rules then report, rather than failing the conversion. Other
    columns are not copied (dropping them from a frame of millions of rows would be)."""
    names = (
        [str(name) for name in table.columns]
        if isinstance(table, pd.DataFrame)
        else table.column_names
    )
    kept = [index for index, name in enumerate(names) if name not in skip]
    if isinstance(table, pa.Table):
        return table if len(kept) == len(names) else table.select(kept)
    arrays = [_arrow_column(table.iloc[:, index]) for index in kept]
    return pa.Table.from_arrays(arrays, names=[names[index] for index in kept])


def dataset_name(source: Source) -> str:
    """A model name derived from the data: the file's stem, lower-case, with hyphens."""
    stem = source.uri.removeprefix(BUILTIN_SCHEME).rstrip("/").rsplit("/", 1)[-1]
    stem = _TABLE_FILE.sub("", stem)
    return re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-") or "model"


def check_target(table: pd.DataFrame, target: str, where: str, task: str = AUTO) -> TaskChoice:
    """Checks that ``target`` is a usable target column and decides its task (``data.task``:
    ``task`` unless ``auto``)."""
    if target not in table.columns:
        raise ConveyorError(
            f"{where}: target column {target!r} not found; columns are: {_preview(table.columns)}"
        )
    labels = table[target]
    empty = np.flatnonzero(labels.isna().to_numpy())
    if empty.size:
        raise ConveyorError(
            f"{where}: target column {target!r} is empty in {empty.size} rows "
            f"(first at row {empty[0] + 1})"
        )
    try:
        choice = decide_task(labels, task, target)
    except ConveyorError as error:
        raise ConveyorError(f"{where}: {error}") from None
    if choice.task == REGRESSION:
        _check_numbers(labels, target, where)
    else:
        _check_classes(labels, target, where)
    return choice


def _check_numbers(labels: pd.Series, target: str, where: str) -> None:
    """A regression target: finite numbers, not all one value."""
    infinite = np.flatnonzero(~np.isfinite(labels.to_numpy(dtype=float)))
    if infinite.size:
        raise ConveyorError(
            f"{where}: target column {target!r} holds {plain(labels.iloc[infinite[0]])} "
            f"in {infinite.size} rows (first at row {infinite[0] + 1}); regression needs "
            "finite numbers"
        )
    if labels.nunique() < 2:
        raise ConveyorError(
            f"{where}: target column {target!r} holds one value ({plain(labels.iloc[0])!r}) "
            "in every row; there is nothing to regress"
        )


def _check_classes(labels: pd.Series, target: str, where: str) -> None:
    if labels.nunique() < 2:
        raise ConveyorError(
            f"{where}: target column {target!r} has a single class ({plain(labels.iloc[0])!r}); "
            "classification needs at least two"
        )


def split_table(
    table: pd.DataFrame,
    target: str,
    test_size: float,
    seed: int,
    where: str,
    task: str = CLASSIFICATION,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A seeded split: stratified on ``target`` for classification (both parts hold every
    class), plain for regression (each part holds at least two rows)."""
    from sklearn.model_selection import train_test_split

    if not 0 < test_size < 1:
        raise ConveyorError(f"test_size must be between 0 and 1 (exclusive), got {test_size}")
    test_rows = math.ceil(test_size * len(table))
    if task == REGRESSION:
        if min(test_rows, len(table) - test_rows) < 2:
            raise ConveyorError(
                f"{where}: {len(table)} rows split with test_size={test_size} leave fewer than "
                "2 rows on one side; add rows or change test_size"
            )
        stratify = None
    else:
        _check_stratifiable(table[target].value_counts(), test_size, len(table), target, where)
        stratify = table[target]
    train, test = train_test_split(table, test_size=test_size, random_state=seed, stratify=stratify)
    return train.reset_index(drop=True), test.reset_index(drop=True)


def _check_stratifiable(
    counts: pd.Series, test_size: float, rows: int, target: str, where: str
) -> None:
    test_rows = math.ceil(test_size * rows)
    if counts.min() < 2:
        raise ConveyorError(
            f"{where}: class {plain(counts.idxmin())!r} of target column {target!r} has only "
            "1 row; each class needs at least 2 for a stratified split"
        )
    if min(test_rows, rows - test_rows) < len(counts):
        raise ConveyorError(
            f"{where}: {rows} rows split with test_size={test_size} leave "
            f"fewer rows on one side than there are classes ({len(counts)}); add rows or change "
            "test_size"
        )


def content_hash(table: pd.DataFrame) -> str:
    """sha256 of the table's column names and cell values (and so of their types)."""
    digest = hashlib.sha256("\x1f".join(map(str, table.columns)).encode())
    digest.update(pd.util.hash_pandas_object(table, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def _split_metadata(split: str, table: pd.DataFrame) -> dict[str, Any]:
    return {"split": split, "rows": len(table), "content_hash": content_hash(table)}


@contextlib.contextmanager
def _opened(source: Source) -> Iterator[BinaryIO]:
    where = source.describe()
    try:
        if source.dvc_repo:
            import dvc.api

            # DVC streams are not always seekable; Parquet needs seeking.
            with dvc.api.open(
                source.uri, repo=source.dvc_repo, rev=source.revision or None, mode="rb"
            ) as stream:
                yield io.BytesIO(stream.read())
        else:
            import fsspec

            with fsspec.open(source.uri, "rb", compression="infer") as stream:
                yield stream
    except FileNotFoundError:
        raise ConveyorError(f"{where}: file not found") from None
    except IsADirectoryError:
        raise ConveyorError(f"{where}: is a directory, expected a CSV or Parquet file") from None
    except ImportError as error:
        raise ConveyorError(f"{where}: {_missing_extra(source.uri, error)}") from None
    except OSError as error:  # a store that cannot be reached, access refused, ...
        raise ConveyorError(f"{where}: cannot read it ({first_line(error)})") from None
    except Exception as error:
        message = _dvc_message(error, source)
        if message is None:
            raise
        raise ConveyorError(f"{where}: {message}") from None


def _check_shape(shape: tuple[int, int], where: str) -> None:
    if shape[1] == 0:
        raise ConveyorError(f"{where}: the table has no columns")
    if shape[0] == 0:
        raise ConveyorError(f"{where}: the table has no rows (only a header)")


def _is_parquet(file: BinaryIO, name: str) -> bool:
    head = file.read(len(_PARQUET_MAGIC))
    file.seek(0)
    return head == _PARQUET_MAGIC or name.lower().endswith((".parquet", ".pq"))


def _parse(file: BinaryIO, name: str, where: str) -> pd.DataFrame:
    if _is_parquet(file, name):
        return _read_parquet(file, where)
    separator = "\t" if re.search(r"\.tsv(\.\w+)?$", name, flags=re.I) else ","
    return _read_csv(file, separator, where)


def _native(file: BinaryIO) -> pa.NativeFile:
    """The file as Arrow reads it in its own threads: by path when local, else its bytes.

    Arrow's threads reading a Python file object can abort the process as it exits
    (std::terminate; apache/arrow#34314), after a step has done its work: here a script
    reading Parquet through a Python file, then exiting, aborted 1 run in 6.
    """
    from fsspec.implementations.local import LocalFileOpener

    if isinstance(file, LocalFileOpener):
        return pa.OSFile(file.path)
    return pa.BufferReader(file.read())


def _read_parquet(file: BinaryIO, where: str) -> pd.DataFrame:
    try:
        return pd.read_parquet(_native(file))
    except (pa.ArrowException, OSError, ValueError) as error:
        raise ConveyorError(f"{where}: not a readable Parquet file ({first_line(error)})") from None


def _read_parquet_arrow(file: BinaryIO, where: str) -> pa.Table:
    import pyarrow.parquet as pq

    try:
        file = _native(file)
        schema = pq.read_schema(file)
        file.seek(0)
        _check_unique_names(schema.names, where)
        text = [
            f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
        ]
        index = _pandas_index_columns(schema)
        columns = [name for name in schema.names if name not in index] if index else None
        return pq.read_table(file, columns=columns, read_dictionary=text or None)
    except (pa.ArrowException, OSError, ValueError) as error:
        raise ConveyorError(f"{where}: not a readable Parquet file ({first_line(error)})") from None


def _pandas_index_columns(schema: pa.Schema) -> set[str]:
    """The columns holding a pandas index, which pandas reads back as the index, not as
    columns (a range index is stored as metadata only)."""
    described = (schema.pandas_metadata or {}).get("index_columns", [])
    return {name for name in described if isinstance(name, str)}


def _csv_header(file: BinaryIO, separator: str) -> list[str]:
    """The header's names as written: pandas renames a repeated ``age`` to ``age.1``."""
    line = file.readline().decode("utf-8")
    file.seek(0)
    return next(csv.reader([line], delimiter=separator), [])


def _check_unique_names(names: list[str], where: str) -> None:
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ConveyorError(f"{where}: duplicated column name(s) {duplicated}")


def _arrow_column(series: pd.Series) -> pa.Array:
    if series.dtype == object:
        text = _dictionary_text(series)
        if text is not None:
            return text
    try:
        return pa.array(series, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array(series.map(str).where(series.notna(), None), type=pa.string())


def _dictionary_text(series: pd.Series) -> pa.DictionaryArray | None:
    """A column of Python strings (and missing values), dictionary-encoded: each distinct
    string is converted once, not once a row; None when it holds anything else, or none."""
    try:
        codes, labels = pd.factorize(series)
    except TypeError:  # unhashable values (lists, dicts)
        return None
    if not len(labels) or pd.api.types.infer_dtype(labels, skipna=False) != "string":
        return None
    return pa.DictionaryArray.from_arrays(
        pa.array(codes, mask=codes < 0), pa.array(labels, type=pa.string())
    )


def _read_csv(file: BinaryIO, separator: str, where: str) -> pd.DataFrame:
    try:
        _check_unique_names(_csv_header(file, separator), where)
        return pd.read_csv(file, sep=separator, encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConveyorError(
            f"{where}: not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset "
            f"{error.start}); save the CSV as UTF-8 or use Parquet"
        ) from None
    except pd.errors.EmptyDataError:
        raise ConveyorError(f"{where}: the file is empty") from None
    except pd.errors.ParserError as error:
        raise ConveyorError(f"{where}: not a well-formed CSV file ({first_line(error)})") from None


def _numpy_dtypes(table: pd.DataFrame) -> pd.DataFrame:
    """pandas extension dtypes (string, category, Int64, boolean) as NumPy ones, and
    decimals (Parquet's ``decimal128``, a database's prices) as floats.

    Their missing value, ``pd.NA``, breaks scikit-learn's imputers; NumPy's ``nan`` does not.
    A column of ``Decimal`` objects would be taken for text.
    """
    converted = {}
    for name, dtype in table.dtypes.items():
        if not isinstance(dtype, pd.api.extensions.ExtensionDtype):
            if dtype.kind == "O" and _holds_decimals(table[name]):
                converted[name] = table[name].astype(float)
            continue
        column = table[name]
        if ptypes.is_numeric_dtype(dtype) or ptypes.is_bool_dtype(dtype):
            wanted = "float64" if column.isna().any() else dtype.numpy_dtype
            converted[name] = column.to_numpy(dtype=wanted, na_value=np.nan)
        else:
            converted[name] = column.astype(object).where(column.notna(), np.nan)
    return table.assign(**converted) if converted else table


def _holds_decimals(column: pd.Series) -> bool:
    """Whether every value of an object column is a ``Decimal`` or missing."""
    valid = column.dropna()
    return bool(len(valid)) and all(isinstance(value, decimal.Decimal) for value in valid)


def _builtin_table(name: str) -> pd.DataFrame:
    if name != "breast_cancer":
        raise ConveyorError(
            f"{BUILTIN_SCHEME}{name}: unknown embedded dataset; try {DEFAULT_DATA_URI}"
        )
    from sklearn.datasets import load_breast_cancer

    bundle = load_breast_cancer(as_frame=True)
    table = bundle.data.rename(columns=lambda column: column.replace(" ", "_"))
    table[DEFAULT_TARGET] = bundle.target.map(dict(enumerate(bundle.target_names)))
    return table


def _missing_extra(uri: str, error: ImportError) -> str:
    protocol = uri.split("://", 1)[0] if "://" in uri else ""
    extra = _EXTRAS.get(protocol)
    if extra is None:
        return f"cannot read this URI ({first_line(error)})"
    return f"reading {protocol}:// needs an extra: pip install 'conveyor[{extra}]'"


def _dvc_message(error: Exception, source: Source) -> str | None:
    """A one-line reason for the DVC and git errors a user can cause, else None."""
    name = type(error).__name__
    if name == "PathMissingError":
        return "no such file tracked in the repository at that revision"
    if name in {"RevError", "UnknownRevision"}:
        return f"unknown git revision {source.revision!r}"
    if name in {"NotDvcRepoError", "NoRemoteError", "NotGitRepositoryError", "SCMError"}:
        return first_line(error)
    if name == "FileMissingError":
        return "the DVC cache and remote do not hold this file's data (was it pushed?)"
    return None


def _preview(names: pd.Index, limit: int = 12) -> str:
    shown = ", ".join(map(str, names[:limit]))
    return shown if len(names) <= limit else f"{shown}, ... ({len(names)} in all)"
