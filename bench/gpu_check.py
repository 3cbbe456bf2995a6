"""The GPU check: XGBoost trained through Conveyor's trainer on the CPU and on the GPU, on the
same seeded table, with both fit times and both models' metrics side by side.

Run it as ``make gpu-check`` (``python -m bench.gpu_check [--rows N]``) on a machine with an
NVIDIA GPU and XGBoost's CUDA build (``make gpu-install`` puts it in .venv, as the gpu image
has it). The table is ``--rows`` rows (default 1,000,000) of 24 numeric columns with 2 %
missing values and 4 categorical ones, a binary target from a noisy non-linear rule; 80 % of it
trains, 20 % scores. Each device fits the same preprocessing and the same hyperparameters
(``HYPERPARAMETERS``), timed after a small warm-up fit (the first CUDA call starts the
context). The GPU model is then saved and loaded as the predictor would, and must predict on
the CPU what it predicted before. Histogram building differs between the devices (GPU
quantile sketches, the order of float sums), so the models are not equal; their metrics on
the held-out rows must agree within ``TOLERANCE``, or the check exits 1. When no GPU can be
used it says why in one line and exits 2. Results go to ``build/bench/gpu_check.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from conveyor.components.core.errors import ConveyorError
from conveyor.components.core.training.devices import training_device
from conveyor.components.core.training.estimators import CPU, ESTIMATORS
from conveyor.components.core.training.metrics import score
from conveyor.components.core.training.trainer import (
    TrainedModel,
    fit_model,
    load_model_dir,
    save_model_dir,
)

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "build" / "bench"
TARGET = "label"
HYPERPARAMETERS = {"n_estimators": 300, "max_depth": 8, "learning_rate": 0.1}
# The most the GPU model's metric may differ from the CPU model's on the held-out rows.
TOLERANCE = {"roc_auc": 0.005, "accuracy": 0.01, "log_loss": 0.01}


def seeded_table(rows: int, seed: int = 0) -> pd.DataFrame:
    """Numeric and categorical columns, some missing, and a noisy non-linear binary label."""
    rng = np.random.default_rng(seed)
    numeric = rng.normal(size=(rows, 24))
    table = pd.DataFrame(numeric, columns=[f"x{index}" for index in range(24)])
    for index in range(4):
        table[f"c{index}"] = rng.choice([f"level{level}" for level in range(8)], rows)
    effect = (table["c0"].str[-1].astype(int) - 3.5) / 4
    logit = (
        numeric[:, 0] * numeric[:, 1]
        + np.sin(2 * numeric[:, 2])
        + np.where(numeric[:, 3] > 0.5, 1.5, -0.5)
        + 0.5 * numeric[:, 4:8].sum(axis=1)
        + effect
    )
    table[TARGET] = np.where(rng.random(rows) < 1 / (1 + np.exp(-logit)), "yes", "no")
    gaps = rng.random((rows, 24)) < 0.02
    table[table.columns[:24]] = table[table.columns[:24]].mask(gaps)
    return table


def fit_on(device: str, train: pd.DataFrame) -> tuple[TrainedModel, float]:
    """The model fitted on ``device`` and the fit's seconds."""
    start = time.perf_counter()
    model = fit_model(train, TARGET, "xgboost", HYPERPARAMETERS, seed=0, device=device)
    return model, time.perf_counter() - start


def held_out_metrics(model: TrainedModel, test: pd.DataFrame) -> dict[str, float]:
    metrics = score(model.pipeline, test, TARGET, model.card.positive_class or "").metrics
    return {name: round(metrics[name], 5) for name in TOLERANCE}


def served_as_trained(model: TrainedModel, test: pd.DataFrame) -> bool:
    """Whether the saved and loaded model (on the CPU, as the predictor loads it) gives the
    probabilities the fitted one gave."""
    features = test.drop(columns=[TARGET])
    with tempfile.TemporaryDirectory() as directory:
        save_model_dir(model, Path(directory))
        loaded = load_model_dir(Path(directory))
    fitted = model.pipeline.predict_proba(features)
    return bool(np.allclose(loaded.pipeline.predict_proba(features), fitted, atol=1e-6))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    arguments = parser.parse_args(argv)
    try:
        gpu_device, gpu = training_device(ESTIMATORS["xgboost"], gpus=1)
    except ConveyorError as error:
        print(f"gpu-check: {error} (make gpu-install puts XGBoost's CUDA build in .venv)")
        return 2
    table = seeded_table(arguments.rows)
    train, test = table.iloc[: len(table) * 4 // 5], table.iloc[len(table) * 4 // 5 :]
    fit_model(train.head(2000), TARGET, "xgboost", {"n_estimators": 5}, 0, device=gpu_device)
    results = {}
    for device in (CPU, gpu_device):
        model, seconds = fit_on(device, train)
        trained_on = model.pipeline[-1].trained_on_
        results[device] = {"fit_seconds": round(seconds, 2), "trained_on": trained_on}
        results[device].update(held_out_metrics(model, test))
        results[device]["served_as_trained"] = served_as_trained(model, test)
    cpu, cuda = results[CPU], results[gpu_device]
    gaps = {name: round(abs(cpu[name] - cuda[name]), 5) for name in TOLERANCE}
    agree = all(gaps[name] <= TOLERANCE[name] for name in TOLERANCE)
    report = {
        "rows": arguments.rows,
        "gpu": gpu,
        "cpu_cores": os.cpu_count(),
        "hyperparameters": HYPERPARAMETERS,
        "results": results,
        "differences": gaps,
        "tolerance": TOLERANCE,
        "speedup": round(cpu["fit_seconds"] / cuda["fit_seconds"], 2),
        "agree": agree,
    }
    print_report(report)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "gpu_check.json").write_text(json.dumps(report, indent=2))
    served = cpu["served_as_trained"] and cuda["served_as_trained"]
    return 0 if agree and served else 1


def print_report(report: dict) -> None:
    print(
        f"XGBoost on {report['rows']:,} rows ({report['rows'] * 4 // 5:,} train), "
        f"{report['cpu_cores']} CPU cores vs {report['gpu']}"
    )
    names = ["fit_seconds", "trained_on", *TOLERANCE, "served_as_trained"]
    print(f"{'':18}" + "".join(f"{device:>14}" for device in report["results"]))
    for name in names:
        cells = "".join(f"{str(result[name]):>14}" for result in report["results"].values())
        print(f"{name:18}{cells}")
    print(f"GPU speed-up: {report['speedup']}x")
    for name, gap in report["differences"].items():
        verdict = "ok" if gap <= report["tolerance"][name] else "TOO FAR"
        print(f"{name} differs by {gap} (tolerance {report['tolerance'][name]}): {verdict}")


if __name__ == "__main__":
    sys.exit(main())
