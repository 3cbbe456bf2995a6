"""Fitting a scikit-learn classifier and writing it as a KServe-loadable model directory.

The directory holds ``model.joblib`` (what KServe's sklearn format loads; only
scikit-learn classes are pickled, so no Conveyor code is needed to load it, except for a
model with date features, whose preprocessing calls ``data.roles.date_parts``) and
``model.json``, the model card: its ``format_version``, sha256 of ``model.joblib``,
features, classes and the library versions the model was trained with.

Loading unpickles ``model.joblib``, which runs whatever code the pickle names, so
``load_model_dir`` checks everything it can first: the card must be of a format this code
knows (a newer one is refused, as are unknown or mistyped keys), ``model_file`` must lie
inside the directory, and the file's sha256 must equal the card's and, when the caller
pins one (the model server does from ``CONVEYOR_MODEL_SHA256``), the registry's: whoever
can write the model bucket can rewrite ``model.json`` too, but not the registry.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any

import joblib
import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, is_regressor
from sklearn.compose import ColumnTransformer
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from conveyor.components.core.data.columns import column_views
from conveyor.components.core.data.roles import (
    FEATURE_ROLES,
    DeclaredRoles,
    Role,
    column_roles,
    date_parts,
    earliest_date,
)
from conveyor.components.core.data.schema import Schema, infer_schema
from conveyor.components.core.data.tables import as_arrow, read_parquet
from conveyor.components.core.data.task import CLASSIFICATION, REGRESSION, TASKS, check_task
from conveyor.components.core.errors import ConveyorError, first_line, plain
from conveyor.components.core.serving.payload_log import score_column
from conveyor.components.core.training.calibration import (
    CALIBRATION_METHODS,
    calibrated,
    check_calibration,
    check_calibration_rows,
)
from conveyor.components.core.training.devices import training_device
from conveyor.components.core.training.estimators import (
    CPU,
    ESTIMATORS,
    build_estimator,
    estimator_spec,
)
from conveyor.components.core.training.importance import evaluation_reference
from conveyor.components.core.training.metrics import positive_label, score
from conveyor.components.core.training.thresholds import predicted_indices

__all__ = [
    "MODEL_CARD",
    "MODEL_FILE",
    "MODEL_FORMAT_VERSION",
    "MODEL_SHA256_ENV",
    "Feature",
    "ModelCard",
    "TrainResult",
    "TrainedModel",
    "fit_model",
    "is_sha256",
    "load_model_dir",
    "mlflow_run_id",
    "read_model_card",
    "save_model_dir",
    "sha256_file",
    "train_model",
]

MODEL_FILE = "model.joblib"
MODEL_CARD = "model.json"
# The registry's sha256 of the model file, set on the predictor by deploy: the model
# directory's own card cannot vouch for a file whoever writes the bucket may also replace.
MODEL_SHA256_ENV = "CONVEYOR_MODEL_SHA256"
# The newest model.json format this code reads. A card without format_version was written
# before the key existed: format 1. New keys come with a new format, so an older server
# refuses what it cannot read; a card is written in the oldest format that holds it, so a
# model using no newer key still loads in older servers. Format 2: ``id_columns`` and
# ``positive_class``. Format 3: features of kind ``datetime`` and ``text``, whose pickled
# preprocessing calls Conveyor's ``data.roles.date_parts`` or holds a TF-IDF vocabulary.
# Format 4: ``decision_threshold``, which an older server would ignore, predicting the most
# probable class instead, and ``calibration``. Format 5: the estimators ``xgboost`` and
# ``lightgbm``, whose pickles need those libraries (``training.estimators``). Format 6:
# ``task``, ``regression`` for a model answering numbers (an older server would ask it for
# class probabilities).
MODEL_FORMAT_VERSION = 6
_SHA256 = re.compile(r"[0-9a-f]{64}")

# The most words a text feature contributes (the most frequent, by TF-IDF's vocabulary).
_TEXT_FEATURES = 1000
_WORD = r"\w\w"  # what TF-IDF's default token pattern needs
_LIBRARIES = ("scikit-learn", "pandas", "numpy", "joblib", "conveyor")


@dataclass(frozen=True)
class Feature:
    """One input column of the model.

    Attributes:
        name: The column's name in the training table.
        kind: ``numeric``, ``categorical``, ``datetime`` or ``text``: its role
            (``data.roles``), which says how the preprocessor treats it.
        dtype: The column's dtype at training, as text: pandas' name for the training
            table's Arrow column (``bool`` for booleans with gaps; an Arrow name such as
            ``timestamp[us, tz=UTC]`` for a time zone).
    """

    name: str
    kind: str
    dtype: str

    def __post_init__(self) -> None:
        for key in ("name", "kind", "dtype"):
            if not isinstance(getattr(self, key), str):
                raise ConveyorError(f"{key} {_shown(getattr(self, key))}: expected a string")
        if self.kind not in FEATURE_KINDS:
            raise ConveyorError(f"kind {self.kind!r}: expected one of {', '.join(FEATURE_KINDS)}")


FEATURE_KINDS: tuple[str, ...] = FEATURE_ROLES
# Feature kinds newer than format 1 -> the format that introduced them.
_KIND_FORMATS = {"datetime": 3, "text": 3}


@dataclass(frozen=True)
class ModelCard:
    """What a model directory holds and how it was made (``model.json``); checks itself.

    Attributes:
        estimator: The estimator's name (a key of ``estimators.ESTIMATORS``; a card of
            ``xgboost`` or ``lightgbm`` is written in format 5).
        hyperparameters: The user's hyperparameters, as the estimator took them.
        target: The label column.
        classes: The classes the model predicts, in its order; none for regression.
        features: The input columns, in training order.
        seed: The seed training used.
        sha256: sha256 of the model file; empty until the directory is written.
        framework: The model format KServe serves it as.
        model_file: The pickled pipeline's file name, inside the model directory.
        versions: Library versions at training (python, scikit-learn, ...).
        name: The registered model's name (empty in cards written before it was kept).
        format_version: The card's format; a reader refuses one newer than it knows.
        id_columns: Columns that identify a row (an order id, ...): never features; the
            server accepts them in requests and passes them to the payload log (format 2).
        positive_class: A binary model's positive class (one of ``classes``, as text),
            decided at training: what its score is the probability of, and what evaluate
            and online quality measure precision, recall and the false-positive rate of.
            None for more classes and in cards written before it was kept, whose score is
            of the class ``payload_log.score_column`` picks (format 2).
        decision_threshold: A binary model's operating threshold, chosen by evaluate and
            set by register on the copy it publishes: rows whose ``positive_class``
            probability reaches it are predicted positive. None predicts the most probable
            class (format 4).
        calibration: How the probabilities were calibrated at training (``sigmoid`` or
            ``isotonic``, ``training.calibration``); None: as the estimator gives them
            (format 4).
        task: ``classification`` or ``regression`` (``data.task``): a regressor answers
            one number per row, and has no classes, positive class, threshold or
            calibration (format 6).
    """

    estimator: str
    hyperparameters: dict[str, Any]
    target: str
    classes: list[Any]
    features: list[Feature]
    seed: int
    sha256: str = ""
    framework: str = "sklearn"
    model_file: str = MODEL_FILE
    versions: dict[str, str] = field(default_factory=dict)
    name: str = ""
    format_version: int = MODEL_FORMAT_VERSION
    id_columns: list[str] = field(default_factory=list)
    positive_class: str | None = None
    decision_threshold: float | None = None
    calibration: str | None = None
    task: str = CLASSIFICATION

    def __post_init__(self) -> None:
        _check_format_version(self.format_version)
        for key, (kinds, expected) in _CARD_TYPES.items():
            value = getattr(self, key)
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                raise ConveyorError(f"key {key!r} holds {_shown(value)}: expected {expected}")
        if not all(isinstance(feature, Feature) for feature in self.features):
            raise ConveyorError("key 'features' holds something other than features")
        if not all(isinstance(value, str) for value in self.versions.values()):
            raise ConveyorError("key 'versions' holds a version that is not a string")
        _check_id_columns(self.id_columns, [feature.name for feature in self.features])
        _check_positive_class(self.positive_class, self.classes)
        _check_threshold(self.decision_threshold, self.positive_class)
        if self.calibration not in (None, *CALIBRATION_METHODS):
            raise ConveyorError(
                f"key 'calibration' holds {_shown(self.calibration)}: expected "
                f"{', '.join(map(repr, CALIBRATION_METHODS))} or null"
            )
        if self.sha256 and not is_sha256(self.sha256):
            raise ConveyorError(
                f"key 'sha256' holds {_shown(self.sha256)}: expected 64 lower-case hex digits"
            )
        _check_model_file(self.model_file)
        _check_task(self)

    @property
    def is_regression(self) -> bool:
        return self.task == REGRESSION

    def to_json(self) -> str:
        data = asdict(self)
        # Keys at their defaults are left out: a card needing none is format 1, which older
        # servers read.
        if not self.id_columns:
            del data["id_columns"]
        if self.positive_class is None:
            del data["positive_class"]
        for key in ("decision_threshold", "calibration"):
            if data[key] is None:
                del data[key]
        if self.task == CLASSIFICATION:
            del data["task"]
        return json.dumps(data, indent=2, default=str)

    def oldest_format(self) -> int:
        """The oldest format that holds this card: what ``save_model_dir`` writes."""
        kinds = [_KIND_FORMATS.get(feature.kind, 1) for feature in self.features]
        keys = 2 if self.id_columns or self.positive_class is not None else 1
        newest = [
            _KEY_FORMATS[key]
            for key in ("decision_threshold", "calibration")
            if getattr(self, key) is not None
        ]
        if self.is_regression:
            newest.append(_KEY_FORMATS["task"])
        return max([keys, *newest, *kinds, _estimator_format(self.estimator)])

    def at_threshold(self, threshold: float) -> ModelCard:
        """This card with a decision threshold, in a format that holds one."""
        return replace(
            self,
            decision_threshold=threshold,
            format_version=max(self.format_version, _KEY_FORMATS["decision_threshold"]),
        )

    def predicted_indices(self, probabilities: np.ndarray) -> np.ndarray:
        """Each row's predicted class, as an index into ``classes`` (the columns of
        ``probabilities``): at the decision threshold if the card has one."""
        column = score_column(self.classes, self.positive_class)
        return predicted_indices(probabilities, column, self.decision_threshold)

    @classmethod
    def from_json(cls, text: str, where: str = MODEL_CARD) -> ModelCard:
        """The card ``text`` holds; ConveyorError naming ``where`` and the key at fault."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConveyorError(f"{where}: not JSON ({error})") from None
        if not isinstance(data, dict):
            raise ConveyorError(f"{where}: expected a JSON object (a model card)")
        try:
            return cls._from_dict(data)
        except ConveyorError as error:
            raise ConveyorError(f"{where}: {error}") from None

    @classmethod
    def _from_dict(cls, data: dict[str, Any]) -> ModelCard:
        version = data.get("format_version", 1)  # cards from before the key: format 1
        _check_format_version(version)
        known = [f.name for f in fields(cls) if version >= _KEY_FORMATS.get(f.name, 1)]
        _check_keys(data, known, _REQUIRED_KEYS, "", version)
        features = data["features"]
        if not isinstance(features, list):
            raise ConveyorError(f"key 'features' holds {_shown(features)}: expected a list")
        features = _features(features, version)
        return cls(**{**data, "format_version": version, "features": features})

    def model_path(self, directory: Path) -> Path:
        """The model file, refused unless it lies inside ``directory`` once symlinks are
        followed (a card could otherwise have the server unpickle any file it can read)."""
        path = directory / self.model_file
        if not path.resolve().is_relative_to(directory.resolve()):
            raise ConveyorError(
                f"{directory / MODEL_CARD}: model_file {self.model_file!r} resolves to "
                f"{path.resolve()}, outside the model directory; refusing to load it"
            )
        return path


# The key a card's field is read from -> the JSON types it may hold and how to say so.
_CARD_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "estimator": ((str,), "a string"),
    "hyperparameters": ((dict,), "an object"),
    "target": ((str,), "a string"),
    "classes": ((list,), "a list"),
    "features": ((list,), "a list"),
    "seed": ((int,), "an integer"),
    "sha256": ((str,), "a string"),
    "framework": ((str,), "a string"),
    "model_file": ((str,), "a string"),
    "versions": ((dict,), "an object"),
    "name": ((str,), "a string"),
    "format_version": ((int,), "an integer"),
    "id_columns": ((list,), "a list"),
    "positive_class": ((str, type(None)), "a string or null"),
    "decision_threshold": ((float, int, type(None)), "a number or null"),
    "calibration": ((str, type(None)), "a string or null"),
    "task": ((str,), "a string"),
}
# Keys newer than format 1 -> the format that introduced them.
_KEY_FORMATS = {
    "id_columns": 2,
    "positive_class": 2,
    "decision_threshold": 4,
    "calibration": 4,
    "task": 6,
}
_REQUIRED_KEYS = ("estimator", "hyperparameters", "target", "classes", "features", "seed")


def _check_format_version(version: Any) -> None:
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ConveyorError(
            f"key 'format_version' holds {_shown(version)}: expected a positive integer"
        )
    if version > MODEL_FORMAT_VERSION:
        raise ConveyorError(
            f"server too old for model format {version}: this Conveyor reads model formats "
            f"up to {MODEL_FORMAT_VERSION}; serve it with the release that trained it or later"
        )


def _check_task(card: ModelCard) -> None:
    """A known task; a regressor's card has no classes, nor what belongs to them."""
    if card.task not in TASKS:
        raise ConveyorError(
            f"key 'task' holds {_shown(card.task)}: expected one of {', '.join(TASKS)}"
        )
    if not card.is_regression:
        return
    held = [key for key in _CLASS_KEYS if getattr(card, key) not in (None, [])]
    if held:
        raise ConveyorError(
            f"key {held[0]!r} holds {_shown(getattr(card, held[0]))}, but a regression model "
            "answers numbers: it has no classes"
        )


# What only a classifier's card holds.
_CLASS_KEYS = ("classes", "positive_class", "decision_threshold", "calibration")


def _estimator_format(name: str) -> int:
    """The oldest format whose servers load estimator ``name`` (1 for one this code does not
    know). Written, not checked on reading: it keeps older servers off, and this one loads
    either way."""
    return ESTIMATORS[name].model_format if name in ESTIMATORS else 1


def _check_id_columns(names: list[Any], features: list[str]) -> None:
    """Id columns are distinct column names, none of them a feature."""
    if not all(isinstance(name, str) and name for name in names):
        raise ConveyorError(f"key 'id_columns' holds {_shown(names)}: expected column names")
    repeated = sorted({name for name in names if names.count(name) > 1})
    overlap = [name for name in names if name in features]
    if repeated or overlap:
        raise ConveyorError(
            f"key 'id_columns': {(repeated or overlap)[0]!r} is "
            f"{'named twice' if repeated else 'also a feature'}; an id column is never a feature"
        )


def _check_positive_class(positive: str | None, classes: list[Any]) -> None:
    """A positive class belongs to a binary model and is one of its classes, as text."""
    if positive is None:
        return
    if len(classes) != 2:
        raise ConveyorError(
            f"key 'positive_class' holds {_shown(positive)}, but the model has "
            f"{len(classes)} classes; only a binary model has a positive class"
        )
    if positive not in [str(c) for c in classes]:
        raise ConveyorError(
            f"key 'positive_class' holds {_shown(positive)}: expected one of the classes "
            f"{[str(c) for c in classes]}"
        )


def _check_threshold(threshold: float | None, positive: str | None) -> None:
    """A threshold is a probability, of a binary model's positive class."""
    if threshold is None:
        return
    if positive is None:
        raise ConveyorError(
            "key 'decision_threshold' needs 'positive_class': only a binary model with a "
            "positive class has a threshold"
        )
    if not 0 <= threshold <= 1:
        raise ConveyorError(
            f"key 'decision_threshold' holds {_shown(threshold)}: expected a probability in [0, 1]"
        )


def _check_keys(
    data: dict[str, Any], known: list[str], required: tuple[str, ...], at: str, version: int
) -> None:
    """Refuses an unknown key (a newer format would have said so) or a missing one."""
    unknown = [key for key in data if key not in known]
    if unknown:
        raise ConveyorError(
            f"unknown key {at + unknown[0]!r} in a format-{version} model card "
            f"(known: {', '.join(known)})"
        )
    missing = [key for key in required if key not in data]
    if missing:
        raise ConveyorError(f"no key {at + missing[0]!r}; a model card written by train has it")


def _features(entries: list[Any], version: int) -> list[Feature]:
    features = []
    for index, entry in enumerate(entries):
        at = f"features[{index}]."
        if not isinstance(entry, dict):
            raise ConveyorError(f"key {at[:-1]!r} holds {_shown(entry)}: expected an object")
        keys = ("name", "kind", "dtype")
        _check_keys(entry, list(keys), keys, at, version)
        try:
            features.append(Feature(**entry))
        except ConveyorError as error:
            raise ConveyorError(f"key {at[:-1]!r}: {error}") from None
        if version < _KIND_FORMATS.get(entry["kind"], 1):
            raise ConveyorError(
                f"key {at + 'kind'!r}: {entry['kind']!r} needs model format "
                f"{_KIND_FORMATS[entry['kind']]}, the card says {version}"
            )
    return features


def _check_model_file(name: str) -> None:
    """A plain relative name: not absolute and no ``..``; ``model_path`` checks symlinks."""
    path = PurePosixPath(name.replace("\\", "/"))  # a Windows separator is one too
    if not path.parts or path.is_absolute() or ".." in path.parts:
        raise ConveyorError(
            f"key 'model_file' holds {_shown(name)}: expected a file name inside the model "
            "directory (relative, without '..')"
        )


def _shown(value: Any) -> str:
    """``value`` as a card's message shows it: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def is_sha256(text: object) -> bool:
    """Whether ``text`` is a sha256 as Conveyor writes it: 64 lower-case hex digits."""
    return isinstance(text, str) and _SHA256.fullmatch(text) is not None


@dataclass(frozen=True)
class TrainedModel:
    pipeline: Pipeline
    card: ModelCard

    def at_threshold(self, threshold: float | None) -> TrainedModel:
        """This model predicting at ``threshold`` (None: as it is)."""
        return self if threshold is None else replace(self, card=self.card.at_threshold(threshold))


@dataclass(frozen=True)
class TrainResult:
    """What training made: the card written, its MLflow run, the training split's metrics,
    and the device it trained on (``cpu`` or ``cuda``, with the GPU's name)."""

    card: ModelCard
    run_id: str
    metrics: dict[str, float]
    device: str = CPU
    gpu: str = ""


def train_model(
    train_path: Path,
    target: str,
    estimator: str,
    hyperparameters: dict[str, Any],
    seed: int,
    model_dir: Path,
    tracking_uri: str,
    experiment: str,
    tags: dict[str, str],
    positive_class: str = "",
    schema_path: Path | None = None,
    model_name: str = "",
    test_path: Path | None = None,
    id_columns: Sequence[str] = (),
    calibration: str = "",
    gpus: int = 0,
    task: str = CLASSIFICATION,
) -> TrainResult:
    """Fits the classifier (calibrated by ``calibration``, if given), writes the model
    directory (its card naming ``model_name``) and logs it all to one MLflow run, with the
    training split and its schema as the reference monitoring compares with.

    ``task`` (ingest's decision) says whether a classifier or a regressor is fitted; an
    empty ``estimator`` is the task's default (``estimators.DEFAULT_ESTIMATORS``).

    With ``gpus`` (what the step was given), the estimator trains on a GPU, or nothing is
    done: ``devices.training_device`` refuses an estimator or a container that cannot use
    one. The run records the device (param ``device``, tag ``gpu``).

    With ``test_path`` (the evaluation split), the model's permutation importance and its
    scores on that split are measured too (``training.importance``) and written
    beside the model (``importance.json``, ``scores.parquet``: outside the card's sha256,
    and not needed to load it) and to the run's ``reference/``; without, neither is.
    """
    # MLflow only here: fitting and loading a model (the server, make gpu-check) need none.
    from conveyor.components.core.training import tracking

    spec = estimator_spec(estimator, check_task(task, allow_auto=False))
    spec.estimator_class(task)  # before the work: one that does not train the task fails fast
    device, gpu = training_device(spec, gpus)
    client = tracking.connect(tracking_uri)  # before the work: a bad URI fails fast
    train_split = read_parquet(train_path)
    test_split = read_parquet(test_path) if test_path is not None else None
    schema_text = schema_path.read_text(encoding="utf-8") if schema_path is not None else None
    schema = Schema.from_json(schema_text, str(schema_path)) if schema_text else None
    roles = schema.recorded_roles() if schema is not None else None
    model = fit_model(
        train_split, target, spec.name, hyperparameters, seed, id_columns, positive_class, roles,
        calibration, device, task,
    )  # fmt: skip
    model = TrainedModel(model.pipeline, replace(model.card, name=model_name))
    positive = model.card.positive_class or ""  # the card's: what serving scores
    metrics = score(model.pipeline, train_split, target, positive).metrics
    # Measured before anything is written: a split the model cannot score leaves nothing.
    evaluation = None
    if test_split is not None:
        features = [feature.name for feature in model.card.features]
        evaluation = evaluation_reference(
            model.pipeline, features, test_split, target, seed, model.card.positive_class
        )
    card = save_model_dir(model, model_dir)
    if evaluation is not None:
        evaluation.write(model_dir)
    params = {"estimator": spec.name, "seed": seed, "target": target, "device": device}
    params["task"] = task
    params.update(card.hyperparameters)
    if card.calibration is not None:
        params["calibration"] = card.calibration
    run_tags = {**tags, "gpu": gpu} if gpu else tags
    run_id = tracking.start_training_run(client, experiment, params, run_tags, model_dir)
    declared = DeclaredRoles(id_columns=tuple(model.card.id_columns))
    schema_text = schema_text or infer_schema(train_split, target, declared=declared).to_json()
    tracking.log_reference(client, run_id, train_path, schema_text)
    if evaluation is not None:
        tracking.log_evaluation_reference(client, run_id, model_dir)
    tracking.log_metrics(client, run_id, metrics, prefix="train_")
    client.set_terminated(run_id)  # evaluate still logs to it: MLflow allows that
    return TrainResult(card, run_id, metrics, device, gpu)


def mlflow_run_id(model_metadata: dict[str, Any]) -> str:
    """The MLflow run a model artifact came from, as Conveyor's train step records it."""
    run_id = model_metadata.get("mlflow_run_id")
    if not run_id:
        raise ConveyorError(
            "the model artifact's metadata has no mlflow_run_id: pass the model from the train step"
        )
    return str(run_id)


def fit_model(
    train: pd.DataFrame,
    target: str,
    estimator: str,
    hyperparameters: dict[str, Any],
    seed: int,
    id_columns: Sequence[str] = (),
    positive_class: str = "",
    roles: dict[str, Role] | None = None,
    calibration: str = "",
    device: str = CPU,
    task: str = CLASSIFICATION,
) -> TrainedModel:
    """Fits preprocessing (imputation, scaling, one-hot, date parts, TF-IDF) and the chosen
    estimator for ``task`` (a classifier or a regressor), seeded, on ``device`` (``cuda`` for
    an estimator that trains on a GPU: ``devices.training_device`` decides).

    Each column's role (``data.roles``) says whether and how it is a feature: ``roles`` as
    the schema recorded them, else decided here on ``train`` with ``id_columns`` declared.
    Identifiers (``id_columns``, which the table need not hold, and those found) are never
    features: the card lists them for the server to pass to its payload log. A binary
    model's card records its positive class: ``positive_class`` when given, else the one
    ``metrics.positive_label`` picks from the training labels (serving scores it, evaluate
    and online quality measure it). ``calibration`` (``sigmoid``, ``isotonic``) wraps the
    estimator in a 5-fold calibration (``training.calibration``); empty leaves it as is.
    A regressor takes neither a positive class nor calibration."""
    method = check_calibration(calibration)  # before any work
    if task == REGRESSION:
        _check_no_classes(positive_class, method)
    id_columns = list(dict.fromkeys(id_columns))
    if target in id_columns:
        raise ConveyorError(f"id_columns: {target!r} is the target column, not an id column")
    features, id_columns = _features_and_ids(train, target, id_columns, roles)
    spec = estimator_spec(estimator, task)
    model, hyperparameters = build_estimator(spec, hyperparameters, seed, device, task)
    check_calibration_rows(train[target], method)
    pipeline = make_pipeline(
        _preprocessor(features, train, spec.dense_only), calibrated(model, method)
    )
    try:
        pipeline.fit(train[[f.name for f in features]], train[target])
    except spec.fit_errors() as error:  # the libraries' checks of parameters and data
        raise ConveyorError(f"could not train {spec.name!r}: {first_line(error)}") from None
    classes = [] if task == REGRESSION else [plain(c) for c in pipeline.classes_]
    positive = None
    if len(classes) == 2:
        labels = train[target].to_numpy()
        positive = str(plain(positive_label(pipeline.classes_, labels, positive_class)))
    card = ModelCard(
        estimator=spec.name,
        hyperparameters=dict(hyperparameters),
        target=target,
        classes=classes,
        features=features,
        seed=seed,
        versions={**_library_versions(), spec.library: spec.library_version()},
        id_columns=id_columns,
        positive_class=positive,
        calibration=method,
        task=task,
    )
    return TrainedModel(pipeline, card)


def _check_no_classes(positive_class: str, calibration: str | None) -> None:
    """A regressor has no positive class and no probabilities to calibrate."""
    if positive_class:
        raise ConveyorError(
            f"positive_class {positive_class!r}: a regression model has no classes; leave it empty"
        )
    if calibration is not None:
        raise ConveyorError(
            f"calibration {calibration!r}: a regression model has no probabilities to "
            "calibrate; leave it empty"
        )


def _features_and_ids(
    train: pd.DataFrame, target: str, id_columns: list[str], roles: dict[str, Role] | None
) -> tuple[list[Feature], list[str]]:
    """The feature columns, and the id columns (those given, then those found)."""
    views = column_views(as_arrow(train), "training split")
    if roles is None:
        declared = DeclaredRoles(id_columns=tuple(id_columns))
        roles = column_roles(train, target, declared, "training split")
    roles = {**roles, **dict.fromkeys(id_columns, "identifier")}
    features = [
        Feature(name, roles[name], views[name].dtype)
        for name in train.columns
        if name != target and roles.get(name) in FEATURE_ROLES
    ]
    if not features:
        raise ConveyorError(
            f"the training table has no feature columns besides {target!r}: "
            + ", ".join(f"{name} is {role}" for name, role in roles.items())
        )
    found_ids = [n for n in train.columns if roles.get(n) == "identifier" and n not in id_columns]
    _check_words(train, features)
    return features, id_columns + found_ids


def save_model_dir(model: TrainedModel, directory: Path) -> ModelCard:
    """Writes ``model.joblib`` and ``model.json`` (holding the joblib file's sha256 and the
    oldest ``format_version`` that holds the card); returns the card written."""
    directory.mkdir(parents=True, exist_ok=True)
    joblib.dump(model.pipeline, directory / MODEL_FILE)
    card = replace(
        model.card,
        sha256=sha256_file(directory / MODEL_FILE),
        model_file=MODEL_FILE,
        format_version=model.card.oldest_format(),
    )
    (directory / MODEL_CARD).write_text(card.to_json())
    return card


def read_model_card(directory: Path) -> ModelCard:
    """The card of a model directory; ConveyorError naming its file and what is wrong."""
    path = directory / MODEL_CARD
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConveyorError(f"{path}: cannot read it ({error.strerror})") from None
    except UnicodeDecodeError:
        raise ConveyorError(f"{path}: not UTF-8 text (a model card is JSON)") from None
    return ModelCard.from_json(text, where=str(path))


def load_model_dir(directory: Path, pinned_sha256: str = "") -> TrainedModel:
    """Loads a model directory, checking everything before anything is unpickled.

    Args:
        directory: The model directory (``model.json`` and the file it names).
        pinned_sha256: The registry's sha256 of the model file, which the file must have
            whatever the card says; empty checks the card's sha256 only.

    Raises:
        ConveyorError: The card is unreadable, newer than this code or malformed; its
            ``model_file`` lies outside ``directory``; or the file's sha256 differs from
            the pinned one or the card's.
    """
    if pinned_sha256 and not is_sha256(pinned_sha256):
        raise ConveyorError(
            f"the pinned sha256 {_shown(pinned_sha256)} is not 64 lower-case hex digits"
        )
    card = read_model_card(directory)
    path = card.model_path(directory)
    # Read once: the bytes hashed are the bytes unpickled, whatever replaces the file after.
    data = path.resolve().read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if pinned_sha256 and actual != pinned_sha256:
        raise ConveyorError(
            f"{path}: sha256 {actual[:12]}... is not the registry's {pinned_sha256[:12]}... "
            f"(${MODEL_SHA256_ENV}), whatever {MODEL_CARD} says; refusing to load it"
        )
    if actual != card.sha256:
        raise ConveyorError(
            f"{path}: sha256 {actual[:12]}... does not match "
            f"{card.sha256[:12]}... recorded at training; refusing to load"
        )
    model = joblib.load(io.BytesIO(data))
    _check_classes(model, card, path)
    return TrainedModel(model, card)


def _check_classes(model: Any, card: ModelCard, path: Path) -> None:
    """The card's task and classes are the model's (they name the answers' labels and
    probability columns; a pinned model file says nothing about a card rewritten beside it)."""
    regressor = isinstance(model, BaseEstimator) and is_regressor(model)
    if regressor != card.is_regression:
        kind = "a regressor" if regressor else "not a regressor"
        raise ConveyorError(
            f"{path.parent / MODEL_CARD}: task {card.task!r}, but the model is {kind}; "
            "refusing to serve answers of the wrong kind"
        )
    classes = [plain(c) for c in getattr(model, "classes_", card.classes)]
    if classes != card.classes:
        raise ConveyorError(
            f"{path.parent / MODEL_CARD}: classes {card.classes} are not the model's "
            f"{classes}; refusing to serve labels the model does not give"
        )


def sha256_file(path: Path) -> str:
    """The file's sha256 as 64 lower-case hex digits, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_words(train: pd.DataFrame, features: list[Feature]) -> None:
    """A text feature holds words (what TF-IDF's default tokens are: two letters or
    digits or more) in the training split, or it gives the model nothing."""
    for feature in features:
        if feature.kind != "text":
            continue
        values = train[feature.name].dropna().astype(str)
        if not values.str.contains(_WORD).any():
            raise ConveyorError(
                f"text_columns: {feature.name!r} holds no words in the training split; "
                "leave it out of text_columns"
            )


def _preprocessor(features: list[Feature], train: pd.DataFrame, dense: bool) -> ColumnTransformer:
    """One branch per kind of feature; a text feature gets a branch of its own (a TF-IDF
    vectoriser reads one column). ``dense`` for an estimator that refuses sparse input."""
    names = {kind: [f.name for f in features if f.kind == kind] for kind in FEATURE_KINDS}
    branches = [
        ("numeric", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), "numeric"),
        (
            "categorical",
            make_pipeline(
                SimpleImputer(strategy="constant", fill_value="missing"),
                OneHotEncoder(handle_unknown="ignore"),
            ),
            "categorical",
        ),
    ]
    transformers = [(name, step, names[kind]) for name, step, kind in branches]
    if names["datetime"]:
        reference = min(earliest_date(train[name]) for name in names["datetime"])
        dates = make_pipeline(
            FunctionTransformer(date_parts, kw_args={"reference": reference}),
            SimpleImputer(strategy="median", keep_empty_features=True),
            StandardScaler(),
        )
        transformers.append(("datetime", dates, names["datetime"]))
    for index, name in enumerate(names["text"]):
        text = make_pipeline(
            # Tables' nulls are NaN, requests' None: the vectoriser reads neither.
            SimpleImputer(strategy="constant", fill_value=""),
            SimpleImputer(missing_values=None, strategy="constant", fill_value=""),
            FunctionTransformer(np.ravel),  # the vectoriser reads a column, not a table
            TfidfVectorizer(max_features=_TEXT_FEATURES),
        )
        transformers.append((f"text{index}", text, [name]))  # a column's name may hold "__"
    return ColumnTransformer(transformers, sparse_threshold=0 if dense else 0.3)


def _library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "unknown"
    return versions
