"""The estimators train fits, described as data, and the wrappers XGBoost needs.

Each entry says where its class lives for each task it trains (a classifier, a regressor;
XGBoost and LightGBM are imported only when chosen: every step imports the trainer), the
defaults Conveyor applies before the user's
hyperparameters, the library whose version the model card records, whether it refuses sparse
input, whether it can train on a GPU and the oldest model format that loads it.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any

import numpy as np
from sklearn.base import (
    BaseEstimator,
    ClassifierMixin,
    MetaEstimatorMixin,
    RegressorMixin,
    clone,
)
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.validation import check_is_fitted

from conveyor.components.core.data.task import CLASSIFICATION, REGRESSION
from conveyor.components.core.errors import ConveyorError

__all__ = [
    "CPU",
    "CUDA",
    "DEFAULT_ESTIMATORS",
    "ESTIMATORS",
    "EncodedLabels",
    "OnDevice",
    "EstimatorSpec",
    "build_estimator",
    "estimator_spec",
]

CPU = "cpu"
CUDA = "cuda"


def _xgboost_has_cuda() -> bool:
    """Whether the installed XGBoost was built with CUDA (``xgboost``; ``xgboost-cpu`` not)."""
    import xgboost

    return bool(xgboost.build_info().get("USE_CUDA"))


def _xgboost_gpu_problem() -> str:
    """Why XGBoost cannot train on the visible GPU, from a one-round fit on four rows; empty
    when it can. Its CUDA build falls back to the CPU with only a warning (on a driver older
    than its CUDA, say): found here, before the real fit, not after it."""
    import xgboost

    probe = xgboost.XGBClassifier(n_estimators=1, device=CUDA)
    probe.fit(np.eye(4), [0, 1, 0, 1])
    used = _booster_device(probe)
    if used.partition(":")[0] == CUDA:
        return ""
    cuda = ".".join(map(str, xgboost.build_info().get("CUDA_VERSION", []))) or "12"
    return f"XGBoost fell back to {used!r} in a one-round probe (a driver older than CUDA {cuda}?)"


@dataclass(frozen=True)
class EstimatorSpec:
    """One estimator train can fit.

    Attributes:
        name: What ``estimator=`` calls it.
        classes: Task (``classification``, ``regression``) -> ``module:Class`` of its
            scikit-learn-compatible estimator for that task; a task it lacks is refused.
        defaults: Settings Conveyor applies before the user's hyperparameters.
        library: The name the model card's ``versions`` records its module's version under.
        dense_only: It refuses sparse input (one-hot and TF-IDF columns are sparse).
        cuda_build: Whether the installed library can train on CUDA; None: CPU only.
        gpu_problem: Why it cannot train on the visible GPU (empty when it can), asked once
            a GPU is visible.
        model_format: The oldest model format whose servers load it.
        error_path: ``module:Class`` of the error its library raises for bad settings or
            data, beside scikit-learn's ValueError and TypeError.
        reserved: Its hyperparameters Conveyor sets, each with why: a user's are refused.
    """

    name: str
    classes: Mapping[str, str]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    library: str = "scikit-learn"
    dense_only: bool = False
    cuda_build: Callable[[], bool] | None = None
    gpu_problem: Callable[[], str] = lambda: ""
    model_format: int = 1
    error_path: str = ""
    reserved: Mapping[str, str] = field(default_factory=dict)

    @property
    def trains_on_gpu(self) -> bool:
        return self.cuda_build is not None

    def estimator_class(self, task: str = CLASSIFICATION) -> type[BaseEstimator]:
        """Its class for ``task``; ConveyorError naming the estimators that train it."""
        if task not in self.classes:
            able = [name for name, spec in ESTIMATORS.items() if task in spec.classes]
            raise ConveyorError(
                f"estimator {self.name!r} does not train {task} models; choose one of: "
                f"{', '.join(able)}"
            )
        module, _, name = self.classes[task].partition(":")
        return getattr(importlib.import_module(module), name)

    def fit_errors(self) -> tuple[type[Exception], ...]:
        """The errors fitting raises for bad settings or data (one line for the user)."""
        if not self.error_path:
            return (ValueError, TypeError)
        module, _, name = self.error_path.partition(":")
        return (ValueError, TypeError, getattr(importlib.import_module(module), name))

    def library_version(self) -> str:
        """The installed version of its library (XGBoost's CPU and CUDA builds alike)."""
        module = next(iter(self.classes.values())).partition(".")[0].partition(":")[0]
        return str(importlib.import_module(module).__version__)


# Why a reserved hyperparameter is Conveyor's: another objective makes predict_proba answer
# margins or regression values as if they were probabilities.
_DEVICE = "the GPUs the train step is given decide it (compile with --gpus 1)"
_OBJECTIVE = (
    "Conveyor sets it by task: a classifier's gives the probabilities serving and evaluate "
    "read, a regressor's is squared error"
)

ESTIMATORS: dict[str, EstimatorSpec] = {
    spec.name: spec
    for spec in (
        EstimatorSpec(
            "logistic_regression",
            {CLASSIFICATION: "sklearn.linear_model:LogisticRegression"},
            {"max_iter": 1000},
        ),
        EstimatorSpec("ridge", {REGRESSION: "sklearn.linear_model:Ridge"}),
        EstimatorSpec(
            "random_forest",
            {
                CLASSIFICATION: "sklearn.ensemble:RandomForestClassifier",
                REGRESSION: "sklearn.ensemble:RandomForestRegressor",
            },
            {"n_estimators": 200, "n_jobs": -1},
        ),
        EstimatorSpec(
            "hist_gradient_boosting",
            {
                CLASSIFICATION: "sklearn.ensemble:HistGradientBoostingClassifier",
                REGRESSION: "sklearn.ensemble:HistGradientBoostingRegressor",
            },
            dense_only=True,
        ),
        # Format 5: their pickles need xgboost or lightgbm, and XGBoost's Conveyor's wrappers.
        EstimatorSpec(
            "xgboost",
            {CLASSIFICATION: "xgboost:XGBClassifier", REGRESSION: "xgboost:XGBRegressor"},
            library="xgboost",
            cuda_build=_xgboost_has_cuda,
            gpu_problem=_xgboost_gpu_problem,
            model_format=5,
            reserved={"device": _DEVICE, "objective": _OBJECTIVE},
        ),
        EstimatorSpec(
            "lightgbm",
            {CLASSIFICATION: "lightgbm:LGBMClassifier", REGRESSION: "lightgbm:LGBMRegressor"},
            {"verbose": -1},  # its warnings go to stdout, one per tree
            library="lightgbm",
            model_format=5,
            error_path="lightgbm.basic:LightGBMError",
            reserved={"objective": _OBJECTIVE},
        ),
    )
}
# The estimator an empty ``estimator=`` trains, by task.
DEFAULT_ESTIMATORS = {CLASSIFICATION: "logistic_regression", REGRESSION: "ridge"}


def estimator_spec(name: str, task: str = CLASSIFICATION) -> EstimatorSpec:
    """The spec called ``name`` (empty: the task's default, ``DEFAULT_ESTIMATORS``);
    ConveyorError listing the known ones."""
    name = name or DEFAULT_ESTIMATORS[task]
    if name not in ESTIMATORS:
        raise ConveyorError(f"unknown estimator {name!r}; choose one of: {', '.join(ESTIMATORS)}")
    return ESTIMATORS[name]


def build_estimator(
    spec: EstimatorSpec,
    hyperparameters: Mapping[str, Any],
    seed: int,
    device: str = CPU,
    task: str = CLASSIFICATION,
) -> tuple[BaseEstimator, dict[str, Any]]:
    """The unfitted estimator for ``task``, seeded and set for ``device``, and the user's
    hyperparameters as it takes them; ConveyorError naming any it does not accept."""
    cls = spec.estimator_class(task)
    accepted = cls().get_params()
    unknown = sorted(set(hyperparameters) - set(accepted))
    if unknown:
        raise ConveyorError(
            f"hyperparameters {unknown} are not accepted by {spec.name!r}; "
            f"it takes: {', '.join(sorted(accepted))}"
        )
    reserved = [name for name in hyperparameters if name in spec.reserved]
    if reserved:
        name = sorted(reserved)[0]
        raise ConveyorError(
            f"hyperparameter {name!r} of {spec.name!r} is Conveyor's to set: {spec.reserved[name]}"
        )
    taken = {key: _as_declared(cls, key, value) for key, value in hyperparameters.items()}
    params = {**spec.defaults, **taken}
    if "random_state" in accepted:
        params.setdefault("random_state", seed)
    estimator = cls(**params)
    if spec.name == "xgboost":
        wrapper = EncodedLabels if task == CLASSIFICATION else OnDevice
        estimator = wrapper(estimator, device)
    return estimator, taken


def _as_declared(cls: type[BaseEstimator], key: str, value: Any) -> Any:
    """40.0 -> 40 where the parameter takes integers only.

    KFP passes dict parameters as a protobuf Struct, where every number is a float, and
    scikit-learn refuses a float for an integer parameter. Where floats mean something
    else (``max_features=1.0`` is all features, ``1`` is one), the float stays. XGBoost and
    LightGBM declare no constraints, and hand each setting to C++ as text, where "40.0" is
    no integer and 1 reads as 1.0: every whole float becomes an integer for them.
    """
    constraints = getattr(cls, "_parameter_constraints", None)
    if constraints is None:
        return _whole_as_int(value)
    if not (isinstance(value, float) and value.is_integer()):
        return value
    kinds = [getattr(c, "type", c) for c in constraints.get(key, [])]
    kinds = [kind for kind in kinds if isinstance(kind, type) and issubclass(kind, Real)]
    takes_int = any(issubclass(kind, Integral) for kind in kinds)
    takes_real = any(not issubclass(kind, Integral) for kind in kinds)
    return int(value) if takes_int and not takes_real else value


def _whole_as_int(value: Any) -> Any:
    """Whole floats as integers, inside lists too (XGBoost's constraints are lists)."""
    if isinstance(value, list):
        return [_whole_as_int(item) for item in value]
    return int(value) if isinstance(value, float) and value.is_integer() else value


class EncodedLabels(MetaEstimatorMixin, ClassifierMixin, BaseEstimator):
    """An XGBoost classifier fitted on ``device`` with any labels, predicting on the CPU.

    XGBoost takes the classes 0..k-1 only, so the labels are encoded here and ``classes_``
    are the training labels. After fitting, the booster is set back to the CPU: the
    predictor runs on CPU nodes with XGBoost's CPU build, and a booster left on CUDA would
    look for a GPU there. The device XGBoost really trained on is checked, from the
    booster's own configuration: never silently the CPU when a GPU was asked for.

    Args:
        estimator: An unfitted ``xgboost.XGBClassifier``.
        device: ``cpu`` or ``cuda``.
    """

    def __init__(self, estimator: BaseEstimator, device: str = CPU) -> None:
        self.estimator = estimator
        self.device = device

    def fit(self, X: Any, y: Any) -> EncodedLabels:  # noqa: N803 - scikit-learn's names
        encoder = LabelEncoder().fit(y)
        if len(encoder.classes_) < 2:
            raise ConveyorError(f"XGBoost needs two classes or more, got {list(encoder.classes_)}")
        self.classes_ = encoder.classes_
        self.estimator_, self.trained_on_ = _fit_on_device(
            self.estimator, X, encoder.transform(y), self.device
        )
        return self

    def predict_proba(self, X: Any) -> np.ndarray:  # noqa: N803
        check_is_fitted(self)
        # XGBoost's float32 rows sum to 1 within float32's rounding, not float64's.
        proba = np.asarray(self.estimator_.predict_proba(X), dtype=float)
        return proba / proba.sum(axis=1, keepdims=True)

    def predict(self, X: Any) -> np.ndarray:  # noqa: N803
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


class OnDevice(MetaEstimatorMixin, RegressorMixin, BaseEstimator):
    """An XGBoost regressor fitted on ``device``, predicting on the CPU (as ``EncodedLabels``
    does for classifiers, without labels to encode).

    Args:
        estimator: An unfitted ``xgboost.XGBRegressor``.
        device: ``cpu`` or ``cuda``.
    """

    def __init__(self, estimator: BaseEstimator, device: str = CPU) -> None:
        self.estimator = estimator
        self.device = device

    def fit(self, X: Any, y: Any) -> OnDevice:  # noqa: N803 - scikit-learn's names
        self.estimator_, self.trained_on_ = _fit_on_device(self.estimator, X, y, self.device)
        return self

    def predict(self, X: Any) -> np.ndarray:  # noqa: N803
        check_is_fitted(self)
        return np.asarray(self.estimator_.predict(X), dtype=float)


def _fit_on_device(
    estimator: BaseEstimator,
    X: Any,
    y: Any,
    device: str,  # noqa: N803
) -> tuple[BaseEstimator, str]:
    """A clone of the XGBoost ``estimator`` fitted on ``device`` and set back to the CPU,
    and the device its booster says it trained on; refused when that is not ``device``."""
    fitted = clone(estimator).set_params(device=device)
    fitted.fit(X, y)
    trained_on = _booster_device(fitted)
    if trained_on.partition(":")[0] != device:
        raise ConveyorError(f"XGBoost trained on {trained_on!r}, not on the {device!r} asked for")
    fitted.set_params(device=CPU)
    return fitted, trained_on


def _booster_device(model: Any) -> str:
    """The device in a fitted XGBoost model's booster configuration (``cpu``, ``cuda:0``)."""
    config = json.loads(model.get_booster().save_config())
    return str(config["learner"]["generic_param"]["device"])
