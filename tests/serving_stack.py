"""Real serving for the rollout tests: predictor processes, Prometheus scraping them, and load.

Each predictor process stands for one Knative revision (``K_REVISION``); Prometheus
(the Debian package) scrapes them with the revision's namespace as a target label,
as a cluster's scrape config would; the load generator follows the traffic split the
Kubernetes double reports, as Knative's router does.
"""

from __future__ import annotations

import contextlib
import random
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import yaml
from sklearn.dummy import DummyClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from conveyor.components.core.training.trainer import TrainedModel, load_model_dir, save_model_dir
from tests.conftest import free_port, multiclass_table, save_species_model, wait_for_http

# Past the 0.5 s histogram bucket, so a slow canary's p99 is above 0.5 s however busy the
# machine; healthy requests stay far below it.
SLOW_SECONDS = 0.6


def _fail(table: pd.DataFrame) -> pd.DataFrame:
    raise RuntimeError("this model is broken on purpose")


def _slow(table: pd.DataFrame) -> pd.DataFrame:
    time.sleep(SLOW_SECONDS)
    return table


FAULTS: dict[str, Callable[[pd.DataFrame], pd.DataFrame]] = {"failing": _fail, "slow": _slow}


def faulty_model_dir(good: Path, fault: str, directory: Path) -> Path:
    """A copy of a good model whose every prediction fails (500) or is slow, sha256 and all."""
    model = load_model_dir(good)
    fault_step = FunctionTransformer(FAULTS[fault]).fit(None)
    pipeline = Pipeline([("fault", fault_step), *model.pipeline.steps])
    save_model_dir(TrainedModel(pipeline, model.card), directory)
    return directory


def constant_model_dir(good: Path, directory: Path) -> Path:
    """A copy of a good model whose classifier always answers the most frequent class (with
    that class's share as its probability): every response a 200, every prediction the same."""
    model = load_model_dir(good)
    table = multiclass_table()
    features, target = table.drop(columns="species"), table["species"]
    preprocessing = model.pipeline.steps[:-1]
    pipeline = Pipeline([*preprocessing, ("constant", DummyClassifier(strategy="most_frequent"))])
    save_model_dir(TrainedModel(pipeline.fit(features, target), model.card), directory)
    return directory


def new_column_model_dir(directory: Path) -> Path:
    """A model trained with one more column (``region``) than clients send: each of their
    requests is refused with a 400 naming it."""
    table = multiclass_table()
    table.insert(0, "region", np.where(table["size"] > 10, "north", "south"))
    return save_species_model(directory, table)


class PrometheusProcess:
    """A real Prometheus process (``url``) that can be stopped and started again on the same
    port and data folder, as an outage and its end."""

    def __init__(self, config: Path, directory: Path) -> None:
        self.config, self.directory = config, directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        log = self.directory / "prometheus.log"
        command = [
            "prometheus", f"--config.file={self.config}",
            f"--storage.tsdb.path={self.directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]  # fmt: skip
        with log.open("a") as output:
            self.process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        wait_for_http(f"{self.url}/-/ready", self.process, timeout=60, log=log)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None


@contextlib.contextmanager
def prometheus(
    targets: dict[str, str], namespace: str, directory: Path
) -> Iterator[PrometheusProcess]:
    """A real Prometheus scraping each ``revision -> predictor URL`` every second."""
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "conveyor-predictors",
                "static_configs": [
                    {"targets": [url.removeprefix("http://")], "labels": {"namespace": namespace}}
                    for url in targets.values()
                ],
            }
        ],
    }
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
    server = PrometheusProcess(directory / "prometheus.yml", directory)
    try:
        server.start()
        _wait_for_scrapes(server.url, len(targets))
        yield server
    finally:
        server.stop()


def _wait_for_scrapes(url: str, targets: int, timeout: float = 30) -> None:
    """Until every target has been scraped once, so no request goes unseen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = httpx.get(f"{url}/api/v1/query", params={"query": "sum(up)"}).json()
        result = answer["data"]["result"]
        if result and float(result[0]["value"][1]) == targets:
            return
        time.sleep(0.2)
    raise RuntimeError(f"Prometheus did not scrape all {targets} targets within {timeout} s")


class SplitLoad:
    """Requests at a steady pace, each sent to a revision drawn by the current traffic split.

    Several senders share the pace, so a slow revision holding one of them up does not
    starve the others of requests (a router does not wait for one answer to send the next).
    """

    def __init__(
        self,
        split: Callable[[], dict[str, int]],
        urls: dict[str, str],
        model: str,
        body: dict,
        rate: float = 40.0,
        senders: int = 4,
    ) -> None:
        self.split, self.urls, self.model, self.body = split, urls, model, body
        self.interval = senders / rate
        self.sent: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(seed,), daemon=True) for seed in range(senders)
        ]

    def __enter__(self) -> SplitLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _run(self, seed: int) -> None:
        chooser = random.Random(seed)
        with httpx.Client(timeout=10) as client:
            while not self._stop.wait(self.interval):
                weights = {r: p for r, p in self.split().items() if p and r in self.urls}
                if not weights:
                    continue
                revision = chooser.choices(list(weights), list(weights.values()))[0]
                url = f"{self.urls[revision]}/v1/models/{self.model}:predict"
                with contextlib.suppress(httpx.HTTPError):
                    client.post(url, json=self.body)
                with self._lock:
                    self.sent[revision] = self.sent.get(revision, 0) + 1
