"""The judge's error rates, checked by seeded simulation.

Each simulated rollout runs the code a real one does (``judge`` and ``AnalysisRun``) over
what Prometheus would report: counts drawn request by request (as binomial and multinomial
totals) for a stable revision and a canary, the canary's latencies bucketed on the
predictor's own histogram bounds, its predicted classes and scores on the score buckets
(rows of one request alike when requests carry batches). The canary serves the policy's
computed minimum sample in its first interval at 10 % (which is warm-up for latency), and
as much again per interval at 10 %; at 50 % the same total traffic splits evenly.
Inconclusive looks wait another interval, up to the limit.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pytest
from scipy.stats import beta, lognorm

from conveyor.components.core.rollout.analysis import AnalysisRun, judge
from conveyor.components.core.rollout.policy import DEFAULT_POLICY
from conveyor.components.core.rollout.prometheus import Sample
from conveyor.components.core.serving.http_layer import DEFAULT_LATENCY_BUCKETS, SCORE_BUCKETS

ROLLOUTS = 2000
STEPS = (10, 50)
MINIMUM = max(DEFAULT_POLICY.minimum_samples().values())
_NEGATIVE_BUCKETS = SCORE_BUCKETS.index(0.5) + 1  # a score up to 0.5 predicts negative


@dataclass(frozen=True)
class Behaviour:
    """How a revision answers.

    Attributes:
        server_errors: Share of requests answered 5xx.
        client_errors: Share answered 4xx.
        median_s: Median latency (log-normal, sigma 0.5).
        positive: Share of rows that are positives, scored ~ Beta(8, 2); the others
            are scored ~ Beta(*negative_scores).
        negative_scores: The Beta parameters of the negatives' scores.
        missed: Scores positives as negatives (a model that never flags them).
        constant: Scores every row ~ Beta(1, 40): always the negative class.
        rows: Rows a request carries.
        batches_alike: With several rows, a request's share of positives is drawn from a
            Beta of this concentration around ``positive``: rows of a batch are alike.
    """

    server_errors: float = 0.005
    client_errors: float = 0.01
    median_s: float = 0.02
    positive: float = 0.37
    negative_scores: tuple[float, float] = (2, 8)
    missed: bool = False
    constant: bool = False
    rows: int = 1
    batches_alike: float = 1.6

    def but(self, **changes: object) -> Behaviour:
        return replace(self, **changes)

    def latency_shares(self) -> np.ndarray:
        """The share of requests in each latency bucket (``+Inf`` last)."""
        below = lognorm.cdf(DEFAULT_LATENCY_BUCKETS, s=0.5, scale=self.median_s)
        return np.diff(np.concatenate([[0.0], below, [1.0]]))

    def score_shares(self) -> tuple[np.ndarray, np.ndarray]:
        """The share of positive rows, and of negative rows, in each score bucket."""
        bounds = np.array(SCORE_BUCKETS)
        negative = (
            beta.cdf(bounds, 1, 40) if self.constant else beta.cdf(bounds, *self.negative_scores)
        )
        positive = negative if self.constant or self.missed else beta.cdf(bounds, 8, 2)
        return tuple(np.diff(np.concatenate([[0.0], cdf])) for cdf in (positive, negative))

    def positives(self, rng: np.random.Generator, requests: int) -> int:
        """Positive rows among ``requests`` answered requests. Batched, a sum over requests
        of beta-binomial counts: drawn request by request up to a thousand requests, beyond
        from its normal approximation, each request adding ``rows p (1 - p) (1 + (rows - 1)
        / (c + 1))`` of variance, ``c`` being ``batches_alike``."""
        if self.rows == 1:
            return int(rng.binomial(requests, self.positive))
        rows, p = requests * self.rows, self.positive
        if requests <= 1000:
            alike = rng.beta(p * self.batches_alike, (1 - p) * self.batches_alike, requests)
            return int(rng.binomial(self.rows, alike).sum())
        spread = 1 + (self.rows - 1) / (self.batches_alike + 1)
        drawn = rng.normal(rows * p, np.sqrt(rows * p * (1 - p) * spread))
        return int(np.clip(np.rint(drawn), 0, rows))


@dataclass
class Revision:
    """What Prometheus would hold for one revision: cumulative counts since the canary began."""

    behaviour: Behaviour
    codes: np.ndarray = field(default_factory=lambda: np.zeros(3, int))  # 2xx, 4xx, 5xx
    latency: np.ndarray = field(
        default_factory=lambda: np.zeros(len(DEFAULT_LATENCY_BUCKETS) + 1, int)
    )
    scores: np.ndarray = field(default_factory=lambda: np.zeros(len(SCORE_BUCKETS), int))

    def __post_init__(self) -> None:
        self.latency_shares = self.behaviour.latency_shares()
        self.score_shares = self.behaviour.score_shares()

    def serve(self, rng: np.random.Generator, requests: int, warming_up: bool) -> None:
        b = self.behaviour
        ok = 1 - b.server_errors - b.client_errors
        codes = rng.multinomial(requests, [ok, b.client_errors, b.server_errors])
        self.codes += codes
        latencies = rng.multinomial(requests, self.latency_shares)
        if not warming_up:  # the range of the latency queries starts after the warm-up
            self.latency += latencies
        positives = b.positives(rng, codes[0])
        negatives = codes[0] * b.rows - positives
        self.scores += rng.multinomial(positives, self.score_shares[0])
        self.scores += rng.multinomial(negatives, self.score_shares[1])

    def samples(self) -> dict[str, Sample]:
        total = float(self.codes.sum())
        answered = {"": float(self.codes[0])}
        latency = np.cumsum(self.latency).astype(float)
        scores = np.cumsum(self.scores).astype(float)
        negative = float(scores[_NEGATIVE_BUCKETS - 1])
        classes = {"benign": negative, "malignant": float(scores[-1]) - negative}
        return {
            "server_errors": Sample({"events": {"": float(self.codes[2])}, "total": {"": total}}),
            "client_errors": Sample({"events": {"": float(self.codes[1])}, "total": {"": total}}),
            "latency": Sample({"buckets": _buckets(DEFAULT_LATENCY_BUCKETS, latency)})
            if latency[-1]
            else Sample(),
            "predicted_class": Sample({"counts": classes, "requests": answered}),
            "score": Sample({"counts": _buckets(SCORE_BUCKETS, scores), "requests": answered}),
            "restarts": Sample({"value": {"": 0.0}}),
        }


def _buckets(bounds: tuple[float, ...], cumulative: np.ndarray) -> dict[str, float]:
    """Prometheus' ``le`` series: each bound's cumulative count, and ``+Inf``'s."""
    series = {str(bound): float(count) for bound, count in zip(bounds, cumulative, strict=False)}
    return series | {"+Inf": float(cumulative[-1])}


def roll_out(canary: Behaviour, stable: Behaviour, rng: np.random.Generator) -> str:
    """One simulated rollout: ``promoted`` or ``rolled_back``."""
    stable_revision, canary_revision = Revision(stable), Revision(canary)
    per_interval = MINIMUM * 100 // STEPS[0]  # all traffic, so the canary gets MINIMUM at 10 %
    run, warming_up = AnalysisRun(DEFAULT_POLICY), True
    for percent in STEPS:
        run.next_step()
        while True:
            canary_revision.serve(rng, per_interval * percent // 100, warming_up)
            stable_revision.serve(rng, per_interval * (100 - percent) // 100, warming_up)
            judgement = judge(DEFAULT_POLICY, canary_revision.samples(), stable_revision.samples())
            action = run.decide(judgement, warming_up).action
            warming_up = False
            if action == "fail":
                return "rolled_back"
            if action == "pass":
                break
    return "promoted"


def promoted_share(canary: Behaviour, seed: int, stable: Behaviour | None = None) -> float:
    rng = np.random.default_rng(seed)
    outcomes = [roll_out(canary, stable or Behaviour(), rng) for _ in range(ROLLOUTS)]
    return outcomes.count("promoted") / ROLLOUTS


FRAUD = Behaviour(positive=0.01, negative_scores=(1, 20))  # flags 1 % of transactions
BATCHES = Behaviour(rows=100)  # a hundred rows a request, alike within a request


@pytest.mark.parametrize(
    "stable",
    [Behaviour(), FRAUD, BATCHES],
    ids=["one-row-requests", "rare-positives", "batched-rows"],
)
def test_a_canary_equal_to_stable_is_promoted_at_least_95_percent_of_the_time(
    stable: Behaviour,
) -> None:
    assert promoted_share(stable, seed=1, stable=stable) >= 0.95


@pytest.mark.parametrize(
    ("canary", "stable"),
    [
        (Behaviour(server_errors=0.02), Behaviour()),  # 2 % server errors against 0.5 %
        (Behaviour(client_errors=0.06), Behaviour()),  # a new required column: 5 % refused
        (Behaviour(constant=True), Behaviour()),  # always the negative class, answering 200
        (Behaviour(median_s=0.04), Behaviour()),  # twice as slow
        (Behaviour(median_s=0.03), Behaviour()),  # half as slow again
        (FRAUD.but(missed=True), FRAUD),  # never flags what stable flags
    ],
    ids=[
        "server-errors", "client-errors", "constant-class", "twice-as-slow", "1.5x-slower",
        "missed-rare-class",
    ],
)  # fmt: skip
def test_a_bad_canary_is_rolled_back_at_least_95_percent_of_the_time(
    canary: Behaviour, stable: Behaviour
) -> None:
    assert promoted_share(canary, seed=2, stable=stable) <= 0.05


@pytest.mark.parametrize(
    "canary",
    [Behaviour(server_errors=0.0151), Behaviour(client_errors=0.0301)],
    ids=["server-errors", "client-errors"],
)
def test_a_canary_just_beyond_a_margin_is_promoted_at_most_the_false_promotion_rate(
    canary: Behaviour,
) -> None:
    assert promoted_share(canary, seed=3) <= DEFAULT_POLICY.false_promotion_rate


@pytest.mark.parametrize("behaviour", [Behaviour(), BATCHES], ids=["one-row", "batched"])
def test_at_exactly_the_minimum_sample_one_look_passes_a_canary_equal_to_stable(
    behaviour: Behaviour,
) -> None:
    """The minimum sample size's own promise, with the stable revision no bigger than the
    canary (the formula's assumption), at a single look."""
    rng = np.random.default_rng(4)
    passed = 0
    for _ in range(ROLLOUTS):
        stable, canary = Revision(behaviour), Revision(behaviour)
        canary.serve(rng, MINIMUM, warming_up=False)
        stable.serve(rng, MINIMUM, warming_up=False)
        passed += judge(DEFAULT_POLICY, canary.samples(), stable.samples()).outcome == "pass"
    assert passed / ROLLOUTS >= 1 - DEFAULT_POLICY.false_rollback_rate


def test_batched_rows_never_fail_a_canary_equal_to_stable_on_evidence_it_lacks() -> None:
    """Twenty requests a look, each of a thousand rows alike within it: the rows are not
    20,000 independent samples, and the judge does not take them for such (counting rows,
    it failed 7 % of such canaries)."""
    behaviour = Behaviour(rows=1000)
    rng = np.random.default_rng(5)
    failed = 0
    for _ in range(ROLLOUTS):
        stable, canary = Revision(behaviour), Revision(behaviour)
        canary.serve(rng, 20, warming_up=False)
        stable.serve(rng, 180, warming_up=False)
        judgement = judge(DEFAULT_POLICY, canary.samples(), stable.samples())
        failed += judgement.outcome == "fail"
    assert failed / ROLLOUTS <= DEFAULT_POLICY.false_promotion_rate
