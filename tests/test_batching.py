"""serving.batching: requests read together share one call of the model, each keeping its
own rows and its own outcome (pure asyncio over an injected model, no server, no sleeping)."""

from __future__ import annotations

import asyncio

import numpy as np
import pandas as pd
import pytest

from conveyor.components.core.serving.batching import Batcher
from conveyor.components.core.serving.inference import Predictions


class Model:
    """Predicts each row's ``x`` doubled as its label; a row whose ``x`` is negative makes
    the whole call fail, as a model raising on a bad row does. Records every call's rows."""

    def __init__(self) -> None:
        self.calls: list[list[float]] = []

    def __call__(self, table: pd.DataFrame) -> Predictions:
        values = table["x"].tolist()
        self.calls.append(values)
        if any(value < 0 for value in values):
            raise RuntimeError(f"cannot predict {min(values)}")
        probabilities = np.column_stack([np.full(len(values), 0.25), np.full(len(values), 0.75)])
        return Predictions(
            [2 * v for v in values], probabilities, [0, 1], np.ones(len(values), int)
        )


def table(*values: float) -> pd.DataFrame:
    return pd.DataFrame({"x": list(values)})


async def together(batcher: Batcher, *tables: pd.DataFrame) -> list:
    """The tables' requests read in one turn of the loop, as requests arriving together are."""
    return await asyncio.gather(*(batcher.predict(each) for each in tables), return_exceptions=True)


def test_requests_read_together_share_one_call_and_each_gets_its_own_rows() -> None:
    model = Model()
    answers = asyncio.run(together(Batcher(model, 256), table(1), table(2, 3), table(4)))
    assert model.calls == [[1, 2, 3, 4]]
    assert [answer.labels for answer in answers] == [[2], [4, 6], [8]]
    assert [answer.probabilities.shape for answer in answers] == [(1, 2), (2, 2), (1, 2)]
    assert [len(answer.picked) for answer in answers] == [1, 2, 1]


def test_a_request_alone_is_predicted_alone_and_at_once() -> None:
    model = Model()

    async def one_after_another() -> list:
        batcher = Batcher(model, 256)
        return [await batcher.predict(table(5)), await batcher.predict(table(6))]

    answers = asyncio.run(one_after_another())
    assert model.calls == [[5], [6]]
    assert [answer.labels for answer in answers] == [[10], [12]]


def test_a_call_takes_at_most_max_rows_and_a_larger_request_goes_alone() -> None:
    model = Model()
    tables = [table(1, 2), table(3, 4), table(5, 6), table(*range(7, 17)), table(17)]
    answers = asyncio.run(together(Batcher(model, 5), *tables))
    assert model.calls == [[1, 2, 3, 4], [5, 6], list(range(7, 17)), [17]]
    assert answers[3].labels == [2 * v for v in range(7, 17)]
    assert [answer.labels for answer in answers] == [[2 * v for v in t["x"]] for t in tables]


def test_max_rows_1_predicts_every_request_alone() -> None:
    model = Model()
    asyncio.run(together(Batcher(model, 1), table(1), table(2), table(3)))
    assert model.calls == [[1], [2], [3]]


def test_a_failing_batch_is_halved_down_to_the_request_it_fails_on() -> None:
    model = Model()
    answers = asyncio.run(together(Batcher(model, 256), table(1), table(-2, 3), table(4)))
    assert model.calls == [[1, -2, 3, 4], [1], [-2, 3, 4], [-2, 3], [4]]
    assert answers[0].labels == [2] and answers[2].labels == [8]
    assert isinstance(answers[1], RuntimeError) and str(answers[1]) == "cannot predict -2"


def test_one_bad_request_among_many_costs_a_few_calls_not_one_per_request() -> None:
    model = Model()
    tables = [table(-1 if index == 37 else index) for index in range(64)]
    answers = asyncio.run(together(Batcher(model, 256), *tables))
    assert len(model.calls) == 1 + 2 * 6  # the batch, then two halves at each of 6 levels
    assert [i for i, answer in enumerate(answers) if isinstance(answer, Exception)] == [37]
    assert all(answers[i].labels == [2 * i] for i in range(64) if i != 37)


def test_a_model_raising_past_exception_leaves_no_request_waiting() -> None:
    class Stop(BaseException):
        pass

    def stops(rows: pd.DataFrame) -> Predictions:
        raise Stop

    async def run() -> list:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda loop, context: None)  # the callback's Stop
        return await together(Batcher(stops, 256), table(1), table(2))

    answers = asyncio.run(run())
    assert [str(answer) for answer in answers] == ["the model stopped before answering"] * 2


def test_a_request_whose_client_left_is_not_predicted() -> None:
    model = Model()

    async def one_leaves() -> list:
        batcher = Batcher(model, 256)
        staying = asyncio.ensure_future(batcher.predict(table(1)))
        leaving = asyncio.ensure_future(batcher.predict(table(2)))
        await asyncio.sleep(0)  # both are waiting now
        leaving.cancel()
        return [await staying, leaving]

    staying, leaving = asyncio.run(one_leaves())
    assert model.calls == [[1]] and staying.labels == [2] and leaving.cancelled()


def test_a_regressor_s_numbers_are_shared_out_too() -> None:
    def regressor(rows: pd.DataFrame) -> Predictions:
        values = rows["x"].to_numpy(float) / 2
        return Predictions(values.tolist(), np.empty((len(rows), 0)), [], np.empty(0, int), values)

    first, second = asyncio.run(together(Batcher(regressor, 256), table(1, 2), table(3)))
    assert first.is_regression and list(first.values) == [0.5, 1.0] and second.labels == [1.5]
    assert first.probabilities.shape == (2, 0) and len(second.picked) == 0


def test_max_rows_below_1_is_refused() -> None:
    with pytest.raises(ValueError, match="max_rows 0: expected at least 1"):
        Batcher(Model(), 0)
