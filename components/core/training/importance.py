"""What a trained model relies on, and what it says, on its evaluation split.

Train records both beside the model and in its MLflow run's ``reference/`` folder:

- ``importance.json``: permutation importance of each *input column* (a categorical
  column's one-hot columns are permuted together, as the column they came from), the mean
  decrease of the model's score when that column's values are shuffled among the rows. The
  score is the negative log loss where the model gives probabilities (it moves with every
  row, where accuracy moves only when a prediction flips), the negative RMSE for a
  regressor, else accuracy. ``shares`` are
  each column's part of the total positive importance, summing to 1; a column whose
  shuffling did not hurt has no share. Monitoring weighs drifted columns by these shares.
- ``scores.parquet``: the evaluation split's inputs with what the model said of each row,
  in the payload log's columns: ``conveyor.prediction``, ``conveyor.score`` and one
  ``conveyor.probability.<class>`` per class; and the row's true label as text, as the
  model's classes are written, in ``conveyor.label`` (not under the target's own name, so
  no input column can clash with it; files recorded before it existed lack it). A
  regressor's rows hold its number, as its payload log does, in
  ``conveyor.predicted_value``, and the true value in ``conveyor.label``. Prediction
  drift compares logged scores with these, overall and per segment (hence the inputs);
  online quality recomputes the offline metrics from them per segment.

Both are bounded to stay fast on a large split: importance is measured on a seeded sample
of at most ``max_rows`` rows, ``repeats`` shuffles per column.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import is_regressor
from sklearn.inspection import permutation_importance
from sklearn.metrics import accuracy_score, log_loss, root_mean_squared_error

from conveyor.components.core.data.tables import read_parquet
from conveyor.components.core.errors import ConveyorError, first_line, plain
from conveyor.components.core.serving.payload_log import (
    PREDICTED_VALUE,
    PROBABILITY_PREFIX,
    probability_column,
    score_column,
)
from conveyor.components.core.serving.payload_log import PREDICTION as PREDICTION_COLUMN
from conveyor.components.core.serving.payload_log import SCORE as SCORE_COLUMN
from conveyor.components.core.training.thresholds import predicted_indices

__all__ = [
    "IMPORTANCE_FILE",
    "LABEL_COLUMN",
    "SCORES_FILE",
    "EvaluationReference",
    "FeatureImportance",
    "evaluation_reference",
    "evaluation_scores",
    "feature_importance",
    "read_importance",
    "read_reference_scores",
    "scores_at_threshold",
]

IMPORTANCE_FILE = "importance.json"
SCORES_FILE = "scores.parquet"
LABEL_COLUMN = "conveyor.label"  # scores.parquet's true label (the log has none)
MAX_ROWS = 5_000
REPEATS = 5


@dataclass(frozen=True)
class FeatureImportance:
    """Permutation importance of each input column (``importance.json``); checks itself.

    Attributes:
        method: How it was measured: ``permutation``.
        metric: The score whose decrease is measured: ``log_loss``, ``rmse`` or
            ``accuracy``.
        importances: Column -> mean decrease of the score when the column is shuffled
            (negative: shuffling happened to help, that is the column does not matter).
        shares: Column -> share of the total positive importance, summing to 1. A column
            without positive importance has no share; when no column has any, ``shares`` is
            empty, which drift settings take as every column weighing the same.
        std: Column -> standard deviation of the decrease over the repeats.
        rows: Rows of the evaluation split it was measured on.
        repeats: Shuffles per column.
        seed: The seed of the sample and the shuffles.
    """

    method: str
    metric: str
    importances: dict[str, float]
    shares: dict[str, float]
    std: dict[str, float] = field(default_factory=dict)
    rows: int = 0
    repeats: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method != "permutation":
            raise ConveyorError(f"importance method {self.method!r}: expected 'permutation'")
        if not isinstance(self.metric, str):
            raise ConveyorError(f"importance metric {self.metric!r}: expected a name")
        for name in ("rows", "repeats", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConveyorError(f"importance {name} {value!r}: expected a whole number")
        for name in ("importances", "shares", "std"):
            values = getattr(self, name)
            if not isinstance(values, dict) or not all(
                isinstance(k, str) and _finite(v) for k, v in values.items()
            ):
                raise ConveyorError(f"importance {name}: expected column -> finite number")
        unknown = sorted(set(self.shares) - set(self.importances))
        if unknown:
            raise ConveyorError(f"importance shares name columns without importance: {unknown}")
        if any(share < 0 for share in self.shares.values()) or (
            self.shares and not math.isclose(sum(self.shares.values()), 1.0, abs_tol=1e-6)
        ):
            raise ConveyorError("importance shares: expected non-negative shares summing to 1")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str, where: str = IMPORTANCE_FILE) -> FeatureImportance:
        """The importance ``text`` holds; ConveyorError naming ``where`` and what is wrong."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConveyorError(f"{where}: not JSON ({error})") from None
        required = {"method", "metric", "importances", "shares"}
        if not isinstance(data, dict) or not required <= set(data):
            raise ConveyorError(
                f"{where}: expected an object with method, metric, importances and shares"
            )
        known = set(cls.__dataclass_fields__)  # keys a newer train adds are left for it
        try:
            return cls(**{key: value for key, value in data.items() if key in known})
        except (ConveyorError, TypeError) as error:
            raise ConveyorError(f"{where}: {first_line(error)}") from None


@dataclass(frozen=True)
class EvaluationReference:
    """What train records of the model on its evaluation split."""

    importance: FeatureImportance
    scores: pd.DataFrame  # the split's inputs and what the model said (see the module doc)

    def write(self, directory: Path) -> None:
        """Writes ``importance.json`` and ``scores.parquet`` into ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / IMPORTANCE_FILE).write_text(self.importance.to_json(), encoding="utf-8")
        self.scores.to_parquet(directory / SCORES_FILE, index=False)


def evaluation_reference(
    model: Any,
    features: list[str],
    split: pd.DataFrame,
    target: str,
    seed: int,
    positive_class: str | None = None,
) -> EvaluationReference:
    """The model's permutation importance and its scores on the evaluation ``split``; see
    ``feature_importance`` and ``evaluation_scores`` (``positive_class``: the card's)."""
    return EvaluationReference(
        feature_importance(model, split, target, features, seed),
        evaluation_scores(model, split, target, features, positive_class),
    )


def read_importance(path: Path) -> FeatureImportance | None:
    """The importance in ``path``; None when the file is absent or empty (a model trained
    before Conveyor recorded importance: champion_reference then writes an empty file)."""
    if not path.is_file() or path.stat().st_size == 0:
        return None
    return FeatureImportance.from_json(path.read_text(encoding="utf-8"), where=str(path))


def read_reference_scores(path: Path) -> pd.DataFrame | None:
    """The evaluation split's scores in ``path``; None when the file is absent or empty
    (as ``read_importance``)."""
    if not path.is_file() or path.stat().st_size == 0:
        return None
    table = read_parquet(path)
    classifier = SCORE_COLUMN in table.columns and PREDICTION_COLUMN in table.columns
    if not classifier and PREDICTED_VALUE not in table.columns:
        raise ConveyorError(
            f"{path}: expected columns {SCORE_COLUMN!r} and {PREDICTION_COLUMN!r}, or a "
            f"regressor's {PREDICTED_VALUE!r} (the scores train records)"
        )
    return table


def scores_at_threshold(
    scores: pd.DataFrame, positive_class: str, threshold: float
) -> pd.DataFrame:
    """``scores`` (recorded at training, at the most probable class) with each row's
    predicted class at the ``threshold`` evaluate chose afterwards: what the served model
    would have said, so that its logged classes are compared like with like."""
    names = [c.removeprefix(PROBABILITY_PREFIX) for c in scores if c.startswith(PROBABILITY_PREFIX)]
    if len(names) != 2:
        raise ConveyorError(
            f"the recorded evaluation scores hold the classes {names}: only a binary model "
            "has a decision threshold"
        )
    probabilities = scores[[probability_column(name) for name in names]].to_numpy()
    picked = predicted_indices(probabilities, score_column(names, positive_class), threshold)
    predicted = pd.Series(np.asarray(names)[picked], dtype="string")
    return scores.assign(**{PREDICTION_COLUMN: predicted})


def feature_importance(
    model: Any,
    split: pd.DataFrame,
    target: str,
    features: list[str],
    seed: int,
    max_rows: int = MAX_ROWS,
    repeats: int = REPEATS,
) -> FeatureImportance:
    """Permutation importance of each of ``features`` (the model's input columns) on
    ``split``, measured on a seeded sample of at most ``max_rows`` labelled rows.

    Args:
        model: A fitted scikit-learn classifier taking a table of ``features`` (the whole
            pipeline, so a column is shuffled before its encoding).
        split: The evaluation split, with the label column ``target``.
        target: The label column.
        features: The model's input columns, in training order.
        seed: Seed of the sample and of the shuffles.
        max_rows: At most this many rows are used.
        repeats: Shuffles per column; the importance is their mean decrease.

    Raises:
        ConveyorError: A feature or the label is not in ``split``, or no row of it is
            labelled with a class the model predicts.
    """
    rows = _labelled_rows(model, split, target, features)
    if len(rows) > max_rows:
        rows = rows.sample(n=max_rows, random_state=seed)
    metric, scorer = _scorer(model)
    try:
        measured = permutation_importance(
            model, rows[features], rows[target], scoring=scorer,
            n_repeats=repeats, random_state=seed,
        )  # fmt: skip
    except ValueError as error:
        raise ConveyorError(f"permutation importance: {first_line(error)}") from None
    means, spreads = measured.importances_mean, measured.importances_std
    importances = {name: float(v) for name, v in zip(features, means, strict=True)}
    spread = {name: float(v) for name, v in zip(features, spreads, strict=True)}
    return FeatureImportance(
        method="permutation",
        metric=metric,
        importances=importances,
        shares=_shares(importances),
        std=spread,
        rows=len(rows),
        repeats=repeats,
        seed=seed,
    )


def evaluation_scores(
    model: Any,
    split: pd.DataFrame,
    target: str,
    features: list[str],
    positive_class: str | None = None,
) -> pd.DataFrame:
    """``split`` without its label, and what ``model`` said of each row: its predicted class
    (string form), its score and each class's probability; score and probabilities are null
    for a model without ``predict_proba``. The score is serving's: a binary model's
    ``positive_class`` (the card's; None: serving's rule for older cards, see
    ``payload_log.score_column``), the top probability for more classes. Last, the row's
    label as text (``LABEL_COLUMN``; null where the split has none). A regressor's rows
    hold its number (``payload_log.PREDICTED_VALUE``) and the true value instead."""
    _check_columns(split, [*features, target])
    if is_regressor(model):
        predicted = np.asarray(model.predict(split[features]), dtype=float)
        said = {PREDICTED_VALUE: predicted, LABEL_COLUMN: split[target].to_numpy(dtype=float)}
        return split.drop(columns=[target]).reset_index(drop=True).assign(**said)
    classes = [plain(c) for c in model.classes_]
    inputs = split.drop(columns=[target]).reset_index(drop=True)
    said = pd.DataFrame(index=inputs.index)
    if hasattr(model, "predict_proba"):
        probabilities = np.asarray(model.predict_proba(split[features]), dtype=float)
        # The class serving reports: the most probable one, in the card's order.
        predicted = [classes[i] for i in probabilities.argmax(axis=1)]
        column = score_column(classes, positive_class)
        said[SCORE_COLUMN] = (
            probabilities.max(axis=1) if column is None else probabilities[:, column]
        )
    else:
        probabilities = np.full((len(split), len(classes)), np.nan)
        predicted = [plain(c) for c in model.predict(split[features])]
        said[SCORE_COLUMN] = np.nan
    said[PREDICTION_COLUMN] = pd.Series([str(c) for c in predicted], dtype="string")
    for index, name in enumerate(classes):
        said[probability_column(name)] = probabilities[:, index]
    truth = [None if pd.isna(value) else str(plain(value)) for value in split[target]]
    said[LABEL_COLUMN] = pd.Series(truth, dtype="string")
    return pd.concat([inputs, said], axis=1)


def _labelled_rows(
    model: Any, split: pd.DataFrame, target: str, features: list[str]
) -> pd.DataFrame:
    """The rows whose label is a class the model predicts (a class unseen in training
    cannot be scored); every row for a regressor."""
    _check_columns(split, [*features, target])
    if is_regressor(model):
        return split
    classes = {plain(c) for c in model.classes_}
    rows = split[split[target].map(lambda value: plain(value) in classes)]
    if rows.empty:
        raise ConveyorError(
            f"the evaluation split has no row labelled {target!r} with a class the model "
            f"predicts ({sorted(map(str, classes))}); cannot measure feature importance"
        )
    return rows


def _check_columns(split: pd.DataFrame, columns: list[str]) -> None:
    missing = [name for name in columns if name not in split.columns]
    if missing:
        raise ConveyorError(
            f"the evaluation split lacks column(s) {missing} that the model was trained with"
        )


def _scorer(model: Any) -> tuple[str, Any]:
    """The metric's name and a scorer (greater is better) that knows every class, so a
    sample lacking one is still scored; the negative RMSE for a regressor."""
    if is_regressor(model):
        return "rmse", lambda m, x, y: -root_mean_squared_error(y, m.predict(x))
    classes = model.classes_
    if hasattr(model, "predict_proba"):
        return "log_loss", lambda m, x, y: -log_loss(y, m.predict_proba(x), labels=classes)
    return "accuracy", lambda m, x, y: accuracy_score(y, m.predict(x))


def _shares(importances: dict[str, float]) -> dict[str, float]:
    positive = {name: value for name, value in importances.items() if value > 0}
    total = sum(positive.values())
    return {name: value / total for name, value in positive.items()} if total > 0 else {}


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
