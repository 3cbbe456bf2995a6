"""Reading a canary's metrics from Prometheus' HTTP API (instant queries, one time for all).

Every query of one look is evaluated at the same instant, over the same range, for the
canary and for the stable revision, so the two are compared over the same traffic period.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx

from conveyor.components.core.errors import ConveyorError, first_line
from conveyor.components.core.rollout.policy import KINDS, CanaryPolicy, MetricSpec, fill_query

__all__ = ["Prometheus", "Sample", "Series", "Window", "duration_seconds", "measure"]

# One query's answer: the value of each series, keyed by the value of the label the query
# groups by (`le`, `class`), or by "" for a single number.
Series = dict[str, float]
_MAX_SERIES = 1000
_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w)")
_UNIT_SECONDS = {
    "ms": 0.001,
    "s": 1,
    "m": 60,
    "h": 3600,
    "d": 86400,
    "w": 604800,
}  # a grouping this wide is not a distribution a person can read


@dataclass(frozen=True)
class Sample:
    """One revision's answers to one metric's queries, by role; or why they failed."""

    series: Mapping[str, Series] = field(default_factory=dict)
    error: str = ""


@dataclass(frozen=True)
class Window:
    """What a look covers: ``range_s`` seconds up to ``at`` (Unix time), and for warm-up
    metrics the last ``warm_range_s`` of them (0: still warming up, nothing measured)."""

    at: float
    range_s: float
    warm_range_s: float

    def seconds(self, metric: MetricSpec) -> float:
        return self.warm_range_s if metric.warmup else self.range_s


class Prometheus:
    """Instant queries against one Prometheus server."""

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConveyorError(f"Prometheus URL {url!r} must start with http:// or https://")
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def query(self, query: str, at: float | None = None, label: str = "") -> Series:
        """The instant vector ``query`` gives at ``at``, keyed by ``label``'s values."""
        params = {"query": query} | ({"time": f"{at:.3f}"} if at is not None else {})
        try:
            response = httpx.get(f"{self.url}/api/v1/query", params=params, timeout=self.timeout_s)
        except httpx.HTTPError as error:
            raise ConveyorError(f"Prometheus at {self.url} is unreachable: {error}") from None
        body = _json(response)
        if response.status_code != 200 or body.get("status") != "success":
            detail = body.get("error") or first_line(response.text)[:200] or response.reason_phrase
            raise ConveyorError(f"Prometheus refused the query {query!r}: {detail}")
        data = body.get("data", {})
        if data.get("resultType") != "vector":
            raise ConveyorError(
                f"the query {query!r} must give an instant vector, not a {data.get('resultType')}"
            )
        return _series(query, data.get("result", []), label)


def measure(
    prometheus: Prometheus,
    policy: CanaryPolicy,
    namespace: str,
    revision: str,
    window: Window,
    stable: bool = False,
) -> dict[str, Sample]:
    """Every metric's queries for one revision over ``window``; a failed query is recorded
    in its metric's Sample, never raised."""
    samples = {}
    for metric in policy.judged:
        seconds = window.seconds(metric)
        if seconds <= 0:
            samples[metric.name] = Sample()  # warming up: nothing to measure yet
            continue
        try:
            samples[metric.name] = Sample(
                {
                    role: prometheus.query(
                        fill_query(metric.query(role, stable), namespace, revision, seconds),
                        window.at,
                        _grouping(metric, role),
                    )
                    for role in KINDS[metric.kind]
                }
            )
        except ConveyorError as error:
            samples[metric.name] = Sample(error=str(error))
    return samples


def duration_seconds(text: str, where: str) -> float:
    """A PromQL duration (``90s``, ``10m``, ``1h30m``) in seconds; one line naming ``where``."""
    parts = _DURATION.findall(text)
    if not text or "".join(number + unit for number, unit in parts) != text:
        raise ConveyorError(f"{where} {text!r}: expected a duration such as 90s, 10m or 1h30m")
    return sum(int(number) * _UNIT_SECONDS[unit] for number, unit in parts)


def _grouping(metric: MetricSpec, role: str) -> str:
    """The label a query's series are told apart by ("" for a single number)."""
    if metric.kind == "latency":
        return "le"
    return metric.label if role == "counts" else ""


def _series(query: str, result: list[dict], label: str) -> Series:
    if not label and len(result) > 1:
        raise ConveyorError(f"the query {query!r} must give one number, not {len(result)} series")
    if len(result) > _MAX_SERIES:
        raise ConveyorError(f"the query {query!r} gives {len(result)} series, over {_MAX_SERIES}")
    series: Series = {}
    for entry in result:
        key = entry.get("metric", {}).get(label, "") if label else ""
        if label and not key:
            raise ConveyorError(f"the query {query!r} gives a series without the label {label!r}")
        # Series that differ only in other labels add up (counts of one category).
        series[key] = series.get(key, 0.0) + float(entry["value"][1])
    return series


def _json(response: httpx.Response) -> dict:
    if "json" not in response.headers.get("content-type", ""):
        return {}
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
