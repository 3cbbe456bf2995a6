"""XGBoost on a real GPU through Conveyor's trainer; skipped where no GPU can be used.

Needs a visible NVIDIA GPU and XGBoost's CUDA build (the gpu image's; ``make gpu-install``
puts it in .venv). Uses no fixture of conftest.py, so it also runs with ``--noconftest`` on a
machine that has only the training libraries.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.gpu_check import TARGET, TOLERANCE, held_out_metrics, seeded_table
from conveyor.components.core.errors import ConveyorError
from conveyor.components.core.training.devices import training_device
from conveyor.components.core.training.estimators import CPU, ESTIMATORS
from conveyor.components.core.training.trainer import (
    fit_model,
    load_model_dir,
    save_model_dir,
)


def usable_gpu() -> str:
    """Why no GPU can be used here; empty when one can."""
    try:
        training_device(ESTIMATORS["xgboost"], gpus=1)
    except ConveyorError as error:
        return str(error)
    return ""


pytestmark = pytest.mark.skipif(bool(usable_gpu()), reason=usable_gpu() or "a GPU is usable")


@pytest.fixture(scope="module")
def splits() -> tuple:
    table = seeded_table(50_000, seed=3)
    return table.iloc[:40_000], table.iloc[40_000:]


def booster_device(model) -> str:
    booster = model.get_booster()
    return json.loads(booster.save_config())["learner"]["generic_param"]["device"]


def test_xgboost_trains_on_the_gpu_and_is_served_on_the_cpu(splits: tuple, tmp_path: Path) -> None:
    train, test = splits
    device, gpu = training_device(ESTIMATORS["xgboost"], gpus=1)
    assert device == "cuda" and gpu
    on_gpu = fit_model(train, TARGET, "xgboost", {"n_estimators": 100}, 0, device=device)
    on_cpu = fit_model(train, TARGET, "xgboost", {"n_estimators": 100}, 0, device=CPU)
    assert on_gpu.pipeline[-1].trained_on_.startswith("cuda")
    assert on_cpu.pipeline[-1].trained_on_ == "cpu"
    assert booster_device(on_gpu.pipeline[-1].estimator_) == "cpu"  # what the predictor runs
    gpu_metrics, cpu_metrics = held_out_metrics(on_gpu, test), held_out_metrics(on_cpu, test)
    for name, tolerance in TOLERANCE.items():
        assert abs(gpu_metrics[name] - cpu_metrics[name]) <= tolerance, (gpu_metrics, cpu_metrics)
    save_model_dir(on_gpu, tmp_path)
    features = test.drop(columns=TARGET)
    served = load_model_dir(tmp_path).pipeline.predict_proba(features)
    assert np.allclose(served, on_gpu.pipeline.predict_proba(features), atol=1e-6)


def test_a_calibrated_xgboost_trains_on_the_gpu(splits: tuple) -> None:
    train, _ = splits
    model = fit_model(
        train, TARGET, "xgboost", {"n_estimators": 50}, 0, calibration="sigmoid", device="cuda"
    )
    (calibrated,) = model.pipeline[-1].calibrated_classifiers_
    assert calibrated.estimator.trained_on_.startswith("cuda")
    assert booster_device(calibrated.estimator.estimator_) == "cpu"


def test_an_xgboost_regressor_trains_on_the_gpu_and_is_served_on_the_cpu(
    splits: tuple, tmp_path: Path
) -> None:
    """One of the table's numeric columns regressed on the others, on both devices."""
    train, test = (split.drop(columns=TARGET) for split in splits)
    target = next(name for name in train.columns if train[name].dtype.kind == "f")
    train, test = (split.dropna(subset=[target]) for split in (train, test))
    fits = {
        device: fit_model(
            train, target, "xgboost", {"n_estimators": 100}, 0, device=device, task="regression"
        )
        for device in ("cuda", CPU)
    }
    assert fits["cuda"].pipeline[-1].trained_on_.startswith("cuda")
    assert booster_device(fits["cuda"].pipeline[-1].estimator_) == "cpu"
    features = test.drop(columns=target)
    errors = {
        device: float(np.sqrt(np.mean((model.pipeline.predict(features) - test[target]) ** 2)))
        for device, model in fits.items()
    }
    assert abs(errors["cuda"] - errors[CPU]) <= 0.02 * errors[CPU], errors
    save_model_dir(fits["cuda"], tmp_path)
    served = load_model_dir(tmp_path).pipeline.predict(features)
    assert np.allclose(served, fits["cuda"].pipeline.predict(features), atol=1e-6)
