"""Evaluate: score the model on the evaluation split and decide whether it is blessed.

The decision follows TFX's Evaluator: absolute floors on any metric, and a
change threshold against the current champion on one metric, the champion
being scored on the same evaluation split as the challenger.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from mlflow import MlflowClient

from conveyor.components.core.audit import AuditEvent, record_event
from conveyor.components.core.data.tables import read_parquet
from conveyor.components.core.data.task import CLASSIFICATION, REGRESSION
from conveyor.components.core.errors import ConveyorError, first_line, plain
from conveyor.components.core.files import finite_json, write_text_atomically
from conveyor.components.core.intervals import Z95, wilson_interval
from conveyor.components.core.training import registry, tracking
from conveyor.components.core.training.calibration import (
    Reliability,
    reliability,
    reliability_html,
)
from conveyor.components.core.training.metrics import (
    METRIC_DIRECTIONS,
    Scores,
    metric_task,
    primary_metric,
    score,
    score_predictions,
    score_probabilities,
)
from conveyor.components.core.training.registry import DECISION_THRESHOLD_TAG
from conveyor.components.core.training.residuals import residuals_html
from conveyor.components.core.training.thresholds import (
    ThresholdChoice,
    ThresholdPolicy,
    choose_threshold,
)
from conveyor.components.core.training.trainer import ModelCard, TrainedModel, load_model_dir

__all__ = [
    "ChampionScore",
    "Decision",
    "EvaluationResult",
    "Policy",
    "calibration_warnings",
    "decide",
    "decision_threshold",
    "evaluate_model",
    "imbalance_warnings",
    "render_report",
]


@dataclass(frozen=True)
class Policy:
    """How a challenger is judged.

    Attributes:
        metric: The metric compared with the champion; empty: the task's (``roc_auc`` for
            classification, ``rmse`` for regression).
        direction: ``maximize``, ``minimize``, or ``auto`` (the metric's natural direction).
        min_improvement: The challenger must gain more than this over the champion (in the
            metric's units, in its better direction); 0 means a tie keeps the champion.
        min_relative_improvement: ...and at least this gain as a fraction of the champion's
            value. To accept a small loss, make both negative.
        floors: Absolute bounds, metric -> value: a floor for metrics that are better
            higher, a ceiling for those better lower (log_loss, false_positive_rate).
            false_positive_rate exists for binary targets only: naming it for a multi-class
            model is refused when the model is scored. A floor on a metric of the other task
            (``r2`` for a classifier, ``accuracy`` for a regressor) does not apply: the
            defaults hold floors for both.
        threshold: How a binary model's decision threshold is chosen on the evaluation
            split (``thresholds``); None predicts the most probable class (0.5). The
            class metrics, floors and comparison are at the chosen threshold, and a policy
            no threshold meets leaves the model unblessed.
        unapplied_floors: The floors ``for_task`` set aside, as ``name bound`` text.
    """

    metric: str = ""
    direction: Literal["auto", "maximize", "minimize"] = "auto"
    min_improvement: float = 0.0
    min_relative_improvement: float = 0.0
    floors: dict[str, float] = field(default_factory=dict)
    threshold: ThresholdPolicy | None = None
    unapplied_floors: tuple[str, ...] = ()

    def for_task(self, task: str) -> Policy:
        """This policy for a model of ``task``: its metric named (the task's by default;
        ConveyorError for one of the other task) and the floors of the other task's
        metrics set aside."""
        metric = primary_metric(self.metric, task)
        floors = {k: v for k, v in self.floors.items() if metric_task(k) == task}
        unapplied = tuple(f"{k} {v:g}" for k, v in self.floors.items() if k not in floors)
        return replace(self, metric=metric, floors=floors, unapplied_floors=unapplied)

    def sign(self) -> int:
        if self.direction == "auto":
            return METRIC_DIRECTIONS[self.metric]
        return 1 if self.direction == "maximize" else -1

    def validate(self) -> None:
        unknown = sorted({self.metric, *self.floors} - {"", *METRIC_DIRECTIONS})
        if unknown:
            raise ConveyorError(
                f"unknown metric(s) {unknown}; known: {', '.join(METRIC_DIRECTIONS)}"
            )
        if self.direction not in ("auto", "maximize", "minimize"):
            raise ConveyorError(
                f"metric_direction must be auto, maximize or minimize, got {self.direction!r}"
            )


@dataclass(frozen=True)
class ChampionScore:
    """The registered champion, scored on the challenger's evaluation split (or as recorded)."""

    version: str
    value: float
    scored_on_current_data: bool
    note: str = ""


@dataclass(frozen=True)
class Decision:
    blessed: bool
    reason: str
    metric: str
    challenger: float
    champion: ChampionScore | None = None
    delta: float | None = None
    relative_gain: float | None = None
    failed_floors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class EvaluationResult:
    scores: Scores
    decision: Decision
    warnings: tuple[str, ...] = ()
    threshold: ThresholdChoice | None = None
    reliability: Reliability | None = None
    task: str = CLASSIFICATION
    unapplied_floors: tuple[str, ...] = ()  # floors on the other task's metrics

    def to_json(self) -> str:
        """The verdict register reads: metrics, positive class, blessed, reason, comparison,
        what a person should know before trusting it (``warnings``) and the operating
        ``threshold`` (null without a policy)."""
        scores = {"metrics": self.scores.metrics, "positive_class": self.scores.positive_class}
        verdict = {
            "task": self.task,
            **scores,
            **asdict(self.decision),
            "warnings": list(self.warnings),
            "threshold": _threshold_json(self.threshold),
            "reliability": None if self.reliability is None else self.reliability.to_dict(),
            "unapplied_floors": list(self.unapplied_floors),
        }
        return json.dumps(finite_json(verdict), indent=2)  # NaN (unmeasured) as null

    def decision_threshold(self) -> float | None:
        choice = self.threshold
        return None if choice is None else choice.threshold


def decision_threshold(evaluation_path: Path) -> float | None:
    """The threshold an evaluation chose (its JSON's ``threshold.value``); None without one."""
    try:
        chosen = json.loads(evaluation_path.read_text(encoding="utf-8")).get("threshold")
    except (OSError, ValueError, AttributeError) as error:
        raise ConveyorError(
            f"{evaluation_path}: not an evaluation verdict ({first_line(error)})"
        ) from None
    return None if not isinstance(chosen, dict) else chosen.get("value")


def _threshold_json(choice: ThresholdChoice | None) -> dict[str, Any] | None:
    if choice is None:
        return None
    point = {} if choice.point is None else asdict(choice.point)
    value = point.pop("threshold", None)
    return {"value": value, "policy": choice.policy.to_dict(), **point, "reason": choice.reason}


# Below this many evaluation rows a metric is too noisy to bless on unremarked: at 50 rows
# an accuracy of 0.9 is known only to within about ±0.09 (95 % Wilson interval).
MIN_EVALUATION_ROWS = 50


def small_sample_warnings(rows: int, accuracy: float) -> tuple[str, ...]:
    """A warning, with the accuracy's 95 % Wilson interval, when ``rows`` is under
    ``MIN_EVALUATION_ROWS``; none otherwise."""
    if rows >= MIN_EVALUATION_ROWS:
        return ()
    low, high = wilson_interval(np.array([accuracy * rows]), np.array([rows]), Z95)
    return (
        f"only {rows} evaluation rows (under {MIN_EVALUATION_ROWS}): accuracy {accuracy:.3f} "
        f"is known only to within [{low[0]:.3f}, {high[0]:.3f}] (95 % Wilson interval); "
        "give the run more data or a larger test_size before trusting this verdict",
    )


# A positive class rarer than this makes accuracy a poor judge: always answering the other
# class scores at least 1 minus its share.
RARE_POSITIVE_SHARE = 0.05


def imbalance_warnings(labels: pd.Series, positive_class: Any, metric: str) -> tuple[str, ...]:
    """A warning when a binary model's positive class is under ``RARE_POSITIVE_SHARE`` of
    the evaluation rows and it is judged by accuracy; none otherwise."""
    if positive_class is None or metric != "accuracy" or labels.nunique() != 2:
        return ()
    share = float((labels.astype(str) == str(positive_class)).mean())
    if share >= RARE_POSITIVE_SHARE:
        return ()
    return (
        f"the positive class {positive_class!r} is {share:.1%} of the evaluation rows and "
        f"the primary metric is accuracy, which always answering the other class scores "
        f"{1 - share:.3f} on: judge by roc_auc or f1 (primary_metric), and consider "
        "hyperparameters {class_weight: balanced}",
    )


def evaluate_model(
    model_dir: Path,
    test_path: Path,
    target: str,
    model_name: str,
    tracking_uri: str,
    run_id: str,
    policy: Policy,
    positive_class: str,
    evaluation_path: Path,
    report_path: Path,
    reliability_path: Path | None = None,
    residuals_path: Path | None = None,
) -> EvaluationResult:
    """Scores the model, compares it with the champion, and writes the decision and its report.

    An empty ``positive_class`` takes the model card's (decided at training: the class
    serving scores, so offline and online metrics are of one class). The test metrics, the
    verdict and the report also go to the training's MLflow run; with
    ``reliability_path``, a classifier's reliability diagram (HTML) goes there too, and
    with ``residuals_path`` a regressor's residual plots (HTML).
    """
    policy.validate()
    client = tracking.connect(tracking_uri)
    model = load_model_dir(model_dir)
    test_split = read_parquet(test_path)
    policy = policy.for_task(model.card.task)
    measure = _measure_regressor if model.card.is_regression else _measure_classifier
    measured = measure(model, test_split, target, policy, positive_class)
    scores, choice = measured.scores, measured.threshold
    champion = registry.find_champion(client, model_name)
    champion_score = None
    if champion is not None:
        # The same positive class for both, even where the champion would choose another.
        positive = "" if scores.positive_class is None else str(scores.positive_class)
        champion_score = _score_champion(
            client, champion, test_split, target, policy.metric, positive, model.card.task
        )
    decision = decide(scores.metrics, policy, champion_score)
    if choice is not None and choice.point is None:
        decision = replace(decision, blessed=False, reason=f"{choice.reason}; {decision.reason}")
    result = EvaluationResult(
        scores, decision, measured.warnings, choice, measured.reliability, model.card.task,
        policy.unapplied_floors,
    )  # fmt: skip
    report = render_report(result)
    tracking.log_metrics(client, run_id, scores.metrics, prefix="test_")
    client.set_tag(run_id, "blessed", str(result.decision.blessed).lower())
    threshold = result.decision_threshold()
    # What load_run_model predicts at (conveyor shadow --challenger RUN).
    client.set_tag(run_id, DECISION_THRESHOLD_TAG, "" if threshold is None else repr(threshold))
    client.log_text(run_id, report, "evaluation.md")
    record_event(
        client,
        run_id,
        AuditEvent(
            kind="blessing", decision="blessed" if decision.blessed else "not blessed",
            reason=decision.reason, model=model_name, step="evaluate",
            parameters=asdict(policy), measurements=_measurements(scores, threshold),
        ),
    )  # fmt: skip
    write_text_atomically(evaluation_path, result.to_json())
    write_text_atomically(report_path, report)
    pages = {"reliability.html": (reliability_path, measured.reliability_page(model.card))}
    pages["residuals.html"] = (residuals_path, measured.residuals_page)
    for name, (path, page) in pages.items():
        if path is not None:
            write_text_atomically(path, page)
            client.log_text(run_id, page, name)
    return result


@dataclass(frozen=True)
class _Measured:
    """A model's scores on the evaluation split, with what goes beside them."""

    scores: Scores
    warnings: tuple[str, ...] = ()
    threshold: ThresholdChoice | None = None
    reliability: Reliability | None = None
    residuals_page: str = ""

    def reliability_page(self, card: ModelCard) -> str:
        if self.reliability is None:
            return _no_page("Reliability", "a regression model gives no probabilities")
        return reliability_html(self.reliability, card.calibration)


def _measure_classifier(
    model: TrainedModel, test_split: pd.DataFrame, target: str, policy: Policy, positive: str
) -> _Measured:
    """Scores at the threshold the policy chooses, with the reliability diagram."""
    positive = positive or model.card.positive_class or ""
    proba = model.pipeline.predict_proba(test_split.drop(columns=[target]))
    truth, classes = test_split[target].to_numpy(), model.pipeline.classes_
    choice = _choose_threshold(policy.threshold, model.card, truth, proba, positive)
    threshold = None if choice is None else choice.threshold
    picked = model.at_threshold(threshold).card.predicted_indices(proba)  # as it will serve
    scores = score_probabilities(classes, truth, proba, positive, picked)
    _check_policy_metrics(policy, scores, f"a model of {len(model.card.classes)} classes")
    warnings = small_sample_warnings(len(test_split), scores.metrics["accuracy"])
    warnings += imbalance_warnings(test_split[target], scores.positive_class, policy.metric)
    warnings += calibration_warnings(model.card, policy.threshold)
    warnings += unapplied_floor_warnings(policy)
    calibration = _reliability(classes, scores.positive_class, truth, proba, picked)
    page = _no_page("Residuals", "a classification model has no residuals: see its reliability")
    return _Measured(scores, warnings, choice, calibration, page)


def _measure_regressor(
    model: TrainedModel, test_split: pd.DataFrame, target: str, policy: Policy, positive: str
) -> _Measured:
    """Errors of the predicted numbers, with the residual plots."""
    if policy.threshold is not None:
        raise ConveyorError(
            f"threshold_policy {policy.threshold.to_dict()} needs a binary model; this is a "
            "regression model, which has no classes: leave it empty"
        )
    if positive:
        raise ConveyorError(
            f"positive_class {positive!r}: a regression model has no classes; leave it empty"
        )
    truth = test_split[target].to_numpy(dtype=float)
    predicted = model.pipeline.predict(test_split.drop(columns=[target]))
    scores = score_predictions(truth, predicted)
    _check_policy_metrics(policy, scores, "a regression model")
    warnings = regression_sample_warnings(truth, predicted) + unapplied_floor_warnings(policy)
    page = residuals_html(truth, predicted, target, model.card.seed)
    return _Measured(scores, warnings, residuals_page=page)


def _no_page(title: str, why: str) -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head>"
        f"<body><p>No {title.lower()}: {why}.</p></body></html>\n"
    )


def unapplied_floor_warnings(policy: Policy) -> tuple[str, ...]:
    """A warning when floors were given but none is of the model's task: nothing then
    bounds the model (KFP replaces the whole default dict, the other task's floors too)."""
    if policy.floors or not policy.unapplied_floors:
        return ()
    return (
        f"none of metric_floors applies to this model ({', '.join(policy.unapplied_floors)} "
        "are the other task's): no floor bounds it; add its own (r2: 0.0 for a regression, "
        "roc_auc or accuracy for a classification)",
    )


def regression_sample_warnings(
    truth: np.ndarray, predicted: np.ndarray, seed: int = 0
) -> tuple[str, ...]:
    """A warning, with the RMSE's 95 % bootstrap interval, when there are fewer than
    ``MIN_EVALUATION_ROWS`` rows; none otherwise."""
    rows = len(truth)
    if rows >= MIN_EVALUATION_ROWS:
        return ()
    errors = (np.asarray(truth, dtype=float) - np.asarray(predicted, dtype=float)) ** 2
    draws = np.random.default_rng(seed).integers(0, rows, size=(_BOOTSTRAP_DRAWS, rows))
    low, high = np.quantile(np.sqrt(errors[draws].mean(axis=1)), [0.025, 0.975])
    rmse = float(np.sqrt(errors.mean()))
    return (
        f"only {rows} evaluation rows (under {MIN_EVALUATION_ROWS}): rmse {rmse:.4g} is "
        f"known only to within [{low:.4g}, {high:.4g}] (95 % bootstrap interval); give the "
        "run more data or a larger test_size before trusting this verdict",
    )


_BOOTSTRAP_DRAWS = 2_000


def _reliability(
    classes: np.ndarray, positive: Any, truth: np.ndarray, proba: np.ndarray, picked: np.ndarray
) -> Reliability:
    """Of the measured positive class's probability for a binary model; of the predicted
    class's (its confidence) for more classes."""
    if positive is not None:
        column = [plain(c) for c in classes].index(positive)
        return reliability(truth == classes[column], proba[:, column], f"class {str(positive)!r}")
    rows = np.arange(len(proba))
    return reliability(truth == classes[picked], proba[rows, picked], "the predicted class")


def calibration_warnings(card: ModelCard, threshold: ThresholdPolicy | None) -> tuple[str, ...]:
    """A warning when calibration undoes ``class_weight`` and no threshold policy moves the
    operating point instead; none otherwise."""
    if card.calibration is None or "class_weight" not in card.hyperparameters or threshold:
        return ()
    return (
        f"calibration ({card.calibration}) maps the probabilities back to the classes' real "
        "rates, undoing what class_weight does to them: predicted at the most probable "
        "class, a rare class is found as if unweighted; choose the operating point with "
        "threshold_policy",
    )


def _measurements(scores: Scores, threshold: float | None) -> dict[str, float]:
    return scores.metrics if threshold is None else {**scores.metrics, "threshold": threshold}


def _choose_threshold(
    policy: ThresholdPolicy | None,
    card: ModelCard,
    truth: np.ndarray,
    proba: np.ndarray,
    positive_class: str,
) -> ThresholdChoice | None:
    """The threshold ``policy`` chooses for the positive class the card records (which
    serving scores); None without a policy; refused for more classes, and when the
    positive class evaluated is another."""
    if policy is None:
        return None
    if len(card.classes) != 2:
        raise ConveyorError(
            f"threshold_policy {policy.to_dict()} needs a binary model; this one has "
            f"{len(card.classes)} classes"
        )
    if card.positive_class is None or positive_class != card.positive_class:
        recorded = "none" if card.positive_class is None else repr(card.positive_class)
        raise ConveyorError(
            f"threshold_policy needs positive_class to be the one the model card records "
            f"(serving scores it): the card records {recorded}, evaluate was given "
            f"{positive_class!r}"
        )
    column = [str(c) for c in card.classes].index(positive_class)
    is_positive = truth == np.asarray(card.classes, dtype=object)[column]
    return choose_threshold(is_positive, proba[:, column], policy)


def _check_policy_metrics(policy: Policy, scores: Scores, model: str) -> None:
    """Every metric the policy names was measured (false_positive_rate is binary only, mape
    only where no true value is zero)."""
    named = [policy.metric, *policy.floors]
    missing = [name for name in named if name not in scores.metrics]
    if missing:
        raise ConveyorError(
            f"the policy names {missing[0]!r}, which {model} does not have on this "
            f"evaluation split; choose among {', '.join(scores.metrics)}"
        )


def decide(metrics: dict[str, float], policy: Policy, champion: ChampionScore | None) -> Decision:
    """Blessed when every floor holds and, if a champion exists, the change threshold is met."""
    challenger = metrics[policy.metric]
    failed = [_floor_failure(name, bound, metrics[name]) for name, bound in policy.floors.items()]
    failed = [failure for failure in failed if failure]
    if champion is None:
        blessed = not failed
        met = ", all floors met" if policy.floors else ", no floor set"
        reason = f"first model for this name; {policy.metric} {challenger:.4f}" + (
            f", but {'; '.join(failed)}" if failed else met
        )
        return Decision(blessed, reason, policy.metric, challenger, failed_floors=failed)
    sign = policy.sign()
    delta = challenger - champion.value
    gain = sign * delta
    relative = gain / abs(champion.value) if champion.value else None  # None: from zero
    beats = gain > policy.min_improvement and (
        relative is None or relative >= policy.min_relative_improvement
    )
    blessed = beats and not failed
    winner = "challenger wins" if beats else f"champion v{champion.version} stays"
    change = f"{delta:+.4f}" + ("" if relative is None else f", {sign * relative:+.2%}")
    reason = (
        f"{winner}: challenger {policy.metric} {challenger:.4f} vs champion "
        f"{champion.value:.4f} ({change}); a win needs a gain above "
        f"{policy.min_improvement:g} and of at least {policy.min_relative_improvement:.2%}"
    )
    if failed:
        reason += f"; not blessed: {'; '.join(failed)}"
    if champion.note:
        reason += f" ({champion.note})"
    return Decision(blessed, reason, policy.metric, challenger, champion, delta, relative, failed)


def render_report(result: EvaluationResult) -> str:
    """A Markdown page for the KFP UI: verdict, metrics, comparison, and a classifier's
    confusion matrix."""
    decision, curves = result.decision, result.scores.curves
    verdict = "Blessed" if decision.blessed else "Not blessed"
    lines = ["# Evaluation", "", f"**{verdict}**: {decision.reason}", ""]
    lines += [f"**Warning**: {warning}" for warning in result.warnings]
    lines += ["", "## Metrics", ""] if result.warnings else ["## Metrics", ""]
    lines += [f"A {result.task} model.", ""]
    if result.unapplied_floors:
        floors = ", ".join(result.unapplied_floors)
        lines += [f"Floors on other models' metrics, not applied: {floors}.", ""]
    if result.scores.positive_class is not None:
        lines += [f"Positive class: `{result.scores.positive_class}`.", ""]
    lines += ["| metric | value |", "| --- | --- |"]
    lines += [f"| {name} | {value:.4f} |" for name, value in result.scores.metrics.items()]
    lines += _threshold_section(result.threshold)
    if decision.champion is not None:
        scored = (
            "on this evaluation split"
            if decision.champion.scored_on_current_data
            else "as recorded"
        )
        lines += [
            "",
            "## Champion / challenger",
            "",
            f"| | {decision.metric} |",
            "| --- | --- |",
            f"| challenger | {decision.challenger:.4f} |",
            f"| champion v{decision.champion.version} ({scored}) | {decision.champion.value:.4f} |",
            f"| change | {decision.delta:+.4f} |",
        ]
    if curves is None:
        return "\n".join([*lines, "", "Residual plots: the residuals page."]) + "\n"
    lines += ["", "## Confusion matrix (rows: truth, columns: predicted)", ""]
    lines += ["| | " + " | ".join(curves.labels) + " |", "|---" * (len(curves.labels) + 1) + "|"]
    lines += [
        f"| **{label}** | " + " | ".join(map(str, row)) + " |"
        for label, row in zip(curves.labels, curves.confusion, strict=True)
    ]
    return "\n".join(lines) + "\n"


def _threshold_section(choice: ThresholdChoice | None) -> list[str]:
    if choice is None:
        return []
    lines = ["", "## Operating threshold", "", f"Policy: {choice.policy.describe()}.", ""]
    point = choice.point
    if point is None:
        return [*lines, f"**Not met**: {choice.reason}."]
    low, high = point.false_positive_rate_interval
    return [
        *lines,
        f"Rows whose score reaches **{point.threshold:.4g}** are predicted positive "
        f"({point.flagged} of {point.positives + point.negatives} evaluation rows).",
        "",
        "| precision | recall | false-positive rate (95 % interval) |",
        "| --- | --- | --- |",
        f"| {point.precision:.4f} | {point.recall:.4f} | {point.false_positive_rate:.4f} "
        f"[{low:.4f}, {high:.4f}] |",
        "",
        "Chosen and measured on the same rows: on new data a bounded rate lands on either "
        "side of its bound; the interval is where it is likely to be.",
    ]


def _floor_failure(name: str, bound: float, value: float) -> str:
    if not math.isfinite(value):
        why = " (one class only?)" if metric_task(name) == CLASSIFICATION else ""
        return f"{name} could not be measured on the evaluation split{why}"
    if METRIC_DIRECTIONS[name] > 0 and value < bound:
        return f"{name} {value:.4f} is below the floor {bound:g}"
    if METRIC_DIRECTIONS[name] < 0 and value > bound:
        return f"{name} {value:.4f} is above the ceiling {bound:g}"
    return ""


def _score_champion(
    client: MlflowClient,
    champion: registry.Champion,
    test_split: pd.DataFrame,
    target: str,
    metric: str,
    positive_class: str,
    task: str,
) -> ChampionScore:
    """The champion's metric on this evaluation split; its recorded value if it cannot score
    it (not for a metric in the target's units). A champion of another task is refused."""
    try:
        model = registry.load_champion(client, champion)
    except Exception as error:  # noqa: BLE001 - any failure falls back to the recorded value
        return _recorded_score(champion, metric, error)
    if model.card.task != task:
        answers = {CLASSIFICATION: "classes", REGRESSION: "numbers"}
        raise ConveyorError(
            f"champion v{champion.version} of {champion.name!r} is a {model.card.task} model "
            f"and this one a {task} model: its clients get {answers[model.card.task]}, not "
            f"{answers[task]}; register it under another model_name, or set "
            f"task={model.card.task}"
        )
    try:
        # Its classes as it serves them: at its own threshold, if it has one.
        pick = model.card.predicted_indices
        value = score(model.pipeline, test_split, target, positive_class, pick).metrics[metric]
        return ChampionScore(champion.version, value, scored_on_current_data=True)
    except Exception as error:  # noqa: BLE001 - any failure falls back to the recorded value
        return _recorded_score(champion, metric, error)


# Metrics in the target's units: a value recorded on another evaluation split (another
# scale, another spread) says nothing of this one.
_UNIT_METRICS = ("rmse", "mae")


def _recorded_score(champion: registry.Champion, metric: str, error: Exception) -> ChampionScore:
    recorded = None if metric in _UNIT_METRICS else champion.recorded_metric(metric)
    if recorded is None:
        why = (
            f"its recorded {metric} is of another evaluation split, in its units"
            if metric in _UNIT_METRICS
            else f"has no recorded {metric}"
        )
        raise ConveyorError(
            f"champion v{champion.version} of {champion.name!r} cannot score this data "
            f"({first_line(error)}) and {why}"
        ) from None
    note = f"it cannot score this data: {first_line(error)}; its recorded value was used"
    return ChampionScore(champion.version, recorded, False, note)
