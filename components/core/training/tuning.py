"""Hyperparameter tuning: a search space expanded into trials, each trial scored by
cross-validation on the training split (never the evaluation split, which judges the model
train then fits), and the best trial chosen by the primary metric.

A search space maps a hyperparameter to the values it may take:

- a list: those values (``max_depth: [3, 5, 8]``);
- ``{range: [low, high]}``: any number between the two, uniformly;
- ``{int_range: [low, high]}``: any whole number between the two, both included;
- ``{log_range: [low, high]}``: any number between the two, uniformly in logarithm
  (``learning_rate: {log_range: [0.01, 0.3]}``).

``grid`` tries every combination of lists (ranges are refused: a grid needs values) and
refuses more combinations than ``max_trials``; ``random`` draws ``max_trials`` distinct
combinations, seeded. Every trial is checked against the estimator before any runs, so a
hyperparameter the estimator lacks fails the plan in one line.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold, StratifiedKFold

from conveyor.components.core import markdown
from conveyor.components.core.data.schema import Schema
from conveyor.components.core.data.tables import read_parquet
from conveyor.components.core.data.task import CLASSIFICATION, REGRESSION
from conveyor.components.core.errors import ConveyorError, first_line, plain
from conveyor.components.core.training import tracking
from conveyor.components.core.training.devices import training_device
from conveyor.components.core.training.estimators import CPU, build_estimator, estimator_spec
from conveyor.components.core.training.evaluation import Policy
from conveyor.components.core.training.metrics import positive_label, primary_metric, score
from conveyor.components.core.training.trainer import TrainedModel, fit_model

__all__ = [
    "MAX_TRIALS",
    "SEARCH_METHODS",
    "Dimension",
    "TrialResult",
    "TrialSettings",
    "UNTUNED",
    "best_trial",
    "chosen_hyperparameters",
    "cross_validate",
    "Selection",
    "plan_trials",
    "run_trial",
    "select_trials",
    "selection_report",
    "start_tuning",
]

SEARCH_METHODS = ("random", "grid")
# The one trial of a run without a search space: the given hyperparameters, not scored. The
# pipeline's loop then runs once and does nothing, rather than over no items, which not every
# engine takes.
UNTUNED = -1
_SCALES = ("range", "int_range", "log_range")
# Draws a random search makes before settling for fewer distinct trials than asked.
_DRAWS_PER_TRIAL = 20
# The most trials a plan holds: each is a pod, a child run and a row of the report.
MAX_TRIALS = 200
MAX_FOLDS = 20


@dataclass(frozen=True)
class Dimension:
    """One hyperparameter's values: ``choices``, or a ``scale`` between ``low`` and ``high``."""

    name: str
    choices: tuple[Any, ...] = ()
    scale: str = ""
    low: float = 0.0
    high: float = 0.0

    @classmethod
    def from_spec(cls, name: str, spec: Any) -> Dimension:
        """The dimension ``spec`` describes; ConveyorError naming ``name`` when malformed."""
        where = f"search_space.{name}"
        if isinstance(spec, list):
            if not spec:
                raise ConveyorError(f"{where}: an empty list; give the values to try")
            choices: list[Any] = []
            for value in spec:  # 3 and 3.0 are one setting: tried once
                if value not in choices:
                    choices.append(value)
            return cls(name, choices=tuple(choices))
        if not (isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in _SCALES):
            raise ConveyorError(
                f"{where}: expected a list of values or one of "
                f"{', '.join(f'{{{scale}: [low, high]}}' for scale in _SCALES)}, got {spec!r}"
            )
        ((scale, bounds),) = spec.items()
        if not (
            isinstance(bounds, list)
            and len(bounds) == 2
            and all(isinstance(b, Real) and not isinstance(b, bool) for b in bounds)
            and all(math.isfinite(b) for b in bounds)
            and bounds[0] <= bounds[1]
        ):
            raise ConveyorError(
                f"{where}.{scale}: expected [low, high], low <= high, got {bounds!r}"
            )
        low, high = float(bounds[0]), float(bounds[1])
        if scale == "log_range" and low <= 0:
            raise ConveyorError(f"{where}.log_range: the bounds must be above 0, got {bounds!r}")
        if scale == "int_range" and not (
            low.is_integer() and high.is_integer() and max(abs(low), abs(high)) < 2**53
        ):
            raise ConveyorError(
                f"{where}.int_range: expected whole numbers under 2**53, got {bounds!r}"
            )
        return cls(name, scale=scale, low=low, high=high)

    def draw(self, rng: np.random.Generator) -> Any:
        if self.choices:
            return self.choices[int(rng.integers(len(self.choices)))]
        if self.scale == "int_range":
            return int(rng.integers(int(self.low), int(self.high) + 1))
        if self.scale == "log_range":
            return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        return float(rng.uniform(self.low, self.high))


def plan_trials(
    estimator: str,
    hyperparameters: Mapping[str, Any],
    search_space: Mapping[str, Any],
    method: str,
    max_trials: int,
    seed: int,
    scoring: tuple[str, str, int] = ("", "auto", 3),
    task: str = CLASSIFICATION,
) -> list[dict[str, Any]]:
    """The trials, ``{trial, hyperparameters}`` each: the given ``hyperparameters`` with one
    combination of the search space over them, every one checked against the estimator of
    ``task``, as is ``scoring`` (the metric, its direction and the folds), before any trial
    runs. An empty search space plans the one ``UNTUNED`` trial of the given
    hyperparameters."""
    if not search_space:
        return [{"trial": UNTUNED, "hyperparameters": dict(hyperparameters)}]
    _check_scoring(*scoring, task)
    if method not in SEARCH_METHODS:
        raise ConveyorError(f"search {method!r}: expected one of {', '.join(SEARCH_METHODS)}")
    if isinstance(max_trials, bool) or not isinstance(max_trials, int):
        raise ConveyorError(f"max_trials {max_trials!r}: expected a whole number")
    if not 1 <= max_trials <= MAX_TRIALS:
        raise ConveyorError(f"max_trials {max_trials}: expected 1 to {MAX_TRIALS}")
    dimensions = [Dimension.from_spec(str(name), spec) for name, spec in search_space.items()]
    combinations = (
        _grid(dimensions, max_trials) if method == "grid" else _random(dimensions, max_trials, seed)
    )
    trials = [{**hyperparameters, **combination} for combination in combinations]
    spec = estimator_spec(estimator, task)
    for index, trial in enumerate(trials):
        # Checked as the trials will get them: KFP passes every number as a float.
        as_passed = json.loads(json.dumps(trial), parse_int=float)
        try:
            _check_values(build_estimator(spec, as_passed, seed, task=task)[0])
        except ConveyorError as error:
            raise ConveyorError(f"search_space: {error}") from None
        except ValueError as error:  # scikit-learn's check of a value, as fitting would
            raise ConveyorError(f"search_space: trial {index}: {first_line(error)}") from None
    return [{"trial": index, "hyperparameters": trial} for index, trial in enumerate(trials)]


def _check_scoring(metric: str, direction: str, folds: int, task: str) -> None:
    Policy(metric=metric, direction=direction).validate()  # type: ignore[arg-type]
    primary_metric(metric, task)
    if not 2 <= folds <= MAX_FOLDS:
        raise ConveyorError(f"tuning_folds {folds}: expected 2 to {MAX_FOLDS}")


def _check_values(estimator: Any) -> None:
    """scikit-learn's own check of every setting's value (which fitting would make), for
    estimators that declare their constraints; XGBoost's and LightGBM's wait for the fit."""
    if hasattr(type(estimator), "_parameter_constraints"):
        estimator._validate_params()


def start_tuning(
    trials: Sequence[Mapping[str, Any]], tracking_uri: str, experiment: str, pipeline_run_id: str
) -> list[dict[str, Any]]:
    """The planned ``trials``, each with the id of the tuning run it is to log under, which
    this starts in ``experiment``; the ``UNTUNED`` trial gets none, and nothing is logged."""
    if trials[0]["trial"] == UNTUNED:
        return [{**trial, "tuning_run_id": ""} for trial in trials]
    names = sorted({name for trial in trials for name in trial["hyperparameters"]})
    params = {"trials": len(trials), "hyperparameters": ", ".join(names)}
    run_id = tracking.start_tuning_run(
        tracking.connect(tracking_uri), experiment, params, {"pipeline_run_id": pipeline_run_id}
    )
    return [{**trial, "tuning_run_id": run_id} for trial in trials]


def _grid(dimensions: Sequence[Dimension], max_trials: int) -> list[dict[str, Any]]:
    ranges = [d.name for d in dimensions if not d.choices]
    if ranges:
        raise ConveyorError(
            f"search grid: {ranges[0]!r} is a range; a grid tries lists of values (use "
            "search random for ranges)"
        )
    size = math.prod(len(d.choices) for d in dimensions)
    if size > max_trials:
        raise ConveyorError(
            f"search grid: {size} combinations, more than max_trials {max_trials}; raise "
            "max_trials or use search random"
        )
    names = [d.name for d in dimensions]
    return [
        dict(zip(names, values, strict=True))
        for values in itertools.product(*(d.choices for d in dimensions))
    ]


def _random(dimensions: Sequence[Dimension], max_trials: int, seed: int) -> list[dict[str, Any]]:
    """``max_trials`` distinct draws, fewer when the space has fewer."""
    rng = np.random.default_rng(seed)
    drawn: list[dict[str, Any]] = []
    for _ in range(max_trials * _DRAWS_PER_TRIAL):
        combination = {d.name: d.draw(rng) for d in dimensions}
        if combination not in drawn:
            drawn.append(combination)
        if len(drawn) == max_trials:
            break
    return drawn


@dataclass(frozen=True)
class TrialResult:
    """One trial's cross-validated score.

    Attributes:
        trial: Its number in the plan, from 0.
        hyperparameters: What the estimator was given.
        metric: The primary metric.
        folds: The metric on each held-out fold of the training split.
        run_id: Its MLflow run.
        tuning_run_id: The tuning run its run is a child of (plan_trials started it).
        error: Why it has no score: the estimator refused its hyperparameters or the data
            when fitted (a trial that fails is reported, never chosen).
    """

    trial: int
    hyperparameters: dict[str, Any]
    metric: str
    folds: tuple[float, ...]
    run_id: str = ""
    tuning_run_id: str = ""
    error: str = ""

    @property
    def mean(self) -> float:
        return float(np.mean(self.folds)) if self.folds else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "folds": list(self.folds)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrialResult:
        try:
            return cls(
                trial=int(data["trial"]),
                hyperparameters=dict(data["hyperparameters"]),
                metric=str(data["metric"]),
                folds=tuple(float(f) for f in data["folds"]),
                run_id=str(data.get("run_id", "")),
                tuning_run_id=str(data.get("tuning_run_id", "")),
                error=str(data.get("error", "")),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ConveyorError(f"a trial's result is malformed ({error!r}): {data!r}") from None


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of a run shares: the split, its target, schema and roles, the
    estimator and how a trial is scored.

    Attributes:
        train_path: The training split (Parquet): the folds are carved from it.
        target: The label column.
        estimator: The estimator's name; empty: the task's default.
        metric: The primary metric, which scores each held-out fold; empty: the task's.
        folds: Cross-validation folds (shuffled by ``seed``; stratified for
            classification).
        seed: Seed of the folds and the estimator.
        positive_class: A binary target's positive class, as train takes it.
        schema_path: The schema validate checked the split against (its recorded roles
            decide the features, as in train); None decides them from the split.
        id_columns: Columns that identify a row, never features.
        calibration: ``sigmoid``, ``isotonic`` or empty, as train takes it.
        gpus: The GPUs the step was given (``devices.requested_gpus``).
        task: ``classification`` or ``regression``, as ingest decided.
    """

    train_path: Path
    target: str
    estimator: str
    metric: str
    folds: int = 3
    seed: int = 42
    positive_class: str = ""
    schema_path: Path | None = None
    id_columns: tuple[str, ...] = ()
    calibration: str = ""
    gpus: int = 0
    task: str = CLASSIFICATION


def run_trial(settings: TrialSettings, trial: Mapping[str, Any], tracking_uri: str) -> TrialResult:
    """Scores one planned trial (``{trial, hyperparameters, tuning_run_id}``) by
    cross-validation and logs it as a child run of its tuning run; the ``UNTUNED`` trial is
    returned unscored, with nothing logged."""
    metric = primary_metric(settings.metric, settings.task)
    planned = TrialResult.from_dict({**trial, "metric": metric, "folds": []})
    if planned.trial == UNTUNED:
        return planned
    client = tracking.connect(tracking_uri)  # before the work: a bad URI fails fast
    table = read_parquet(settings.train_path)
    roles = None
    if settings.schema_path is not None:
        text = settings.schema_path.read_text(encoding="utf-8")
        roles = Schema.from_json(text, str(settings.schema_path)).recorded_roles()
    positive = settings.positive_class
    if settings.task == CLASSIFICATION:
        positive = _positive_class(table[settings.target], settings.positive_class)
    device = CPU

    def fit(rows: pd.DataFrame, hyperparameters: dict[str, Any]) -> TrainedModel:
        return fit_model(
            rows, settings.target, settings.estimator, hyperparameters, settings.seed,
            settings.id_columns, positive, roles, settings.calibration, device, settings.task,
        )  # fmt: skip

    params = {"trial": planned.trial, **planned.hyperparameters}
    name = f"trial-{planned.trial}"
    try:  # a trial that fails is reported, so the tuning run still ends
        spec = estimator_spec(settings.estimator, settings.task)
        device, _ = training_device(spec, settings.gpus)
        params["device"] = device
        folds = cross_validate(
            table, settings.target, planned.hyperparameters, metric, settings.folds,
            settings.seed, fit, settings.task,
        )  # fmt: skip
    except ConveyorError as error:  # this trial's hyperparameters: the others still count
        run_id = tracking.log_child_run(
            client, planned.tuning_run_id, name, params, {}, error=str(error)
        )
        return replace(planned, run_id=run_id, error=str(error))
    metrics = {f"cv_{metric}": float(np.mean(folds))}
    metrics.update({f"cv_{metric}_fold{i}": value for i, value in enumerate(folds)})
    run_id = tracking.log_child_run(client, planned.tuning_run_id, name, params, metrics)
    return replace(planned, folds=folds, run_id=run_id)


def _positive_class(labels: pd.Series, requested: str) -> str:
    """A binary target's positive class as train decides it on the whole split (``""`` for
    more classes), so every fold measures the same class."""
    classes = np.unique(labels.to_numpy())
    if len(classes) != 2:
        return requested
    return str(plain(positive_label(classes, labels.to_numpy(), requested)))


def cross_validate(
    train: pd.DataFrame,
    target: str,
    hyperparameters: Mapping[str, Any],
    metric: str,
    folds: int,
    seed: int,
    fit: Callable[[pd.DataFrame, dict[str, Any]], TrainedModel],
    task: str = CLASSIFICATION,
) -> tuple[float, ...]:
    """``metric`` on each of ``folds`` folds of ``train`` (stratified for classification),
    the model fitted by ``fit(rows, hyperparameters)`` on the other folds, of the positive
    class the model's card names (``fit`` fixes it for all folds: a fold's own rarer class
    may differ)."""
    metric = primary_metric(metric, task)
    splitter = _folds(train[target], folds, seed, task)
    scores = []
    for fit_rows, held_out in splitter.split(train, train[target]):
        model = fit(train.iloc[fit_rows], dict(hyperparameters))
        positive = model.card.positive_class or ""
        measured = score(model.pipeline, train.iloc[held_out], target, positive).metrics
        if metric not in measured:
            raise ConveyorError(f"{metric} is not measured for this target: {', '.join(measured)}")
        scores.append(measured[metric])
    return tuple(float(value) for value in scores)


def _folds(labels: pd.Series, folds: int, seed: int, task: str) -> KFold:
    """Shuffled folds, stratified for classification, each able to hold out what it must:
    a row of each class, or two rows for regression."""
    if task == REGRESSION:
        if folds < 2 or len(labels) < 2 * folds:
            raise ConveyorError(
                f"cross-validation needs 2 folds or more, and 2 rows in every fold: {folds} "
                f"folds, {len(labels)} training rows"
            )
        return KFold(n_splits=folds, shuffle=True, random_state=seed)
    smallest = int(labels.value_counts().min())
    if folds < 2 or smallest < folds:
        raise ConveyorError(
            f"cross-validation needs 2 folds or more, and each class in every fold: {folds} "
            f"folds, the rarest class has {smallest} training rows"
        )
    return StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)


def chosen_hyperparameters(
    results: Sequence[TrialResult], direction: int
) -> tuple[dict[str, Any], TrialResult | None]:
    """What train fits: the best trial's hyperparameters, or the given ones (and no trial)
    when the run had no search space."""
    if all(result.trial == UNTUNED for result in results):
        return (dict(results[0].hyperparameters) if results else {}), None
    chosen = best_trial(results, direction)
    return dict(chosen.hyperparameters), chosen


def best_trial(results: Sequence[TrialResult], direction: int) -> TrialResult:
    """The trial with the best mean (``direction`` 1: highest, -1: lowest); the earliest of
    equals. A trial whose mean is not finite is never chosen."""
    finite = [result for result in results if math.isfinite(result.mean)]
    if not finite:
        failed = [f"trial {r.trial}: {r.error}" for r in results if r.error]
        why = f": {failed[0]}" if failed else ""
        raise ConveyorError(f"none of the {len(results)} trials has a finite score{why}")
    return max(sorted(finite, key=lambda r: r.trial), key=lambda r: direction * r.mean)


def selection_report(
    results: Sequence[TrialResult], chosen: TrialResult | None, direction: int
) -> str:
    """Markdown: every trial, its hyperparameters and its folds' mean and spread, the chosen
    one marked; or, without trials, that the given hyperparameters were kept."""
    if chosen is None:
        return "# Tuning\n\nNo search space: train fits the hyperparameters given.\n"
    names = sorted({name for result in results for name in result.hyperparameters})
    better = "higher" if direction > 0 else "lower"
    lines = [
        "# Tuning",
        "",
        f"{len(results)} trials, each scored by {chosen.metric} ({better} is better) on "
        f"{len(chosen.folds)} cross-validation folds of the training split. Trial "
        f"{chosen.trial} is chosen: train fits it on the whole training split.",
        "",
    ]
    rows = [
        [
            f"**{r.trial}** (chosen)" if r is chosen else str(r.trial),
            *(_shown(r.hyperparameters.get(name, "")) for name in names),
            f"failed: {r.error}" if r.error else f"{r.mean:.4f}",
            f"{np.std(r.folds, ddof=1):.4f}" if len(r.folds) > 1 else "",
        ]
        for r in sorted(results, key=lambda r: r.trial)
    ]
    lines += markdown.table(["trial", *names, f"{chosen.metric} mean", "spread (sd)"], rows)
    return "\n".join(lines) + "\n"


def _shown(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Selection:
    """What select_trial decided: the hyperparameters train fits, the chosen trial (None
    without a search space) and the Markdown table of every trial."""

    hyperparameters: dict[str, Any]
    chosen: TrialResult | None
    report: str


def select_trials(
    results: Sequence[Mapping[str, Any]], metric: str, direction: str, tracking_uri: str
) -> Selection:
    """The best of the trials' ``results`` by ``metric`` in ``direction`` (``auto``,
    ``maximize``, ``minimize``); their tuning run gets the table (``tuning.md``), the chosen
    trial's number and run as tags, and is ended."""
    trials = [TrialResult.from_dict(result) for result in results]
    metric = metric or (trials[0].metric if trials else "")  # the trials' resolved one
    try:
        policy = Policy(metric=metric, direction=direction)
        policy.validate()
        hyperparameters, chosen = chosen_hyperparameters(trials, policy.sign())
    except ConveyorError:  # the tuning run ends so, not left running
        if trials and trials[0].tuning_run_id:
            tracking.connect(tracking_uri).set_terminated(trials[0].tuning_run_id, "FAILED")
        raise
    report = selection_report(trials, chosen, policy.sign())
    if chosen is not None:
        client, parent = tracking.connect(tracking_uri), chosen.tuning_run_id
        client.log_text(parent, report, "tuning.md")
        client.set_tag(parent, "chosen_trial", str(chosen.trial))
        client.set_tag(parent, "chosen_run_id", chosen.run_id)
        client.log_metric(parent, f"cv_{metric}", chosen.mean)
        client.set_terminated(parent)
    return Selection(hyperparameters, chosen, report)
