"""Online quality: labels joined to the payload log's predictions, metrics with confidence
intervals per day, revision and segment, judged against the champion's offline evaluation.

The join is on ``conveyor.id``. Every count that does not reach a metric is kept in
``Coverage``: logged rows without a prediction (written before predictions were logged),
logged rows without a label, rows logged again under an id (the latest is joined), labels
without a logged row, and late labels (which are joined and counted).

Intervals (two-sided, ``confidence``, 95 % by default):

- accuracy, precision, recall, false-positive rate: Wilson score intervals on the counts;
- F1: the delta method on the multinomial counts (TP, FP, FN, TN), whose variance has the
  closed form ``4·TP·(FP+FN)·(TP+FP+FN) / (2·TP+FP+FN)^4``; the interval is clipped to [0, 1];
- ROC-AUC: DeLong's variance, computed with midranks (Sun and Xu's O(n log n) form) for
  every group at once;
- log loss: mean ± z·sd/√n of the per-row losses.

Multi-class models get accuracy and log loss as above, and macro precision, recall and F1
(the mean over the classes seen in the group, scikit-learn's convention), whose intervals
are normal ones from the per-class variances taken as independent (an approximation);
ROC-AUC and the false-positive rate are left undefined for them.

The offline side is the champion's evaluation split, as train recorded it
(``scores.parquet``: what the model said of each row, and its label): the same metrics and
intervals are computed on it overall and, when the segment column is among its inputs, per
segment. Each judged group is compared with the offline value of the *same* group: a
segment with its own offline counterpart (a segment whose base rate differs is expected
to score differently), overall and each revision with the overall one. A segment the
evaluation split holds fewer than ``min_rows`` rows of (or none) is shown, not judged.

A metric is *degraded* when the difference d = online - offline is worse than the policy
margin beyond both samples' noise: for a metric better higher, when d + sqrt(h_on² +
h_off²) < -margin, where h_on is the online interval's upper half-width and h_off the
offline interval's lower one (mirrored for the false-positive rate and log loss, better
lower). Each half-width is z times that sample's standard error (exactly, for the normal
intervals; near it, for Wilson's), so the bound is d's one-sided bound at z with the two
samples' variances added. Overall, each revision and each segment are judged (groups of
at least ``min_rows`` joined rows); days are reported, not judged: a day is a slice of the
same window. A run judges many metrics (7 per group), so the intervals a metric is judged
by are wider than those reported: z is one-sided at ``1 - (1 - confidence) / m`` for the
run's m judged metrics (Bonferroni).

Error rate: a run of an unchanged model on an unchanged population raises a false alarm at
most ``1 - confidence`` of the time (5 % by default; Bonferroni bounds it even were every
metric at the margin's edge). A seeded simulation in the tests measures it per run, each
run judging what a monitoring run does (overall, 2 revisions, 3 segments of different base
rates: 42 metrics, 3,000 labelled rows, against a fresh 1,000-row evaluation split): 1.5 %
of 200 runs. Judged with the offline values exact and every segment against the overall
one, each of those runs alarms; with exact values and no segments, about a quarter do at
1,000 evaluation rows. Evaluation groups of a few dozen rows (with few positives, whose
DeLong variance is itself noisy) bring the rate near 5 %.

Without the champion's labelled evaluation scores (a champion trained before train recorded
them, or offline values given as numbers), the offline values are taken as exact and every
segment is judged against the overall one; the report's notes say so. A segment whose base
rate differs from the whole can then be flagged on an unchanged model.

A regression model's log (``conveyor.task`` = ``regression`` in its files' metadata, its
``conveyor.predicted_value`` the number answered) is judged on its errors e = predicted -
true, whose labels must be numbers: RMSE, MAE, R² and, in a group with no true value of
zero, MAPE (a fraction), scikit-learn's definitions. Their intervals, all closed forms
computed for every group at once (a bootstrap would cost its resamples per group, per z,
and a seed, for intervals the normal theory below gives well at a few hundred rows):

- MAE and MAPE: mean ± z·sd/√n of the per-row |e| and |e|/|y|, their lower bound at 0;
- RMSE: the delta method on the mean squared error m (its sd s from the per-row e²):
  √m ± z·s/(2·√m·√n), the lower bound at 0; symmetric, so that its half-width is z times
  a standard error, as the judging below takes it;
- R² = 1 - mean(e²)/mean((y - ȳ)²): the delta method on that ratio of two means (their
  variances and covariance from the per-row values; ȳ taken as known), the upper bound at 1.

At 300 rows of normal errors the 95 % intervals covered the true value in 93.8 % (RMSE),
94.4 % (MAE), 95.2 % (R²) and 93.7 % (MAPE) of 2,000 seeded groups (a test checks 93-97 %).

RMSE and MAE are in the target's units, so the margin is a fraction of their offline value
for them (0.02: worse by more than 2 %); for R² and MAPE, as for a classifier's metrics, it
is absolute. They are judged as above: each group against its offline counterpart, both
samples' noise counted, at the Bonferroni-shared z (in each metric's direction: RMSE, MAE
and MAPE better lower, R² higher). Error rates, measured by seeded simulations in the
tests (each run judges overall and 2 revisions, rmse, mae, r2 and mape each: 12 metrics,
against a fresh 1,000-row evaluation split; normal errors): an unchanged model raised a
false alarm in 2 of 300 runs of 300 labelled rows (0.7 %; 6 of 1,000 in a longer run;
at most 5 % by the Bonferroni bound); errors 1.5x as large were found in 200 of 200 runs
of 300 labelled rows and 197 of 200 of 100. The normal-theory intervals assume errors
whose tails are not too heavy: with Student-t errors of 3 degrees of freedom the RMSE
interval covers about 75 % at 300 rows, not 95 % (the run's false alarms stayed at 0.2 %,
Bonferroni's slack absorbing it, in a simulation of 500 runs).

Ids are text as written: a CSV labels table's id column is read as text (``00000002``
stays ``00000002``), a Parquet one's integers as their decimal text. The log's
``conveyor.id`` is matched as the server wrote it; a client that sent ``1.0`` where the
labels say ``1`` must send its ids as text.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from conveyor.components.core.data.task import CLASSIFICATION, REGRESSION
from conveyor.components.core.errors import ConveyorError, first_line
from conveyor.components.core.intervals import wilson_interval
from conveyor.components.core.serving.payload_log import ID as ID_COLUMN
from conveyor.components.core.serving.payload_log import MODEL as MODEL_COLUMN
from conveyor.components.core.serving.payload_log import POSITIVE_CLASS as POSITIVE_COLUMN
from conveyor.components.core.serving.payload_log import PREDICTED_VALUE as VALUE_COLUMN
from conveyor.components.core.serving.payload_log import PREDICTION as PREDICTION_COLUMN
from conveyor.components.core.serving.payload_log import PROBABILITY_PREFIX, read_log, score_column
from conveyor.components.core.serving.payload_log import REVISION as REVISION_COLUMN
from conveyor.components.core.serving.payload_log import SCORE as SCORE_COLUMN
from conveyor.components.core.serving.payload_log import TIME as TIME_COLUMN
from conveyor.components.core.training.metrics import (
    METRIC_DIRECTIONS,
    REGRESSION_METRICS,
    metric_task,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "ALL_METRICS",
    "LOG_LOSS_EPS",
    "METRICS",
    "REGRESSION_METRICS",
    "SCALED_METRICS",
    "Coverage",
    "Degradation",
    "GroupQuality",
    "Interval",
    "QualityReport",
    "QualitySettings",
    "as_micros",
    "assess_quality",
    "champion_scores",
    "check_model",
    "delong_auc",
    "file_columns",
    "group_quality",
    "has_labels",
    "metric_margin",
    "offline_metrics",
    "read_labels",
    "read_offline",
    "regression_quality",
    "window_bounds",
    "window_files",
]

LABEL_TIME_COLUMN = "time"
NO_VALUE = "(none)"

METRICS = (
    "accuracy",
    "precision",
    "recall",
    "false_positive_rate",
    "f1",
    "roc_auc",
    "log_loss",
)
# A regression model's, computed where defined (see the module's doc).
ALL_METRICS = (*METRICS, *REGRESSION_METRICS)
# In the target's units: judged with the margin as a fraction of the offline value.
SCALED_METRICS = ("rmse", "mae")
# +1: better higher; -1: better lower (evaluate's: every metric here is one of its).
DIRECTIONS = METRIC_DIRECTIONS
DIMENSIONS = ("overall", "day", "revision", "segment")
JUDGED = ("overall", "revision", "segment")
_MICROS_PER_DAY = 86_400_000_000
LOG_LOSS_EPS = float(np.finfo(np.float64).eps)  # scikit-learn's log_loss clips at this


@dataclass(frozen=True)
class QualitySettings:
    """How labels are read and metrics judged.

    Attributes:
        id_column: The labels table's id column (matched with ``conveyor.id``).
        label_column: The labels table's label column.
        segment: A column (logged input, else in the labels table) to group by; empty: none.
        days: The window: the last this many UTC days of the log, ending with its newest
            prediction; a label more than this many days after its prediction is late. 0
            takes every logged row and calls no label late.
        margin: How far (absolute) an interval must lie past the offline value to degrade;
            for rmse and mae (in the target's units) a fraction of the offline value.
        confidence: The intervals' two-sided confidence level.
        min_rows: Groups with fewer joined rows are reported but not judged.
    """

    id_column: str = "id"
    label_column: str = "label"
    segment: str = ""
    days: int = 7
    margin: float = 0.02
    confidence: float = 0.95
    min_rows: int = 30

    def __post_init__(self) -> None:
        if not self.id_column or not self.label_column:
            raise ConveyorError("the labels' id and label column names must not be empty")
        if self.days < 0:
            raise ConveyorError(f"days must be 0 (all) or more, not {self.days}")
        if not 0 <= self.margin < 1:
            raise ConveyorError(f"margin must be at least 0 and below 1, not {self.margin}")
        if not 0.5 <= self.confidence < 1:
            raise ConveyorError(f"confidence must be in [0.5, 1), not {self.confidence}")
        if self.min_rows < 1:
            raise ConveyorError(f"min_rows must be 1 or more, not {self.min_rows}")

    @property
    def z(self) -> float:
        return NormalDist().inv_cdf(0.5 + self.confidence / 2)


@dataclass(frozen=True)
class Interval:
    """A metric's value in one group, its interval, and the rows it rests on."""

    value: float
    lower: float
    upper: float
    rows: int  # the denominator: rows, predicted positives, true positives, negatives...
    method: str


@dataclass(frozen=True)
class GroupQuality:
    """Every defined metric of one group: ``dimension`` overall/day/revision/segment."""

    dimension: str
    group: str
    rows: int
    metrics: dict[str, Interval]


@dataclass(frozen=True)
class Degradation:
    """A judged metric worse online than offline by more than the margin.

    Attributes:
        dimension: overall, revision or segment.
        group: The group's name (``all`` overall).
        metric: One of ``METRICS``.
        interval: The online value, its interval at the judging level, its rows.
        offline: The offline value it was compared with.
        margin: The policy margin, absolute (for rmse and mae, the settings' fraction of
            the offline value: see ``metric_margin``).
        tests: The metrics judged in the run, which the judging level accounts for.
        offline_group: The offline group compared with: ``all`` (the whole evaluation
            split) or the segment's own value.
        offline_interval: The offline value's interval at the judging level; None when the
            offline value was taken as exact.
        bound: The difference online - offline at its one-sided bound (both samples'
            noise counted): below -margin (better higher) or above margin (better lower).
    """

    dimension: str
    group: str
    metric: str
    interval: Interval
    offline: float
    margin: float
    tests: int
    offline_group: str = "all"
    offline_interval: Interval | None = None
    bound: float = math.nan

    def describe(self) -> str:
        where = "overall" if self.dimension == "overall" else f"{self.dimension} {self.group}"
        side = "below" if DIRECTIONS[self.metric] > 0 else "above"
        i = self.interval
        if self.offline_interval is None:
            return (
                f"{self.metric} {where}: {i.value:.4f}, interval [{i.lower:.4f}, {i.upper:.4f}] "
                f"(Bonferroni over {self.tests} judged metrics) lies wholly {side} the offline "
                f"{self.offline:.4f} by more than {self.margin:g} ({i.rows:,} rows)"
            )
        o = self.offline_interval
        against = "overall" if self.offline_group == "all" else f"of {self.offline_group}"
        return (
            f"{self.metric} {where}: {i.value:.4f} [{i.lower:.4f}, {i.upper:.4f}] "
            f"({i.rows:,} rows) against the offline {self.offline:.4f} {against} "
            f"[{o.lower:.4f}, {o.upper:.4f}] ({o.rows:,} evaluation rows): the difference "
            f"{i.value - self.offline:+.4f}, {self.bound:+.4f} at its bound (Bonferroni over "
            f"{self.tests} judged metrics, both samples' noise), is {side} "
            f"{-DIRECTIONS[self.metric] * self.margin:+g}"
        )


@dataclass(frozen=True)
class Coverage:
    """What reached the metrics and what did not, in rows."""

    logged_rows: int  # in the window, with a prediction
    without_prediction: int  # in the window's files, written before predictions were logged
    labelled_rows: int  # logged rows joined to a label
    relogged_rows: int  # earlier rows of an id logged again (the latest is joined)
    labels: int
    unknown_labels: int  # labels whose id is not logged in the window
    late_labels: int  # joined labels that came more than ``days`` days after the prediction
    window_start: str
    window_end: str

    @property
    def unlabelled_rows(self) -> int:
        return self.logged_rows - self.labelled_rows - self.relogged_rows

    @property
    def share(self) -> float:
        """Label coverage: the share of logged rows joined to a label."""
        return self.labelled_rows / self.logged_rows if self.logged_rows else 0.0


@dataclass(frozen=True)
class QualityReport:
    model: str
    classes: list[str]
    positive_class: str | None  # None for more than two classes
    settings: QualitySettings
    coverage: Coverage
    groups: list[GroupQuality]
    offline: dict[str, float]  # overall, the values the judged groups without their own use
    degradations: list[Degradation]
    notes: list[str] = field(default_factory=list)
    # The offline metrics with their intervals (overall, and per segment where recorded),
    # computed from the champion's evaluation scores; empty when taken as exact.
    offline_groups: list[GroupQuality] = field(default_factory=list)
    task: str = CLASSIFICATION  # a regression model's: classes empty, errors judged

    def __post_init__(self) -> None:
        if self.task not in (CLASSIFICATION, REGRESSION):
            raise ConveyorError(f"QualityReport: task {self.task!r} is not a model task")
        if self.task == REGRESSION and (self.classes or self.positive_class is not None):
            raise ConveyorError("QualityReport: a regression model's report has no classes")

    @property
    def degraded(self) -> bool:
        return bool(self.degradations)

    @property
    def is_regression(self) -> bool:
        return self.task == REGRESSION

    def overall(self) -> GroupQuality:
        return self.groups[0]

    def to_dict(self) -> dict[str, Any]:
        coverage = {
            **asdict(self.coverage),
            "unlabelled_rows": self.coverage.unlabelled_rows,
            "share": self.coverage.share,
        }
        return {
            "model": self.model,
            "task": self.task,
            "degraded": self.degraded,
            "classes": self.classes,
            "positive_class": self.positive_class,
            "settings": asdict(self.settings),
            "coverage": coverage,
            "offline": self.offline,
            "degradations": [{**asdict(d), "description": d.describe()} for d in self.degradations],
            "groups": [asdict(group) for group in self.groups],
            "offline_groups": [asdict(group) for group in self.offline_groups],
            "notes": self.notes,
        }


@dataclass(frozen=True)
class Logged:
    """The window's logged predictions (one entry per row)."""

    ids: pa.Array
    time: np.ndarray  # microseconds since the epoch, UTC
    revision: tuple[np.ndarray, list[str]]  # codes, names
    prediction: np.ndarray  # class codes into ``classes``; a regressor's numbers
    score: np.ndarray  # binary: ``positive_class``'s probability; NaN when not logged
    probabilities: np.ndarray | None  # (rows, classes) for more than two classes
    segment: tuple[np.ndarray, list[str]] | None
    classes: list[str]
    without_prediction: int
    window: tuple[str, str]
    positive_class: str | None = None  # binary: the class judged (see ``read_logged``)
    notes: list[str] = field(default_factory=list)
    task: str = CLASSIFICATION


@dataclass(frozen=True)
class Joined:
    """Logged predictions with their labels, one entry per joined row."""

    truth: np.ndarray  # class codes; a regressor's true values
    prediction: np.ndarray
    score: np.ndarray
    probabilities: np.ndarray | None
    day: np.ndarray  # group codes into ``days``...
    days: list[str]
    revision: np.ndarray
    revisions: list[str]
    segment: np.ndarray | None
    segments: list[str]
    task: str = CLASSIFICATION


# Reading.


def read_labels(uri: str, settings: QualitySettings) -> pa.Table:
    """The labels table as ``id`` (text), ``label`` (text) and ``time`` (µs, UTC, or null).

    Ids are text as written: a CSV file's id column is read as text (no number is inferred,
    so ``00000002`` stays itself), a Parquet file's integers become their decimal text.
    Refuses a table without the id or label column, an empty label, and an id labelled twice.
    """
    from conveyor.components.core.data.tables import Source, load_arrow_table

    table = load_arrow_table(Source(uri))
    for role, name in (("id", settings.id_column), ("label", settings.label_column)):
        if name not in table.column_names:
            shown = ", ".join(table.column_names[:12])
            raise ConveyorError(
                f"{uri}: labels table has no {role} column {name!r}; columns are: {shown}"
            )
    ids = _written_ids(uri, settings.id_column)
    if ids is None:
        ids = _as_text(table.column(settings.id_column))
    labels = _as_text(table.column(settings.label_column))
    for role, values in (("id", ids), ("label", labels)):
        if values.null_count:
            raise ConveyorError(f"{uri}: {role} column is empty in {values.null_count} rows")
    counts = pc.value_counts(ids)
    repeated = pc.filter(counts, pc.greater(counts.field("counts"), 1))
    if len(repeated):
        first = repeated[0]
        raise ConveyorError(
            f"{uri}: {len(repeated)} label id(s) appear more than once (e.g. "
            f"{first['values'].as_py()!r}, {first['counts'].as_py()} times); give one label per id"
        )
    time = (
        as_micros(table.column(LABEL_TIME_COLUMN), uri)
        if LABEL_TIME_COLUMN in table.column_names
        else pa.nulls(len(table), pa.int64())
    )
    extra = {}
    if settings.segment and settings.segment in table.column_names:
        extra[settings.segment] = _as_text(table.column(settings.segment))
    return pa.table({"id": ids, "label": labels, "time": time, **extra})


def _written_ids(uri: str, column: str) -> pa.ChunkedArray | None:
    """The id column of the labels' files as text exactly as written, when one of them is
    a CSV file (whose reader infers numbers: ``00000002`` would become 2); None when every
    file is Parquet, whose column types are the writer's (``_as_text`` reads them)."""
    import fsspec
    import pandas as pd
    import pyarrow.parquet as pq

    from conveyor.components.core.data.tables import folder_tables

    files = folder_tables(uri) or [uri]
    kinds = []
    for file in files:
        with fsspec.open(file, "rb", compression="infer") as opened:
            parquet = opened.read(4) == b"PAR1" or file.lower().endswith((".parquet", ".pq"))
        kinds.append(parquet)
    if all(kinds):
        return None
    parts = []
    for file, parquet in zip(files, kinds, strict=True):
        with fsspec.open(file, "rb", compression="infer") as opened:
            if parquet:
                read = pq.read_table(pa.BufferReader(opened.read()), columns=[column])
                parts.append(_as_text(read.column(0)).combine_chunks())
                continue
            separator = "\t" if ".tsv" in file.lower() else ","
            text = pd.read_csv(
                opened, sep=separator, usecols=[column], dtype=str,
                keep_default_na=False, na_values=[""], encoding="utf-8",
            )[column]  # fmt: skip
            parts.append(pa.array(text, type=pa.string(), from_pandas=True))
    return pa.chunked_array(parts, type=pa.string())


def read_logged(uri: str, model: str, settings: QualitySettings) -> Logged:
    """The payload log's predictions in the window: a Parquet file, a folder of them, or a
    log of day folders (only the window's days are read). Files written before a metadata
    column existed read it as null.

    A binary model's positive class is the one logged with its rows
    (``conveyor.positive_class``, the model card's), else, for rows written before it was
    logged, the one serving's rule picks (``payload_log.score_column``). Should the window
    hold rows of revisions with different positive classes (a retrained model that chose
    another), the newest row's is taken, the other rows' scores are read as its probability
    (1 - score), and a note says so.

    A regression model's log (its files' metadata say so) is read with its predicted
    numbers (``conveyor.predicted_value``; a row without one, or with one that is not
    finite, counts as without a prediction) and no classes.

    Refuses a log of another model and a log that holds no prediction.
    """
    files = window_files(uri, settings.days)
    names = _column_names(files)
    classes = [
        n.removeprefix(PROBABILITY_PREFIX) for n in names if n.startswith(PROBABILITY_PREFIX)
    ]
    wanted = [
        ID_COLUMN,
        TIME_COLUMN,
        REVISION_COLUMN,
        MODEL_COLUMN,
        PREDICTION_COLUMN,
        SCORE_COLUMN,
        VALUE_COLUMN,  # a regression model's; read_log keeps only its task's columns
    ]
    positive_logged = POSITIVE_COLUMN in names
    if positive_logged:
        wanted.append(POSITIVE_COLUMN)
    if len(classes) > 2:
        wanted += [f"{PROBABILITY_PREFIX}{c}" for c in classes]
    segment_logged = bool(settings.segment) and settings.segment in names
    if segment_logged:
        wanted.append(settings.segment)
    read = read_log(files, columns=wanted, task=None)  # either task: the files say which
    table, task = read.table, read.task
    check_model(table.column(MODEL_COLUMN), model, uri)
    predicted_column = VALUE_COLUMN if task == REGRESSION else PREDICTION_COLUMN
    prediction, time = table.column(predicted_column), table.column(TIME_COLUMN)
    usable = pc.and_(_predicted(prediction, task), time.is_valid())
    usable_rows = pc.sum(usable).as_py() or 0
    if usable_rows == 0:
        raise ConveyorError(
            f"{uri}: no row of the log has a {predicted_column} (written before Conveyor "
            "logged predictions?); serve with the current runtime and collect labels again"
        )
    # Every row of the files read, predicted or not (read_log keeps each file's rows).
    without_prediction = table.num_rows - usable_rows
    if without_prediction:
        table = table.filter(usable)
    micros = as_micros(table.column(TIME_COLUMN), uri).to_numpy()
    start, end = window_bounds(micros, settings.days)
    if start is not None:
        inside = micros >= start
        table, micros = table.filter(pa.array(inside)), micros[inside]
    if task == REGRESSION:
        return Logged(
            ids=_as_text(table.column(ID_COLUMN)).combine_chunks(), time=micros,
            revision=_codes(table.column(REVISION_COLUMN)),
            prediction=_floats(table.column(VALUE_COLUMN)), score=np.full(len(micros), np.nan),
            probabilities=None,
            segment=_codes(table.column(settings.segment)) if segment_logged else None,
            classes=[], without_prediction=without_prediction,
            window=(_day(int(micros.min())), _day(int(micros.max()))), task=REGRESSION,
        )  # fmt: skip
    predicted, seen = _codes(table.column(PREDICTION_COLUMN))
    positives = _codes(table.column(POSITIVE_COLUMN)) if positive_logged else None
    recorded = set(positives[1]) - {NO_VALUE} if positives is not None else set()
    classes = classes + sorted((set(seen) | recorded) - set(classes))
    remap = np.array([classes.index(value) for value in seen], dtype=np.int64)
    revision = _codes(table.column(REVISION_COLUMN))
    score, positive, notes = _floats(table.column(SCORE_COLUMN)), None, []
    if len(classes) == 2:
        positive, score, notes = _one_positive_class(classes, positives, micros, revision, score)
    probabilities = None
    if len(classes) > 2 and all(f"{PROBABILITY_PREFIX}{c}" in table.column_names for c in classes):
        probabilities = np.column_stack(
            [_floats(table.column(f"{PROBABILITY_PREFIX}{c}")) for c in classes]
        )
    return Logged(
        ids=_as_text(table.column(ID_COLUMN)).combine_chunks(),
        time=micros,
        revision=revision,
        prediction=remap[predicted],
        score=score,
        probabilities=probabilities,
        segment=_codes(table.column(settings.segment)) if segment_logged else None,
        classes=classes,
        without_prediction=without_prediction,
        window=(_day(int(micros.min())), _day(int(micros.max()))),
        positive_class=positive,
        notes=notes,
    )


def _predicted(column: pa.ChunkedArray, task: str) -> pa.ChunkedArray:
    """Whether each row holds a prediction: a class, or a regressor's finite number (a NaN
    or an infinity is no answer to judge)."""
    if task != REGRESSION:
        return column.is_valid()
    return pc.fill_null(pc.is_finite(pc.cast(column, pa.float64())), False)


def _one_positive_class(
    classes: list[str],
    logged: tuple[np.ndarray, list[str]] | None,
    micros: np.ndarray,
    revision: tuple[np.ndarray, list[str]],
    score: np.ndarray,
) -> tuple[str, np.ndarray, list[str]]:
    """A binary model's positive class for the window, every row's score as that class's
    probability, and a note when rows scored another class (see ``read_logged``)."""
    rule = score_column(classes)  # for rows logged before the positive class was
    unrecorded = classes[0 if rule is None else rule]
    if logged is None:
        return unrecorded, score, []
    codes, names = logged
    names = [unrecorded if name == NO_VALUE else name for name in names]
    chosen = names[codes[int(np.argmax(micros))]]
    other = np.array([name != chosen for name in names])[codes]
    if not other.any():
        return chosen, score, []
    revisions = sorted({revision[1][code] for code in np.unique(revision[0][other])})
    scored = sorted({name for name in names if name != chosen})
    note = (
        f"positive class: {chosen!r}, the newest revision's; {int(other.sum()):,} rows of "
        f"revision(s) {', '.join(revisions)} were scored for {', '.join(map(repr, scored))}, "
        "so their scores are read as 1 - score"
    )
    return chosen, np.where(other, 1.0 - score, score), [note]


def window_files(uri: str, days: int) -> list[str]:
    """The log's table files; with a window, only those in day folders that can hold it (a
    file lands in the folder of the day it was written, on or after its rows' day)."""
    from conveyor.components.core.data.tables import folder_tables

    files = folder_tables(uri)
    if files is None:
        return [uri]
    if not files:
        raise ConveyorError(f"{uri}: a folder with no Parquet files in it")
    folders = [_day_folder(file) for file in files]
    if days and all(folders):
        newest = max(dt.date.fromisoformat(f) for f in folders if f)
        first = (newest - dt.timedelta(days=days)).isoformat()
        files = [file for file, folder in zip(files, folders, strict=True) if folder >= first]
    return files


def _day_folder(file: str) -> str:
    parts = file.rstrip("/").split("/")
    name = parts[-2] if len(parts) > 1 else ""
    try:
        dt.date.fromisoformat(name)
    except ValueError:
        return ""
    return name if len(name) == 10 else ""


def _column_names(files: list[str]) -> list[str]:
    """Every column name any of the files has (first-seen order), from the files' footers:
    what to ask ``read_log`` for (the classes' probabilities, the positive class, the
    segment) before reading any column."""
    names: dict[str, None] = {}
    for file in files:
        names |= dict.fromkeys(file_columns(file))
    return list(names)


def file_columns(file: str) -> list[str]:
    """The column names in a payload log file's footer (nothing else is read)."""
    import fsspec
    import pyarrow.parquet as pq

    try:
        with fsspec.open(file, "rb") as opened:
            return pq.ParquetFile(opened).schema_arrow.names
    except (pa.ArrowException, OSError, ValueError) as error:
        raise ConveyorError(
            f"{file}: cannot be read as a payload log file ({first_line(error)})"
        ) from None


def check_model(column: pa.ChunkedArray, model: str, uri: str) -> None:
    _, names = _codes(column)
    names = [name for name in names if name != NO_VALUE]
    others = sorted(set(names) - {model})
    if others:
        raise ConveyorError(
            f"{uri}: the log holds predictions of model {others[0]!r}, not {model!r}; "
            "give the log of the model being judged"
        )


def window_bounds(micros: np.ndarray, days: int) -> tuple[int | None, int]:
    end = int(micros.max())
    if not days:
        return None, end
    last = dt.datetime.fromtimestamp(end / 1e6, dt.UTC).date()
    first = dt.datetime.combine(last - dt.timedelta(days=days - 1), dt.time(), dt.UTC)
    return int(first.timestamp()) * 1_000_000, end


def _day(micros: int) -> str:
    return dt.datetime.fromtimestamp(micros / 1e6, dt.UTC).date().isoformat()


def _as_text(column: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """Text as the model's classes and ids are written: integral floats as integers, booleans
    as Python writes them."""
    kind = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
    if pa.types.is_dictionary(column.type):
        column = column.cast(kind)
    if pa.types.is_floating(kind):
        values = column.to_numpy(zero_copy_only=False)
        finite = values[~np.isnan(values)]
        if np.all(np.mod(finite, 1) == 0):
            column = pc.cast(column, pa.int64())
    if pa.types.is_boolean(kind):
        return pc.if_else(column, "True", "False")
    if pa.types.is_string(kind):
        return column
    return pc.cast(column, pa.string())


def as_micros(column: pa.ChunkedArray, where: str) -> pa.Array:
    """Times as microseconds since the epoch, UTC (naive times taken as UTC; text parsed as
    ISO 8601)."""
    import pandas as pd

    try:
        if not pa.types.is_timestamp(column.type):
            parsed = pd.to_datetime(_as_text(column).to_pandas(), utc=True, format="ISO8601")
            column = pa.chunked_array([pa.array(parsed)])
        naive = pc.cast(column, pa.timestamp(column.type.unit))  # the values are UTC already
        micros = pc.cast(naive, pa.timestamp("us"), safe=False)
        return pc.cast(micros, pa.int64()).combine_chunks()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError, TypeError) as error:
        raise ConveyorError(
            f"{where}: a time column that is not times ({first_line(error)})"
        ) from None


def _floats(column: pa.ChunkedArray) -> np.ndarray:
    return pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)


def _codes(column: pa.ChunkedArray) -> tuple[np.ndarray, list[str]]:
    """A column as codes into its distinct values (as text; an empty value is "(none)"),
    without making a string of every row where it was read dictionary-encoded."""
    if pa.types.is_dictionary(column.type):
        encoded = column.unify_dictionaries().combine_chunks()
        if not pa.types.is_string(encoded.type.value_type):
            encoded = pc.dictionary_encode(_as_text(encoded))
    else:
        encoded = pc.dictionary_encode(_as_text(column)).combine_chunks()
    names = [str(name) for name in encoded.dictionary.to_pylist()]
    codes = encoded.indices
    if codes.null_count:
        codes = pc.fill_null(codes, len(names))
        names.append(NO_VALUE)
    return codes.to_numpy().astype(np.int64), names


# Joining.


def join_labels(
    logged: Logged, labels: pa.Table, settings: QualitySettings, uri: str
) -> tuple[Joined, Coverage]:
    """Each label joined to the latest logged row of its id; refuses labels none of whose ids
    is logged, and label values that are not the model's classes (a regression model's:
    that are not finite numbers)."""
    values = None
    if logged.task == REGRESSION:
        values = label_values(labels.column("label"), uri)
    else:
        unknown_values = sorted(
            set(pc.unique(labels.column("label")).to_pylist()) - set(logged.classes)
        )
        if unknown_values:
            shown = ", ".join(repr(c) for c in logged.classes)
            raise ConveyorError(
                f"{uri}: label {unknown_values[0]!r} is not a class the model predicts ({shown})"
            )
    label_of_row = pc.fill_null(
        pc.index_in(logged.ids, value_set=labels.column("id").combine_chunks()), -1
    )
    label_of_row = label_of_row.to_numpy()
    rows = np.flatnonzero(label_of_row >= 0)
    if rows.size == 0:
        raise ConveyorError(
            f"{uri}: none of the {len(labels):,} label ids is in the log from "
            f"{logged.window[0]} to {logged.window[1]} (ids are matched with {ID_COLUMN})"
        )
    # An id logged more than once (a retried request, a repeated id column value): its
    # label judges the latest answer.
    order = np.lexsort((logged.time[rows], label_of_row[rows]))
    rows = rows[order]
    owner = label_of_row[rows]
    last = np.r_[owner[1:] != owner[:-1], True]
    relogged = int(rows.size - last.sum())
    rows, owner = rows[last], owner[last]
    if values is not None:
        truth = values[owner]
    else:
        truth_text = labels.column("label").combine_chunks().take(pa.array(owner))
        truth = pc.index_in(truth_text, value_set=pa.array(logged.classes)).to_numpy()
        truth = truth.astype(np.int64)
    label_time = labels.column("time").combine_chunks().take(pa.array(owner))
    late = 0
    if settings.days and label_time.null_count < len(label_time):
        delay = label_time.to_numpy(zero_copy_only=False) - logged.time[rows]
        late = int(np.sum(delay > settings.days * _MICROS_PER_DAY))
    day_codes = (logged.time[rows] // _MICROS_PER_DAY).astype(np.int64)
    day_values, day = np.unique(day_codes, return_inverse=True)
    segment, segments = _segment_codes(logged, labels, owner, rows, settings)
    joined = Joined(
        truth=truth,
        prediction=logged.prediction[rows],
        score=logged.score[rows],
        probabilities=None if logged.probabilities is None else logged.probabilities[rows],
        day=day,
        days=[_day(int(value) * _MICROS_PER_DAY) for value in day_values],
        revision=logged.revision[0][rows],
        revisions=logged.revision[1],
        segment=segment,
        segments=segments,
        task=logged.task,
    )
    coverage = Coverage(
        logged_rows=len(logged.time),
        without_prediction=logged.without_prediction,
        labelled_rows=int(rows.size),
        relogged_rows=relogged,
        labels=len(labels),
        unknown_labels=len(labels) - int(rows.size),
        late_labels=late,
        window_start=logged.window[0],
        window_end=logged.window[1],
    )
    return joined, coverage


def label_values(labels: pa.ChunkedArray, uri: str) -> np.ndarray:
    """A regression model's labels (as ``read_labels`` reads them, text) as numbers;
    ConveyorError naming the first that is not a finite number."""
    import pandas as pd

    text = labels.to_pandas()
    values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise ConveyorError(
            f"{uri}: label {text.iloc[bad[0]]!r} is not a number; a regression model's labels "
            f"are its true values ({bad.size:,} label(s) are not)"
        )
    return values


def _segment_codes(
    logged: Logged, labels: pa.Table, owner: np.ndarray, rows: np.ndarray, settings: QualitySettings
) -> tuple[np.ndarray | None, list[str]]:
    if not settings.segment:
        return None, []
    if logged.segment is not None:
        return logged.segment[0][rows], logged.segment[1]
    if settings.segment not in labels.column_names:
        raise ConveyorError(
            f"segment column {settings.segment!r} is neither logged nor in the labels table"
        )
    return _codes(labels.column(settings.segment).take(pa.array(owner)))


# Metrics.


def delong_auc(
    score: np.ndarray, positive: np.ndarray, codes: np.ndarray, groups: int
) -> tuple[np.ndarray, np.ndarray]:
    """ROC-AUC of each group and DeLong's variance of it, from midranks (O(n log n)).

    For a group of m positives and n negatives, a positive's placement is the share of
    negatives scored below it (ties count half): its midrank among all the group's rows
    minus its midrank among the positives, over n; a negative's is the share of positives
    scored above it. The AUC is the mean placement of the positives, and its variance
    ``S10/m + S01/n`` from the placements' sample variances. NaN where a group lacks a
    class (AUC) or has fewer than two of one (variance).
    """
    positive = positive.astype(bool)
    both = _midranks(codes, score)
    within = _midranks(codes * 2 + positive, score)
    m = np.bincount(codes, weights=positive, minlength=groups)
    n = np.bincount(codes, minlength=groups) - m
    with np.errstate(invalid="ignore", divide="ignore"):
        placement = np.where(
            positive,
            (both - within) / n[codes],
            1 - (both - within) / m[codes],
        )
        # The negatives' placements average to the AUC too.
        auc = np.bincount(codes, weights=placement * positive, minlength=groups) / m
        squares = [
            np.bincount(codes, weights=placement**2 * side, minlength=groups)
            for side in (positive, ~positive)
        ]
        s10 = (squares[0] - m * auc**2) / (m - 1)
        s01 = (squares[1] - n * auc**2) / (n - 1)
        variance = np.where((m > 1) & (n > 1), s10 / m + s01 / n, np.nan)
    return np.where((m > 0) & (n > 0), auc, np.nan), variance


def _midranks(codes: np.ndarray, values: np.ndarray) -> np.ndarray:
    """1-based rank of each value among its group's, ties sharing their mean rank."""
    order = np.lexsort((values, codes))
    group, value = codes[order], values[order]
    size = len(order)
    new_group = np.r_[True, group[1:] != group[:-1]]
    new_block = new_group | np.r_[True, value[1:] != value[:-1]]
    starts = np.flatnonzero(new_block)
    ends = np.r_[starts[1:], size]
    block = np.cumsum(new_block) - 1
    group_start = np.flatnonzero(new_group)[np.cumsum(new_group) - 1]
    ranks = np.empty(size)
    ranks[order] = (starts + ends + 1)[block] / 2 - group_start
    return ranks


def group_quality(
    joined_codes: np.ndarray,
    groups: int,
    truth: np.ndarray,
    prediction: np.ndarray,
    classes: int,
    positive: int | None,
    score: np.ndarray,
    probabilities: np.ndarray | None,
    z: float,
) -> dict[str, tuple[np.ndarray, ...]]:
    """Every defined metric of every group at once: metric -> (value, lower, upper, rows)."""
    cells = np.bincount(
        (joined_codes * classes + truth) * classes + prediction,
        minlength=groups * classes * classes,
    ).reshape(groups, classes, classes)
    rows = cells.sum(axis=(1, 2))
    correct = np.trace(cells, axis1=1, axis2=2)
    found: dict[str, tuple[np.ndarray, ...]] = {
        "accuracy": _rate(correct, rows, z),
    }
    if positive is not None:
        tp = cells[:, positive, positive]
        fn = cells[:, positive, :].sum(axis=1) - tp
        fp = cells[:, :, positive].sum(axis=1) - tp
        tn = rows - tp - fn - fp
        found["precision"] = _rate(tp, tp + fp, z)
        found["recall"] = _rate(tp, tp + fn, z)
        found["false_positive_rate"] = _rate(fp, fp + tn, z)
        found["f1"] = _f1(tp, fp, fn, rows, z)
        proba = score
        known = ~np.isnan(proba)
        if known.any():
            is_positive = truth == positive
            auc, variance = delong_auc(
                proba[known], is_positive[known], joined_codes[known], groups
            )
            sd = np.sqrt(variance)
            counted = np.bincount(joined_codes[known], minlength=groups)
            found["roc_auc"] = (
                auc,
                np.clip(auc - z * sd, 0, 1),
                np.clip(auc + z * sd, 0, 1),
                counted,
            )
            true_proba = np.where(is_positive, proba, 1 - proba)[known]
            found["log_loss"] = _log_loss(
                np.clip(true_proba, LOG_LOSS_EPS, 1 - LOG_LOSS_EPS), joined_codes[known], groups, z
            )
    else:
        found.update(_macro(cells, z))
        if probabilities is not None:
            known = ~np.isnan(probabilities).any(axis=1)
            clipped = np.clip(probabilities[known], LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
            clipped /= clipped.sum(axis=1, keepdims=True)
            true_proba = clipped[np.arange(len(clipped)), truth[known]]
            found["log_loss"] = _log_loss(true_proba, joined_codes[known], groups, z)
    return found


def _rate(successes: np.ndarray, trials: np.ndarray, z: float) -> tuple[np.ndarray, ...]:
    with np.errstate(invalid="ignore", divide="ignore"):
        value = successes / trials
    return (value, *wilson_interval(successes, trials, z), trials)


def _f1(
    tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, rows: np.ndarray, z: float
) -> tuple[np.ndarray, ...]:
    tp, fp, fn = (np.asarray(a, float) for a in (tp, fp, fn))
    denominator = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        value = 2 * tp / denominator
        sd = np.sqrt(4 * tp * (fp + fn) * (tp + fp + fn)) / denominator**2
    return value, np.clip(value - z * sd, 0, 1), np.clip(value + z * sd, 0, 1), rows


def _macro(cells: np.ndarray, z: float) -> dict[str, tuple[np.ndarray, ...]]:
    """Macro precision, recall and F1 over the classes seen in each group (scikit-learn's
    average, undefined per-class values counting 0) with normal intervals."""
    diagonal = np.diagonal(cells, axis1=1, axis2=2).astype(float)
    predicted, true = cells.sum(axis=1).astype(float), cells.sum(axis=2).astype(float)
    seen = (predicted + true) > 0
    classes_seen = seen.sum(axis=1)
    rows = cells.sum(axis=(1, 2))
    found = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = {
            "precision": (np.nan_to_num(diagonal / predicted), predicted),
            "recall": (np.nan_to_num(diagonal / true), true),
        }
        for name, (rate, trials) in per_class.items():
            variance = np.where(trials > 0, rate * (1 - rate) / trials, 0)
            found[name] = _macro_interval(rate, variance, seen, classes_seen, z) + (rows,)
        fp, fn = predicted - diagonal, true - diagonal
        denominator = 2 * diagonal + fp + fn
        f1 = np.nan_to_num(2 * diagonal / denominator)
        variance = np.nan_to_num(4 * diagonal * (fp + fn) * (diagonal + fp + fn) / denominator**4)
        found["f1"] = _macro_interval(f1, variance, seen, classes_seen, z) + (rows,)
    return found


def _macro_interval(
    per_class: np.ndarray, variance: np.ndarray, seen: np.ndarray, count: np.ndarray, z: float
) -> tuple[np.ndarray, ...]:
    with np.errstate(invalid="ignore", divide="ignore"):
        value = (per_class * seen).sum(axis=1) / count
        sd = np.sqrt((variance * seen).sum(axis=1)) / count
    return value, np.clip(value - z * sd, 0, 1), np.clip(value + z * sd, 0, 1)


def _log_loss(
    true_proba: np.ndarray, codes: np.ndarray, groups: int, z: float
) -> tuple[np.ndarray, ...]:
    rows, mean, sd = _moments(-np.log(true_proba), codes, groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        half = z * sd / np.sqrt(rows)
    return mean, np.maximum(mean - half, 0), mean + half, rows


def regression_quality(
    joined_codes: np.ndarray,
    groups: int,
    truth: np.ndarray,
    predicted: np.ndarray,
    z: float,
) -> dict[str, tuple[np.ndarray, ...]]:
    """A regressor's rmse, mae, r2 and mape of every group at once, with the intervals the
    module's doc states: metric -> (value, lower, upper, rows). MAPE is NaN in a group
    holding a true value of zero, R² in one whose true values are all alike."""
    error = predicted - truth
    absolute = np.abs(error)
    squared = error**2
    rows, mae, mae_sd = _moments(absolute, joined_codes, groups)
    _, mse, mse_sd = _moments(squared, joined_codes, groups)
    zeros = np.bincount(joined_codes, weights=truth == 0, minlength=groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        _, mape, mape_sd = _moments(absolute / np.abs(truth), joined_codes, groups)
        mape = np.where(zeros > 0, np.nan, mape)
        root = np.sqrt(rows)
        rmse = np.sqrt(mse)
        # The delta method: d√m = dm / (2√m).
        rmse_half = z * mse_sd / (2 * rmse * root)
        found = {
            "rmse": (rmse, np.maximum(rmse - rmse_half, 0), rmse + rmse_half, rows),
            "mae": _normal(mae, z * mae_sd / root, rows),
            "r2": _r2(joined_codes, groups, truth, squared, z),
            "mape": _normal(mape, z * mape_sd / root, rows),
        }
    return found


def _moments(
    values: np.ndarray, codes: np.ndarray, groups: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each group's rows, mean and sample standard deviation of ``values`` (NaN below 2)."""
    rows = np.bincount(codes, minlength=groups)
    total = np.bincount(codes, weights=values, minlength=groups)
    squares = np.bincount(codes, weights=values**2, minlength=groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / rows
        sd = np.sqrt(np.maximum(squares - rows * mean**2, 0) / (rows - 1))
    return rows, mean, sd


def _normal(mean: np.ndarray, half: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, ...]:
    """mean ± half, for a mean of values that are never negative (the lower bound at 0)."""
    return mean, np.maximum(mean - half, 0), mean + half, rows


def _r2(
    codes: np.ndarray, groups: int, truth: np.ndarray, squared: np.ndarray, z: float
) -> tuple[np.ndarray, ...]:
    """R² = 1 - a/b of each group, a the mean squared error and b the mean squared
    deviation of the truth from the group's mean, with the delta method's interval on a/b:
    var(a/b) ≈ (s_aa/b² - 2·a·s_ab/b³ + a²·s_bb/b⁴)/n from the per-row values' sample
    (co)variances."""
    rows = np.bincount(codes, minlength=groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        centre = np.bincount(codes, weights=truth, minlength=groups) / rows
        spread = (truth - centre[codes]) ** 2
        a = np.bincount(codes, weights=squared, minlength=groups) / rows
        b = np.bincount(codes, weights=spread, minlength=groups) / rows
        s_aa = _covariance(codes, groups, (squared, a), (squared, a))
        s_bb = _covariance(codes, groups, (spread, b), (spread, b))
        s_ab = _covariance(codes, groups, (squared, a), (spread, b))
        ratio = a / b
        variance = (s_aa / b**2 - 2 * a * s_ab / b**3 + a**2 * s_bb / b**4) / rows
        half = z * np.sqrt(np.maximum(variance, 0))
        value = np.where((rows > 1) & (b > 0), 1 - ratio, np.nan)
    return value, value - half, np.minimum(value + half, 1), rows


def _covariance(
    codes: np.ndarray,
    groups: int,
    first: tuple[np.ndarray, np.ndarray],
    second: tuple[np.ndarray, np.ndarray],
) -> np.ndarray:
    """Each group's sample covariance of two per-row values, each given with its groups'
    means."""
    (u, mean_u), (v, mean_v) = first, second
    rows = np.bincount(codes, minlength=groups)
    products = np.bincount(codes, weights=u * v, minlength=groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (products - rows * mean_u * mean_v) / (rows - 1)


_METHODS = {
    "accuracy": "wilson",
    "precision": "wilson",
    "recall": "wilson",
    "false_positive_rate": "wilson",
    "f1": "delta",
    "roc_auc": "delong",
    "log_loss": "normal",
    "rmse": "delta",
    "mae": "normal",
    "r2": "delta",
    "mape": "normal",
}


def _groups(
    joined: Joined,
    classes: list[str],
    positive: int | None,
    z: float,
    only: tuple[str, ...] = DIMENSIONS,
) -> list[GroupQuality]:
    """Every metric of every group of the ``only`` dimensions, with intervals at ``z``."""
    size = len(joined.truth)
    dimensions = [
        ("overall", np.zeros(size, np.int64), ["all"]),
        ("day", joined.day, joined.days),
        ("revision", joined.revision, joined.revisions),
    ]
    if joined.segment is not None:
        dimensions.append(("segment", joined.segment, joined.segments))
    found = []
    for dimension, codes, names in dimensions:
        if dimension not in only:
            continue
        codes = np.asarray(codes, np.int64)
        if joined.task == REGRESSION:
            metrics = regression_quality(codes, len(names), joined.truth, joined.prediction, z)
        else:
            metrics = group_quality(
                codes, len(names), joined.truth, joined.prediction, len(classes), positive,
                joined.score, joined.probabilities, z,
            )  # fmt: skip
        counts = np.bincount(codes, minlength=len(names))
        macro = positive is None and joined.task != REGRESSION
        for index in sorted(range(len(names)), key=names.__getitem__):
            name = names[index]
            if not counts[index]:
                continue
            intervals = {}
            for metric in ALL_METRICS:
                if metric not in metrics:
                    continue
                value, lower, upper, rows = (array[index] for array in metrics[metric])
                if not np.isfinite(value):
                    continue
                method = (
                    "normal"
                    if macro and metric in ("precision", "recall", "f1")
                    else _METHODS[metric]
                )
                low = float(lower) if np.isfinite(lower) else float(value)
                high = float(upper) if np.isfinite(upper) else float(value)
                intervals[metric] = Interval(float(value), low, high, int(rows), method)
            found.append(GroupQuality(dimension, str(name), int(counts[index]), intervals))
    return found


# Judging.


def exact_offline(offline: dict[str, float]) -> list[GroupQuality]:
    """Offline values taken as exact: one overall group whose intervals have no width."""
    metrics = {name: Interval(value, value, value, 0, "exact") for name, value in offline.items()}
    return [GroupQuality("overall", "all", 0, metrics)]


def _counterparts(
    groups: list[GroupQuality],
    offline: list[GroupQuality],
    settings: QualitySettings,
    by_segment: bool,
) -> list[tuple[GroupQuality, GroupQuality, str]]:
    """(online group, the offline group it is judged against, metric) for every judged
    metric: a segment against its own offline group when ``by_segment`` (one of fewer than
    ``min_rows`` evaluation rows, or none, is not judged), every other group against the
    overall one; only metrics defined on both sides."""
    overall = offline[0]
    segments = {g.group: g for g in offline if g.dimension == "segment"}
    found = []
    for group in _judged(groups, settings):
        counterpart = overall
        if by_segment and group.dimension == "segment":
            counterpart = segments.get(group.group)
            if counterpart is None or counterpart.rows < settings.min_rows:
                continue
        found += [
            (group, counterpart, metric)
            for metric in group.metrics
            if metric in counterpart.metrics
        ]
    return found


def judged_tests(
    groups: list[GroupQuality],
    offline: list[GroupQuality],
    settings: QualitySettings,
    by_segment: bool = False,
) -> int:
    """How many metrics a run judges: those with an offline counterpart (see ``judge``), in
    the judged groups (overall, revisions, segments) of at least ``min_rows`` rows."""
    return len(_counterparts(groups, offline, settings, by_segment))


def judging_z(tests: int, settings: QualitySettings) -> float:
    """The z of the one-sided bound each judged metric is held to: 1 - confidence shared
    among the ``tests`` (Bonferroni), so a run whose every metric sits at the edge of the
    margin still raises a false alarm at most that often."""
    return NormalDist().inv_cdf(1 - (1 - settings.confidence) / max(tests, 1))


def _judged(groups: list[GroupQuality], settings: QualitySettings) -> list[GroupQuality]:
    return [g for g in groups if g.dimension in JUDGED and g.rows >= settings.min_rows]


def judge(
    groups: list[GroupQuality],
    offline: list[GroupQuality],
    settings: QualitySettings,
    tests: int,
    by_segment: bool = False,
) -> list[Degradation]:
    """The judged metrics worse than their offline counterpart by more than the margin,
    both samples' noise counted (see the module's doc).

    Args:
        groups: The online groups, their intervals at ``judging_z``.
        offline: The offline groups, overall first, their intervals at the same z
            (``exact_offline`` for values taken as exact).
        settings: The margin and ``min_rows``.
        tests: The run's judged metrics (``judged_tests``), recorded with each degradation.
        by_segment: Judge each segment against its own offline group, not the overall one.
    """
    found = []
    for group, counterpart, metric in _counterparts(groups, offline, settings, by_segment):
        online, baseline = group.metrics[metric], counterpart.metrics[metric]
        direction = DIRECTIONS[metric]
        if direction > 0:  # the online value's upside, the offline value's downside
            spread = math.hypot(online.upper - online.value, baseline.value - baseline.lower)
        else:
            spread = math.hypot(online.value - online.lower, baseline.upper - baseline.value)
        bound = online.value - baseline.value + direction * spread
        margin = metric_margin(metric, baseline.value, settings.margin)
        if direction * bound < -margin:
            exact = baseline.method == "exact"
            found.append(
                Degradation(
                    group.dimension,
                    group.group,
                    metric,
                    online,
                    baseline.value,
                    margin,
                    tests,
                    counterpart.group,
                    None if exact else baseline,
                    bound,
                )  # fmt: skip
            )
    return found


def metric_margin(metric: str, offline: float, margin: float) -> float:
    """The absolute margin ``metric`` is judged with: ``margin`` itself, or for rmse and
    mae, in the target's units, that fraction of the offline value (so a price in cents
    and in euros is judged alike)."""
    return margin * abs(offline) if metric in SCALED_METRICS else margin


def offline_metrics(tracking_uri: str, model: str) -> dict[str, float]:
    """The champion's offline evaluation: its training run's ``test_<metric>`` metrics
    (evaluate logs them), else the ``metric.<metric>`` tags register copies onto the version."""
    client, champion = _champion(tracking_uri, model)
    logged = client.get_run(champion.run_id).data.metrics
    found = {}
    for metric in ALL_METRICS:  # a classifier's or a regressor's: a model logs its own
        value = logged.get(f"test_{metric}")
        if value is None:
            value = champion.recorded_metric(metric)
        if value is not None:
            found[metric] = float(value)
    return found


def _champion(tracking_uri: str, model: str) -> tuple[Any, Any]:
    """The tracking client and ``model``'s champion version; ConveyorError when it has none."""
    from conveyor.components.core.training import registry, tracking

    client = tracking.connect(tracking_uri)
    champion = registry.find_champion(client, model)
    if champion is None:
        raise ConveyorError(
            f"model {model!r} has no champion in {client.tracking_uri}: nothing to compare the "
            "online metrics with (or pass --offline FILE)"
        )
    return client, champion


def read_offline(path: Path) -> dict[str, float]:
    """Offline metrics from a JSON file of metric -> value."""
    try:
        found = json.loads(path.read_text())
    except OSError as error:
        raise ConveyorError(f"{path}: cannot read it ({error.strerror})") from None
    except json.JSONDecodeError as error:
        raise ConveyorError(f"{path}: not JSON ({error.msg} at line {error.lineno})") from None
    if not isinstance(found, dict):
        raise ConveyorError(f"{path}: expected a JSON object of metric -> value")
    unknown = sorted(set(found) - set(ALL_METRICS))
    if unknown:
        raise ConveyorError(f"{path}: unknown metric(s) {unknown}; known: {', '.join(ALL_METRICS)}")
    bad = [
        name
        for name, value in found.items()
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value)
    ]
    if bad:
        raise ConveyorError(f"{path}: {bad[0]} is not a number")
    return {name: float(value) for name, value in found.items()}


def champion_scores(tracking_uri: str, model: str) -> pd.DataFrame | None:
    """The champion's scores on its evaluation split, as its training run recorded them
    (``reference/scores.parquet``, ``training.importance``); None when the run
    recorded none (a champion trained before Conveyor did)."""
    import tempfile

    from conveyor.components.core.training import tracking
    from conveyor.components.core.training.importance import read_reference_scores
    from conveyor.components.core.training.registry import rethreshold_scores

    client, champion = _champion(tracking_uri, model)
    recorded = {
        Path(entry.path).name
        for entry in client.list_artifacts(champion.run_id, tracking.REFERENCE_DIR)
    }
    if tracking.REFERENCE_SCORES not in recorded:
        return None
    artifact = f"{tracking.REFERENCE_DIR}/{tracking.REFERENCE_SCORES}"
    with tempfile.TemporaryDirectory(prefix="conveyor-quality-") as scratch:
        path = Path(client.download_artifacts(champion.run_id, artifact, scratch))
        rethreshold_scores(path, champion)  # the classes it serves, not argmax's
        return read_reference_scores(path)


def has_labels(scores: pd.DataFrame | None) -> bool:
    """Whether evaluation scores can be judged against: recorded, with each row's label
    (files recorded before train kept it lack it)."""
    from conveyor.components.core.training.importance import LABEL_COLUMN

    return scores is not None and LABEL_COLUMN in scores.columns


def _reference_rows(
    scores: pd.DataFrame, classes: list[str], positive: int | None, segment: str
) -> tuple[Joined | None, str]:
    """The evaluation split's rows as joined rows (one day, one revision; segment codes when
    ``segment`` is among its inputs), or None and why they cannot be used; the second item
    is a note (rows left out) or empty."""
    from conveyor.components.core.data.tables import as_arrow
    from conveyor.components.core.training.importance import LABEL_COLUMN

    if not has_labels(scores):
        return None, (
            "the champion's evaluation scores hold no labels (recorded before train kept "
            "them; retrain it to have them)"
        )
    if VALUE_COLUMN in scores.columns:
        return _regression_reference(scores, segment)
    wanted = pa.array(classes)

    def class_codes(name: str) -> np.ndarray:
        text = _as_text(as_arrow(scores[[name]]).column(0))
        return pc.fill_null(pc.index_in(text, value_set=wanted), -1).to_numpy()

    truth, prediction = class_codes(LABEL_COLUMN), class_codes(PREDICTION_COLUMN)
    usable = (truth >= 0) & (prediction >= 0)
    if not usable.any():
        return None, (
            "no row of the champion's evaluation scores is labelled and predicted with a "
            f"class the log holds ({', '.join(map(repr, classes))})"
        )

    def floats(name: str) -> np.ndarray:
        if name not in scores.columns:
            return np.full(int(usable.sum()), np.nan)
        values = scores[name].to_numpy(dtype=np.float64, na_value=np.nan)
        return values[usable]

    probabilities = None
    if positive is not None:
        score = floats(f"{PROBABILITY_PREFIX}{classes[positive]}")
    else:
        score = np.full(int(usable.sum()), np.nan)
        probabilities = np.column_stack([floats(f"{PROBABILITY_PREFIX}{c}") for c in classes])
        if np.isnan(probabilities).all():
            probabilities = None
    segments = _reference_segments(scores, usable, segment)
    single = np.zeros(int(usable.sum()), np.int64)
    rows = Joined(
        truth=truth[usable], prediction=prediction[usable], score=score,
        probabilities=probabilities, day=single, days=["-"], revision=single,
        revisions=["-"], segment=segments[0], segments=segments[1],
    )  # fmt: skip
    left = int((~usable).sum())
    note = (
        f"{left:,} of the champion's {len(usable):,} evaluation rows left out (no label, or "
        "a class the log does not hold)"
        if left
        else ""
    )
    return rows, note


def _reference_segments(
    scores: pd.DataFrame, usable: np.ndarray, segment: str
) -> tuple[np.ndarray | None, list[str]]:
    """The usable evaluation rows' segment codes and names; (None, []) when the split has no
    such column."""
    from conveyor.components.core.data.tables import as_arrow

    if not segment or segment not in scores.columns:
        return None, []
    column = as_arrow(scores[[segment]]).column(0).filter(pa.array(usable))
    return _codes(pa.chunked_array([column]))


def _regression_reference(scores: pd.DataFrame, segment: str) -> tuple[Joined | None, str]:
    """A regressor's evaluation rows (true and predicted values both finite) as joined
    rows; as ``_reference_rows``."""
    import pandas as pd

    from conveyor.components.core.training.importance import LABEL_COLUMN

    def numbers(name: str) -> np.ndarray:
        values = pd.to_numeric(scores[name], errors="coerce")
        return values.to_numpy(dtype=np.float64, na_value=np.nan)

    truth, predicted = numbers(LABEL_COLUMN), numbers(VALUE_COLUMN)
    usable = np.isfinite(truth) & np.isfinite(predicted)
    if not usable.any():
        return None, "no row of the champion's evaluation scores has a true and a predicted value"
    size = int(usable.sum())
    codes, names = _reference_segments(scores, usable, segment)
    single = np.zeros(size, np.int64)
    rows = Joined(
        truth=truth[usable], prediction=predicted[usable], score=np.full(size, np.nan),
        probabilities=None, day=single, days=["-"], revision=single, revisions=["-"],
        segment=codes, segments=names, task=REGRESSION,
    )  # fmt: skip
    left = len(usable) - size
    note = (
        f"{left:,} of the champion's {len(usable):,} evaluation rows left out (no true or "
        "no predicted value)"
        if left
        else ""
    )
    return rows, note


def _check_task(task: str, offline: dict[str, float], reference: pd.DataFrame | None) -> None:
    """ConveyorError when the offline side is another task's model than the log's: judging a
    regressor's errors against a classifier's accuracy (or the reverse) means nothing."""
    other = [name for name in offline if metric_task(name) != task]
    if other:
        raise ConveyorError(
            f"the offline metric(s) {', '.join(other)} are a {metric_task(other[0])} model's, "
            f"but the log is a {task} model's; give the offline metrics of the model logged"
        )
    if reference is None:
        return
    scored = REGRESSION if VALUE_COLUMN in reference.columns else CLASSIFICATION
    if scored != task:
        raise ConveyorError(
            f"the champion's evaluation scores are a {scored} model's, but the log is a "
            f"{task} model's; judge a log against its own model's evaluation scores"
        )


_OFFLINE_DIMENSIONS = ("overall", "segment")


def assess_quality(
    log_uri: str,
    labels_uri: str,
    model: str,
    offline: dict[str, float],
    settings: QualitySettings,
    reference: pd.DataFrame | None = None,
) -> QualityReport:
    """Reads the log and the labels, joins them, computes every metric per group and judges
    them against the offline evaluation; writes nothing.

    Args:
        log_uri: The payload log (see ``read_logged``).
        labels_uri: The labels table (see ``read_labels``).
        model: The model whose predictions were logged.
        offline: Offline metric values, taken as exact; used only when ``reference`` is
            None or holds no labels (a champion trained before train recorded them).
        settings: How labels are read and metrics judged.
        reference: The champion's evaluation scores with their labels (train's
            ``scores.parquet``): the offline metrics are computed from them, per segment
            too, with their intervals.
    """
    labels = read_labels(labels_uri, settings)
    logged = read_logged(log_uri, model, settings)
    _check_task(logged.task, offline, reference)
    joined, coverage = join_labels(logged, labels, settings, labels_uri)
    classes = logged.classes
    positive = None
    notes = list(logged.notes)
    if logged.positive_class is not None:
        positive = classes.index(logged.positive_class)
    elif logged.task == CLASSIFICATION:
        notes.append(
            f"{len(classes)} classes: precision, recall and F1 are macro averages; "
            "ROC-AUC and the false-positive rate are not computed"
        )
    groups = _groups(joined, classes, positive, settings.z)
    evaluation, why = (
        _reference_rows(reference, classes, positive, settings.segment)
        if reference is not None
        else (None, "no evaluation scores of the champion were given, or it has none")
    )
    if evaluation is None:
        notes.append(
            f"offline values taken as exact ({why}): their own noise is not counted, and "
            "every segment is judged against the overall offline value"
        )
        shown: list[GroupQuality] = []
        by_segment = False
    else:
        if why:
            notes.append(why)
        shown = _groups(evaluation, classes, positive, settings.z, _OFFLINE_DIMENSIONS)
        offline = {name: interval.value for name, interval in shown[0].metrics.items()}
        by_segment = evaluation.segment is not None
        notes += _offline_notes(groups, shown, settings, by_segment)
    missing = [m for m in groups[0].metrics if m not in offline]
    if missing:
        notes.append(f"no offline value for {', '.join(missing)}: not judged")
    tests = judged_tests(groups, shown or exact_offline(offline), settings, by_segment)
    z = judging_z(tests, settings)
    strict = _groups(joined, classes, positive, z, JUDGED)
    baseline = (
        exact_offline(offline)
        if evaluation is None
        else _groups(evaluation, classes, positive, z, _OFFLINE_DIMENSIONS)
    )
    return QualityReport(
        model=model,
        classes=classes,
        positive_class=None if positive is None else classes[positive],
        settings=settings,
        coverage=coverage,
        groups=groups,
        offline=offline,
        degradations=judge(strict, baseline, settings, tests, by_segment),
        notes=notes,
        offline_groups=shown,
        task=logged.task,
    )


def _offline_notes(
    groups: list[GroupQuality],
    offline: list[GroupQuality],
    settings: QualitySettings,
    by_segment: bool,
) -> list[str]:
    """What the evaluation split cannot judge: segments it lacks the column or rows of."""
    if not settings.segment:
        return []
    if not by_segment:
        return [
            f"the champion's evaluation split has no column {settings.segment!r}: every "
            "segment is judged against the overall offline value"
        ]
    rows = {g.group: g.rows for g in offline if g.dimension == "segment"}
    unjudged = [
        f"{g.group} ({rows.get(g.group, 0)})"
        for g in _judged(groups, settings)
        if g.dimension == "segment" and rows.get(g.group, 0) < settings.min_rows
    ]
    if not unjudged:
        return []
    return [
        f"segment(s) with fewer than {settings.min_rows} evaluation rows are shown, not "
        f"judged: {', '.join(unjudged)}"
    ]
