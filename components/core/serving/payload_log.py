"""The serving runtime's payload log: what a model was asked and what it answered, as Parquet.

Each answered request's rows are buffered and written, from a background thread so no
request waits on storage, to ``<uri>/<YYYY-MM-DD>/<revision>-<HHMMSSffffff>-<hex8>.parquet``
(the day the rows were answered, UTC) when ``max_rows`` have gathered or ``max_seconds``
have passed, and once more when the server stops (or the process exits). The predictor runs
one worker per process (``serving.server`` refuses ``--workers`` above 1).

A file's columns, in this order:

- the inputs: the model's feature columns in training order, then the model card's
  ``id_columns`` (passed through as text, never features); a column on the never-log list
  (``exclude``) is not written;
- the metadata, every name starting with ``conveyor.`` (``LOG_PREFIX``): ``conveyor.id``
  (the key labels join on: the row's first id column value, else the request id for a
  one-row request, else ``<request id>/<row index>``), ``conveyor.request_id``,
  ``conveyor.time`` (when it was answered), ``conveyor.revision``, ``conveyor.model``,
  ``conveyor.model_sha256``, ``conveyor.prediction`` (the class's text), ``conveyor.score``
  (binary: the positive class's probability; more classes: the top one),
  ``conveyor.positive_class`` (binary: the class ``conveyor.score`` is the probability of,
  the card's positive class; null for more classes) and one ``conveyor.probability.<class>``
  per class of the card.

A regression model's file (``LoggedModel.task``) holds, in place of the prediction, score,
positive class and probabilities, ``conveyor.predicted_value`` (the number answered, float64),
and says so in its Parquet file metadata: key ``conveyor.task`` (``TASK_KEY``), value
``regression``. A file without the key is a classifier's, as every file written before it.
``read_log`` reads a classifier's log unless told otherwise (``task``), and refuses a
regression log then rather than read its rows as classes without scores.

Storage that fails never takes the server down and never loses rows silently: failed writes
are retried (backing off up to ``max_seconds``), the rows waiting (buffered or being
written) never exceed ``max_buffer_rows``, and a request whose rows do not fit is dropped
whole, counted in ``conveyor_payload_log_dropped_rows_total`` and logged once per episode.

``read_log`` reads files of any age: those written before the metadata existed (inputs
only) read with the metadata null. ``prune_log`` applies a retention in days.
"""

from __future__ import annotations

import atexit
import datetime as dt
import logging
import math
import os
import re
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from conveyor.components.core.data.task import CLASSIFICATION, REGRESSION, TASKS
from conveyor.components.core.errors import ConveyorError, first_line
from conveyor.components.core.training.metrics import conventional_positive

__all__ = [
    "DEFAULT_MAX_BUFFER_ROWS",
    "ID",
    "LOG_PREFIX",
    "METADATA_TYPES",
    "MODEL",
    "MODEL_SHA256",
    "POSITIVE_CLASS",
    "PAYLOAD_LOG_ENV",
    "PAYLOAD_LOG_EXCLUDE_ENV",
    "PAYLOAD_LOG_MAX_BUFFER_ROWS_ENV",
    "PREDICTED_VALUE",
    "PREDICTION",
    "PROBABILITY_PREFIX",
    "REGRESSION_METADATA_TYPES",
    "REQUEST_ID",
    "REVISION",
    "SCORE",
    "TASK_KEY",
    "TIME",
    "LoggedModel",
    "LoggedRows",
    "PayloadLog",
    "input_columns",
    "metadata_columns",
    "parse_exclude",
    "probability_column",
    "prune_log",
    "read_log",
    "recent_days",
    "save_log_tables",
    "score_column",
]

# The environment variables the ServingRuntime passes the log's settings in.
PAYLOAD_LOG_ENV = "CONVEYOR_PAYLOAD_LOG"
PAYLOAD_LOG_EXCLUDE_ENV = "CONVEYOR_PAYLOAD_LOG_EXCLUDE"
PAYLOAD_LOG_MAX_BUFFER_ROWS_ENV = "CONVEYOR_PAYLOAD_LOG_MAX_BUFFER_ROWS"
# Held rows cost memory: a one-row request of 25 columns held about 16 KiB (measured), so
# 20,000 such rows are about 330 MiB of a predictor whose pod may have 2 GiB.
DEFAULT_MAX_BUFFER_ROWS = 20_000

LOG_PREFIX = "conveyor."
ID = "conveyor.id"
REQUEST_ID = "conveyor.request_id"
TIME = "conveyor.time"
REVISION = "conveyor.revision"
MODEL = "conveyor.model"
MODEL_SHA256 = "conveyor.model_sha256"
PREDICTION = "conveyor.prediction"
SCORE = "conveyor.score"
POSITIVE_CLASS = "conveyor.positive_class"
PROBABILITY_PREFIX = "conveyor.probability."
# The metadata every file holds (files written before it existed read with it null), in
# file order; the per-class probabilities follow.
METADATA_TYPES: dict[str, pa.DataType] = {
    ID: pa.string(),
    REQUEST_ID: pa.string(),
    TIME: pa.timestamp("us", tz="UTC"),
    REVISION: pa.string(),
    MODEL: pa.string(),
    MODEL_SHA256: pa.string(),
    PREDICTION: pa.string(),
    SCORE: pa.float64(),
    POSITIVE_CLASS: pa.string(),
}
# A regression model's answer: the number it predicted (its files hold none of the class
# columns above, and no probabilities).
PREDICTED_VALUE = "conveyor.predicted_value"
# The metadata every regression model's file holds, in file order.
REGRESSION_METADATA_TYPES: dict[str, pa.DataType] = {
    **{
        name: METADATA_TYPES[name] for name in (ID, REQUEST_ID, TIME, REVISION, MODEL, MODEL_SHA256)
    },
    PREDICTED_VALUE: pa.float64(),
}
# The Parquet file metadata key naming the model's task; absent: classification.
TASK_KEY = "conveyor.task"
_ALL_METADATA_TYPES = {**REGRESSION_METADATA_TYPES, **METADATA_TYPES}

_log = logging.getLogger(__name__)
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_READ_THREADS = 8


def probability_column(label: Any) -> str:
    """The column holding each row's probability of class ``label``."""
    return f"{PROBABILITY_PREFIX}{label}"


def score_column(classes: Sequence[Any], positive_class: str | None = None) -> int | None:
    """The column whose probability is a row's score: the one place that decides it, for
    serving, its payload log and train's evaluation scores.

    Args:
        classes: The model's classes, in the card's order.
        positive_class: The card's positive class (as text), decided at training. None (a
            card written before it was kept): the class called 1, true, yes, y, positive
            or pos (case-insensitive), else the second in the card's order.

    Returns:
        The positive class's index for a binary model; None for more classes, whose score
        is the top probability.

    Raises:
        ConveyorError: ``positive_class`` is not one of ``classes``.
    """
    if len(classes) != 2:
        return None
    if positive_class is not None:
        named = [index for index, c in enumerate(classes) if str(c) == positive_class]
        if not named:
            raise ConveyorError(
                f"positive class {positive_class!r} is not one of the model's classes "
                f"{[str(c) for c in classes]}"
            )
        return named[0]
    positive = conventional_positive(classes)
    return 1 if positive is None else list(classes).index(positive)


@dataclass(frozen=True)
class LoggedModel:
    """The model a log's rows come from.

    Attributes:
        name: The served model's name.
        sha256: sha256 of its model file (the registry maps it to a version).
        classes: Its classes, in the card's order (one probability column each); none
            for a regression model.
        id_columns: The card's id columns, logged after the features.
        positive_class: The card's positive class (binary models; None in cards written
            before it was kept): see ``score_column``.
        input_types: Each feature's logged type (``number``, ``bool`` or ``text``, from
            the card), so every file types a column alike whatever a request sent (a
            client's ``true`` in a numeric column is logged as 1.0); empty logs the
            request's own types.
        task: ``classification`` or ``regression`` (the card's): a regression model's
            rows are logged with the number it answered, and it has no classes nor
            positive class.
    """

    name: str
    sha256: str
    classes: tuple[Any, ...]
    id_columns: tuple[str, ...] = ()
    positive_class: str | None = None
    input_types: tuple[tuple[str, str], ...] = ()  # feature -> number, bool or text
    task: str = CLASSIFICATION

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not isinstance(self.sha256, str):
            raise ConveyorError("LoggedModel: name and sha256 must be strings")
        if self.task not in TASKS:
            raise ConveyorError(f"LoggedModel: task {self.task!r} is not one of {', '.join(TASKS)}")
        if self.task == REGRESSION and (self.classes or self.positive_class is not None):
            raise ConveyorError(
                "LoggedModel: a regression model answers numbers; it has no classes nor "
                "positive class"
            )
        if self.task == CLASSIFICATION and not self.classes:
            raise ConveyorError("LoggedModel: a model has at least one class")
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "id_columns", tuple(self.id_columns))
        object.__setattr__(self, "input_types", tuple(tuple(t) for t in self.input_types))
        unknown = {kind for _, kind in self.input_types} - set(_CASTS)
        if unknown:
            raise ConveyorError(f"LoggedModel: unknown input type(s) {sorted(unknown)}")
        score_column(self.classes, self.positive_class)  # a class of the model, or refused


@dataclass(frozen=True, slots=True)
class _Answer:
    """One answered request, as the request left it: turned into columns only when written."""

    inputs: pd.DataFrame
    ids: dict[str, list[Any]] | None
    labels: Sequence[Any]
    probabilities: np.ndarray | None
    request_id: str
    time_us: int


class PayloadLog:
    """Appends answered requests to Parquet files under ``uri`` (a folder or fsspec URI).

    Args:
        uri: Where the files go: a local folder, ``gs://bucket/payloads/model``, ...
        revision: The serving revision, which starts each file's name.
        model: The model answering.
        max_rows: Rows gathered before a file is written.
        max_seconds: Longest a row waits before its file is written (when storage works).
        max_buffer_rows: Most rows waiting to be written; a request past it is dropped.
        exclude: Input columns never written.
        retry_seconds: First wait before retrying a failed write; doubles up to ``max_seconds``.
        registry: Prometheus registry for the log's series (the server's); None keeps a
            private one.
    """

    def __init__(
        self,
        uri: str,
        revision: str,
        model: LoggedModel,
        max_rows: int = 1000,
        max_seconds: float = 60.0,
        max_buffer_rows: int = DEFAULT_MAX_BUFFER_ROWS,
        exclude: Iterable[str] = (),
        retry_seconds: float = 1.0,
        registry: Any = None,
    ) -> None:
        import fsspec

        if max_rows < 1 or max_buffer_rows < 1 or max_seconds <= 0 or retry_seconds <= 0:
            raise ConveyorError(
                f"payload log: max_rows ({max_rows}) and max_buffer_rows ({max_buffer_rows}) "
                f"must be 1 or more, max_seconds ({max_seconds}) and retry_seconds "
                f"({retry_seconds}) positive"
            )
        self.fs, self.root = fsspec.core.url_to_fs(uri.rstrip("/"))
        self.uri, self.revision, self.model = uri, revision, model
        self.max_rows, self.max_seconds = max_rows, max_seconds
        self.max_buffer_rows, self.retry_seconds = max_buffer_rows, retry_seconds
        self.exclude = tuple(dict.fromkeys(exclude))
        self._input_types = dict(model.input_types)
        self._score_column = score_column(model.classes, model.positive_class)
        # What each row's score is the probability of, logged with it (None: more classes).
        self._positive_class = (
            None if self._score_column is None else str(model.classes[self._score_column])
        )
        logged_ids = [name for name in model.id_columns if name not in self.exclude]
        # An excluded id column is never written, so neither is it used as the row's id.
        self._id_column = logged_ids[0] if logged_ids else None
        self._pending: list[_Answer] = []
        self._held = 0  # rows buffered or being written: what max_buffer_rows bounds
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._due = threading.Event()
        self._closed = threading.Event()
        self._writer: threading.Thread | None = None
        self._writer_pid = 0
        self._failures = 0  # failed writes in the current episode
        self._dropped_in_episode = 0
        self._registry = registry
        self.metrics = _LogMetrics(registry, model.name, revision, lambda: self._held)

    def __reduce__(self) -> tuple:
        # A server starting workers by spawning pickles the model: each worker gets its own
        # log (and writer thread), with nothing buffered and a private registry.
        return (
            PayloadLog,
            (
                self.uri, self.revision, self.model, self.max_rows, self.max_seconds,
                self.max_buffer_rows, self.exclude, self.retry_seconds,
            ),
        )  # fmt: skip

    @property
    def is_regression(self) -> bool:
        return self.model.task == REGRESSION

    @property
    def held_rows(self) -> int:
        """Rows waiting to be written (buffered, or in a write under way)."""
        return self._held

    def append(
        self,
        inputs: pd.DataFrame,
        labels: Sequence[Any],
        probabilities: np.ndarray | None,
        request_id: str,
        ids: dict[str, list[Any]] | None = None,
        answered_at: dt.datetime | None = None,
    ) -> bool:
        """Buffers one answered request; the writer thread stores it (after ``close``, at once).

        Args:
            inputs: The table the model predicted on (the feature columns, in training
                order, as every request's table has them).
            labels: The predicted class of each row (a regression model's: the number).
            probabilities: Each row's probability of each class (card order); None without.
            request_id: The request's id.
            ids: Id column -> one value per row (None where the request had none).
            answered_at: When it was answered; now when None.

        Returns:
            False when the rows were dropped: the buffer was full.
        """
        rows = len(labels)
        when = time.time_ns() // 1000 if answered_at is None else _microseconds(answered_at)
        answer = _Answer(inputs, ids, labels, probabilities, request_id, when)
        with self._lock:
            if self._held + rows > self.max_buffer_rows:
                self._drop(rows)
                return False
            self._pending.append(answer)
            self._held += rows
            if not self._closed.is_set():
                self._start_writer()
                if self._held >= self.max_rows:
                    self._due.set()
                return True
        if not self._flush_quietly("after close"):  # no writer is left to retry them
            self._drop_held("after close")
        return True

    def close(self) -> None:
        """Writes what is buffered and stops the writer (the server's ``stop``, and at exit);
        rows that cannot be written then are counted as dropped and logged."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._due.set()
        if self._writer is not None and self._writer is not threading.current_thread():
            self._writer.join(timeout=30)
        if not self._flush_quietly("at shutdown"):
            self._drop_held("at shutdown")

    def _drop_held(self, when: str) -> None:
        """Counts and logs the rows still held once no writer will try them again."""
        with self._lock:
            lost, self._pending, self._held = self._held, [], 0
        self.metrics.dropped.inc(lost)
        _log.error("payload log: %d rows could not be written to %s %s", lost, self.uri, when)

    def flush(self) -> list[str]:
        """Writes the buffered rows now (a file per day they were answered); returns the
        paths written, none when empty. On failure the rows not written go back to the
        buffer, for the next write to try again, and the error is raised."""
        with self._write_lock:
            with self._lock:
                pending, self._pending = self._pending, []
            days: dict[dt.date, list[_Answer]] = {}
            for answer in pending:
                day = (_EPOCH + dt.timedelta(microseconds=answer.time_us)).date()
                days.setdefault(day, []).append(answer)
            written: list[str] = []
            rows = 0
            try:
                for day, group in sorted(days.items()):
                    table = self._table_or_drop(group)
                    if table is not None:
                        written.append(self._write_file(day, table))
                        rows += table.num_rows
                    del days[day]
            except Exception:
                with self._lock:
                    self._pending[:0] = [answer for group in days.values() for answer in group]
                self._written(rows)
                self.metrics.failures.inc()
                raise
            if written:  # said before the rows count as written: whoever waits sees both
                self._recovered()
            self._written(rows)
            return written

    def _table_or_drop(self, answers: list[_Answer]) -> pa.Table | None:
        """The answers as a table; answers that cannot become one (values no cast fixes)
        are dropped and counted rather than retried: retrying them would hold every later
        row back until the buffer filled."""
        try:
            return self._table(answers)
        except _DATA_ERRORS:
            pass
        kept = []
        for answer in answers:
            try:
                self._table([answer])
                kept.append(answer)
            except _DATA_ERRORS as error:
                self._discard(len(answer.labels), error)
        try:
            return self._table(kept) if kept else None
        except _DATA_ERRORS as error:  # each alone is fine, together they clash
            self._discard(sum(len(answer.labels) for answer in kept), error)
            return None

    def _discard(self, rows: int, error: Exception) -> None:
        with self._lock:
            self._held -= rows
        self.metrics.dropped.inc(rows)
        _log.error(
            "payload log: dropped %d rows that cannot be written as a table: %s",
            rows, first_line(error),
        )  # fmt: skip

    def _written(self, rows: int) -> None:
        with self._lock:
            self._held -= rows
        self.metrics.written.inc(rows)

    def _drop(self, rows: int) -> None:
        """Counts (and, first in an episode, logs) a request dropped for want of room."""
        self.metrics.dropped.inc(rows)
        if not self._dropped_in_episode:
            _log.error(
                "payload log: %d rows are waiting for %s, the most it holds "
                "(max_buffer_rows); dropping requests until they are written "
                "(counted in conveyor_payload_log_dropped_rows_total)",
                self._held, self.uri,
            )  # fmt: skip
        self._dropped_in_episode += rows

    def _recovered(self) -> None:
        if self._failures or self._dropped_in_episode:
            _log.warning(
                "payload log: writing to %s again after %d failed attempts; %d rows were "
                "dropped meanwhile",
                self.uri, self._failures, self._dropped_in_episode,
            )  # fmt: skip
        self._failures = self._dropped_in_episode = 0

    def _flush_quietly(self, when: str) -> bool:
        try:
            self.flush()
        except Exception as error:  # a storage failure must not fail a request or a stop
            _log.error("payload log: could not write to %s %s: %s", self.uri, when, error)
            return False
        return True

    def _write_file(self, day: dt.date, table: pa.Table) -> str:
        import pyarrow.parquet as pq

        now = dt.datetime.now(dt.UTC)
        # Microseconds first after the revision: a folder's files sort in the order written.
        name = f"{self.revision}-{now:%H%M%S%f}-{uuid.uuid4().hex[:8]}.parquet"
        folder = f"{self.root}/{day.isoformat()}"
        self.fs.makedirs(folder, exist_ok=True)
        # Written under a hidden name, then renamed: readers skip hidden files, so none
        # sees a half-written one (object stores make the file appear whole anyway).
        partial = f"{folder}/.{name}.partial"
        try:
            with self.fs.open(partial, "wb") as file:
                pq.write_table(table, file)
            self.fs.mv(partial, f"{folder}/{name}")
        finally:
            try:
                if self.fs.exists(partial):
                    self.fs.rm(partial)
            except Exception:  # noqa: BLE001 - the write's own error is the one to report
                pass
        return f"{folder}/{name}"

    def _table(self, answers: list[_Answer]) -> pa.Table:
        """The answers as one table: inputs, id columns, then the metadata (a regression
        model's marked as such in the table's schema metadata)."""
        inputs = [answer.inputs for answer in answers]
        table = _inputs_table(inputs, self.exclude, self._input_types)
        counts = [len(answer.labels) for answer in answers]
        total = sum(counts)
        for name in self.model.id_columns:
            if name not in self.exclude:
                table = table.append_column(name, pa.array(_id_texts(answers, name), pa.string()))
        times = np.repeat(np.fromiter((a.time_us for a in answers), np.int64), counts)
        metadata = {
            ID: pa.array(self._row_ids(answers), pa.string()),
            REQUEST_ID: pa.array(np.repeat([a.request_id for a in answers], counts), pa.string()),
            TIME: pa.array(times, METADATA_TYPES[TIME]),
            REVISION: pa.array([self.revision] * total, pa.string()),
            MODEL: pa.array([self.model.name] * total, pa.string()),
            MODEL_SHA256: pa.array([self.model.sha256] * total, pa.string()),
        }
        if self.is_regression:
            values = [value for answer in answers for value in answer.labels]
            metadata[PREDICTED_VALUE] = pa.array(
                np.asarray(values, dtype=np.float64), pa.float64(), from_pandas=True
            )
        else:
            metadata.update(self._class_metadata(answers, total))
        for name, values in metadata.items():
            table = table.append_column(name, values)
        if self.is_regression:
            table = table.replace_schema_metadata({TASK_KEY: REGRESSION})
        return table

    def _class_metadata(self, answers: list[_Answer], total: int) -> dict[str, pa.Array]:
        """A classifier's prediction, score, positive class and probability columns."""
        classes = self.model.classes
        probabilities = _probabilities(answers, len(classes))
        column = self._score_column
        with np.errstate(invalid="ignore"):
            scores = probabilities[:, column] if column is not None else probabilities.max(axis=1)
        metadata = {
            PREDICTION: pa.array([str(label) for a in answers for label in a.labels], pa.string()),
            SCORE: pa.array(scores, pa.float64(), from_pandas=True),
            POSITIVE_CLASS: pa.array([self._positive_class] * total, pa.string()),
        }
        for index, label in enumerate(classes):
            metadata[probability_column(label)] = pa.array(
                probabilities[:, index], pa.float64(), from_pandas=True
            )
        return metadata

    def _row_ids(self, answers: list[_Answer]) -> list[str]:
        ids: list[str] = []
        for answer in answers:
            values = (answer.ids or {}).get(self._id_column) if self._id_column else None
            rows = len(answer.labels)
            for index in range(rows):
                value = None if values is None else values[index]
                if not _is_missing(value):
                    ids.append(str(value))
                elif rows == 1:
                    ids.append(answer.request_id)
                else:
                    ids.append(f"{answer.request_id}/{index}")
        return ids

    def _start_writer(self) -> None:
        """Started on first use in each process: a server forking workers after building
        this object would leave the thread behind in the parent."""
        if self._writer is not None and self._writer_pid == os.getpid():
            return
        self._writer_pid = os.getpid()
        self._writer = threading.Thread(target=self._write_when_due, daemon=True)
        self._writer.start()
        atexit.register(self.close)

    def _write_when_due(self) -> None:
        backoff = 0.0
        while not self._closed.is_set():
            if backoff:  # storage failed: wait, whatever arrives, so as not to hammer it
                if self._closed.wait(backoff):
                    return
            else:
                self._due.wait(timeout=self.max_seconds)
                self._due.clear()
                if self._closed.is_set():
                    return
            try:
                self.flush()
                backoff = 0.0
            except Exception as error:  # a storage hiccup must not stop serving
                self._failures += 1
                if self._failures == 1:
                    _log.error(
                        "payload log: could not write to %s, will retry (holding %d rows, at "
                        "most %d): %s",
                        self.uri, self._held, self.max_buffer_rows, first_line(error),
                    )  # fmt: skip
                backoff = min(max(2 * backoff, self.retry_seconds), self.max_seconds)


class _LogMetrics:
    """The log's Prometheus series for one model and revision."""

    def __init__(self, registry: Any, model: str, revision: str, held: Any) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = registry if registry is not None else CollectorRegistry()
        labels = ["model", "revision"]
        self.dropped = Counter(
            "conveyor_payload_log_dropped_rows",
            "Answered rows the payload log dropped: its buffer was full (storage unreachable) "
            "or they could not be written at shutdown.",
            labels,
            registry=self.registry,
        ).labels(model, revision)
        self.written = Counter(
            "conveyor_payload_log_written_rows",
            "Answered rows the payload log wrote.",
            labels,
            registry=self.registry,
        ).labels(model, revision)
        self.failures = Counter(
            "conveyor_payload_log_write_failures",
            "Failed attempts to write the payload log (each is retried).",
            labels,
            registry=self.registry,
        ).labels(model, revision)
        buffered = Gauge(
            "conveyor_payload_log_buffered_rows",
            "Answered rows waiting to be written to the payload log.",
            labels,
            registry=self.registry,
        )
        buffered.labels(model, revision).set_function(held)


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _microseconds(when: dt.datetime) -> int:
    delta = when.astimezone(dt.UTC) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _inputs_table(
    frames: list[pd.DataFrame], exclude: tuple[str, ...], types: dict[str, str] | None = None
) -> pa.Table:
    """The requests' tables as one Arrow table, without the excluded columns.

    Built from one NumPy matrix rather than ``pd.concat``, which costs several times more
    per small table. A column of text and gaps becomes strings (null where missing);
    numbers stay numbers, a NaN gap being a null as pandas writes it. A column of mixed
    values (a client's ``true`` among numbers) is cast to its ``types`` entry.
    """
    names = list(frames[0].columns)
    # The server's tables all have the card's columns in its order: checking their count is
    # enough (comparing every name costs more than the rest of this per table).
    if any(frame.shape[1] != len(names) for frame in frames):
        frames = [frame.reindex(columns=names) for frame in frames]
    blocks = [frame.to_numpy() for frame in frames]
    matrix = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
    numeric = [
        all(frame.dtypes.iloc[index].kind in "iuf" for frame in frames)
        for index in range(len(names))
    ] if matrix.dtype == object else [False] * len(names)  # fmt: skip
    columns, kept = [], []
    for index, name in enumerate(names):
        if name in exclude:
            continue
        column = matrix[:, index]
        if numeric[index]:  # numbers in a matrix of objects: back to a numeric array
            column = np.array(column.tolist())
        cast = _CASTS.get((types or {}).get(name, ""))
        columns.append(
            cast(column) if cast and column.dtype == object else pa.array(column, from_pandas=True)
        )
        kept.append(name)
    return pa.table(columns, names=kept)


def _as_numbers(column: np.ndarray) -> pa.Array:
    numbers = pd.to_numeric(pd.Series(column, dtype=object), errors="coerce")
    return pa.array(numbers.to_numpy(float), pa.float64(), from_pandas=True)


def _as_booleans(column: np.ndarray) -> pa.Array:
    truth = {True: True, False: False, "true": True, "false": False}
    return pa.array([truth.get(v) if _hashable(v) else None for v in column], pa.bool_())


def _as_text(column: np.ndarray) -> pa.Array:
    return pa.array([None if _is_missing(v) else str(v) for v in column], pa.string())


def _hashable(value: Any) -> bool:
    return isinstance(value, bool | int | float | str)


# How a column of mixed values is written, by the card's kind of its feature.
_CASTS = {"number": _as_numbers, "bool": _as_booleans, "text": _as_text}
_DATA_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError)


def _is_missing(value: Any) -> bool:
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def _id_texts(answers: list[_Answer], name: str) -> list[str | None]:
    texts: list[str | None] = []
    for answer in answers:
        values = (answer.ids or {}).get(name)
        if values is None:
            texts.extend([None] * len(answer.labels))
        else:
            texts.extend(None if _is_missing(value) else str(value) for value in values)
    return texts


def _probabilities(answers: list[_Answer], classes: int) -> np.ndarray:
    blocks = [
        np.full((len(a.labels), classes), np.nan)
        if a.probabilities is None
        else np.asarray(a.probabilities, dtype=float).reshape(len(a.labels), classes)
        for a in answers
    ]
    return blocks[0] if len(blocks) == 1 else np.concatenate(blocks)


def parse_exclude(text: str) -> list[str]:
    """A comma-separated never-log list (``CONVEYOR_PAYLOAD_LOG_EXCLUDE``) as column names."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    prefixed = [name for name in names if name.startswith(LOG_PREFIX)]
    if prefixed:
        raise ConveyorError(
            f"payload log exclude {prefixed[0]!r}: the log's own {LOG_PREFIX}* columns are "
            "always written; name input columns"
        )
    return names


def metadata_columns(table: Any) -> list[str]:
    """The log's metadata columns of ``table`` (a pyarrow or pandas table), in its order."""
    return [name for name in _names(table) if name.startswith(LOG_PREFIX)]


def input_columns(table: Any) -> list[str]:
    """The inputs of ``table`` (features and id columns), in its order."""
    return [name for name in _names(table) if not name.startswith(LOG_PREFIX)]


def _names(table: Any) -> list[str]:
    return list(table.column_names if isinstance(table, pa.Table) else table.columns)


@dataclass(frozen=True)
class LoggedRows:
    """Rows read from a payload log.

    Attributes:
        table: The inputs (first file's column order), then every metadata column of
            ``METADATA_TYPES`` (null in files written before it existed), then the
            ``conveyor.probability.<class>`` columns any file holds; for a regression
            model's log, those of ``REGRESSION_METADATA_TYPES`` instead.
        files: The files read, in order.
        task: The model's task, as the files' metadata says (``classification`` for a
            file without it).
    """

    table: pa.Table
    files: list[str] = field(default_factory=list)
    task: str = CLASSIFICATION

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def input_names(self) -> list[str]:
        return input_columns(self.table)

    @property
    def metadata_names(self) -> list[str]:
        return metadata_columns(self.table)

    def inputs(self) -> pd.DataFrame:
        """The inputs (features and id columns) as pandas, as a drift comparison reads them."""
        return self.table.select(self.input_names).to_pandas()

    def metadata(self) -> pd.DataFrame:
        """The metadata columns as pandas."""
        return self.table.select(self.metadata_names).to_pandas()


def read_log(
    source: str | Sequence[str],
    columns: Sequence[str] | None = None,
    task: str | None = CLASSIFICATION,
) -> LoggedRows:
    """Reads payload log files: a log's folder (every day), a day's folder, a file, or a
    list of files (``recent_days`` gives one).

    Args:
        source: The folder, file or files (paths or fsspec URIs).
        columns: Only these columns (missing metadata reads as null, as in old files);
            None reads all.
        task: The model task whose log is expected (``TASK_KEY`` in each file's metadata,
            classification without it): a classifier's log by default, whose predictions,
            scores and probabilities readers read; None: either, one for all files.

    Raises:
        ConveyorError: Nothing to read, a file that cannot be read, files whose inputs
            differ (a folder holds one model's log), or a file of a model of another task
            than ``task`` (or, with None, than the first file's).
    """
    files = _log_files(source)
    with ThreadPoolExecutor(max_workers=min(_READ_THREADS, len(files))) as pool:
        read = list(pool.map(lambda file: _read_log_file(file, columns), files))
    found = _check_tasks(files, [file_task for _, _, file_task in read], task)
    read = [(part, rows) for part, rows, _ in read]
    parts = [part for part, _ in read]
    inputs = [input_columns(part) for part in parts]
    for names, file in zip(inputs[1:], files[1:], strict=True):
        if sorted(names) != sorted(inputs[0]):
            raise ConveyorError(
                f"{file}: inputs {', '.join(names) or 'none'} differ from those of "
                f"{files[0]} ({', '.join(inputs[0]) or 'none'}); a payload log holds one "
                "model's inputs"
            )
    probabilities = list(
        dict.fromkeys(
            n for part in parts for n in part.column_names if n.startswith(PROBABILITY_PREFIX)
        )
    )
    types = REGRESSION_METADATA_TYPES if found == REGRESSION else METADATA_TYPES
    fixed = [name for name in types if columns is None or name in columns]
    order = [*inputs[0], *fixed, *probabilities]
    aligned = [_aligned(part, rows, order) for part, rows in read]
    try:
        table = pa.concat_tables(aligned, promote_options="permissive")
    except (pa.ArrowTypeError, pa.ArrowInvalid) as error:
        raise ConveyorError(
            f"{files[0]} and the files after it: a column's type differs between files "
            f"({first_line(error)})"
        ) from None
    return LoggedRows(table, files, found)


def _check_tasks(files: list[str], tasks: list[str], expected: str | None) -> str:
    """The task of the files' model: ``expected`` (or, when None, the first file's), which
    every file must be of; ConveyorError naming the first file of another."""
    if expected is not None and expected not in TASKS:
        raise ConveyorError(f"read_log: task {expected!r} is not one of {', '.join(TASKS)}")
    wanted = tasks[0] if expected is None else expected
    for file, task in zip(files, tasks, strict=True):
        if task == wanted:
            continue
        if expected is None:
            raise ConveyorError(
                f"{file}: a {task} model's payload log, but {files[0]} is a {wanted} model's; "
                "a payload log holds one model's"
            )
        if task == REGRESSION:
            raise ConveyorError(
                f"{file}: a regression model's payload log ({TASK_KEY}={REGRESSION} in its "
                "file metadata) holds predicted numbers, not the classes, scores and "
                "probabilities read here"
            )
        raise ConveyorError(
            f"{file}: a {task} model's payload log, not a {wanted} model's ({TASK_KEY} in its "
            "file metadata)"
        )
    return wanted


def _log_files(source: str | Sequence[str]) -> list[str]:
    from conveyor.components.core.data.tables import folder_tables

    if isinstance(source, str):
        files = folder_tables(source)
        files = [source] if files is None else files
        if not files:
            raise ConveyorError(f"{source}: no payload log files here")
        return files
    files = list(source)
    if not files:
        raise ConveyorError("read_log: no files to read")
    return files


def _read_log_file(file: str, columns: Sequence[str] | None) -> tuple[pa.Table, int, str]:
    """The file's columns among ``columns`` (all when None), its rows (a table of no column
    has no rows in pyarrow, and the file's row count is still wanted) and its model's task
    (its metadata's ``TASK_KEY``; classification without)."""
    import fsspec
    import pyarrow.parquet as pq

    try:
        fs, path = fsspec.core.url_to_fs(file)
        with fs.open(path, "rb") as opened:
            parquet = pq.ParquetFile(opened)
            names = parquet.schema_arrow.names
            wanted = names if columns is None else [name for name in names if name in columns]
            table = parquet.read(columns=wanted)
            rows = parquet.metadata.num_rows
            marked = (parquet.schema_arrow.metadata or {}).get(TASK_KEY.encode())
    except (OSError, ValueError, pa.ArrowException) as error:
        raise ConveyorError(
            f"{file}: cannot be read as a payload log file ({first_line(error)})"
        ) from None
    task = CLASSIFICATION if marked is None else marked.decode(errors="replace")
    if task not in TASKS:
        raise ConveyorError(
            f"{file}: its file metadata's {TASK_KEY} is {task!r}, not one of {', '.join(TASKS)}"
        )
    return table.replace_schema_metadata(None), rows, task


def _aligned(table: pa.Table, rows: int, order: list[str]) -> pa.Table:
    """``table`` (of ``rows`` rows) with the columns of ``order``, in it; a missing metadata
    column as ``rows`` nulls (``table`` may have no column, and so no rows, of its own)."""
    columns = []
    for name in order:
        if name in table.column_names:
            columns.append(table.column(name))
        else:
            kind = _ALL_METADATA_TYPES.get(name, pa.float64())
            columns.append(pa.nulls(rows, kind))
    return pa.table(columns, names=order)


def recent_days(uri: str, days: int, today: dt.date | None = None) -> list[str]:
    """The table files of a payload log's day folders from the last ``days`` days, today
    (UTC) included, oldest first; ConveyorError naming the newest day there is when none
    of them holds a table."""
    from conveyor.components.core.data.tables import folder_tables

    if days < 1:
        raise ConveyorError(f"inputs_days must be 1 or more, not {days}")
    today = today or dt.datetime.now(dt.UTC).date()
    first = today - dt.timedelta(days=days - 1)
    fs, root = _log_root(uri)
    if not fs.isdir(root):
        raise ConveyorError(f"{uri}: no payload log here (expected a folder of day folders)")
    names = sorted(_day_folders(fs, root))
    recent = [name for name in names if first.isoformat() <= name <= today.isoformat()]
    files = [file for name in recent for file in folder_tables(f"{uri.rstrip('/')}/{name}") or []]
    if not files:
        newest = names[-1] if names else "none"
        raise ConveyorError(
            f"{uri}: no payload log from {first} to {today} (newest day there: {newest})"
        )
    return files


def prune_log(uri: str, retention_days: int, today: dt.date | None = None) -> list[str]:
    """Deletes a payload log's day folders older than ``retention_days`` days (today, UTC,
    is the first of them); returns what it deleted, oldest first. Only folders named as a
    day (``YYYY-MM-DD``) directly under ``uri`` are ever deleted; no log there deletes
    nothing.

    Raises:
        ConveyorError: ``retention_days`` is not a whole number of days, 1 or more.
    """
    if (
        not isinstance(retention_days, int)
        or isinstance(retention_days, bool)
        or retention_days < 1
    ):
        raise ConveyorError(
            f"retention_days must be a whole number of days, 1 or more, not {retention_days!r}"
        )
    today = today or dt.datetime.now(dt.UTC).date()
    first = (today - dt.timedelta(days=retention_days - 1)).isoformat()
    fs, root = _log_root(uri)
    if not fs.isdir(root):
        return []
    deleted = []
    for name in sorted(_day_folders(fs, root)):
        if name < first:
            fs.rm(f"{root}/{name}", recursive=True)
            deleted.append(f"{uri.rstrip('/')}/{name}")
    return deleted


def _log_root(uri: str) -> tuple[Any, str]:
    import fsspec

    try:
        return fsspec.core.url_to_fs(uri.rstrip("/"))
    except (ImportError, ValueError) as error:
        raise ConveyorError(f"{uri}: cannot be read ({first_line(error)})") from None


def _day_folders(fs: Any, root: str) -> list[str]:
    """The names of the folders directly under ``root`` that are named as a real day."""
    names = []
    for entry in fs.ls(root, detail=True):
        name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        if entry.get("type") == "directory" and _DAY.fullmatch(name) and _is_date(name):
            names.append(name)
    return names


def _is_date(name: str) -> bool:
    try:
        dt.date.fromisoformat(name)
    except ValueError:
        return False
    return True


def _write_frame(frame: pd.DataFrame, path: Any, task: str) -> None:
    """``frame`` as Parquet; a regression model's log marked so in the file's metadata, as
    the log's own files are, for the readers of the table (``read_log``)."""
    if task == CLASSIFICATION:
        frame.to_parquet(path, index=False)
        return
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    marked = {**(table.schema.metadata or {}), TASK_KEY.encode(): task.encode()}
    pq.write_table(table.replace_schema_metadata(marked), path)


def save_log_tables(
    uris: Sequence[str],
    inputs_path: Any,
    log_path: Any,
    dvc_repo: str = "",
    data_revision: str = "",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Reads inference inputs (a payload log's files, or any table) and writes two Parquet
    tables: ``inputs_path``, the inputs only (features and id columns, no ``conveyor.*``
    column), as a drift comparison reads them; ``log_path``, the inputs and the metadata
    (null where the files predate it). Returns each one's Dataset metadata.

    Parquet files outside DVC are read with ``read_log``, so days written before and after
    the metadata existed read together; anything else (CSV, DVC) is read as a table. A
    regression model's log is read too (its inputs are compared alike): ``log_path`` then
    holds ``REGRESSION_METADATA_TYPES``' metadata, ``conveyor.predicted_value`` in place of
    the prediction, score and probabilities.
    """
    from pathlib import Path

    from conveyor.components.core.data.tables import (
        Source,
        content_hash,
        folder_tables,
        load_tables,
    )
    from conveyor.components.core.files import write_atomically

    sources = [Source(uri, dvc_repo, data_revision) for uri in uris]
    files = [] if dvc_repo else [f for uri in uris for f in (folder_tables(uri) or [uri])]
    task = CLASSIFICATION
    if files and all(file.lower().endswith(".parquet") for file in files):
        read = read_log(files, task=None)
        logged, task = read.table, read.task
    else:
        logged = pa.Table.from_pandas(load_tables(sources), preserve_index=False)
        task = REGRESSION if PREDICTED_VALUE in logged.column_names else CLASSIFICATION
    inputs = logged.select(input_columns(logged)).to_pandas()
    table = logged.to_pandas()
    shared = {"source": ", ".join(uris), "revision": sources[0].resolved_revision()}
    metadata = []
    for frame, path, marked in ((inputs, inputs_path, False), (table, log_path, True)):
        write_atomically(
            Path(path),
            lambda partial, frame=frame, marked=marked: _write_frame(
                frame, partial, task if marked else CLASSIFICATION
            ),
        )
        metadata.append(
            {
                **shared,
                "rows": len(frame),
                "columns": int(frame.shape[1]),
                "content_hash": content_hash(frame),
            }
        )
    return metadata[0], metadata[1]
