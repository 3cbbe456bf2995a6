"""Requests that arrive together are answered by one call of the model.

A scikit-learn pipeline spends most of a one-row prediction on per-call work (checking its
input, selecting columns), not on the row. While the model answers one request, the event
loop cannot read others; those that came in meanwhile are read together once it is free,
and ``Batcher`` gives their tables to the model in one call (up to ``max_rows`` rows), then
hands each request its own rows of the answer. Nothing waits on a timer: a request that
finds the model idle is answered at once, alone, as without batching (MLServer's adaptive
batching and KServe's batcher instead wait up to a set time to fill a batch).

Each request keeps its own outcome: if the model fails on a batch, each half is answered
apart, and so on down to the request whose rows make the model fail, which alone gets the
error (a few calls more, not one per request). A request whose client has gone (its task
cancelled) is left out. KServe's own predict-time histogram now includes a request's wait
behind the call before it; Conveyor's latency histogram always measured the whole request.

Rows are predicted independently by the pipeline; a batched row's probabilities can differ
from the same row predicted alone in the last bits (matrix products sum in another order),
never more. (Times with and without a UTC offset are parsed apart, ``roles.parse_dates``,
so one request's offset never moves another's times.)
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator

import pandas as pd

from conveyor.components.core.serving.inference import Predictions

__all__ = ["DEFAULT_MAX_BATCH_ROWS", "Batcher"]

DEFAULT_MAX_BATCH_ROWS = 256

_Waiting = tuple[pd.DataFrame, asyncio.Future]


class Batcher:
    """Gathers the tables of requests that arrive while the model is busy into one call.

    Args:
        predict: The model's prediction of a table (``inference.predict_table``).
        max_rows: The most rows one call gets; a larger request is answered alone. 1
            answers every request alone.
    """

    def __init__(self, predict: Callable[[pd.DataFrame], Predictions], max_rows: int) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows {max_rows}: expected at least 1")
        self._predict = predict
        self._max_rows = max_rows
        self._waiting: list[_Waiting] = []

    async def predict(self, table: pd.DataFrame) -> Predictions:
        """``table``'s predictions, from a call shared with the requests read with it."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future = loop.create_future()
        if not self._waiting:  # the first in: the call runs once the loop has read the rest
            loop.call_soon(self._answer_waiting)
        self._waiting.append((table, answer))
        return await answer

    def _answer_waiting(self) -> None:
        waiting, self._waiting = self._waiting, []
        waiting = [(table, answer) for table, answer in waiting if not answer.done()]
        try:
            for batch in _batches(waiting, self._max_rows):
                self._answer(batch)
        finally:  # whatever escaped (a BaseException from the model): no request hangs
            for _, answer in waiting:
                if not answer.done():
                    answer.set_exception(RuntimeError("the model stopped before answering"))

    def _answer(self, batch: list[_Waiting]) -> None:
        """One call for the batch; if the model fails on it, each half is answered apart,
        down to the request it fails on: a few more calls, not one per request."""
        if len(batch) == 1:
            self._answer_alone(*batch[0])
            return
        tables = [table for table, _ in batch]
        try:
            predictions = self._predict(pd.concat(tables, ignore_index=True))
            stops = list(itertools.accumulate(len(table) for table in tables))
            shares = [
                predictions.rows(stop - len(t), stop) for t, stop in zip(tables, stops, strict=True)
            ]
        except Exception:  # noqa: BLE001 - each request then gets its own outcome
            middle = len(batch) // 2
            self._answer(batch[:middle])
            self._answer(batch[middle:])
            return
        for (_, answer), share in zip(batch, shares, strict=True):
            answer.set_result(share)

    def _answer_alone(self, table: pd.DataFrame, answer: asyncio.Future) -> None:
        try:
            answer.set_result(self._predict(table))
        except Exception as error:  # noqa: BLE001 - raised where the request awaits it
            answer.set_exception(error)


def _batches(waiting: list[_Waiting], max_rows: int) -> Iterator[list[_Waiting]]:
    """The waiting requests in arrival order, cut into batches of at most ``max_rows`` rows
    (a request with more is a batch of its own)."""
    batch: list[_Waiting] = []
    rows = 0
    for item in waiting:
        if batch and rows + len(item[0]) > max_rows:
            yield batch
            batch, rows = [], 0
        batch.append(item)
        rows += len(item[0])
    if batch:
        yield batch
