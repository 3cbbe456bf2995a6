"""Canary analysis: PromQL measurements of the canary and stable revisions, against thresholds.

Every query is a template the user may replace; ``$namespace``, ``$revision`` and
``$window`` are filled in per revision. The defaults read the per-revision metrics
Conveyor's serving runtime exports (see ``components.core.serving``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from string import Template
from typing import Literal

import httpx

from components.core.errors import ConveyorError, first_line

__all__ = [
    "DEFAULT_QUERIES",
    "Analysis",
    "AnalysisPolicy",
    "Measurement",
    "Verdict",
    "analyse",
    "query_prometheus",
]

OnNoData = Literal["fail", "wait", "pass"]
_DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
_SELECTOR = 'namespace="$namespace",revision="$revision"'
DEFAULT_QUERIES = {
    "requests": f"sum(increase(conveyor_inference_requests_total{{{_SELECTOR}}}[$window]))",
    # `or vector(0)`: a canary answering only 5xx has no non-5xx series at all.
    "success_rate": (
        f'(sum(rate(conveyor_inference_requests_total{{{_SELECTOR},code!~"5.."}}[$window]))'
        f" or vector(0)) / sum(rate(conveyor_inference_requests_total{{{_SELECTOR}}}[$window]))"
    ),
    "latency_p99": (
        "histogram_quantile(0.99, sum by (le) "
        f"(rate(conveyor_inference_request_duration_seconds_bucket{{{_SELECTOR}}}[$window])))"
    ),
}


@dataclass(frozen=True)
class AnalysisPolicy:
    """What a healthy canary looks like.

    Attributes:
        prometheus_url: Prometheus' base URL; empty skips analysis (each step passes, and
            the report says no analysis ran).
        min_success_rate: Lowest share of non-5xx responses the canary may have.
        max_latency_p99_s: Highest p99 latency (seconds) the canary may have.
        min_requests: Fewest canary requests in the window for the numbers to count.
        on_no_data: Below ``min_requests``: ``fail`` the analysis, ``wait`` another
            interval, or ``pass`` it.
        window: PromQL range of each measurement, such as ``1m``.
        queries: PromQL templates by measurement name (``requests``, ``success_rate``,
            ``latency_p99``), with ``$namespace``, ``$revision`` and ``$window``.
    """

    prometheus_url: str = ""
    min_success_rate: float = 0.99
    max_latency_p99_s: float = 0.5
    min_requests: int = 20
    on_no_data: OnNoData = "fail"
    window: str = "1m"
    queries: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_QUERIES))

    def __post_init__(self) -> None:
        if self.on_no_data not in ("fail", "wait", "pass"):
            raise ConveyorError(f"on_no_data must be fail, wait or pass, not {self.on_no_data!r}")
        if not 0 <= self.min_success_rate <= 1:
            raise ConveyorError(f"min_success_rate {self.min_success_rate} is not within 0-1")
        if self.max_latency_p99_s <= 0 or self.min_requests < 0:
            raise ConveyorError(
                f"max_latency_p99_s must be positive and min_requests 0 or more, not "
                f"{self.max_latency_p99_s} and {self.min_requests}"
            )
        if not _DURATION.match(self.window):
            raise ConveyorError(f"window {self.window!r} is not a PromQL duration, such as 1m")
        unknown = sorted(set(self.queries) - set(DEFAULT_QUERIES))
        if unknown:
            raise ConveyorError(
                f"unknown analysis queries {unknown}; known: {', '.join(DEFAULT_QUERIES)}"
            )
        for name, query in self.queries.items():
            try:
                _fill(query, "namespace", "revision", "1m")
            except (KeyError, ValueError) as error:
                raise ConveyorError(
                    f"analysis query {name!r}: {error} is not one of $namespace, $revision, "
                    "$window (write $$ for a literal $)"
                ) from None


@dataclass(frozen=True)
class Measurement:
    """One revision's numbers over the window (None where Prometheus had no data)."""

    revision: str
    requests: float | None
    success_rate: float | None
    latency_p99: float | None


Verdict = Literal["pass", "fail", "no_data", "skipped"]


@dataclass(frozen=True)
class Analysis:
    """The canary's verdict at one traffic step, with every value measured."""

    verdict: Verdict
    reason: str
    canary: Measurement | None = None
    stable: Measurement | None = None


def analyse(policy: AnalysisPolicy, namespace: str, canary: str, stable: str) -> Analysis:
    """Measures both revisions and judges the canary against the policy."""
    if not policy.prometheus_url:
        return Analysis("skipped", "no Prometheus URL was given, so no analysis ran")
    canary_numbers = _measure(policy, namespace, canary)
    stable_numbers = _measure(policy, namespace, stable)
    return Analysis(*_judge(policy, canary_numbers), canary_numbers, stable_numbers)


def query_prometheus(url: str, query: str) -> float | None:
    """The single value of an instant query; None for an empty result or NaN."""
    try:
        response = httpx.get(f"{url.rstrip('/')}/api/v1/query", params={"query": query}, timeout=10)
    except httpx.HTTPError as error:
        raise ConveyorError(f"Prometheus at {url} is unreachable: {error}") from None
    body = response.json() if response.headers.get("content-type", "").endswith("json") else {}
    if response.status_code != 200 or body.get("status") != "success":
        detail = body.get("error") or first_line(response.text)[:200] or response.reason_phrase
        raise ConveyorError(f"Prometheus refused the query {query!r}: {detail}")
    kind, samples = body["data"]["resultType"], body["data"]["result"]
    if kind != "vector":
        raise ConveyorError(f"the query {query!r} must give an instant vector, not a {kind}")
    if len(samples) > 1:
        raise ConveyorError(f"the query {query!r} must give one number, not {len(samples)} series")
    value = float(samples[0]["value"][1]) if samples else math.nan
    return None if math.isnan(value) else value


def _measure(policy: AnalysisPolicy, namespace: str, revision: str) -> Measurement:
    values = {
        name: query_prometheus(
            policy.prometheus_url,
            _fill(policy.queries.get(name, default), namespace, revision, policy.window),
        )
        for name, default in DEFAULT_QUERIES.items()
    }
    return Measurement(revision, **values)


def _fill(query: str, namespace: str, revision: str, window: str) -> str:
    return Template(query).substitute(namespace=namespace, revision=revision, window=window)


def _judge(policy: AnalysisPolicy, canary: Measurement) -> tuple[Verdict, str]:
    if (canary.requests or 0) < policy.min_requests:
        return "no_data", (
            f"the canary served {canary.requests or 0:.3g} requests in {policy.window}, "
            f"fewer than the {policy.min_requests} needed to judge it"
        )
    problems = []
    if canary.success_rate is not None and canary.success_rate < policy.min_success_rate:
        problems.append(
            f"success rate {canary.success_rate:.2%} is below {policy.min_success_rate:.2%}"
        )
    if canary.latency_p99 is not None and canary.latency_p99 > policy.max_latency_p99_s:
        problems.append(
            f"p99 latency {canary.latency_p99:.3f} s is above {policy.max_latency_p99_s} s"
        )
    if problems:
        return "fail", "canary " + " and ".join(problems)
    return "pass", (
        f"canary success rate {_percent(canary.success_rate)}, "
        f"p99 latency {_seconds(canary.latency_p99)} over {canary.requests:.0f} requests"
    )


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f} s"
