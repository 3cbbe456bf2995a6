"""The predictor's HTTP layer under KServe's app: per-revision metrics, the request body cap,
and 500s that keep the connection (no KServe model code here).

Two ASGI middlewares, inside Starlette's ServerErrorMiddleware:

- ``RequestMetrics`` counts and times inference requests (``:predict``, ``/infer``) by model,
  revision and status code, and counts the rows of answered (200) ones by predicted class
  and score, or a regression model's by predicted value (``ServingMetrics``; the series
  are listed in ``serving.server``). A
  request naming a model other than the served one is counted under ``model="_unknown"``.
  It answers an exception escaping the app with a JSON 500 itself: ServerErrorMiddleware
  would answer, then re-raise, and uvicorn would close the connection.
- ``BodyLimit`` answers 413 to a request body over the cap.

The score of a row is the positive class's probability for a binary model, the positive
class being the one its model card records (for a card written before it was kept, the one
called 1, true, yes, y, positive or pos, case-insensitive, else the second class in the
card's order); for more classes, the top probability (``payload_log.score_column``).
A regression model's rows have neither class nor probability: its requests are counted and
timed, but no row is counted by class (that series has no child for it) and no score is
observed (its numbers are no probabilities, and would fill the 0-1 buckets with falsehoods).
Its predicted numbers go to ``conveyor_predicted_value`` instead, on ``VALUE_BUCKETS``: one
fixed grid for every model and revision, so a canary and a stable revision trained on
different data are compared bound by bound (the canary judge's ``predicted_value``).
"""

from __future__ import annotations

import contextvars
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import orjson
from kserve.logging import logger
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from conveyor.components.core.serving.payload_log import score_column

__all__ = [
    "ANSWERED_CODES",
    "DEFAULT_LATENCY_BUCKETS",
    "SCORE_BUCKETS",
    "UNKNOWN_MODEL",
    "VALUE_BUCKETS",
    "BodyLimit",
    "RequestMetrics",
    "ServingMetrics",
    "record_answered",
    "record_values",
    "score_column",
    "value_buckets",
]

DEFAULT_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.035, 0.05, 0.075,
    0.1, 0.15, 0.25, 0.35, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0,
)  # fmt: skip
SCORE_BUCKETS = tuple(round(0.05 * step, 2) for step in range(1, 21))
# The predicted-value grid's range and density: bounds 1e-3 to 1e10 in magnitude, 10 a decade
# (a price in cents, a count of bytes, fit inside it).
VALUE_DECADES = (-3, 10)
VALUE_STEPS_PER_DECADE = 10


def value_buckets(
    decades: tuple[int, int] = VALUE_DECADES, steps: int = VALUE_STEPS_PER_DECADE
) -> tuple[float, ...]:
    """The bounds of ``conveyor_predicted_value``: ``steps`` log-spaced bounds a decade from
    ``10**decades[0]`` to ``10**decades[1]``, on both signs, and 0, ascending.

    With the defaults: 131 bounds from 0.001 to 1e10, their negatives and 0, so 263 finite
    bounds: 264 bucket series with ``+Inf``, and ``_count`` (and ``_created``), per model
    and revision; no ``_sum``, which prometheus_client leaves out of a histogram with
    negative bounds, as OpenMetrics asks. Neighbouring bounds differ by a factor 10**0.1,
    about 1.259: a value is placed within 26 % of itself. A value below -1e10 falls in the
    first bucket, one above 1e10 in ``+Inf`` (infinities too), one in (-0.001, 0] in
    ``le="0"`` and one in (0, 0.001] in ``le="0.001"``. The grid depends on nothing of the
    model: every model and revision has the same bounds (4 significant digits, so the
    exposition's ``le`` strings agree too), and the canary judge compares two revisions'
    distribution functions bound by bound.
    """
    low, high = decades
    positive = [float(f"{10 ** (k / steps):.4g}") for k in range(low * steps, high * steps + 1)]
    return (*(-bound for bound in reversed(positive)), 0.0, *positive)


VALUE_BUCKETS = value_buckets()
UNKNOWN_MODEL = "_unknown"
# The status codes an inference request can get, each counted from 0 for the served model:
# answered; a client's mistake; a V1 GET (KServe's model-status route, reading
# "NAME:predict" as a model name); a V2 method other than POST; a body over the cap; the
# model raised; a versioned V2 path (KServe serves no versions); not ready (stopping).
ANSWERED_CODES = (200, 400, 404, 405, 413, 500, 501, 503)
_INFERENCE_SUFFIXES = (":predict", "/infer")
# What a request was answered with, each as the ServingMetrics call that counts it: the model
# records them, RequestMetrics makes the calls once the response is a 200.
_Answer = Callable[["ServingMetrics"], None]
_ANSWERED: contextvars.ContextVar[list[_Answer] | None] = contextvars.ContextVar(
    "conveyor_answered", default=None
)


def record_answered(probabilities: np.ndarray, picked: np.ndarray) -> None:
    """Hands a request's class probabilities (a row per answered row) and predicted classes
    (their columns) to RequestMetrics, which counts them if the request is answered with
    200; outside a request, nothing."""
    answered = _ANSWERED.get()
    if answered is not None:
        answered.append(lambda metrics: metrics.observe(probabilities, picked))


def record_values(values: np.ndarray) -> None:
    """Hands a regression model's predicted numbers (one per answered row) to
    RequestMetrics, which observes them if the request is answered with 200; outside a
    request, nothing."""
    answered = _ANSWERED.get()
    if answered is not None:
        answered.append(lambda metrics: metrics.observe_values(values))


class ServingMetrics:
    """The predictor's Prometheus series for one model and revision, their label children
    looked up once; every status code the server answers and every class start at 0. A
    binary model's score is the probability of ``positive_class``, its card's (see
    ``score_column``). A model of no classes (regression) gets no class child and no score:
    ``observe`` counts nothing for it; ``observe_values`` observes its predicted numbers
    (``regression`` true: only then has ``conveyor_predicted_value`` a child)."""

    def __init__(
        self,
        model: str,
        revision: str,
        classes: Sequence[Any],
        latency_buckets: Sequence[float] = DEFAULT_LATENCY_BUCKETS,
        positive_class: str | None = None,
        registry: CollectorRegistry = REGISTRY,
        regression: bool = False,
    ) -> None:
        self.model, self.revision = model, revision
        self._requests = Counter(
            "conveyor_inference_requests",
            "Inference requests by model, revision and HTTP status code.",
            ["model", "revision", "code"],
            registry=registry,
        )
        self._seconds = Histogram(
            "conveyor_inference_request_duration_seconds",
            "Inference request latency by model and revision.",
            ["model", "revision"],
            buckets=latency_buckets,
            registry=registry,
        )
        predicted = Counter(
            "conveyor_predictions",
            "Answered rows by model, revision and predicted class.",
            ["model", "revision", "class"],
            registry=registry,
        )
        scores = Histogram(
            "conveyor_prediction_score",
            "One score per answered row: the positive class's probability (binary models), "
            "else the top probability.",
            ["model", "revision"],
            buckets=SCORE_BUCKETS,
            registry=registry,
        )
        values = Histogram(
            "conveyor_predicted_value",
            "One predicted number per answered row of a regression model, on one fixed grid "
            "for every model (10 log-spaced bounds a decade, 1e-3 to 1e10, both signs, and 0).",
            ["model", "revision"],
            buckets=VALUE_BUCKETS,
            registry=registry,
        )
        started = Gauge(
            "conveyor_predictor_start_time_seconds",
            "When this predictor process started (Unix time): a crash and restart changes it.",
            ["model", "revision"],
            registry=registry,
        )
        started.labels(model, revision).set(time.time())
        self._classes = [predicted.labels(model, revision, str(c)) for c in classes]
        # A regressor has no score: its exposition shows the family with no child.
        self._score = None if regression else scores.labels(model, revision)
        self._score_column = score_column(classes, positive_class)
        # A classifier's exposition stays as it was: the family is there, with no child.
        self._value = values.labels(model, revision) if regression else None
        self._counters: dict[tuple[str, int], Any] = {}
        self._timers = {model: self._seconds.labels(model, revision)}
        for code in ANSWERED_CODES:  # from 0, so increase() sees the first of each
            self._counter(model, code)

    def count(self, model: str, code: int) -> None:
        """One inference request for ``model`` (the served one, or UNKNOWN_MODEL) got ``code``."""
        self._counter(model, code).inc()

    def _counter(self, model: str, code: int) -> Any:
        counter = self._counters.get((model, code))
        if counter is None:
            counter = self._requests.labels(model, self.revision, str(code))
            self._counters[(model, code)] = counter
        return counter

    def time(self, model: str, seconds: float) -> None:
        """One inference request for ``model`` took ``seconds``."""
        timer = self._timers.get(model)
        if timer is None:
            timer = self._timers[model] = self._seconds.labels(model, self.revision)
        timer.observe(seconds)

    def observe(self, probabilities: np.ndarray, picked: np.ndarray) -> None:
        """Counts the answered rows by predicted class (``picked``: a column of
        ``probabilities`` per row) and observes their scores; nothing for a model of no
        classes (regression: its rows have no class, nor a probability to score)."""
        if not self._classes:
            return
        if len(picked) == 1:  # the common case, without numpy's per-call overhead
            self._classes[picked[0]].inc()
            row, column = probabilities[0], self._score_column
            score = float(row.max() if column is None else row[column])
            if math.isfinite(score):  # a NaN would make the sum NaN for good
                self._score.observe(score)
            return
        counts = np.bincount(picked, minlength=len(self._classes))
        for child, count in zip(self._classes, counts, strict=True):
            if count:
                child.inc(int(count))
        column = self._score_column
        rows = probabilities[:, column] if column is not None else probabilities.max(axis=1)
        _observe_all(self._score, rows[np.isfinite(rows)])

    def observe_values(self, values: np.ndarray) -> None:
        """Observes a regression model's predicted numbers, one per answered row; nothing
        for a classifier. An infinity is counted in its end bucket, as far beyond the grid
        as it gets (a canary answering them moves the distribution function); a NaN, which
        no bucket holds, is left out (bisection would put it in ``+Inf``)."""
        if self._value is None:
            return
        values = np.asarray(values, dtype=float).ravel()
        if len(values) == 1:  # the common case, without numpy's per-call overhead
            value = float(values[0])
            if not math.isnan(value):
                self._value.observe(value)
            return
        # Infinities of both signs sum to NaN: harmless, as this histogram (of negative
        # bounds) exposes no _sum.
        with np.errstate(invalid="ignore"):
            _observe_all(self._value, values[~np.isnan(values)])


def _observe_all(histogram: Any, values: np.ndarray) -> None:
    """Observes every value at once: one count per bucket, one addition to the sum, as
    ``observe`` would one by one (the first bucket whose bound is >= the value). It uses the
    histogram child's ``_upper_bounds``, ``_buckets`` and ``_sum`` (prometheus_client's since
    0.4); tests check the outcome against ``observe``."""
    if not len(values):
        return
    bounds = histogram._upper_bounds
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
    for bucket, count in zip(histogram._buckets, counts, strict=True):
        if count:
            bucket.inc(int(count))
    histogram._sum.inc(float(values.sum()))


class RequestMetrics:
    """ASGI middleware counting and timing inference requests by model, revision and status,
    and counting the predictions of answered ones.

    It also answers an exception escaping the app with a JSON 500 itself, logging the
    traceback: Starlette's outer ServerErrorMiddleware would answer, then re-raise, and
    uvicorn would close the connection, failing the client's next request on it.
    """

    def __init__(self, app: Any, metrics: ServingMetrics) -> None:
        self.app, self.metrics = app, metrics
        model = metrics.model
        self._served = (f"/v1/models/{model}:predict", f"/v2/models/{model}/infer")
        self._served_versions = f"/v2/models/{model}/versions/"

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if not path.endswith(_INFERENCE_SUFFIXES):
            await _answering_errors(self.app, scope, receive, send)
            return
        answered: list[_Answer] = []
        token = _ANSWERED.set(answered)
        started = time.perf_counter()
        try:
            status = await _answering_errors(self.app, scope, receive, send)
        finally:
            _ANSWERED.reset(token)
        if not status:  # the client went away before any answer: nothing was served
            return
        model = self._model_of(path)
        self.metrics.time(model, time.perf_counter() - started)
        self.metrics.count(model, status)
        if status == 200:
            for count in answered:
                count(self.metrics)

    def _model_of(self, path: str) -> str:
        if path in self._served or path.startswith(self._served_versions):
            return self.metrics.model
        return UNKNOWN_MODEL


async def _answering_errors(app: Any, scope: dict, receive: Any, send: Any) -> int:
    """Runs the app; returns the status it answered (0: none, the client went away), or 500
    after answering an exception that escaped it before its response started."""
    status = 0

    async def record_status(message: dict) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        await send(message)

    try:
        await app(scope, receive, record_status)
    except Exception as error:
        if status:  # the response has started: nothing to answer with any more
            raise
        logger.exception("Exception answered with 500:")
        await _send_json(send, 500, {"error": f"{type(error).__name__} : {error}"})
        return 500
    return status


async def _send_json(send: Any, status: int, content: dict[str, Any]) -> None:
    body = orjson.dumps(content)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """ASGI middleware answering 413 to a request body over ``max_bytes``.

    A body with a Content-Length is refused from it, before any of it is read. A chunked
    one is read as it streams in and refused as soon as it passes the cap; one within the cap
    is handed on whole. Either way no more than the cap (and one chunk) is held in memory,
    and the connection stays usable: uvicorn discards what the client still sends.
    """

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes
        self._refusal = {
            "error": f"the request body is over the limit of {max_bytes} bytes; send fewer "
            "rows per request (the server's --max_request_bytes)"
        }

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length, chunked = _body_headers(scope["headers"])
        if length is not None and length > self.max_bytes:
            await _send_json(send, 413, self._refusal)
        elif length is None and chunked:
            await self._chunked(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _chunked(self, scope: dict, receive: Any, send: Any) -> None:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await _send_json(send, 413, self._refusal)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: what uvicorn says next (a disconnect)
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def _body_headers(headers: Sequence[tuple[bytes, bytes]]) -> tuple[int | None, bool]:
    """The request's Content-Length (None without one), and whether its body is chunked."""
    length, chunked = None, False
    for name, value in headers:
        if name == b"content-length" and value.isdigit():  # uvicorn refuses other values
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
    return length, chunked
