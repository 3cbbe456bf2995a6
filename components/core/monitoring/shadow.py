"""Shadow replay: the champion and a challenger score the same logged production inputs,
before any user sees the challenger's answers.

The last ``days`` of the payload log (the inputs the champion answered, typed as its card
says) are scored by both models in batches. The comparison holds:

- **disagreement**: the share of rows whose predicted class differs, over all rows and per
  segment, with Wilson intervals;
- **score shift**: the PSI between the two models' scores on the same rows (a binary
  model's positive-class probability; with more classes, the predicted class's shares),
  with the scores' means and their mean absolute difference;
- **online metrics**, where labels have arrived (joined on ``conveyor.id`` as online
  quality joins them): accuracy and log loss of both models on the same rows, with the
  paired difference and its interval (per-row differences, so the rows' own difficulty
  cancels);
- **batch scoring time** per row of each model: the fastest of 5 ``predict_proba`` calls
  on the same rows, after a warm-up call, the order alternating (not serving latency).

**The gate** (``ShadowPolicy``) fails a challenger when, with at least ``min_rows`` rows:

- its disagreement, overall or in a segment, is above ``max_disagreement`` beyond sampling
  noise: an exact binomial test of the count against that rate (not Wilson's lower bound,
  which a rare event's skewed count passes more often than its level says);
- its online accuracy is below the champion's by more than ``max_metric_drop`` beyond
  noise (the paired difference's one-sided bound lies below ``-max_metric_drop``); log
  loss is reported, not judged (its per-row differences are too skewed for the test);
- the PSI of the scores is at least ``max_score_shift`` (an effect size, on fixed bins);
- its batch scoring time per row is more than ``max_latency_ratio`` times the champion's
  and above ``latency_floor_ms`` (a measurement on the machine that ran the step, not a
  statistic; below the floor a model is fast enough whatever the ratio, as a served
  request costs milliseconds beside it).

Error rates. The statistical tests share ``1 - confidence`` (5 % by default) by
Bonferroni, half to the overall ones (disagreement, and accuracy when labels join) and
half to the segments' when there are segments, so many segments weaken only their own
tests: a challenger whose disagreement is exactly ``max_disagreement`` everywhere, or whose
accuracy is exactly ``max_metric_drop`` lower, is failed by them at most 5 % of the time, a
better one less often. The seeded simulations in ``tests/test_shadow.py`` measure both
sides: at the limit (10 %) with 2,000 rows in 4 segments, 4.2 % of 1,000 runs failed
(4.6 % of 4,000; the overall test alone 2.1 %); at twice it (20 %), every one of 400
failed. An accuracy exactly 2 points lower on 1,000 labelled rows failed 0 of 400 runs
(0.75 % of 2,000: the test is conservative for rare flips), one 6 points lower every time.
A window under ``min_rows`` rows is not judged: the gate passes and says so, and the
canary judges the challenger on live traffic instead.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from conveyor.components.core.errors import ConveyorError, first_line, plain
from conveyor.components.core.files import finite_json
from conveyor.components.core.intervals import wilson_interval
from conveyor.components.core.monitoring.drift import is_number, psi
from conveyor.components.core.monitoring.quality import (
    LOG_LOSS_EPS,
    QualitySettings,
    as_micros,
    check_model,
    file_columns,
    read_labels,
    window_bounds,
    window_files,
)
from conveyor.components.core.serving.inference import table_from_columns
from conveyor.components.core.serving.payload_log import ID as ID_COLUMN
from conveyor.components.core.serving.payload_log import MODEL as MODEL_COLUMN
from conveyor.components.core.serving.payload_log import TIME as TIME_COLUMN
from conveyor.components.core.serving.payload_log import read_log, score_column
from conveyor.components.core.training.thresholds import predicted_indices
from conveyor.components.core.training.trainer import TrainedModel

__all__ = [
    "ALL",
    "Disagreement",
    "OnlineComparison",
    "Replay",
    "ScoreShift",
    "ShadowPolicy",
    "ShadowReport",
    "ShadowRun",
    "ShadowSettings",
    "Timing",
    "compare_models",
    "judge_disagreement",
    "judge_online",
    "not_judged",
    "read_window",
    "replay",
    "replay_against_champion",
    "shadow_gate",
]

ALL = "all"
ONLINE_METRICS = ("accuracy", "log_loss")
JUDGED_ONLINE = ("accuracy",)  # log loss is reported: a rare confident mistake skews its test
MISSING_SEGMENT = "(missing)"
_TIMING_ROWS = 1_000
_TIMING_REPEATS = 5
# The score histograms' and PSI's bins: tenths, each centred on its tenth (0.15 to 0.25
# holds 0.2), so a model whose scores come in steps (a forest's vote shares, rounded
# scores) keeps each score in the bin of the value it rounds.
_EDGES = np.array([0.0, *np.arange(0.05, 1.0, 0.1), 1.0])


@dataclass(frozen=True)
class ShadowPolicy:
    """The gate's thresholds (the ``shadow_policy`` parameter, merged by name onto these).

    Attributes:
        max_disagreement: The share of rows whose predicted class may differ.
        max_score_shift: The PSI between the two models' scores (on 11 fixed bins of
            [0, 1] centred on its tenths; class shares for more classes) at which the gate
            fails.
        max_metric_drop: How much lower (absolute) the online accuracy may be.
        max_latency_ratio: The challenger's batch scoring time per row, as a multiple of
            the champion's, above which the gate fails.
        latency_floor_ms: Milliseconds per row under which the challenger's scoring time
            is not judged, whatever its ratio (a forest scores in microseconds per row,
            tens of times a linear model's, and both vanish beside a request's cost).
        confidence: The share of same-quality challengers the statistical tests pass.
        min_rows: Windows (and segments) with fewer rows are reported, not judged.
    """

    max_disagreement: float = 0.10
    max_score_shift: float = 0.25  # PSI above 0.25: the usual "significant shift"
    max_metric_drop: float = 0.02
    max_latency_ratio: float = 10.0
    latency_floor_ms: float = 1.0
    confidence: float = 0.95
    min_rows: int = 100

    def __post_init__(self) -> None:
        for name in ("max_disagreement", "max_metric_drop"):
            _check_range(name, getattr(self, name), 0, 1)
        for name in ("max_score_shift", "max_latency_ratio"):
            value = getattr(self, name)
            if not is_number(value) or not math.isfinite(value) or value <= 0:
                raise ConveyorError(f"shadow policy {name} {value!r}: expected a number above 0")
        floor = self.latency_floor_ms
        if not is_number(floor) or not math.isfinite(floor) or floor < 0:
            raise ConveyorError(
                f"shadow policy latency_floor_ms {floor!r}: expected a number, 0 or more"
            )
        _check_range("confidence", self.confidence, 0.5, 1)
        if not isinstance(self.min_rows, int) or isinstance(self.min_rows, bool):
            raise ConveyorError(f"shadow policy min_rows {self.min_rows!r}: expected an integer")
        if self.min_rows < 1:
            raise ConveyorError(f"shadow policy min_rows {self.min_rows}: expected 1 or more")

    @classmethod
    def from_dict(cls, overrides: Mapping[str, Any]) -> ShadowPolicy:
        """The defaults with ``overrides`` merged by name; unknown names are refused."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConveyorError(
                f"shadow policy: unknown setting(s) {', '.join(unknown)}; known: "
                f"{', '.join(sorted(known))}"
            )
        # KFP passes a dict parameter as a protobuf Struct, whose numbers are all floats.
        values = dict(overrides)
        if isinstance(values.get("min_rows"), float) and values["min_rows"].is_integer():
            values["min_rows"] = int(values["min_rows"])
        return cls(**values)

    def levels(self, overall_tests: int, segment_tests: int) -> tuple[float, float]:
        """Each test's level, overall and per segment: ``1 - confidence`` split in half
        between the overall tests and the segments' when there are segments (so many
        segments weaken only their own tests), else wholly among the overall tests."""
        alpha = 1 - self.confidence
        if not segment_tests:
            return alpha / max(overall_tests, 1), alpha
        return alpha / 2 / max(overall_tests, 1), alpha / 2 / segment_tests


def _check_range(name: str, value: Any, low: float, high: float) -> None:
    if not is_number(value) or not low <= value < high:
        raise ConveyorError(f"shadow policy {name} {value!r}: expected a number in [{low}, {high})")


@dataclass(frozen=True)
class ShadowSettings:
    """What is replayed and how it is shown.

    Attributes:
        days: The last this many UTC days of the log, ending with its newest row; 0: all.
        segment: An input column to also compare within each value of; empty: none.
        batch_rows: Rows scored per ``predict_proba`` call.
        max_rows: A window holding more rows is replayed on a seeded uniform sample of
            this many (the report says so): what a step's memory and time allow.
        show_rows: The report lists this many rows where the models differ most (they are
            production inputs, so none by default).
        id_column: The labels table's id column (matched with ``conveyor.id``).
        label_column: The labels table's label column.
    """

    days: int = 7
    segment: str = ""
    batch_rows: int = 10_000
    max_rows: int = 200_000
    show_rows: int = 0
    id_column: str = "id"
    label_column: str = "label"

    def __post_init__(self) -> None:
        if self.days < 0:
            raise ConveyorError(f"shadow days must be 0 (all) or more, not {self.days}")
        if self.batch_rows < 1:
            raise ConveyorError(f"shadow batch_rows must be 1 or more, not {self.batch_rows}")
        if self.max_rows < 1:
            raise ConveyorError(f"shadow max_rows must be 1 or more, not {self.max_rows}")
        if self.show_rows < 0:
            raise ConveyorError(f"shadow show_rows must be 0 or more, not {self.show_rows}")


@dataclass(frozen=True)
class Disagreement:
    """The share of rows whose predicted class differs, in one group (``all``: every row)."""

    segment: str
    rows: int
    disagreeing: int
    lower: float
    upper: float
    p_value: float  # of as many disagreements, were the rate exactly max_disagreement
    judged: bool
    failed: bool

    @property
    def rate(self) -> float:
        return self.disagreeing / self.rows if self.rows else math.nan


@dataclass(frozen=True)
class ScoreShift:
    """How the challenger's scores sit against the champion's on the same rows."""

    segment: str
    rows: int
    psi: float
    champion_mean: float
    challenger_mean: float
    mean_absolute_difference: float


@dataclass(frozen=True)
class OnlineComparison:
    """Both models' online metric on the labelled rows, and the paired difference
    (challenger - champion) with its two-sided interval at the policy's confidence."""

    metric: str
    rows: int
    champion: float
    challenger: float
    difference: float
    lower: float
    upper: float
    judged: bool
    failed: bool


@dataclass(frozen=True)
class Timing:
    """``predict_proba`` seconds per row on the replayed batches (not serving latency)."""

    champion_s_per_row: float
    challenger_s_per_row: float

    @property
    def ratio(self) -> float:
        return self.challenger_s_per_row / max(self.champion_s_per_row, 1e-12)


@dataclass(frozen=True)
class Replay:
    """What each model said of each replayed row.

    Attributes:
        classes: The class names (text), shared by both models.
        champion: Predicted class codes into ``classes``, one per row, at the model's own
            decision threshold (its card's).
        challenger: Likewise.
        champion_probabilities: (rows, classes) in ``classes`` order.
        challenger_probabilities: Likewise.
        score_index: The positive class's index for a binary model; None for more classes.
        timing: Batch scoring time of each model.
    """

    classes: list[str]
    champion: np.ndarray
    challenger: np.ndarray
    champion_probabilities: np.ndarray
    challenger_probabilities: np.ndarray
    score_index: int | None
    timing: Timing

    def scores(self) -> tuple[np.ndarray, np.ndarray]:
        """Each model's score per row: the positive class's probability, or (more classes)
        the predicted class's code, as PSI compares class shares."""
        if self.score_index is None:
            return self.champion.astype(str), self.challenger.astype(str)
        index = self.score_index
        return self.champion_probabilities[:, index], self.challenger_probabilities[:, index]


@dataclass(frozen=True)
class ShadowReport:
    """The comparison and the gate's verdict; checks itself.

    Attributes:
        passed: Whether the challenger may be registered and rolled out.
        reason: The verdict in one sentence.
        judged: False when nothing was compared (no log yet, no champion, too few rows).
        failures: Each failed check, one sentence each.
        rows: Rows replayed.
        window: First and last day replayed (UTC), when any.
        disagreement: Overall first, then per segment.
        shifts: Overall first, then per segment.
        online: One per metric, where labels joined.
        timing: Batch scoring times, when replayed.
        policy: The thresholds judged by.
        notes: What was not compared, and why.
        histograms: ``edges`` and each model's ``counts`` of its scores (binary models).
        top_rows: The rows where the models differ most (``show_rows`` of them).
    """

    passed: bool
    reason: str
    judged: bool
    policy: ShadowPolicy
    failures: tuple[str, ...] = ()
    rows: int = 0
    window: tuple[str, str] | None = None
    disagreement: tuple[Disagreement, ...] = ()
    shifts: tuple[ScoreShift, ...] = ()
    online: tuple[OnlineComparison, ...] = ()
    timing: Timing | None = None
    notes: tuple[str, ...] = ()
    histograms: dict[str, list[float]] = field(default_factory=dict)
    top_rows: tuple[dict[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.passed == bool(self.failures):
            raise ConveyorError("shadow report: the verdict must follow its failures")
        if not self.judged and self.failures:
            raise ConveyorError("shadow report: an unjudged replay holds failures")

    def metrics(self) -> dict[str, float]:
        """What is logged as KFP Metrics: the overall disagreement, PSI, online differences
        and the latency ratio."""
        values: dict[str, float] = {"passed": float(self.passed), "rows": float(self.rows)}
        if self.disagreement:
            values["disagreement"] = self.disagreement[0].rate
        if self.shifts:
            values["score_psi"] = self.shifts[0].psi
            values["mean_absolute_score_difference"] = self.shifts[0].mean_absolute_difference
        for online in self.online:
            values[f"online_{online.metric}_difference"] = online.difference
        if self.timing is not None:
            values["scoring_time_ratio"] = self.timing.ratio
        return {name: value for name, value in values.items() if math.isfinite(value)}

    def to_dict(self) -> dict[str, Any]:
        """Everything, as strict JSON takes it (a NaN or infinity is None)."""
        data = asdict(self)
        data["disagreement"] = [{**asdict(d), "rate": d.rate} for d in self.disagreement]
        if self.timing is not None:
            data["timing"] = {**asdict(self.timing), "ratio": self.timing.ratio}
        return finite_json(data)


def not_judged(reason: str, policy: ShadowPolicy, **measured: Any) -> ShadowReport:
    """A passing report that compared nothing, or too little to judge: ``reason`` says why."""
    return ShadowReport(passed=True, reason=reason, judged=False, policy=policy, **measured)


# Reading the window.


def read_window(
    log_uri: str, model: str, settings: ShadowSettings, inputs: Sequence[str] | None = None
) -> tuple[pd.DataFrame, list[str]]:
    """The logged rows of the last ``settings.days`` days (``inputs`` of them, all when
    None, then ``conveyor.id`` and ``conveyor.time``), sampled down to ``max_rows``, and
    notes: files left out for lacking an input (written before it was logged), the sample,
    a window that ended days ago. Refuses a log of another model, a corrupt file, and a
    window without a replayable row."""
    files = window_files(log_uri, settings.days)
    notes: list[str] = []
    if inputs is not None:
        files, notes = _files_with(files, list(inputs), log_uri)
    wanted = None if inputs is None else [*inputs, ID_COLUMN, TIME_COLUMN, MODEL_COLUMN]
    logged = read_log(files, wanted)
    table = logged.table
    check_model(table.column(MODEL_COLUMN), model, log_uri)
    timed = table.filter(table.column(TIME_COLUMN).is_valid())
    if timed.num_rows == 0:
        raise ConveyorError(f"{log_uri}: no logged row in the last {settings.days} day(s)")
    micros = as_micros(timed.column(TIME_COLUMN), log_uri).to_numpy()
    start, end = window_bounds(micros, settings.days)
    if start is not None:
        timed = timed.filter(pa.array(micros >= start))
    notes += _staleness(end, settings.days)
    if timed.num_rows > settings.max_rows:
        chosen = np.random.default_rng(0).choice(timed.num_rows, settings.max_rows, replace=False)
        notes.append(
            f"a seeded sample of {settings.max_rows:,} of the window's {timed.num_rows:,} rows "
            "was replayed (max_rows)"
        )
        timed = timed.take(pa.array(np.sort(chosen)))
    return timed.select([*logged.input_names, ID_COLUMN, TIME_COLUMN]).to_pandas(), notes


def _files_with(files: list[str], inputs: list[str], log_uri: str) -> tuple[list[str], list[str]]:
    """The files holding every input (a file written before a feature was logged cannot be
    replayed), and a note on those left out; refuses when none holds them all."""
    kept, lacking = [], {}
    for file in files:
        names = set(file_columns(file))
        missing = [name for name in inputs if name not in names]
        if missing:
            lacking[file] = missing
        else:
            kept.append(file)
    if not kept:
        absent = sorted({name for missing in lacking.values() for name in missing})
        raise ConveyorError(
            f"{log_uri}: the log has no {', '.join(absent[:8])}, which the models read (a "
            "feature new to the challenger, or one payload_log_exclude keeps out); set "
            "shadow_replay=false to register without a replay"
        )
    notes = []
    if lacking:
        absent = sorted({name for missing in lacking.values() for name in missing})
        notes.append(
            f"{len(lacking):,} of {len(files):,} log files left out: they lack "
            f"{', '.join(absent[:8])} (written before it was logged)"
        )
    return kept, notes


def _staleness(newest: int, days: int) -> list[str]:
    """A note when the log's newest row is older than the window is long."""
    age = (time.time() * 1e6 - newest) / 86_400e6
    if age <= max(days, 1):
        return []
    return [f"the log's newest row is {age:.0f} days old: the replayed traffic may be stale"]


# Replaying.


def replay(
    champion: TrainedModel,
    challenger: TrainedModel,
    rows: pd.DataFrame,
    batch_rows: int,
    clock: Callable[[], float] = time.perf_counter,
) -> Replay:
    """Both models' predictions on ``rows``, batch by batch, and their scoring times.

    Raises:
        ConveyorError: A model's feature columns are not all in ``rows`` (a challenger
            trained on other columns than the log holds), a value a model cannot read,
            or models predicting different classes.
    """
    classes = _shared_classes(champion, challenger)
    models = {"champion": champion, "challenger": challenger}
    inputs = {role: _inputs(model, rows, role) for role, model in models.items()}
    probabilities = {
        role: np.vstack(
            [
                _in_order(
                    _predict(models[role], inputs[role].iloc[start : start + batch_rows], role),
                    models[role],
                    classes,
                )
                for start in range(0, len(rows), batch_rows)
            ]
        )
        for role in models
    }
    return Replay(
        classes=classes,
        champion=_predicted(champion, probabilities["champion"], classes),
        challenger=_predicted(challenger, probabilities["challenger"], classes),
        champion_probabilities=probabilities["champion"],
        challenger_probabilities=probabilities["challenger"],
        score_index=_score_index(champion, challenger, classes),
        timing=_timing(models, inputs, clock),
    )


def _predict(model: TrainedModel, batch: pd.DataFrame, role: str) -> np.ndarray:
    try:
        return model.pipeline.predict_proba(batch)
    except (ValueError, TypeError) as error:
        raise ConveyorError(
            f"the {role} cannot score the logged rows: {first_line(error)}"
        ) from None


def _timing(
    models: dict[str, TrainedModel], inputs: dict[str, pd.DataFrame], clock: Callable[[], float]
) -> Timing:
    """Each model's fastest of ``_TIMING_REPEATS`` timed calls on the same rows, per row,
    after an untimed warm-up call, the order alternating: one timed call is noise (a
    ratio between 1.2x and 8.7x for the same pair, measured)."""
    rows = min(len(next(iter(inputs.values()))), _TIMING_ROWS)
    batches = {role: table.iloc[:rows] for role, table in inputs.items()}
    for role, model in models.items():
        model.pipeline.predict_proba(batches[role])
    fastest = {role: math.inf for role in models}
    order = list(models)
    for _ in range(_TIMING_REPEATS):
        for role in order:
            began = clock()
            models[role].pipeline.predict_proba(batches[role])
            fastest[role] = min(fastest[role], clock() - began)
        order.reverse()
    return Timing(fastest["champion"] / rows, fastest["challenger"] / rows)


def _shared_classes(champion: TrainedModel, challenger: TrainedModel) -> list[str]:
    ours = [str(c) for c in champion.card.classes]
    theirs = [str(c) for c in challenger.card.classes]
    if sorted(ours) != sorted(theirs):
        raise ConveyorError(
            f"the challenger predicts classes {theirs}, the champion {ours}: a shadow replay "
            "compares models of the same target"
        )
    return ours


def _inputs(model: TrainedModel, rows: pd.DataFrame, role: str) -> pd.DataFrame:
    features = model.card.features
    missing = [f.name for f in features if f.name not in rows.columns]
    if missing:
        raise ConveyorError(
            f"the {role}'s feature columns differ from the log's: the log has no "
            f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}"
        )
    columns = {f.name: rows[f.name].to_numpy() for f in features}
    try:
        return table_from_columns(columns, features)
    except ConveyorError as error:
        raise ConveyorError(f"the {role} cannot read the logged rows: {error}") from None


def _in_order(probabilities: np.ndarray, model: TrainedModel, classes: list[str]) -> np.ndarray:
    """The columns of ``probabilities`` (the pipeline's class order) in ``classes`` order."""
    order = [str(c) for c in model.pipeline.classes_]
    return probabilities[:, [order.index(name) for name in classes]]


def _predicted(model: TrainedModel, probabilities: np.ndarray, classes: list[str]) -> np.ndarray:
    """Each row's predicted class in ``classes`` order: at the model's own threshold."""
    column = score_column(classes, model.card.positive_class)
    return predicted_indices(probabilities, column, model.card.decision_threshold)


def _score_index(
    champion: TrainedModel, challenger: TrainedModel, classes: list[str]
) -> int | None:
    """The positive class both models score, by the champion's card (the class the log's
    scores are of); a challenger that chose another is compared on the same class."""
    index = score_column(champion.card.classes, champion.card.positive_class)
    if index is None:
        return None
    return classes.index(str(champion.card.classes[index]))


# Judging.


def judge_disagreement(
    differs: np.ndarray,
    segments: np.ndarray | None,
    policy: ShadowPolicy,
    overall_tests: int = 1,
) -> list[Disagreement]:
    """The disagreement over all rows, then in each segment value (sorted) of at least
    ``min_rows`` rows. A group of ``min_rows`` rows is judged: failed when an exact binomial
    test puts it above ``max_disagreement`` at its level (``ShadowPolicy.levels``, the
    overall one shared with ``overall_tests - 1`` online tests). Wilson's interval is
    reported; it is not the judge, since a rare event's count is skewed and Wilson's lower
    bound passes the limit more often than its level says (6.8 % of runs at a 5 % level,
    measured)."""
    from scipy import stats

    groups = [(ALL, len(differs), int(differs.sum()))]
    if segments is not None:
        values, codes = np.unique(segments, return_inverse=True)
        sizes = np.bincount(codes, minlength=len(values))
        counts = np.bincount(codes, weights=differs, minlength=len(values)).astype(int)
        groups += [
            (str(value), int(size), int(count))
            for value, size, count in zip(values, sizes, counts, strict=True)
            if size >= policy.min_rows
        ]
    overall_level, segment_level = policy.levels(overall_tests, len(groups) - 1)
    z = NormalDist().inv_cdf(0.5 + policy.confidence / 2)
    results = []
    for index, (name, size, count) in enumerate(groups):
        lower, upper = wilson_interval(np.array(count), np.array(size), z)
        p_value = float(stats.binom.sf(count - 1, size, policy.max_disagreement)) if size else 1.0
        judged = size >= policy.min_rows
        failed = judged and p_value <= (segment_level if index else overall_level)
        results.append(
            Disagreement(name, size, count, float(lower), float(upper), p_value, judged, failed)
        )
    return results


def _small_segments(segments: np.ndarray | None, min_rows: int) -> list[str]:
    """A note naming how many segment values have too few rows to be compared."""
    if segments is None:
        return []
    _, sizes = np.unique(segments, return_counts=True)
    small = int((sizes < min_rows).sum())
    if not small:
        return []
    return [f"{small:,} segment value(s) with fewer than {min_rows:,} rows not compared"]


def judge_online(
    truth: np.ndarray,
    replayed: Replay,
    joined: np.ndarray,
    policy: ShadowPolicy,
    level: float,
) -> list[OnlineComparison]:
    """Accuracy and log loss of both models on the labelled rows (``joined`` indexes into
    the replay; ``truth`` holds their class codes) with the paired difference's interval.
    Accuracy is judged, one-sided at ``level``: failed when even its bound says the
    challenger is more than ``max_metric_drop`` lower. Log loss is reported only: a rare
    confident mistake makes its per-row differences so skewed that a normal test at 5 %
    failed 36 % of challengers at the margin (measured)."""
    rows = len(joined)
    if rows == 0:
        return []
    two_sided = NormalDist().inv_cdf(0.5 + policy.confidence / 2)
    one_sided = NormalDist().inv_cdf(1 - level)
    per_row = {
        "accuracy": (
            (replayed.champion[joined] == truth).astype(float),
            (replayed.challenger[joined] == truth).astype(float),
        ),
        "log_loss": (
            _row_log_loss(replayed.champion_probabilities[joined], truth),
            _row_log_loss(replayed.challenger_probabilities[joined], truth),
        ),
    }
    results = []
    for metric, (ours, theirs) in per_row.items():
        difference = theirs - ours
        mean = float(difference.mean())
        error = float(difference.std(ddof=1) / math.sqrt(rows)) if rows > 1 else math.inf
        judged = metric in JUDGED_ONLINE and rows >= policy.min_rows
        failed = judged and -mean - one_sided * error > policy.max_metric_drop
        results.append(
            OnlineComparison(
                metric, rows, float(ours.mean()), float(theirs.mean()), mean,
                mean - two_sided * error, mean + two_sided * error, judged, bool(failed),
            )
        )  # fmt: skip
    return results


def _row_log_loss(probabilities: np.ndarray, truth: np.ndarray) -> np.ndarray:
    chosen = probabilities[np.arange(len(truth)), truth]
    return -np.log(np.clip(chosen, LOG_LOSS_EPS, 1 - LOG_LOSS_EPS))


def _shifts(replayed: Replay, segments: np.ndarray | None, names: list[str]) -> list[ScoreShift]:
    """The scores' PSI over all rows and in each segment of ``names``: on fixed bins of
    [0, 1] centred on its tenths for a binary model (bins taken from the data, or bins
    whose edges sit on the values a coarse model outputs, measure how coarse a score is,
    not how far it moved), on the predicted classes' shares otherwise."""
    champion, challenger = replayed.scores()
    numeric = replayed.score_index is not None
    results = []
    for name in names:
        mask = np.ones(len(champion), bool) if name == ALL else segments == name
        ours, theirs = champion[mask], challenger[mask]
        results.append(
            ScoreShift(
                name, len(ours), _psi(_counts(ours, replayed), _counts(theirs, replayed)),
                float(ours.mean()) if numeric else math.nan,
                float(theirs.mean()) if numeric else math.nan,
                float(np.abs(theirs - ours).mean()) if numeric else math.nan,
            )
        )  # fmt: skip
    return results


def _psi(champion_counts: np.ndarray, challenger_counts: np.ndarray) -> float:
    """PSI with half a row added to every bin of both histograms, so a bin one model
    leaves empty weighs what half a row would (drift's ``psi`` floors it by the smallest
    share seen, which one stray row elsewhere would move across the threshold)."""
    return psi(champion_counts + 0.5, challenger_counts + 0.5)


def _counts(scores: np.ndarray, replayed: Replay) -> np.ndarray:
    if replayed.score_index is None:
        return np.array([(scores == str(code)).sum() for code in range(len(replayed.classes))])
    return np.histogram(scores, _EDGES)[0]


def compare_models(
    champion: TrainedModel,
    challenger: TrainedModel,
    rows: pd.DataFrame,
    policy: ShadowPolicy,
    settings: ShadowSettings,
    labels_uri: str = "",
    clock: Callable[[], float] = time.perf_counter,
    notes: Sequence[str] = (),
) -> ShadowReport:
    """Replays ``rows`` (``read_window``'s, with its ``notes``) through both models and
    judges the challenger.

    Raises:
        ConveyorError: The segment column is not logged; a model cannot read the rows;
            the labels cannot be read, or none of them matches a logged row.
    """
    if settings.segment and settings.segment not in rows.columns:
        raise ConveyorError(
            f"segment column {settings.segment!r} is not in the log's inputs; the log holds "
            f"{', '.join(c for c in rows.columns if not c.startswith('conveyor.'))}"
        )
    days = pd.to_datetime(rows[TIME_COLUMN], utc=True)
    window = (days.min().date().isoformat(), days.max().date().isoformat())
    if len(rows) < policy.min_rows:
        return not_judged(
            f"Not judged: {len(rows):,} logged rows in the window, fewer than the "
            f"{policy.min_rows:,} the gate judges on (min_rows); the canary judges the "
            "challenger on live traffic",
            policy, rows=len(rows), window=window, notes=tuple(notes),
        )  # fmt: skip
    replayed = replay(champion, challenger, rows, settings.batch_rows, clock)
    segments = _segments(rows, settings.segment)
    truth, joined, label_notes = _labelled(rows, replayed.classes, labels_uri, settings)
    notes = [*notes, *label_notes, *_small_segments(segments, policy.min_rows)]
    online_tests = len(JUDGED_ONLINE) if len(joined) >= policy.min_rows else 0
    differs = replayed.champion != replayed.challenger
    disagreement = judge_disagreement(differs, segments, policy, 1 + online_tests)
    level, _ = policy.levels(1 + online_tests, len(disagreement) - 1)
    online = judge_online(truth, replayed, joined, policy, level)
    shifts = _shifts(replayed, segments, [d.segment for d in disagreement])
    failures = _failures(disagreement, shifts, online, replayed.timing, policy)
    return ShadowReport(
        passed=not failures,
        reason=_reason(failures, disagreement[0], len(rows)),
        judged=True,
        policy=policy,
        failures=tuple(failures),
        rows=len(rows),
        window=window,
        disagreement=tuple(disagreement),
        shifts=tuple(shifts),
        online=tuple(online),
        timing=replayed.timing,
        notes=tuple(notes),
        histograms=_histograms(replayed),
        top_rows=tuple(_top_rows(rows, replayed, settings.show_rows)),
    )


def _segments(rows: pd.DataFrame, column: str) -> np.ndarray | None:
    """Each row's segment value as text, a missing one as ``(missing)``."""
    if not column:
        return None
    values = rows[column]
    return values.astype(object).where(values.notna(), MISSING_SEGMENT).astype(str).to_numpy()


def _labelled(
    rows: pd.DataFrame, classes: list[str], labels_uri: str, settings: ShadowSettings
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The labels' class codes and the replayed rows they belong to (the latest row of an
    id logged twice); notes on what did not join."""
    empty = np.array([], dtype=np.int64)
    if not labels_uri:
        return empty, empty, ["no labels given: online metrics not compared"]
    labels = read_labels(
        labels_uri,
        QualitySettings(id_column=settings.id_column, label_column=settings.label_column),
    ).to_pandas()
    ids = rows[ID_COLUMN].astype("string")
    latest = ids.notna() & ~ids.duplicated(keep="last")
    position = pd.Series(np.flatnonzero(latest.to_numpy()), index=ids[latest].to_numpy())
    matched = labels[labels["id"].isin(position.index)]
    if matched.empty:  # labels lag: none may have arrived for the window yet
        return (
            empty,
            empty,
            [
                f"none of the {len(labels):,} labels matches a replayed row's {ID_COLUMN} (labels "
                f"not arrived for the window yet, or another id column than "
                f"{settings.id_column!r}): online metrics not compared"
            ],
        )
    unknown = sorted(set(matched["label"]) - set(classes))
    if unknown:
        raise ConveyorError(
            f"{labels_uri}: label(s) {unknown[:5]} are not classes of the models ({classes})"
        )
    joined = position[matched["id"]].to_numpy()
    truth = np.array([classes.index(label) for label in matched["label"]], dtype=np.int64)
    notes = []
    if len(matched) < len(labels):
        notes.append(f"{len(labels) - len(matched):,} labels match no replayed row")
    return truth, joined, notes


def _failures(
    disagreement: list[Disagreement],
    shifts: list[ScoreShift],
    online: list[OnlineComparison],
    timing: Timing,
    policy: ShadowPolicy,
) -> list[str]:
    failures = [
        f"disagreement {'over all rows' if d.segment == ALL else f'in {d.segment}'} "
        f"{d.rate:.1%} above {policy.max_disagreement:.1%} (binomial p {d.p_value:.2g})"
        for d in disagreement
        if d.failed
    ]
    if shifts and shifts[0].psi >= policy.max_score_shift:
        failures.append(f"score PSI {shifts[0].psi:.3g} at or above {policy.max_score_shift:g}")
    failures += [
        f"online {o.metric} {o.challenger:.4g} against the champion's {o.champion:.4g} "
        f"(difference {o.difference:+.4g}, interval {o.lower:+.4g} to {o.upper:+.4g}) worse "
        f"by more than {policy.max_metric_drop:g}"
        for o in online
        if o.failed
    ]
    per_row_ms = timing.challenger_s_per_row * 1000
    if timing.ratio > policy.max_latency_ratio and per_row_ms > policy.latency_floor_ms:
        failures.append(
            f"batch scoring time {timing.ratio:.2f}x the champion's, above "
            f"{policy.max_latency_ratio:g}x (and {per_row_ms:.3g} ms a row)"
        )
    return failures


def _reason(failures: list[str], overall: Disagreement, rows: int) -> str:
    if failures:
        return f"Shadow gate failed on {rows:,} logged rows: {'; '.join(failures)}"
    return (
        f"Shadow gate passed on {rows:,} logged rows: the models disagree on {overall.rate:.1%} "
        f"(interval {overall.lower:.1%} to {overall.upper:.1%})"
    )


def _histograms(replayed: Replay) -> dict[str, list[float]]:
    if replayed.score_index is None:
        return {}
    champion, challenger = replayed.scores()
    return {
        "edges": _EDGES.tolist(),
        "champion": np.histogram(champion, _EDGES)[0].astype(float).tolist(),
        "challenger": np.histogram(challenger, _EDGES)[0].astype(float).tolist(),
    }


def _top_rows(rows: pd.DataFrame, replayed: Replay, count: int) -> list[dict[str, Any]]:
    """The ``count`` rows whose probabilities differ most (largest total variation)."""
    if count == 0:
        return []
    gap = np.abs(replayed.challenger_probabilities - replayed.champion_probabilities).sum(axis=1)
    chosen = np.argsort(-gap, kind="stable")[:count]
    inputs = [c for c in rows.columns if c not in (TIME_COLUMN,)]
    shown = []
    for index in chosen:
        entry = {name: plain(rows[name].iloc[index]) for name in inputs}
        entry["champion"] = replayed.classes[replayed.champion[index]]
        entry["challenger"] = replayed.classes[replayed.challenger[index]]
        entry["probability_gap"] = float(gap[index] / 2)
        shown.append(entry)
    return shown


@dataclass(frozen=True)
class ShadowRun:
    """What a replay compares against: the registered model whose champion and payload log
    are read, where they are, and how the challenger is judged.

    Attributes:
        model: The registered model's name (its ``champion`` alias is the champion).
        log_uri: Its payload log (``rollout.manifests.model_log_uri``); empty for none.
        tracking_uri: The MLflow tracking server; empty uses ``$MLFLOW_TRACKING_URI``.
        policy: The gate's thresholds.
        settings: The window, segment and output settings.
        labels_uri: Labels of logged requests; empty compares no online metric.
    """

    model: str
    log_uri: str
    tracking_uri: str = ""
    policy: ShadowPolicy = field(default_factory=ShadowPolicy)
    settings: ShadowSettings = field(default_factory=ShadowSettings)
    labels_uri: str = ""


def shadow_gate(challenger: TrainedModel, run: ShadowRun) -> ShadowReport:
    """The gate between evaluate and register (``replay_against_champion``). Passes, saying
    why, when there is nothing to replay: no log configured, no champion yet, or no log
    written yet (a first deploy)."""
    from conveyor.components.core.training import tracking
    from conveyor.components.core.training.registry import find_champion, load_champion

    if not run.log_uri:
        return not_judged(
            "Not judged: no payload log is configured (payload_log_uri is empty), so there is "
            "no production traffic to replay",
            run.policy,
        )
    client = tracking.connect(run.tracking_uri)
    champion = find_champion(client, run.model)
    if champion is None:
        return not_judged(
            f"Not judged: {run.model!r} has no champion yet (a first deploy)", run.policy
        )
    if not _log_exists(run.log_uri):
        return not_judged(
            f"Not judged: no payload log at {run.log_uri} yet (the champion has answered no "
            "logged request)",
            run.policy,
        )
    return _replay_against(challenger, run, load_champion(client, champion))


def replay_against_champion(challenger: TrainedModel, run: ShadowRun) -> ShadowReport:
    """Replays the window of the model's payload log through its champion and
    ``challenger``, and judges the challenger.

    Raises:
        ConveyorError: No champion, and every refusal of ``read_window`` and
            ``compare_models``.
    """
    from conveyor.components.core.training import tracking
    from conveyor.components.core.training.registry import find_champion, load_champion

    client = tracking.connect(run.tracking_uri)
    champion = find_champion(client, run.model)
    if champion is None:
        raise ConveyorError(f"model {run.model!r} has no champion in {client.tracking_uri}")
    return _replay_against(challenger, run, load_champion(client, champion))


def _replay_against(
    challenger: TrainedModel, run: ShadowRun, serving: TrainedModel
) -> ShadowReport:
    inputs = _logged_inputs(serving, challenger, run.settings)
    rows, notes = read_window(run.log_uri, run.model, run.settings, inputs)
    return compare_models(
        serving, challenger, rows, run.policy, run.settings, run.labels_uri, notes=notes
    )


def _logged_inputs(
    champion: TrainedModel, challenger: TrainedModel, settings: ShadowSettings
) -> list[str]:
    """The log columns a replay reads: both models' features, their id columns, the segment."""
    names = [
        *(f.name for model in (champion, challenger) for f in model.card.features),
        *champion.card.id_columns,
        *([settings.segment] if settings.segment else []),
    ]
    return list(dict.fromkeys(names))


def _log_exists(uri: str) -> bool:
    """Whether ``uri`` is there; a store that cannot say (no permission, unreachable) is
    one line, not "no log yet" (fsspec's ``exists`` reads every error as absence)."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(uri)
        fs.info(path)
    except FileNotFoundError:
        return False
    except (OSError, ValueError) as error:
        raise ConveyorError(
            f"{uri}: cannot tell whether a payload log is there ({first_line(error)})"
        ) from None
    return True
