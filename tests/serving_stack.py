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
import pandas as pd
import yaml
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from components.core.training import TrainedModel, load_model_dir, save_model_dir
from tests.conftest import free_port, wait_for_http

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


@contextlib.contextmanager
def prometheus(targets: dict[str, str], namespace: str, directory: Path) -> Iterator[str]:
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
    port = free_port()
    log = directory / "prometheus.log"
    command = [
        "prometheus", f"--config.file={directory / 'prometheus.yml'}",
        f"--storage.tsdb.path={directory / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
    ]  # fmt: skip
    with log.open("w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/-/ready", process, timeout=60, log=log)
        _wait_for_scrapes(url, len(targets))
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


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
