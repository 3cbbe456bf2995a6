"""Shared fixtures: a real MLflow server, the Google Cloud double, KFP artifacts on tmp_path,
and seeded tables."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from kfp import dsl

from conveyor.components.core.data.tables import Source, load_table
from tests.doubles.google_cloud import GoogleCloudDouble

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

# No usage reports from what the tests start (MLflow's server and clients, DVC, kfp.local
# steps inherit this): they would only wait on a network CI does not have.
os.environ.update(
    {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "DVC_NO_ANALYTICS": "1"}
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{url} exited with {process.returncode}:\n{log.read_text()[-3000:]}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def google_cloud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[GoogleCloudDouble]:
    """The Google Cloud double, with this process's environment pointed at it.

    Process-wide state the clients keep is reset on both sides: urlopen's opener (it keeps
    the proxies of the moment it was built) and aiplatform.init's project and credentials.
    gRPC reads its root certificates once per process, which is why the double's CA is one
    for the whole test run."""
    from google.cloud.aiplatform import initializer

    with GoogleCloudDouble(tmp_path / "google-cloud") as double:
        for name, value in double.environment().items():
            monkeypatch.setenv(name, value)
        urllib.request.install_opener(None)
        yield double
    urllib.request.install_opener(None)
    initializer.global_config.__init__()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An MLflow tracking server with a SQLite database and a local artifact root."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = root / "server.log"
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    with log.open("w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, cwd=root)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/health", process, timeout=180, log=log)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def model_name() -> str:
    """A registered-model name no other test uses (the MLflow server is shared)."""
    return f"test-model-{uuid.uuid4().hex[:8]}"


def artifact(
    cls: type[dsl.Artifact], directory: Path, name: str, **metadata: object
) -> dsl.Artifact:
    """A KFP artifact whose ``.path`` is ``directory/name``, as a component test passes it."""
    return cls(name=name, uri=str(directory / name), metadata=dict(metadata))


@pytest.fixture(scope="session")
def breast_cancer() -> pd.DataFrame:
    return load_table(Source("builtin://breast_cancer"))


def multiclass_table(rows: int = 360, seed: int = 7) -> pd.DataFrame:
    """Three string classes from numeric and categorical features, with a few gaps."""
    rng = np.random.default_rng(seed)
    color = rng.choice(["red", "green", "blue"], size=rows)
    size = rng.normal(10, 3, size=rows)
    weight = rng.normal(50, 10, size=rows)
    score = size + (color == "red") * 4 - (color == "blue") * 4 + rng.normal(0, 1, rows)
    species = np.where(score > 12, "setosa", np.where(score > 8, "versicolor", "virginica"))
    table = pd.DataFrame({"size": size, "weight": weight, "color": color, "species": species})
    table.loc[rng.choice(rows, 10, replace=False), "weight"] = np.nan
    return table


def transactions(rows: int, seed: int, shift: float = 0.0, vip_share: float = 0.05) -> pd.DataFrame:
    """Card transactions: a skewed amount, a steady age, a 1-5 rating code, a segment."""
    rng = np.random.default_rng(seed)
    segment = rng.choice(["retail", "business", "vip"], rows, p=[0.95 - vip_share, 0.05, vip_share])
    return pd.DataFrame(
        {
            "amount": rng.lognormal(3.0 + shift, 1.0, rows),
            "age": rng.normal(40, 10, rows),
            "rating": rng.integers(1, 6, rows),
            "segment": segment,
            "channel": rng.choice(
                ["web", "pos", "atm"], rows, p=[0.5 + shift / 2, 0.4 - shift / 2, 0.1]
            ),
        }
    )


@pytest.fixture
def species() -> pd.DataFrame:
    return multiclass_table()


def train_species_model(
    directory: Path, server: str, name: str, table: pd.DataFrame, tag: str, **hyperparameters: float
):
    """Trains a logistic regression on ``table`` into ``directory/tag`` (its MLflow run tagged ``tag``)."""
    from conveyor.components.core.training.trainer import train_model

    (directory / tag).mkdir()
    table.to_parquet(directory / tag / "train")
    return train_model(
        directory / tag / "train", "species", "logistic_regression", hyperparameters, 0,
        directory / tag / "model", server, name, {"pipeline_run_id": tag},
    )  # fmt: skip


def register_blessed(
    directory: Path, server: str, name: str, trained, tag: str, roc_auc: float, data_hash: str = ""
):
    """Registers a model trained by ``train_species_model`` as if evaluate had blessed it
    with this ``roc_auc`` and no champion."""
    from conveyor.components.core.training.registry import register_model

    verdict = {"blessed": True, "reason": "test", "metrics": {"roc_auc": roc_auc}}
    (directory / tag / "evaluation.json").write_text(json.dumps(verdict))
    return register_model(
        directory / tag / "model", directory / tag / "evaluation.json", name, server,
        trained.run_id, str(directory / "store"), tag, data_hash,
    )  # fmt: skip


def require_binary(name: str) -> None:
    """Skip without a system binary, unless CI demands it (CONVEYOR_REQUIRE_SYSTEM_DEPS=1)."""
    import shutil

    if shutil.which(name):
        return
    if os.environ.get("CONVEYOR_REQUIRE_SYSTEM_DEPS") == "1":
        pytest.fail(f"{name} is required in CI but is not installed")
    pytest.skip(f"{name} is not installed")


@pytest.fixture
def pushgateway(tmp_path: Path) -> Iterator[str]:
    """A real Prometheus Pushgateway (the Debian package's binary), empty, with its URL."""
    require_binary("prometheus-pushgateway")
    port = free_port()
    log = tmp_path / "pushgateway.log"
    command = [
        "prometheus-pushgateway", f"--web.listen-address=127.0.0.1:{port}",
        f"--persistence.file={tmp_path / 'pushgateway.data'}",
    ]  # fmt: skip
    with log.open("w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/-/ready", process, timeout=60, log=log)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def save_species_model(
    directory: Path, table: pd.DataFrame | None = None, **hyperparameters: float
) -> Path:
    """Fits a logistic regression on the species table and writes its model directory."""
    from conveyor.components.core.training.trainer import fit_model, save_model_dir

    table = multiclass_table() if table is None else table
    save_model_dir(
        fit_model(table, "species", "logistic_regression", hyperparameters, 0), directory
    )
    return directory


@contextlib.contextmanager
def predictor(model_dir: Path, name: str, revision: str, log: Path) -> Iterator[str]:
    """Conveyor's real predictor process serving ``model_dir`` as Knative revision ``revision``."""
    with predictors({revision: model_dir}, name, log.parent) as urls:
        yield urls[revision]


@contextlib.contextmanager
def predictors(
    models: dict[str, Path], name: str, logs: Path, *options: str
) -> Iterator[dict[str, str]]:
    """One predictor process per ``revision -> model directory``, started side by side with
    ``options`` (``--payload_log DIR``...); each is stopped with SIGTERM, as Kubernetes does."""
    started: dict[str, tuple[subprocess.Popen, str, Path]] = {}
    try:
        for revision, model_dir in models.items():
            started[revision] = _start_predictor(model_dir, name, revision, logs, options)
        for process, url, log in started.values():
            wait_for_http(f"{url}/v2/models/{name}/ready", process, timeout=90, log=log)
        yield {revision: url for revision, (_, url, _) in started.items()}
    finally:
        for process, _, _ in started.values():
            process.terminate()
        for process, _, _ in started.values():
            process.wait(timeout=30)


def _start_predictor(
    model_dir: Path, name: str, revision: str, logs: Path, options: tuple[str, ...] = ()
) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    command = [
        sys.executable, "-m", "conveyor.components.core.serving.server", "--model_name", name,
        "--model_dir", str(model_dir), "--http_port", str(port), "--http_host", "127.0.0.1",
        "--enable_latency_logging", "False", *options,
    ]  # fmt: skip
    environment = {**os.environ, "K_REVISION": revision, "PYTHONPATH": str(ROOT)}
    log = logs / f"{revision}.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env=environment, cwd=ROOT
        )
    return process, f"http://127.0.0.1:{port}", log
