"""The serving runtime's payload log: the inputs a model answered, as Parquet files.

Each answered request's rows (the table the model predicted on, in training column order)
are buffered and written, from a background thread so no request waits on storage, to
``<uri>/<YYYY-MM-DD>/<revision>-<HHMMSS>-<id>.parquet`` when ``max_rows`` have gathered or
``max_seconds`` have passed, and once more when the server stops (or the process exits).
The predictor runs one worker per process (``components.core.serving`` refuses
``--workers`` above 1); were a server to start workers, each would keep a log of its own.
A day's folder (or the whole log) is what the monitoring pipeline's ``inputs_uri`` reads.
The files hold feature columns only, so they compare with the training data column for
column.
"""

from __future__ import annotations

import atexit
import datetime as dt
import logging
import os
import re
import threading
import uuid

import pandas as pd

from components.core.errors import ConveyorError

__all__ = ["PAYLOAD_LOG_ENV", "PayloadLog", "recent_days"]

# The environment variable the ServingRuntime passes the log's URI in.
PAYLOAD_LOG_ENV = "CONVEYOR_PAYLOAD_LOG"

_log = logging.getLogger(__name__)
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


class PayloadLog:
    """Appends answered inputs to Parquet files under ``uri`` (a folder or fsspec URI).

    Args:
        uri: Where the files go: a local folder, ``gs://bucket/payloads/model``, ...
        revision: The serving revision, which starts each file's name.
        max_rows: Rows gathered before a file is written.
        max_seconds: Longest a row waits before its file is written.
    """

    def __init__(
        self, uri: str, revision: str, max_rows: int = 1000, max_seconds: float = 60.0
    ) -> None:
        import fsspec

        self.fs, self.root = fsspec.core.url_to_fs(uri.rstrip("/"))
        self.uri, self.revision = uri, revision
        self.max_rows, self.max_seconds = max_rows, max_seconds
        self._pending: list[pd.DataFrame] = []
        self._rows = 0
        self._lock = threading.Lock()
        self._due = threading.Event()
        self._closed = threading.Event()
        self._writer: threading.Thread | None = None
        self._writer_pid = 0

    def __reduce__(self) -> tuple:
        # A server starting workers by spawning pickles the model: each worker gets its own
        # log (and writer thread), with nothing buffered.
        return (PayloadLog, (self.uri, self.revision, self.max_rows, self.max_seconds))

    def append(self, table: pd.DataFrame) -> None:
        """Buffers ``table``'s rows; the writer thread stores them (after ``close``, a
        request still in flight is written at once)."""
        with self._lock:
            self._pending.append(table)
            self._rows += len(table)
            if not self._closed.is_set():
                self._start_writer()
                if self._rows >= self.max_rows:
                    self._due.set()
                return
        self.flush()

    def close(self) -> None:
        """Writes what is buffered and stops the writer (the server's ``stop``, and at exit)."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._due.set()
        if self._writer is not None:
            self._writer.join(timeout=30)
        self.flush()

    def flush(self) -> str | None:
        """Writes the buffered rows as one file now; returns its path, None when empty. On
        failure the rows go back to the buffer, for the next write to try again."""
        with self._lock:
            pending, self._pending, self._rows = self._pending, [], 0
        if not pending:
            return None
        try:
            return self._write(pd.concat(pending, ignore_index=True))
        except Exception:
            with self._lock:
                self._pending[:0] = pending
                self._rows += sum(len(table) for table in pending)
            raise

    def _write(self, table: pd.DataFrame) -> str:
        now = dt.datetime.now(dt.UTC)
        # Microseconds first after the revision: a folder's files sort in the order written.
        name = f"{self.revision}-{now:%H%M%S%f}-{uuid.uuid4().hex[:8]}.parquet"
        folder = f"{self.root}/{now:%Y-%m-%d}"
        self.fs.makedirs(folder, exist_ok=True)
        # Written under a hidden name, then renamed: readers skip hidden files, so none
        # sees a half-written one (object stores make the file appear whole anyway).
        partial = f"{folder}/.{name}.partial"
        try:
            with self.fs.open(partial, "wb") as file:
                table.to_parquet(file, index=False)
            self.fs.mv(partial, f"{folder}/{name}")
        finally:
            if self.fs.exists(partial):
                self.fs.rm(partial)
        return f"{folder}/{name}"

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
        while not self._closed.is_set():
            self._due.wait(timeout=self.max_seconds)
            self._due.clear()
            if self._closed.is_set():
                return
            try:
                self.flush()
            except Exception as error:  # a storage hiccup must not stop serving
                _log.error("payload log: could not write to %s, will retry: %s", self.uri, error)


def recent_days(uri: str, days: int, today: dt.date | None = None) -> list[str]:
    """The table files of a payload log's day folders from the last ``days`` days, today
    (UTC) included, oldest first; ConveyorError naming the newest day there is when none
    of them holds a table."""
    import fsspec

    from components.core.data import folder_tables

    if days < 1:
        raise ConveyorError(f"inputs_days must be 1 or more, not {days}")
    today = today or dt.datetime.now(dt.UTC).date()
    first = today - dt.timedelta(days=days - 1)
    fs, root = fsspec.core.url_to_fs(uri.rstrip("/"))
    if not fs.isdir(root):
        raise ConveyorError(f"{uri}: no payload log here (expected a folder of day folders)")
    names = sorted(
        name
        for name in (path.rstrip("/").rsplit("/", 1)[-1] for path in fs.ls(root, detail=False))
        if _DAY.fullmatch(name)
    )
    recent = [name for name in names if first.isoformat() <= name <= today.isoformat()]
    files = [file for name in recent for file in folder_tables(f"{uri.rstrip('/')}/{name}") or []]
    if not files:
        newest = names[-1] if names else "none"
        raise ConveyorError(
            f"{uri}: no payload log from {first} to {today} (newest day there: {newest})"
        )
    return files
