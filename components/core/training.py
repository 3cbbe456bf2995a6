"""Fitting a scikit-learn classifier and writing it as a KServe-loadable model directory.

The directory holds ``model.joblib`` (what KServe's sklearn format loads; only
scikit-learn classes are pickled, so no Conveyor code is needed to load it) and
``model.json``, the model card: sha256 of ``model.joblib``, features, classes and
the library versions the model was trained with.
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import asdict, dataclass, field
from importlib import metadata
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import joblib
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from components.core import tracking
from components.core.data import read_parquet
from components.core.errors import ConveyorError, first_line, plain
from components.core.metrics import score
from components.core.schema import column_kind, infer_schema

__all__ = [
    "ESTIMATORS",
    "MODEL_CARD",
    "MODEL_FILE",
    "ModelCard",
    "TrainResult",
    "TrainedModel",
    "fit_classifier",
    "load_model_dir",
    "mlflow_run_id",
    "save_model_dir",
    "sha256_file",
    "train_model",
]

MODEL_FILE = "model.joblib"
MODEL_CARD = "model.json"

# Estimator name -> (class, defaults Conveyor applies before the user's hyperparameters).
ESTIMATORS: dict[str, tuple[type[BaseEstimator], dict[str, Any]]] = {
    "logistic_regression": (LogisticRegression, {"max_iter": 1000}),
    "random_forest": (RandomForestClassifier, {"n_estimators": 200, "n_jobs": -1}),
    "hist_gradient_boosting": (HistGradientBoostingClassifier, {}),
}
_LIBRARIES = ("scikit-learn", "pandas", "numpy", "joblib", "conveyor")


@dataclass(frozen=True)
class Feature:
    name: str
    kind: str
    dtype: str


@dataclass
class ModelCard:
    """What a model directory holds and how it was made (``model.json``)."""

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
    name: str = ""  # the registered model's name (empty in cards written before it was kept)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str)

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        data = json.loads(text)
        data["features"] = [Feature(**feature) for feature in data["features"]]
        return cls(**data)


@dataclass(frozen=True)
class TrainedModel:
    pipeline: Pipeline
    card: ModelCard


@dataclass(frozen=True)
class TrainResult:
    card: ModelCard
    run_id: str
    metrics: dict[str, float]


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
) -> TrainResult:
    """Fits the classifier, writes the model directory (its card naming ``model_name``) and
    logs it all to one MLflow run, with the training split and its schema as the reference
    monitoring compares with."""
    client = tracking.connect(tracking_uri)  # before the work: a bad URI fails fast
    train_split = read_parquet(train_path)
    model = fit_classifier(train_split, target, estimator, hyperparameters, seed)
    model.card.name = model_name
    metrics = score(model.pipeline, train_split, target, positive_class).metrics
    card = save_model_dir(model, model_dir)
    params = {"estimator": estimator, "seed": seed, "target": target, **card.hyperparameters}
    run_id = tracking.start_training_run(client, experiment, params, tags, model_dir)
    schema = (
        schema_path.read_text(encoding="utf-8")
        if schema_path is not None
        else infer_schema(train_split, target).to_json()
    )
    tracking.log_reference(client, run_id, train_path, schema)
    tracking.log_metrics(client, run_id, metrics, prefix="train_")
    client.set_terminated(run_id)  # evaluate still logs to it: MLflow allows that
    return TrainResult(card, run_id, metrics)


def mlflow_run_id(model_metadata: dict[str, Any]) -> str:
    """The MLflow run a model artifact came from, as Conveyor's train step records it."""
    run_id = model_metadata.get("mlflow_run_id")
    if not run_id:
        raise ConveyorError(
            "the model artifact's metadata has no mlflow_run_id: pass the model from the train step"
        )
    return str(run_id)


def fit_classifier(
    train: pd.DataFrame,
    target: str,
    estimator: str,
    hyperparameters: dict[str, Any],
    seed: int,
) -> TrainedModel:
    """Fits preprocessing (imputation, scaling, one-hot) and the chosen estimator, seeded."""
    features = [
        Feature(name, column_kind(train[name]), str(train[name].dtype))
        for name in train.columns
        if name != target
    ]
    if not features:
        raise ConveyorError(f"the training table has no feature columns besides {target!r}")
    model, hyperparameters = _estimator(estimator, hyperparameters, seed)
    pipeline = make_pipeline(_preprocessor(features), model)
    try:
        pipeline.fit(train[[f.name for f in features]], train[target])
    except ValueError as error:  # scikit-learn's checks of parameters and data
        raise ConveyorError(f"could not train {estimator!r}: {first_line(error)}") from None
    card = ModelCard(
        estimator=estimator,
        hyperparameters=dict(hyperparameters),
        target=target,
        classes=[plain(c) for c in pipeline.classes_],
        features=features,
        seed=seed,
        versions=_library_versions(),
    )
    return TrainedModel(pipeline, card)


def save_model_dir(model: TrainedModel, directory: Path) -> ModelCard:
    """Writes ``model.joblib`` and ``model.json`` (holding the joblib file's sha256)."""
    directory.mkdir(parents=True, exist_ok=True)
    joblib.dump(model.pipeline, directory / MODEL_FILE)
    model.card.sha256 = sha256_file(directory / MODEL_FILE)
    (directory / MODEL_CARD).write_text(model.card.to_json())
    return model.card


def load_model_dir(directory: Path) -> TrainedModel:
    """Loads a model directory, refusing a ``model.joblib`` whose sha256 differs from the card's."""
    card = ModelCard.from_json((directory / MODEL_CARD).read_text())
    actual = sha256_file(directory / card.model_file)
    if actual != card.sha256:
        raise ConveyorError(
            f"{directory / card.model_file}: sha256 {actual[:12]}... does not match "
            f"{card.sha256[:12]}... recorded at training; refusing to load"
        )
    return TrainedModel(joblib.load(directory / card.model_file), card)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _preprocessor(features: list[Feature]) -> ColumnTransformer:
    numeric = [f.name for f in features if f.kind == "numeric"]
    categorical = [f.name for f in features if f.kind == "categorical"]
    return ColumnTransformer(
        [
            ("numeric", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric),
            (
                "categorical",
                make_pipeline(
                    SimpleImputer(strategy="constant", fill_value="missing"),
                    OneHotEncoder(handle_unknown="ignore"),
                ),
                categorical,
            ),
        ]
    )


def _estimator(
    name: str, hyperparameters: dict[str, Any], seed: int
) -> tuple[BaseEstimator, dict[str, Any]]:
    """The estimator, and the user's hyperparameters as it takes them."""
    if name not in ESTIMATORS:
        raise ConveyorError(f"unknown estimator {name!r}; choose one of: {', '.join(ESTIMATORS)}")
    cls, defaults = ESTIMATORS[name]
    accepted = cls().get_params()
    unknown = sorted(set(hyperparameters) - set(accepted))
    if unknown:
        raise ConveyorError(
            f"hyperparameters {unknown} are not accepted by {name!r}; "
            f"it takes: {', '.join(sorted(accepted))}"
        )
    hyperparameters = {key: _as_declared(cls, key, value) for key, value in hyperparameters.items()}
    params = {**defaults, **hyperparameters}
    if "random_state" in accepted:
        params.setdefault("random_state", seed)
    return cls(**params), hyperparameters


def _as_declared(cls: type[BaseEstimator], key: str, value: Any) -> Any:
    """40.0 -> 40 where the parameter takes integers only.

    KFP passes dict parameters as a protobuf Struct, where every number is a float, and
    scikit-learn refuses a float for an integer parameter. Where floats mean something
    else (``max_features=1.0`` is all features, ``1`` is one), the float stays.
    """
    if not (isinstance(value, float) and value.is_integer()):
        return value
    kinds = [getattr(c, "type", c) for c in getattr(cls, "_parameter_constraints", {}).get(key, [])]
    kinds = [kind for kind in kinds if isinstance(kind, type) and issubclass(kind, Real)]
    takes_int = any(issubclass(kind, Integral) for kind in kinds)
    takes_real = any(not issubclass(kind, Integral) for kind in kinds)
    return int(value) if takes_int and not takes_real else value


def _library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "unknown"
    return versions
