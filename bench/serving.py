"""Serving throughput and latency of Conveyor's predictor beside MLServer's scikit-learn runtime.

Run it as ``make bench`` (or ``make bench-serving``) or ``python -m bench.serving [--duration S]
[--connections N] [--rounds N]``.
One seeded model directory is served by both servers at once, each with one worker:
Conveyor's KServe predictor (``serving.server``) from the project's venv, and
MLServer with ``mlserver_sklearn.SKLearnModel`` from its own venv (``make bench`` builds
it from ``bench/mlserver-requirements.txt``). Both get the same V2 inputs, byte for byte
(the bodies differ only in the outputs they name), and must return the same probabilities
before anything is timed. The load comes
from ``wrk`` (one thread, fixed connections) or, without it, a small asyncio generator.
After an untimed warm-up of each server, ``--rounds`` rounds (at least 5, default 5) each
time every server for ``--duration`` seconds in turn (conveyor, conveyor-log, mlserver,
mlserver-batched, then again), the servers staying up throughout. Conveyor predicts the
requests it reads together in one call of the model (``serving.batching``, on by default);
MLServer's adaptive batching is off by default, so ``mlserver-batched`` runs it on
(``max_batch_size`` the connections, ``max_batch_time`` ``BATCH_WAIT_S``) and is reported
beside, not judged. Per metric (throughput, p50, p99) it prints each
server's median and the median of the per-round ratios Conveyor/MLServer with their min–max
and interquartile range (``bench.rounds``), the machine's cores and load at start and end,
and where Conveyor's time goes: cProfile, in a process of its own, of KServe's V2 infer
handler's steps (decode, infer, encode, the response model) over the same request many
times, in-process without HTTP, uvicorn or the middleware (so it shows the predictor's share,
not the server's). The aim, on the median ratios: Conveyor at least 2x MLServer's throughput
at a lower p99; a missed aim is reported, not an error (failed requests or servers that
disagree are). Conveyor also runs with its payload log on (``conveyor-log``, to a local
folder), and the per-round throughput ratio of the two is reported against the aim that the
log costs at most 10 %. Every round's figures, the medians, spreads, aims, profile and
versions go to ``build/bench/serving.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.children import machine, machine_line, profile_call, profile_line, run_child
from bench.rounds import MIN_ROUNDS, Aim, RoundsError, check_rounds, compare
from conveyor.components.core.training.trainer import fit_model, save_model_dir

ROOT = Path(__file__).resolve().parent.parent
LUA_SCRIPT = Path(__file__).resolve().with_name("post.lua")
MODEL_NAME = "bench"
COLUMNS = [f"f{index:02d}" for index in range(20)]
# Both servers unpickle the same model.joblib: these must be the same version in both venvs.
SHARED_LIBRARIES = ("scikit-learn", "numpy", "pandas", "joblib")
SERVERS = ("conveyor", "conveyor-log", "mlserver", "mlserver-batched")
BATCH_WAIT_S = 0.002  # MLServer's max_batch_time when batching: at most 2 ms waiting to fill
# The payload log may cost at most this share of the throughput.
LOG_COST_AIM = 0.10
THROUGHPUT_AIM = Aim("Conveyor at least 2x MLServer's throughput", ">=", 2.0)
P99_AIM = Aim("Conveyor's p99 lower than MLServer's", "<", 1.0)
LOG_AIM = Aim(f"the payload log costs at most {LOG_COST_AIM:.0%} of throughput", ">=", 0.90)
PROFILED_REQUESTS = 500
READY_TIMEOUT_S = 180.0


class BenchError(Exception):
    """Something that makes the comparison meaningless: the bench stops and says what."""


@dataclass
class Measurement:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int


@dataclass
class Server:
    name: str
    command: list[str]
    cwd: Path
    http_port: int
    log: Path
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    process: subprocess.Popen | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}/v2/models/{MODEL_NAME}{path}"

    def start(self) -> None:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                self.command,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() ends its workers too
            )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            self.check_running()
            try:
                with urllib.request.urlopen(self.url("/ready"), timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise BenchError(f"{self.name} was not ready after {READY_TIMEOUT_S:.0f}s{self.log_tail()}")

    def check_running(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise BenchError(
                f"{self.name} exited with status {self.process.returncode}{self.log_tail()}"
            )

    def log_tail(self, lines: int = 20) -> str:
        text = self.log.read_text(errors="replace").splitlines()[-lines:]
        return f"; the end of {self.log.relative_to(ROOT)}:\n" + "\n".join(text)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def main(argv: list[str] | None = None) -> None:
    arguments = _arguments(argv)
    if arguments.profile_model:  # a child run: the handler under cProfile, one JSON line
        print(json.dumps(_profile_handler(arguments.profile_model, arguments.profile_body)))
        return
    try:
        check_rounds(arguments.rounds)
        run(arguments)
    except (BenchError, RoundsError) as error:
        raise SystemExit(f"bench serving: {error}") from None


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.serving", description=__doc__)
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per timed run")
    parser.add_argument("--warmup", type=float, default=5.0, help="untimed seconds per server")
    parser.add_argument("--connections", type=int, default=8, help="concurrent connections")
    parser.add_argument(
        "--rounds", type=int, default=MIN_ROUNDS, help="timed runs per server (A,B,A,B), at least 5"
    )
    parser.add_argument("--rows", type=int, default=1, help="rows per request")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--mlserver-venv", type=Path, default=ROOT / ".bench" / "mlserver-venv", help="its venv"
    )
    parser.add_argument("--work-dir", type=Path, default=ROOT / "build" / "bench")
    parser.add_argument("--load", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--profile-model", type=Path, help=argparse.SUPPRESS)  # a child run
    parser.add_argument("--profile-body", type=Path, help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if min(arguments.duration, arguments.connections, arguments.rounds, arguments.rows) <= 0:
        parser.error("--duration, --connections, --rounds and --rows must be positive")
    return arguments


def run(arguments: argparse.Namespace) -> None:
    started = machine()
    print(machine_line("start", started), flush=True)
    work = arguments.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    mlserver_bin = arguments.mlserver_venv / "bin"
    if not (mlserver_bin / "mlserver").exists():
        raise BenchError(f"no MLServer in {arguments.mlserver_venv}: run `make bench`")
    versions = _check_versions(mlserver_bin / "python")
    load = _load_generator(arguments.load)

    model_dir = work / "model"
    _write_model(model_dir, arguments.seed)
    bodies = _request_bodies(arguments.rows, arguments.seed)
    bodies["conveyor-log"] = bodies["conveyor"]
    bodies["mlserver-batched"] = bodies["mlserver"]
    body_paths = {name: work / f"request-{name}.json" for name in SERVERS}
    for name, path in body_paths.items():
        path.write_bytes(bodies[name])

    ports = _free_ports(10)
    shutil.rmtree(work / "payloads", ignore_errors=True)
    servers = {
        "conveyor": _conveyor(model_dir, ports[0], ports[1], work),
        "conveyor-log": _conveyor(model_dir, ports[5], ports[6], work, work / "payloads"),
        "mlserver": _mlserver(mlserver_bin, work, ports[2:5]),
        "mlserver-batched": _mlserver(
            mlserver_bin, work, ports[7:10], "mlserver-batched", arguments.connections
        ),
    }
    setup = {
        "model": f"logistic_regression on {len(COLUMNS)} numeric columns (seed {arguments.seed})",
        "request": (
            f"V2 infer, {arguments.rows} row(s), one FP64 input per column, "
            f'content_type "pd", the same inputs for both; MLServer asked for outputs '
            f"[predict_proba] ({len(bodies['mlserver'])} bytes), Conveyor for none: it "
            f"answers labels and probabilities ({len(bodies['conveyor'])} bytes)"
        ),
        "conveyor": (
            "conveyor.components.core.serving.server (KServe ModelServer), --workers 1, "
            "--enable_latency_logging False (drops the per-request latency line; KServe's "
            "timing middleware still logs two kserve.trace lines a request), --max_batch_rows "
            "at its default (requests read together share one call of the model, no waiting)"
        ),
        "conveyor-log": "the same, with --payload_log to a local folder (inputs and answers)",
        "mlserver": (
            "mlserver_sklearn.SKLearnModel, parallel_workers 1 "
            "(one inference worker process behind the HTTP process); adaptive batching off, "
            "its default"
        ),
        "mlserver-batched": (
            f"the same with MLServer's adaptive batching on: max_batch_size "
            f"{arguments.connections} (the connections), max_batch_time {BATCH_WAIT_S:g} s"
        ),
        "logging": "both keep their default per-request access log, written to a file",
        "load": (
            f"{load}: {arguments.connections} connections, {arguments.warmup:g}s warm-up per "
            f"server, {arguments.rounds} x {arguments.duration:g}s runs alternating "
            f"{', '.join(SERVERS)}; medians of the per-round ratios reported"
        ),
        "cpus": os.cpu_count(),
    }
    for key, value in setup.items():
        print(f"{key + ':':10} {value}")

    runs: list[dict[str, Any]] = []
    try:
        for server in servers.values():
            server.start()
        for server in servers.values():
            server.wait_ready()
        agreement = _check_agreement(servers, bodies, arguments.rows)
        print(f"agreement: both return the same labels; max |probability difference| {agreement:g}")
        for name in SERVERS:
            _measure(
                load, servers[name], body_paths[name], bodies[name], arguments.connections,
                arguments.warmup,
            )  # fmt: skip
        for round_number in range(1, arguments.rounds + 1):
            for name in SERVERS:
                server = servers[name]
                result = _measure(
                    load, server, body_paths[name], bodies[name], arguments.connections,
                    arguments.duration,
                )  # fmt: skip
                server.check_running()
                runs.append({"round": round_number, "server": name, **asdict(result)})
                print(
                    f"  round {round_number} {name:12} {result.requests_per_s:9.1f} req/s  "
                    f"p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms  "
                    f"errors {result.errors}",
                    flush=True,
                )
    finally:
        for server in servers.values():
            server.stop()

    ended = machine()  # before the profile's extra run
    profile = run_child(
        "bench.serving", "--profile-model", str(model_dir), "--profile-body",
        str(body_paths["conveyor"]),
    )  # fmt: skip
    results = {name: _median([r for r in runs if r["server"] == name]) for name in SERVERS}

    def figures(server: str, key: str) -> tuple[str, list[float]]:
        return server, [r[key] for r in runs if r["server"] == server]

    comparisons = {
        "throughput": compare(
            "requests/s",
            figures("conveyor", "requests_per_s"),
            figures("mlserver", "requests_per_s"),
        ),
        "p50": compare("p50 ms", figures("conveyor", "p50_ms"), figures("mlserver", "p50_ms")),
        "p99": compare("p99 ms", figures("conveyor", "p99_ms"), figures("mlserver", "p99_ms")),
        "throughput_vs_batched": compare(
            "requests/s against MLServer batching",
            figures("conveyor", "requests_per_s"),
            figures("mlserver-batched", "requests_per_s"),
        ),
        "p99_vs_batched": compare(
            "p99 ms against MLServer batching",
            figures("conveyor", "p99_ms"),
            figures("mlserver-batched", "p99_ms"),
        ),
        "payload_log": compare(
            "requests/s with the payload log",
            figures("conveyor-log", "requests_per_s"),
            figures("conveyor", "requests_per_s"),
        ),
    }
    _print_table(results)
    for comparison in comparisons.values():
        for line in comparison.lines(digits=1 if comparison.metric.startswith("requests") else 2):
            print(line)
    throughput = THROUGHPUT_AIM.verdict(comparisons["throughput"].median_ratio)
    p99 = P99_AIM.verdict(comparisons["p99"].median_ratio)
    aim_met = throughput["met"] and p99["met"]
    log_aim = LOG_AIM.verdict(comparisons["payload_log"].median_ratio)
    for verdict in (throughput, p99):
        print(verdict["line"])
    print(
        f"aim: Conveyor at least 2x MLServer's throughput at a lower p99 -> "
        f"{'aim met' if aim_met else 'aim not met'}"
    )
    print(log_aim["line"])
    print(profile_line(profile))
    print(machine_line("end", ended))
    report = {
        "bench": "serving",
        "setup": setup,
        "versions": versions,
        "agreement_max_abs_diff": agreement,
        "rounds": arguments.rounds,
        "runs": runs,
        "results": {name: asdict(result) for name, result in results.items()},
        "comparisons": {key: value.as_dict() for key, value in comparisons.items()},
        "ratios_conveyor_over_mlserver": {
            key: comparisons[key].median_ratio for key in ("throughput", "p50", "p99")
        },
        "aims": [
            throughput,
            p99,
            {"aim": "Conveyor at least 2x MLServer's throughput at a lower p99", "met": aim_met},
            log_aim,
        ],
        "aim_met": aim_met,
        "payload_log_throughput_ratio": comparisons["payload_log"].median_ratio,
        "payload_log_aim_met": log_aim["met"],
        "profile": {**profile, "line": profile_line(profile)},
        "machine": {"start": started, "end": ended},
    }
    output = work / "serving.json"
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {output.relative_to(ROOT) if output.is_relative_to(ROOT) else output}")
    if any(result.errors for result in results.values()):
        raise BenchError("some requests failed: see the errors column and the server logs")


def _check_versions(mlserver_python: Path) -> dict[str, dict[str, str]]:
    names = [*SHARED_LIBRARIES, "mlserver", "mlserver-sklearn"]
    script = (
        "import json, sys\nfrom importlib import metadata\n"
        "print(json.dumps({n: metadata.version(n) for n in sys.argv[1:]}))"
    )
    found = subprocess.run(
        [str(mlserver_python), "-c", script, *names], capture_output=True, text=True, check=True
    )
    theirs = json.loads(found.stdout)
    ours = {name: metadata.version(name) for name in (*SHARED_LIBRARIES, "kserve")}
    differ = [
        f"{name} {ours[name]} here, {theirs[name]} there"
        for name in SHARED_LIBRARIES
        if ours[name] != theirs[name]
    ]
    if differ:
        raise BenchError(
            "the MLServer venv must load model.joblib with the same libraries: "
            + "; ".join(differ)
            + " (align bench/mlserver-requirements.txt with constraints.txt)"
        )
    return {"conveyor": ours, "mlserver": theirs}


def _load_generator(choice: str) -> str:
    if choice == "auto":
        if shutil.which("wrk"):
            return "wrk"
        print("bench: wrk is not installed (apt-get install wrk); using the Python load generator")
        return "python"
    if choice == "wrk" and not shutil.which("wrk"):
        raise BenchError("wrk is not installed (apt-get install wrk)")
    return choice


def _write_model(directory: Path, seed: int, rows: int = 2000) -> None:
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(rows, len(COLUMNS)))
    weights = rng.normal(size=len(COLUMNS))
    table = pd.DataFrame(features, columns=COLUMNS)
    table["label"] = (features @ weights + rng.normal(size=rows) > 0).astype(int)
    save_model_dir(fit_model(table, "label", "logistic_regression", {}, seed), directory)


def _request_bodies(rows: int, seed: int) -> dict[str, bytes]:
    """One FP64 input per column: Conveyor builds its table from them, MLServer a DataFrame.

    MLServer computes only the outputs asked for; Conveyor answers labels and probabilities
    from one predict_proba (and refuses an output name it does not know, such as MLServer's
    ``predict_proba``), so MLServer is asked for that same pass and Conveyor for nothing.
    """
    values = np.random.default_rng(seed + 1).normal(size=(rows, len(COLUMNS))).round(6)
    body: dict[str, Any] = {
        "parameters": {"content_type": "pd"},
        "inputs": [
            {"name": name, "shape": [rows], "datatype": "FP64", "data": values[:, index].tolist()}
            for index, name in enumerate(COLUMNS)
        ],
    }
    conveyor = json.dumps(body, separators=(",", ":")).encode()
    body["outputs"] = [{"name": "predict_proba"}]
    return {"conveyor": conveyor, "mlserver": json.dumps(body, separators=(",", ":")).encode()}


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _conveyor(
    model_dir: Path, http_port: int, grpc_port: int, work: Path, payload_log: Path | None = None
) -> Server:
    command = [
        sys.executable, "-m", "conveyor.components.core.serving.server",
        "--model_name", MODEL_NAME,
        "--model_dir", str(model_dir),
        "--http_port", str(http_port),
        "--grpc_port", str(grpc_port),
        "--workers", "1",
        "--enable_latency_logging", "False",
    ]  # fmt: skip
    if payload_log is None:
        return Server("conveyor", command, ROOT, http_port, work / "conveyor.log")
    command += ["--payload_log", str(payload_log)]
    return Server("conveyor-log", command, ROOT, http_port, work / "conveyor-log.log")


def _mlserver(
    bin_dir: Path, work: Path, ports: list[int], name: str = "mlserver", batch_size: int = 0
) -> Server:
    """MLServer on ``ports`` (HTTP, gRPC, metrics); with adaptive batching of up to
    ``batch_size`` requests when it is above 0."""
    http, grpc, metrics = ports
    repository = work / name
    shutil.rmtree(repository, ignore_errors=True)
    (repository / MODEL_NAME).mkdir(parents=True)
    settings = {
        "http_port": http,
        "grpc_port": grpc,
        "metrics_port": metrics,
        "parallel_workers": 1,
    }
    model_settings = {
        "name": MODEL_NAME,
        "implementation": "mlserver_sklearn.SKLearnModel",
        # Relative to this file: the very model.joblib Conveyor serves.
        "parameters": {"uri": "../../model/model.joblib"},
    }
    if batch_size:
        model_settings |= {"max_batch_size": batch_size, "max_batch_time": BATCH_WAIT_S}
    (repository / "settings.json").write_text(json.dumps(settings, indent=2))
    (repository / MODEL_NAME / "model-settings.json").write_text(json.dumps(model_settings))
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLSERVER_")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    command = [str(bin_dir / "mlserver"), "start", "."]
    return Server(name, command, repository, http, work / f"{name}.log", env)


def _post(url: str, body: bytes) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise BenchError(f"{url} answered {error.code}: {error.read()[:500]!r}") from None


def _check_agreement(servers: dict[str, Server], bodies: dict[str, bytes], rows: int) -> float:
    """The largest probability difference; raises unless labels and probabilities agree."""
    conveyor = _outputs(_post(servers["conveyor"].url("/infer"), bodies["conveyor"]))
    mlserver = _outputs(_post(servers["mlserver"].url("/infer"), bodies["mlserver"]))
    ours = np.asarray(conveyor["probabilities"]["data"], dtype=float).reshape(rows, -1)
    theirs = np.asarray(mlserver["predict_proba"]["data"], dtype=float).reshape(rows, -1)
    classes = json.loads(conveyor["probabilities"]["parameters"]["classes"])
    their_labels = [classes[index] for index in theirs.argmax(axis=1)]
    if ours.shape != theirs.shape or conveyor["predictions"]["data"] != their_labels:
        raise BenchError(
            f"the servers disagree: conveyor {conveyor['predictions']['data']} "
            f"{ours.tolist()}, mlserver {their_labels} {theirs.tolist()}"
        )
    difference = float(np.abs(ours - theirs).max())
    if difference > 1e-9:
        raise BenchError(f"the servers' probabilities differ by up to {difference:g}")
    return difference


def _outputs(response: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {output["name"]: output for output in response["outputs"]}


def _measure(
    load: str, server: Server, body_path: Path, body: bytes, connections: int, duration: float
) -> Measurement:
    if load == "wrk":
        return _wrk(server.url("/infer"), body_path, connections, duration)
    return asyncio.run(_python_load(server.url("/infer"), body, connections, duration))


def _wrk(url: str, body_path: Path, connections: int, duration: float) -> Measurement:
    command = [
        "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency",
        "--timeout", "10s", "-s", str(LUA_SCRIPT), url, "--", str(body_path),
    ]  # fmt: skip
    finished = subprocess.run(
        command, capture_output=True, text=True, timeout=duration + 60, check=False
    )
    summary = next(
        (line for line in finished.stdout.splitlines() if line.startswith("BENCH_JSON ")), None
    )
    if finished.returncode != 0 or summary is None:
        output = finished.stderr or finished.stdout
        raise BenchError(f"wrk failed (status {finished.returncode}): {output}")
    data = json.loads(summary.removeprefix("BENCH_JSON "))
    errors = sum(data[kind] for kind in ("connect", "read", "write", "status", "timeout"))
    return Measurement(
        requests_per_s=data["requests"] / (data["duration_us"] / 1e6),
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        requests=data["requests"],
        errors=errors,
    )


async def _python_load(url: str, body: bytes, connections: int, duration: float) -> Measurement:
    """A closed loop of ``connections`` clients, each posting the body as soon as answered."""
    import httpx

    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    headers = {"Content-Type": "application/json"}
    async with httpx.AsyncClient(limits=limits, timeout=10.0, headers=headers) as client:
        deadline = time.perf_counter() + duration

        async def client_loop() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                sent = time.perf_counter()
                try:
                    response = await client.post(url, content=body)
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - sent)
                else:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(client_loop() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    p50, p99 = np.percentile(latencies, [50, 99]) * 1000 if latencies else (float("nan"),) * 2
    return Measurement(
        requests_per_s=(len(latencies) + errors) / elapsed,
        p50_ms=float(p50),
        p99_ms=float(p99),
        requests=len(latencies) + errors,
        errors=errors,
    )


def _median(runs: list[dict[str, Any]]) -> Measurement:
    return Measurement(
        requests_per_s=statistics.median(r["requests_per_s"] for r in runs),
        p50_ms=statistics.median(r["p50_ms"] for r in runs),
        p99_ms=statistics.median(r["p99_ms"] for r in runs),
        requests=sum(r["requests"] for r in runs),
        errors=sum(r["errors"] for r in runs),
    )


def _print_table(results: dict[str, Measurement]) -> None:
    print()
    print(f"{'server':12} {'requests/s':>11} {'p50 ms':>9} {'p99 ms':>9} {'errors':>7}  (medians)")
    for name, result in results.items():
        print(
            f"{name:12} {result.requests_per_s:11.1f} {result.p50_ms:9.2f} "
            f"{result.p99_ms:9.2f} {result.errors:7d}"
        )


def _profile_handler(model_dir: Path, body_path: Path) -> dict[str, Any]:
    """In this process: KServe's V2 infer handler's steps on Conveyor's data plane and model,
    ``PROFILED_REQUESTS`` times over one body, under cProfile (after one untimed request)."""
    from kserve.model_repository import ModelRepository
    from kserve.protocol.rest.v2_datamodels import InferenceResponse

    from conveyor.components.core.serving.server import ConveyorDataPlane, ConveyorModel

    model = ConveyorModel(MODEL_NAME, model_dir)
    model.load()
    repository = ModelRepository()
    repository.update(model)
    plane = ConveyorDataPlane(model_registry=repository)
    body, headers = body_path.read_bytes(), {"content-type": "application/json"}

    async def handle() -> None:
        request, _ = plane.decode(body, headers, "v2", MODEL_NAME)
        response, _ = await plane.infer(MODEL_NAME, request, headers)
        response, _ = plane.encode(MODEL_NAME, response, headers, {})
        InferenceResponse.model_validate(response)

    loop = asyncio.new_event_loop()
    loop.run_until_complete(handle())

    def many() -> None:
        for _ in range(PROFILED_REQUESTS):
            loop.run_until_complete(handle())

    found = profile_call(many, "many")
    per_request_ms = found["seconds_under_profiler"] / PROFILED_REQUESTS * 1000
    return found | {
        "profiled": (
            f"the V2 handler's decode, infer, encode in-process, {PROFILED_REQUESTS} requests, "
            f"no HTTP ({per_request_ms:.2f} ms a request)"
        ),
        "per_request_ms_under_profiler": per_request_ms,
    }


if __name__ == "__main__":
    main()
