"""The judge's error rates, checked by seeded simulation.

Each simulated rollout runs the code a real one does (``judge`` and ``AnalysisRun``) over
what Prometheus would report: counts drawn request by request (as binomial and multinomial
totals) for a stable revision and a canary, the canary's latencies bucketed on the
predictor's own histogram bounds, its predicted classes and scores on the score buckets. The
canary serves the policy's computed minimum sample in its first interval at 10 % (which is
warm-up for latency), and as much again per interval at 10 %; at 50 % the same total
traffic splits evenly. Inconclusive looks wait another interval, up to the limit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
from scipy.stats import beta, lognorm

from components.core.analysis import AnalysisRun, judge
from components.core.canary_policy import DEFAULT_POLICY, CanaryPolicy
from components.core.prometheus import Sample
from components.core.serving_http import DEFAULT_LATENCY_BUCKETS, SCORE_BUCKETS

ROLLOUTS = 2000
STEPS = (10, 50)
MINIMUM = max(DEFAULT_POLICY.minimum_samples().values())


@dataclass(frozen=True)
class Behaviour:
    """How a revision answers: 5xx and 4xx rates, median latency (log-normal, sigma 0.5),
    the share predicted positive, and whether it always answers one class."""

    server_errors: float = 0.005
    client_errors: float = 0.01
    median_s: float = 0.02
    positive: float = 0.37
    constant: bool = False

    def latency_shares(self) -> np.ndarray:
        """The share of requests in each latency bucket (``+Inf`` last)."""
        below = lognorm.cdf(DEFAULT_LATENCY_BUCKETS, s=0.5, scale=self.median_s)
        return np.diff(np.concatenate([[0.0], below, [1.0]]))

    def score_shares(self) -> np.ndarray:
        """The share of answered rows in each score bucket: positives' scores ~ Beta(8, 2),
        negatives' ~ Beta(2, 8); a constant model's ~ Beta(1, 40)."""
        bounds = np.array(SCORE_BUCKETS)
        if self.constant:
            below = beta.cdf(bounds, 1, 40)
        else:
            below = self.positive * beta.cdf(bounds, 8, 2) + (1 - self.positive) * beta.cdf(
                bounds, 2, 8
            )
        return np.diff(np.concatenate([[0.0], below]))


@dataclass
class Revision:
    """What Prometheus would hold for one revision: cumulative counts since the canary began."""

    behaviour: Behaviour
    codes: np.ndarray = field(default_factory=lambda: np.zeros(3, int))  # 2xx, 4xx, 5xx
    latency: np.ndarray = field(
        default_factory=lambda: np.zeros(len(DEFAULT_LATENCY_BUCKETS) + 1, int)
    )
    classes: np.ndarray = field(default_factory=lambda: np.zeros(2, int))  # negative, positive
    scores: np.ndarray = field(default_factory=lambda: np.zeros(len(SCORE_BUCKETS), int))

    def __post_init__(self) -> None:
        self.score_shares = self.behaviour.score_shares()
        self.latency_shares = self.behaviour.latency_shares()

    def serve(self, rng: np.random.Generator, requests: int, warming_up: bool) -> None:
        b = self.behaviour
        ok = 1 - b.server_errors - b.client_errors
        codes = rng.multinomial(requests, [ok, b.client_errors, b.server_errors])
        self.codes += codes
        latencies = rng.multinomial(requests, self.latency_shares)
        if not warming_up:  # the range of the latency queries starts after the warm-up
            self.latency += latencies
        scores = rng.multinomial(codes[0], self.score_shares)
        self.scores += scores
        negative = scores[: SCORE_BUCKETS.index(0.5) + 1].sum()  # a score up to 0.5: negative
        self.classes += [negative, codes[0] - negative]

    def samples(self) -> dict[str, Sample]:
        total = float(self.codes.sum())
        latency = np.cumsum(self.latency).astype(float)
        scores = np.cumsum(self.scores).astype(float)
        return {
            "server_errors": Sample({"events": {"": float(self.codes[2])}, "total": {"": total}}),
            "client_errors": Sample({"events": {"": float(self.codes[1])}, "total": {"": total}}),
            "latency": Sample({"buckets": _buckets(DEFAULT_LATENCY_BUCKETS, latency)})
            if latency[-1]
            else Sample(),
            "predicted_class": Sample(
                {"counts": {"benign": float(self.classes[0]), "malignant": float(self.classes[1])}}
            ),
            "score": Sample({"counts": _buckets(SCORE_BUCKETS, scores)}),
        }


def _buckets(bounds: tuple[float, ...], cumulative: np.ndarray) -> dict[str, float]:
    """Prometheus' ``le`` series: each bound's cumulative count, and ``+Inf``'s."""
    series = {str(bound): float(count) for bound, count in zip(bounds, cumulative, strict=False)}
    return series | {"+Inf": float(cumulative[-1])}


def roll_out(policy: CanaryPolicy, canary: Behaviour, rng: np.random.Generator) -> str:
    """One simulated rollout: ``promoted`` or ``rolled_back``."""
    stable_revision, canary_revision = Revision(Behaviour()), Revision(canary)
    per_interval = MINIMUM * 100 // STEPS[0]  # all traffic, so the canary gets MINIMUM at 10 %
    run, warming_up = AnalysisRun(policy), True
    for percent in STEPS:
        run.next_step()
        while True:
            canary_revision.serve(rng, per_interval * percent // 100, warming_up)
            stable_revision.serve(rng, per_interval * (100 - percent) // 100, warming_up)
            judgement = judge(policy, canary_revision.samples(), stable_revision.samples())
            action = run.decide(judgement, warming_up).action
            warming_up = False
            if action == "fail":
                return "rolled_back"
            if action == "pass":
                break
    return "promoted"


def promoted_share(canary: Behaviour, seed: int) -> float:
    rng = np.random.default_rng(seed)
    outcomes = [roll_out(DEFAULT_POLICY, canary, rng) for _ in range(ROLLOUTS)]
    return outcomes.count("promoted") / ROLLOUTS


def test_a_canary_equal_to_stable_is_promoted_at_least_95_percent_of_the_time() -> None:
    assert promoted_share(Behaviour(), seed=1) >= 0.95


@pytest.mark.parametrize(
    "canary",
    [
        Behaviour(server_errors=0.02),  # 2 % server errors against stable's 0.5 %
        Behaviour(client_errors=0.06),  # a new required column: 5 % of clients refused
        Behaviour(constant=True),  # always the negative class, answering 200
        Behaviour(median_s=0.04),  # twice as slow
    ],
    ids=["server-errors", "client-errors", "constant-class", "twice-as-slow"],
)
def test_a_bad_canary_is_rolled_back_at_least_95_percent_of_the_time(canary: Behaviour) -> None:
    assert promoted_share(canary, seed=2) <= 0.05


@pytest.mark.parametrize(
    "canary",
    [Behaviour(server_errors=0.0151), Behaviour(client_errors=0.0301)],
    ids=["server-errors", "client-errors"],
)
def test_a_canary_just_beyond_a_margin_is_promoted_at_most_the_false_promotion_rate(
    canary: Behaviour,
) -> None:
    assert promoted_share(canary, seed=3) <= DEFAULT_POLICY.false_promotion_rate


def test_at_exactly_the_minimum_sample_one_look_passes_a_canary_equal_to_stable() -> None:
    """The minimum sample size's own promise, with the stable revision no bigger than the
    canary (the formula's assumption), at a single look."""
    rng = np.random.default_rng(4)
    passed = 0
    for _ in range(ROLLOUTS):
        stable, canary = Revision(Behaviour()), Revision(Behaviour())
        canary.serve(rng, MINIMUM, warming_up=False)
        stable.serve(rng, MINIMUM, warming_up=False)
        passed += judge(DEFAULT_POLICY, canary.samples(), stable.samples()).outcome == "pass"
    assert passed / ROLLOUTS >= 1 - DEFAULT_POLICY.false_rollback_rate
