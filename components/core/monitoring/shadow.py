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

**Regressors.** The log says which task its model answers (``conveyor.task`` in each
file's metadata); champion, challenger and log must share it, or the replay is refused in
one line (a model answering another kind of value cannot be compared row by row, and
passing it unjudged would change every client's answers unseen; ``shadow_replay=false``
registers it deliberately). Two regressors are compared on:

- **relative difference** in place of disagreement: the mean of ``|challenger -
  champion|`` over the rows (overall and per segment), divided by the champion's mean
  absolute deviation over all the window's rows (``mean |champion - mean(champion)|``, one
  yardstick for every segment), so one bound fits a price and a probability alike: 0.25
  says the challenger's answers move by a quarter of how much the champion's vary from
  row to row. Its interval is the delta method's for a ratio of two means of the same
  rows; the gate fails when its one-sided lower bound lies above
  ``max_relative_difference`` (the same "beyond noise" as the disagreement's test, at the
  same Bonferroni levels);
- **prediction shift** in place of score shift: the PSI of the two models' predicted
  values on the champion's deciles (10 bins holding a tenth of its answers each), bound
  ``max_score_shift`` as for scores;
- **online errors**, where numeric labels join on ``conveyor.id``: MAE and RMSE of both
  models on the same rows with the paired difference's interval. The MAE is judged, on the
  relative increase ``(MAE_challenger - MAE_champion) / MAE_champion``: failed when its
  one-sided lower bound is above ``max_metric_drop`` (0.02: 2 % more error). Each row's
  paired difference is at most the two predictions' gap (triangle inequality), so the test
  keeps its level whatever the labels' tails; RMSE's squared errors have no such bound and
  are reported, not judged, as log loss is;
- batch scoring time, as for classifiers (``predict`` instead of ``predict_proba``).

Error rates, by the seeded simulations in ``tests/test_shadow_regression.py`` (300 rows a
replay, the challenger the champion plus normal noise, so the relative difference is the
noise's sd over the champion's): well under the bound (0.10 against 0.25) the gate failed
0 of 1,000 runs (the false-alarm rate; 0 of 1,000 at 0.20 too); well over it (0.50), all
1,000 (the power; 99.9 % at 0.35, 89.9 % at 0.30); at the bound itself 4.6 % of 2,000, and
2.6 % of 2,000 with 3 segments of 100 rows. The delta method's normal approximation holds
for skewed predictions as far as measured: log-normal ones (sigma 0.5) failed 5.2 % of
1,000 at the bound; strongly skewed ones (sigma 1) 6 to 8 %, above the 5 % stated. An MAE
exactly 2 % higher on 300 labelled rows failed 5.0 % of 5,000 runs, one 20 % higher every
one of 1,000.
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

from conveyor.components.core.data.task import CLASSIFICATION, REGRESSION, TASKS
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
from conveyor.components.core.serving.payload_log import TASK_KEY, read_log, score_column
from conveyor.components.core.serving.payload_log import TIME as TIME_COLUMN
from conveyor.components.core.training.thresholds import predicted_indices
from conveyor.components.core.training.trainer import TrainedModel

__all__ = [
    "ALL",
    "Difference",
    "Disagreement",
    "OnlineComparison",
    "Replay",
    "ScoreShift",
    "ShadowPolicy",
    "ShadowReport",
    "ShadowRun",
    "ShadowSettings",
    "Timing",
    "ValueReplay",
    "compare_models",
    "compare_regressors",
    "judge_difference",
    "judge_disagreement",
    "judge_errors",
    "judge_online",
    "not_judged",
    "read_window",
    "replay",
    "replay_against_champion",
    "replay_values",
    "shadow_gate",
]

ALL = "all"
ONLINE_METRICS = ("accuracy", "log_loss")
JUDGED_ONLINE = ("accuracy",)  # log loss is reported: a rare confident mistake skews its test
# A regressor's: MAE is judged, its per-row differences bounded by the predictions' gap;
# RMSE is reported, as squared errors' differences are as skewed as log loss's.
ERROR_METRICS = ("mae", "rmse")
JUDGED_ERRORS = ("mae",)
MISSING_SEGMENT = "(missing)"
_NO_LABELS = pd.DataFrame({"id": pd.Series([], dtype=object), "label": pd.Series([], dtype=object)})
_TIMING_ROWS = 1_000
_TIMING_REPEATS = 5
# The score histograms' and PSI's bins: tenths, each centred on its tenth (0.15 to 0.25
# holds 0.2), so a model whose scores come in steps (a forest's vote shares, rounded
# scores) keeps each score in the bin of the value it rounds.
_EDGES = np.array([0.0, *np.arange(0.05, 1.0, 0.1), 1.0])
# A regressor's predicted values are binned on the champion's deciles: its values have no
# fixed range, and tenths of the champion's own answers put a tenth of them in each bin.
_DECILES = np.linspace(0.1, 0.9, 9)


@dataclass(frozen=True)
class ShadowPolicy:
    """The gate's thresholds (the ``shadow_policy`` parameter, merged by name onto these).

    Attributes:
        max_disagreement: The share of rows whose predicted class may differ.
        max_relative_difference: Regressors: how far the challenger's predicted values
            may sit from the champion's, as mean ``|challenger - champion|`` over the
            champion's mean absolute deviation (0.25: a quarter of how much the champion's
            answers vary from row to row; free of the target's scale).
        max_score_shift: The PSI between the two models' scores (on 11 fixed bins of
            [0, 1] centred on its tenths; class shares for more classes; a regressor's
            predicted values on the champion's deciles) at which the gate fails.
        max_metric_drop: How much lower (absolute) the online accuracy may be; for
            regressors, how much higher the online MAE may be, as a fraction of the
            champion's (0.02: 2 % more error).
        max_latency_ratio: The challenger's batch scoring time per row, as a multiple of
            the champion's, above which the gate fails.
        latency_floor_ms: Milliseconds per row under which the challenger's scoring time
            is not judged, whatever its ratio (a forest scores in microseconds per row,
            tens of times a linear model's, and both vanish beside a request's cost).
        confidence: The share of same-quality challengers the statistical tests pass.
        min_rows: Windows (and segments) with fewer rows are reported, not judged.
    """

    max_disagreement: float = 0.10
    max_relative_difference: float = 0.25
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
        for name in ("latency_floor_ms", "max_relative_difference"):
            value = getattr(self, name)
            if not is_number(value) or not math.isfinite(value) or value < 0:
                raise ConveyorError(f"shadow policy {name} {value!r}: expected a number, 0 or more")
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
        batch_rows: Rows scored per ``predict_proba`` call (``predict`` for regressors).
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
class Difference:
    """How far a regressor challenger's predicted values sit from the champion's, in one
    group (``all``: every row); checks itself.

    Attributes:
        segment: The group.
        rows: Its rows.
        mean_absolute_difference: Mean ``|challenger - champion|`` over them, in the
            target's units.
        relative: That, over the champion's mean absolute deviation over all rows (NaN
            when the champion answers one value for every row: no scale to judge by).
        lower: The two-sided interval of ``relative`` at the policy's confidence.
        upper: Its upper end.
        p_value: One-sided, of as large a ``relative``, were it exactly
            ``max_relative_difference``.
        judged: Whether the group was judged (``min_rows`` rows and a scale).
        failed: Whether it failed.
    """

    segment: str
    rows: int
    mean_absolute_difference: float
    relative: float
    lower: float
    upper: float
    p_value: float
    judged: bool
    failed: bool

    def __post_init__(self) -> None:
        if self.rows < 0 or (self.failed and not self.judged):
            raise ConveyorError(
                f"shadow difference {self.segment!r}: {self.rows} rows, failed without "
                "being judged, or fewer than none"
            )


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
class ValueReplay:
    """What two regressors said of each replayed row; checks itself.

    Attributes:
        champion: The champion's predicted value per row (finite floats).
        challenger: The challenger's, on the same rows.
        timing: Batch scoring time of each model.
    """

    champion: np.ndarray
    challenger: np.ndarray
    timing: Timing

    def __post_init__(self) -> None:
        if self.champion.ndim != 1 or self.champion.shape != self.challenger.shape:
            raise ConveyorError(
                f"value replay: {self.champion.shape} champion and {self.challenger.shape} "
                "challenger predictions; expected one value per row from each"
            )


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
        histograms: ``edges`` and each model's ``counts`` of its scores (binary models)
            or predicted values (regressors, on the champion's deciles).
        top_rows: The rows where the models differ most (``show_rows`` of them).
        task: The models' task: ``classification`` or ``regression``.
        differences: Regressors' relative differences, overall first, then per segment
            (in place of ``disagreement``).
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
    task: str = CLASSIFICATION
    differences: tuple[Difference, ...] = ()

    def __post_init__(self) -> None:
        if self.passed == bool(self.failures):
            raise ConveyorError("shadow report: the verdict must follow its failures")
        if not self.judged and self.failures:
            raise ConveyorError("shadow report: an unjudged replay holds failures")
        if self.task not in TASKS:
            raise ConveyorError(f"shadow report: task {self.task!r} is not one of {TASKS}")
        if self.differences if self.task == CLASSIFICATION else self.disagreement:
            raise ConveyorError(
                "shadow report: classifiers are compared by disagreement, regressors by "
                "difference, not the other way round"
            )

    def metrics(self) -> dict[str, float]:
        """What is logged as KFP Metrics: the overall disagreement, PSI, online differences
        and the latency ratio."""
        values: dict[str, float] = {"passed": float(self.passed), "rows": float(self.rows)}
        if self.disagreement:
            values["disagreement"] = self.disagreement[0].rate
        if self.differences:  # a regressor's, in its place
            values["relative_difference"] = self.differences[0].relative
            values["mean_absolute_difference"] = self.differences[0].mean_absolute_difference
        if self.shifts:
            values["score_psi"] = self.shifts[0].psi
            if self.task == CLASSIFICATION:
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
        if self.task == CLASSIFICATION:  # a classifier's summary reads as it always has
            del data["task"], data["differences"]
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
    a window that ended days ago. A classifier's log or a regressor's (the rows'
    ``attrs["conveyor.task"]`` says which, for ``compare_models``). Refuses a log of another
    model, a corrupt file, and a window without a replayable row."""
    files = window_files(log_uri, settings.days)
    notes: list[str] = []
    if inputs is not None:
        files, notes = _files_with(files, list(inputs), log_uri)
    wanted = None if inputs is None else [*inputs, ID_COLUMN, TIME_COLUMN, MODEL_COLUMN]
    logged = read_log(files, wanted, task=None)  # either task: compare_models checks it
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
    rows = timed.select([*logged.input_names, ID_COLUMN, TIME_COLUMN]).to_pandas()
    rows.attrs[TASK_KEY] = logged.task
    return rows, notes


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


def replay_values(
    champion: TrainedModel,
    challenger: TrainedModel,
    rows: pd.DataFrame,
    batch_rows: int,
    clock: Callable[[], float] = time.perf_counter,
) -> ValueReplay:
    """Two regressors' predicted values on ``rows``, batch by batch, and their scoring times.

    Raises:
        ConveyorError: A model's feature columns are not all in ``rows``, a value a model
            cannot read, or a prediction that is not a finite number.
    """
    models = {"champion": champion, "challenger": challenger}
    inputs = {role: _inputs(model, rows, role) for role, model in models.items()}
    values = {
        role: np.concatenate(
            [
                _predict_values(models[role], inputs[role].iloc[start : start + batch_rows], role)
                for start in range(0, len(rows), batch_rows)
            ]
        )
        for role in models
    }
    timing = _timing(models, inputs, clock, method="predict")
    return ValueReplay(values["champion"], values["challenger"], timing)


def _predict_values(model: TrainedModel, batch: pd.DataFrame, role: str) -> np.ndarray:
    try:
        values = np.asarray(model.pipeline.predict(batch), dtype=float).ravel()
    except (ValueError, TypeError) as error:
        raise ConveyorError(
            f"the {role} cannot score the logged rows: {first_line(error)}"
        ) from None
    odd = ~np.isfinite(values)
    if odd.any():  # a NaN would make every mean, interval and PSI NaN, and pass unseen
        raise ConveyorError(
            f"the {role} answered {int(odd.sum()):,} logged row(s) with no finite number "
            f"(e.g. {values[odd][0]})"
        )
    return values


def _timing(
    models: dict[str, TrainedModel],
    inputs: dict[str, pd.DataFrame],
    clock: Callable[[], float],
    method: str = "predict_proba",
) -> Timing:
    """Each model's fastest of ``_TIMING_REPEATS`` timed calls of ``method`` on the same
    rows, per row, after an untimed warm-up call, the order alternating: one timed call is
    noise (a ratio between 1.2x and 8.7x for the same pair, measured)."""
    rows = min(len(next(iter(inputs.values()))), _TIMING_ROWS)
    batches = {role: table.iloc[:rows] for role, table in inputs.items()}
    for role, model in models.items():
        getattr(model.pipeline, method)(batches[role])
    fastest = {role: math.inf for role in models}
    order = list(models)
    for _ in range(_TIMING_REPEATS):
        for role in order:
            began = clock()
            getattr(models[role].pipeline, method)(batches[role])
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


# Judging two regressors.


def judge_difference(
    champion: np.ndarray,
    challenger: np.ndarray,
    segments: np.ndarray | None,
    policy: ShadowPolicy,
    overall_tests: int = 1,
) -> list[Difference]:
    """The relative difference over all rows, then in each segment value (sorted) of at
    least ``min_rows`` rows: mean ``|challenger - champion|`` over the group, divided by the
    champion's mean absolute deviation over all rows (one yardstick for every segment: a
    segment's own spread may be near nothing). A group is failed when the one-sided test of
    the ratio against ``max_relative_difference`` rejects at its level
    (``ShadowPolicy.levels``); the interval is the delta method's for a ratio of means of
    the same rows."""
    gaps = np.abs(challenger - champion)
    # A constant champion has no spread: nothing to scale by (its deviations would be
    # rounding error, whatever the challenger does), floating-point jitter included.
    constant = np.ptp(champion) <= 1e-9 * float(np.abs(champion).max())
    centred = champion - champion.mean()
    spread = np.zeros_like(champion) if constant else np.abs(centred)
    # The mean absolute deviation's influence counts its centre being estimated too: for
    # skewed predictions (more below the mean than above) leaving it out understated the
    # noise, and a log-normal champion (sigma 1) at the bound failed 13 % of runs, not 5 %.
    below = float(np.mean(centred < 0) - np.mean(centred > 0))
    influence = spread + below * centred
    groups = [(ALL, np.ones(len(gaps), dtype=bool))]
    if segments is not None:
        values, sizes = np.unique(segments, return_counts=True)
        groups += [
            (str(value), segments == value)
            for value, size in zip(values, sizes, strict=True)
            if size >= policy.min_rows
        ]
    overall_level, segment_level = policy.levels(overall_tests, len(groups) - 1)
    z = NormalDist().inv_cdf(0.5 + policy.confidence / 2)
    results = []
    for index, (name, mask) in enumerate(groups):
        ratio, error = _ratio(gaps, spread, mask, influence)
        size = int(mask.sum())
        p_value = _p_above(ratio, error, policy.max_relative_difference)
        judged = size >= policy.min_rows and math.isfinite(ratio)
        failed = judged and p_value <= (segment_level if index else overall_level)
        mean_gap = float(gaps[mask].mean()) if size else math.nan
        results.append(
            Difference(
                name, size, mean_gap, ratio, ratio - z * error, ratio + z * error, p_value,
                judged, bool(failed),
            )
        )  # fmt: skip
    return results


def _ratio(
    top: np.ndarray, bottom: np.ndarray, mask: np.ndarray, influence: np.ndarray | None = None
) -> tuple[float, float]:
    """``mean(top[mask]) / mean(bottom)`` and its standard error by the delta method:
    ``[var_g(top) / n_g + r² var(b) / n - 2 r cov_g(top, b) / n] / mean(bottom)²``, ``b``
    each row's ``influence`` on ``mean(bottom)`` (``bottom`` itself unless given; the
    group's rows are among all, hence the covariance). NaN and infinity when ``bottom``
    averages 0; infinity for fewer than 2 rows."""
    part = top[mask]
    scale = float(bottom.mean()) if len(bottom) else 0.0
    if scale <= 0 or part.size == 0:
        return math.nan, math.inf
    ratio = float(part.mean()) / scale
    if part.size < 2:
        return ratio, math.inf
    weight = bottom if influence is None else influence
    covariance = float(np.cov(part, weight[mask])[0, 1])
    variance = (
        part.var(ddof=1) / part.size
        + ratio**2 * weight.var(ddof=1) / len(weight)
        - 2 * ratio * covariance / len(weight)
    )
    return ratio, math.sqrt(max(float(variance), 0.0)) / scale


def _p_above(estimate: float, error: float, bound: float) -> float:
    """The one-sided normal p-value of ``estimate`` (standard error ``error``) against
    ``bound``; 1 for an estimate that is not a number."""
    if not math.isfinite(estimate):
        return 1.0
    if error == 0:  # identical predictions: no noise, the estimate is exact
        return 0.0 if estimate > bound else 1.0
    return 1 - NormalDist().cdf((estimate - bound) / error)


def judge_errors(
    truth: np.ndarray,
    champion: np.ndarray,
    challenger: np.ndarray,
    policy: ShadowPolicy,
    level: float,
) -> list[OnlineComparison]:
    """MAE and RMSE of two regressors on labelled rows (``truth``, and each model's
    predictions of those rows), with the paired difference (challenger - champion) and its
    interval. The MAE is judged, one-sided at ``level``, on its relative increase: failed
    when even its bound says the challenger's MAE is more than ``max_metric_drop`` (a
    fraction) above the champion's. RMSE is reported only: a squared error's per-row
    differences are as skewed as log loss's (an MAE's are bounded by the predictions' gap).
    """
    rows = len(truth)
    if rows == 0:
        return []
    two_sided = NormalDist().inv_cdf(0.5 + policy.confidence / 2)
    one_sided = NormalDist().inv_cdf(1 - level)
    ours, theirs = np.abs(truth - champion), np.abs(truth - challenger)
    ratio, error = _ratio(theirs - ours, ours, np.ones(rows, dtype=bool))
    mae = float(ours.mean())
    judged = rows >= policy.min_rows and math.isfinite(ratio)
    failed = judged and ratio - one_sided * error > policy.max_metric_drop
    # The MAE's interval is the relative increase's, in the target's units.
    by_mae = OnlineComparison(
        "mae", rows, mae, float(theirs.mean()), float(theirs.mean()) - mae,
        (ratio - two_sided * error) * mae, (ratio + two_sided * error) * mae, judged,
        bool(failed),
    )  # fmt: skip
    rmse_ours, rmse_theirs = _rmse(ours), _rmse(theirs)
    spread = _rmse_difference_error(ours, theirs) * two_sided
    difference = rmse_theirs - rmse_ours
    by_rmse = OnlineComparison(
        "rmse", rows, rmse_ours, rmse_theirs, difference, difference - spread,
        difference + spread, False, False,
    )  # fmt: skip
    return [by_mae, by_rmse]


def _rmse(errors: np.ndarray) -> float:
    return math.sqrt(float(np.mean(errors**2)))


def _rmse_difference_error(ours: np.ndarray, theirs: np.ndarray) -> float:
    """The standard error of ``RMSE(theirs) - RMSE(ours)`` on the same rows by the delta
    method (each row's ``e² / (2 RMSE)`` paired); infinity when an RMSE is 0 or a row alone."""
    rmse_ours, rmse_theirs = _rmse(ours), _rmse(theirs)
    if len(ours) < 2 or rmse_ours == 0 or rmse_theirs == 0:
        return math.inf
    influence = theirs**2 / (2 * rmse_theirs) - ours**2 / (2 * rmse_ours)
    return float(influence.std(ddof=1) / math.sqrt(len(ours)))


def _value_edges(champion: np.ndarray) -> np.ndarray:
    """The inner edges of the predicted values' bins: the champion's distinct deciles."""
    return np.unique(np.quantile(champion, _DECILES))


def _value_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """How many ``values`` fall in each bin between ``edges`` (open-ended at both ends; a
    value on an edge in the bin above it, for both models alike)."""
    return np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)


def _value_shifts(
    replayed: ValueReplay, segments: np.ndarray | None, names: list[str], edges: np.ndarray
) -> list[ScoreShift]:
    """The predicted values' PSI over all rows and in each segment of ``names``, on the
    champion's deciles over all rows (``edges``), with both means and the mean absolute
    difference (in the target's units)."""
    results = []
    for name in names:
        mask = np.ones(len(replayed.champion), bool) if name == ALL else segments == name
        ours, theirs = replayed.champion[mask], replayed.challenger[mask]
        shift = _psi(_value_counts(ours, edges), _value_counts(theirs, edges))
        results.append(
            ScoreShift(
                name, len(ours), shift, float(ours.mean()), float(theirs.mean()),
                float(np.abs(theirs - ours).mean()),
            )
        )  # fmt: skip
    return results


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
    judges the challenger: two classifiers or two regressors (``compare_regressors``), of
    the log's task (``rows.attrs["conveyor.task"]``; without it, the champion's).

    Raises:
        ConveyorError: The segment column is not logged; the models and the log are not
            all of one task; a model cannot read the rows; the labels cannot be read, are
            not the models' classes (numbers, for regressors).
    """
    if settings.segment and settings.segment not in rows.columns:
        raise ConveyorError(
            f"segment column {settings.segment!r} is not in the log's inputs; the log holds "
            f"{', '.join(c for c in rows.columns if not c.startswith('conveyor.'))}"
        )
    task = _shared_task(champion, challenger, rows)
    days = pd.to_datetime(rows[TIME_COLUMN], utc=True)
    window = (days.min().date().isoformat(), days.max().date().isoformat())
    if len(rows) < policy.min_rows:
        return not_judged(
            f"Not judged: {len(rows):,} logged rows in the window, fewer than the "
            f"{policy.min_rows:,} the gate judges on (min_rows); the canary judges the "
            "challenger on live traffic",
            policy, rows=len(rows), window=window, notes=tuple(notes), task=task,
        )  # fmt: skip
    if task == REGRESSION:
        return compare_regressors(
            champion, challenger, rows, policy, settings, labels_uri, clock, notes
        )
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


def _shared_task(champion: TrainedModel, challenger: TrainedModel, rows: pd.DataFrame) -> str:
    """The task of the log (``rows.attrs``; the champion's when unsaid), which both models
    must answer: a model answering another kind of value cannot be compared row by row,
    and passing it unjudged would change every client's answers unseen, so it is refused
    and ``shadow_replay=false`` registers it deliberately."""
    logged = rows.attrs.get(TASK_KEY, champion.card.task)
    if champion.card.task != logged:
        raise ConveyorError(
            f"the champion is a {champion.card.task} model but its payload log is a {logged} "
            "model's: the log was not written by this champion"
        )
    if challenger.card.task != logged:
        raise ConveyorError(
            f"the challenger is a {challenger.card.task} model, the champion a {logged} one: a "
            "shadow replay compares models of the same task; set shadow_replay=false to "
            "register it without one"
        )
    return logged


def compare_regressors(
    champion: TrainedModel,
    challenger: TrainedModel,
    rows: pd.DataFrame,
    policy: ShadowPolicy,
    settings: ShadowSettings,
    labels_uri: str = "",
    clock: Callable[[], float] = time.perf_counter,
    notes: Sequence[str] = (),
) -> ShadowReport:
    """``compare_models`` for two regressors, on at least ``min_rows`` rows: relative
    difference, prediction shift, online MAE and RMSE, scoring time.

    Raises:
        ConveyorError: A model cannot read the rows or answers no finite number; labels
            that cannot be read or are not numbers.
    """
    days = pd.to_datetime(rows[TIME_COLUMN], utc=True)
    window = (days.min().date().isoformat(), days.max().date().isoformat())
    replayed = replay_values(champion, challenger, rows, settings.batch_rows, clock)
    segments = _segments(rows, settings.segment)
    truth, joined, label_notes = _numeric_labels(rows, labels_uri, settings)
    notes = [*notes, *label_notes, *_small_segments(segments, policy.min_rows)]
    online_tests = len(JUDGED_ERRORS) if len(joined) >= policy.min_rows else 0
    differences = judge_difference(
        replayed.champion, replayed.challenger, segments, policy, 1 + online_tests
    )
    if not math.isfinite(differences[0].relative):
        notes.append(
            f"the champion answers {replayed.champion[0]:.6g} for every row: the relative "
            "difference has no scale and is not judged"
        )
    level, _ = policy.levels(1 + online_tests, len(differences) - 1)
    online = judge_errors(
        truth, replayed.champion[joined], replayed.challenger[joined], policy, level
    )
    edges = _value_edges(replayed.champion)
    shifts = _value_shifts(replayed, segments, [d.segment for d in differences], edges)
    failures = _regression_failures(differences, shifts, online, replayed.timing, policy)
    return ShadowReport(
        passed=not failures,
        reason=_regression_reason(failures, differences[0], len(rows)),
        judged=True,
        policy=policy,
        failures=tuple(failures),
        rows=len(rows),
        window=window,
        shifts=tuple(shifts),
        online=tuple(online),
        timing=replayed.timing,
        notes=tuple(notes),
        histograms=_value_histograms(replayed, edges),
        top_rows=tuple(_top_value_rows(rows, replayed, settings.show_rows)),
        task=REGRESSION,
        differences=tuple(differences),
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
    matched, joined, notes = _joined_labels(rows, labels_uri, settings)
    if matched.empty:
        return joined, joined, notes
    unknown = sorted(set(matched["label"]) - set(classes))
    if unknown:
        raise ConveyorError(
            f"{labels_uri}: label(s) {unknown[:5]} are not classes of the models ({classes})"
        )
    truth = np.array([classes.index(label) for label in matched["label"]], dtype=np.int64)
    return truth, joined, notes


def _numeric_labels(
    rows: pd.DataFrame, labels_uri: str, settings: ShadowSettings
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The labels as numbers (a regressor's target values) and the replayed rows they
    belong to; notes on what did not join. Refuses a label that is not a finite number."""
    matched, joined, notes = _joined_labels(rows, labels_uri, settings)
    if matched.empty:
        return np.array([], dtype=float), joined, notes
    text = matched["label"].astype(str)
    values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=float)
    odd = ~np.isfinite(values)
    if odd.any():
        shown = list(dict.fromkeys(text[odd]))[:5]
        raise ConveyorError(
            f"{labels_uri}: {int(odd.sum()):,} label(s) are not finite numbers (e.g. "
            f"{shown}); a regression model's labels are its target's values"
        )
    return values, joined, notes


def _joined_labels(
    rows: pd.DataFrame, labels_uri: str, settings: ShadowSettings
) -> tuple[pd.DataFrame, np.ndarray, list[str]]:
    """The labels (``id``, ``label`` as text) matching a replayed row's ``conveyor.id``, the
    rows they belong to (the latest row of an id logged twice), and notes on what did not
    join; no labels and a note when none is given or none matches."""
    empty = np.array([], dtype=np.int64)
    if not labels_uri:
        return _NO_LABELS, empty, ["no labels given: online metrics not compared"]
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
            _NO_LABELS,
            empty,
            [
                f"none of the {len(labels):,} labels matches a replayed row's {ID_COLUMN} (labels "
                f"not arrived for the window yet, or another id column than "
                f"{settings.id_column!r}): online metrics not compared"
            ],
        )
    joined = position[matched["id"]].to_numpy()
    notes = []
    if len(matched) < len(labels):
        notes.append(f"{len(labels) - len(matched):,} labels match no replayed row")
    return matched, joined, notes


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
    return failures + _latency_failures(timing, policy)


def _latency_failures(timing: Timing, policy: ShadowPolicy) -> list[str]:
    per_row_ms = timing.challenger_s_per_row * 1000
    if timing.ratio > policy.max_latency_ratio and per_row_ms > policy.latency_floor_ms:
        return [
            f"batch scoring time {timing.ratio:.2f}x the champion's, above "
            f"{policy.max_latency_ratio:g}x (and {per_row_ms:.3g} ms a row)"
        ]
    return []


def _regression_failures(
    differences: list[Difference],
    shifts: list[ScoreShift],
    online: list[OnlineComparison],
    timing: Timing,
    policy: ShadowPolicy,
) -> list[str]:
    failures = [
        f"relative difference {'over all rows' if d.segment == ALL else f'in {d.segment}'} "
        f"{d.relative:.1%} above {policy.max_relative_difference:.1%} (mean |difference| "
        f"{d.mean_absolute_difference:.4g}, p {d.p_value:.2g})"
        for d in differences
        if d.failed
    ]
    if shifts and shifts[0].psi >= policy.max_score_shift:
        failures.append(
            f"predicted-value PSI {shifts[0].psi:.3g} at or above {policy.max_score_shift:g}"
        )
    failures += [
        f"online {o.metric} {o.challenger:.4g} against the champion's {o.champion:.4g} "
        f"(difference {o.difference:+.4g}, {o.difference / o.champion:+.1%}, interval "
        f"{o.lower:+.4g} to {o.upper:+.4g}) higher by more than {policy.max_metric_drop:.1%} "
        "of the champion's"
        for o in online
        if o.failed
    ]
    return failures + _latency_failures(timing, policy)


def _regression_reason(failures: list[str], overall: Difference, rows: int) -> str:
    if failures:
        return f"Shadow gate failed on {rows:,} logged rows: {'; '.join(failures)}"
    if not math.isfinite(overall.relative):
        return (
            f"Shadow gate passed on {rows:,} logged rows: the predictions differ by "
            f"{overall.mean_absolute_difference:.4g} on average (the champion's are constant: "
            "not judged)"
        )
    return (
        f"Shadow gate passed on {rows:,} logged rows: the predictions differ by "
        f"{overall.relative:.1%} of the champion's mean absolute deviation (interval "
        f"{overall.lower:.1%} to {overall.upper:.1%}; mean |difference| "
        f"{overall.mean_absolute_difference:.4g})"
    )


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


def _value_histograms(replayed: ValueReplay, edges: np.ndarray) -> dict[str, list[float]]:
    """Both models' predicted values counted on the champion's deciles; the outer edges
    are the lowest and highest value either model answered."""
    values = np.concatenate([replayed.champion, replayed.challenger])
    return {
        "edges": [float(values.min()), *edges.tolist(), float(values.max())],
        "champion": _value_counts(replayed.champion, edges).astype(float).tolist(),
        "challenger": _value_counts(replayed.challenger, edges).astype(float).tolist(),
    }


def _top_value_rows(rows: pd.DataFrame, replayed: ValueReplay, count: int) -> list[dict[str, Any]]:
    """The ``count`` rows whose predicted values differ most."""
    if count == 0:
        return []
    gap = replayed.challenger - replayed.champion
    chosen = np.argsort(-np.abs(gap), kind="stable")[:count]
    inputs = [c for c in rows.columns if c not in (TIME_COLUMN,)]
    shown = []
    for index in chosen:
        entry = {name: plain(rows[name].iloc[index]) for name in inputs}
        entry["champion"] = float(replayed.champion[index])
        entry["challenger"] = float(replayed.challenger[index])
        entry["difference"] = float(gap[index])
        shown.append(entry)
    return shown


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
