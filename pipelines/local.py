"""Running the training pipeline on this machine through ``kfp.local``, and summarising the run.

Every local run shares one folder (``runs/`` by default): ``mlflow.db`` (MLflow in
SQLite, so a second run finds the first run's champion), ``mlartifacts/``,
``models/`` (the model store), and one folder per run holding the pipeline's
outputs, its log, and ``summary.json``.
"""

from __future__ import annotations

import builtins
import contextlib
import datetime
import json
import logging
import re
import secrets
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

__all__ = [
    "MonitoringSummary",
    "RunSummary",
    "StepProgress",
    "run_monitoring_locally",
    "run_training_locally",
]

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STARTED = re.compile(r"Executing task '([^']+)'")
_FINISHED = re.compile(r"Task '([^']+)' finished with status (\w+)")
_STEPS = ("ingest", "validate", "train", "evaluate", "shadow", "register", "deploy")


@dataclass
class RunSummary:
    """What ``summary.json`` holds."""

    run_id: str
    status: str
    metrics: dict[str, float]
    blessed: bool
    reason: str
    model_name: str
    model_version: int | None
    manifest: str | None
    artifacts: str
    storage_uri: str | None = None
    deployment: str | None = None
    failed_step: str | None = None
    steps: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    shadow: dict[str, Any] | None = None
    task: dict[str, str] | None = None  # ingest's decision: {task, rule}

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


@dataclass
class MonitoringSummary:
    """What a local monitoring run's ``summary.json`` holds."""

    run_id: str
    status: str
    reason: str
    drifted: bool | None
    drifted_columns: list[str]
    retrained: bool
    artifacts: str
    failed_step: str | None = None
    steps: dict[str, str] = field(default_factory=dict)
    prediction_drifted: bool | None = None  # None: not measured (or the run failed first)
    degraded: bool | None = None  # None: no labels (or the run failed first)
    triggers: list[str] = field(default_factory=list)  # findings that call for retraining

    @property
    def found(self) -> bool:
        """Whether the run found anything: feature or prediction drift, a degradation."""
        return bool(self.drifted or self.prediction_drifted or self.degraded)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


class StepProgress:
    """A stdout stand-in: keeps kfp.local's whole log in a file, shows one line per step.

    It also remembers each step's own output, so a failure is reported by the
    line the step ended with (``step: reason``) rather than by KFP's banner. Tasks of a
    loop (tuning trials) run side by side: a step's line is then written whole when it ends.
    """

    def __init__(self, log: TextIO, terminal: TextIO) -> None:
        self._log, self._terminal = log, terminal
        self._pending = ""
        self._current: str | None = None  # the step the output lines are of: the last started
        self._running: list[tuple[str, float]] = []  # started, not finished, in order
        self._open: str | None = None  # the step whose name ends the terminal's last line
        self.outcomes: dict[str, str] = {}
        self.step_output: dict[str, list[str]] = {}

    def write(self, text: str) -> int:
        self._log.write(text)
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._observe(_ANSI.sub("", line))
        return len(text)

    def flush(self) -> None:
        self._log.flush()

    def _observe(self, line: str) -> None:
        # Side-by-side tasks can write into one line: every event in it counts, in order.
        events = sorted(
            [(m.start(), self._start, m) for m in _STARTED.finditer(line)]
            + [(m.start(), self._finish, m) for m in _FINISHED.finditer(line)],
            key=lambda event: event[0],
        )
        for _, handle, match in events:
            handle(*match.groups())
        if not events and self._current and line.strip():
            self.step_output[self._current].append(line.strip())
        self._terminal.flush()

    def _start(self, step: str) -> None:
        if self._open is not None:  # another runs beside it: each line is written at its end
            self._terminal.write("running beside others\n")
            self._open = None
        elif not self._running:
            self._terminal.write(f"  {step:<19}")
            self._open = step
        self._current = step
        self._running.append((step, time.monotonic()))
        self.step_output.setdefault(step, [])

    def _finish(self, step: str, status: str) -> None:
        self.outcomes[step] = status.lower()
        elapsed = time.monotonic() - self._pop_started(step)
        if self._open != step:
            self._terminal.write(f"  {step:<19}")
        mark = "ok" if status == "SUCCESS" else "FAILED"
        self._terminal.write(f"{mark:<7}{elapsed:5.1f} s\n")
        self._open = None
        self._current = self._running[-1][0] if self._running else None

    def _pop_started(self, step: str) -> float:
        """When ``step`` started (the earliest of its running tasks: a loop's share a name)."""
        for index, (name, started) in enumerate(self._running):
            if name == step:
                del self._running[index]
                return started
        return time.monotonic()

    def failure_line(self, step: str) -> str:
        """The step's own message (``step: ...`` and what follows), else its last line."""
        output = self.step_output.get(step, [])
        # kfp.local names a task champion-reference; the step says champion_reference: ...
        prefixes = (f"{step}: ", f"{step.replace('-', '_')}: ")
        starts = [i for i, line in enumerate(output) if line.startswith(prefixes)]
        if starts:
            return "\n".join(output[starts[-1] :])
        return output[-1] if output else f"{step} failed (see the log)"


def run_training_locally(
    arguments: dict[str, Any], runs_dir: Path, terminal: TextIO, tuning_parallelism: int = 2
) -> RunSummary:
    """Runs the training pipeline through kfp.local (at most ``tuning_parallelism`` tuning
    trials at once) and writes the run's ``summary.json``."""
    from conveyor.pipelines.definitions.targets import Target
    from conveyor.pipelines.definitions.training import DEFAULT_MODEL_NAME, build_training_pipeline

    pipeline = build_training_pipeline(Target("kubeflow", tuning_parallelism=tuning_parallelism))
    arguments = {**_defaults(pipeline), **local_defaults(runs_dir.resolve()), **arguments}
    run_id, run_dir, progress, failed_step = _run_locally(pipeline, arguments, runs_dir, terminal)
    model_name = arguments.get("model_name", DEFAULT_MODEL_NAME)
    summary = _summarise(run_id, run_dir, model_name, progress, failed_step)
    (run_dir / "summary.json").write_text(summary.to_json())
    if progress.outcomes.get("train") == "success":
        try:
            _record_arguments(_outputs_dir(run_dir), arguments)
        except Exception as error:  # noqa: BLE001 - the run stands; only its replay is lost
            from conveyor.components.core.errors import first_line

            terminal.write(f"Warning: arguments not recorded for a replay: {first_line(error)}\n")
    return summary


def _defaults(pipeline: Any) -> dict[str, Any]:
    """The pipeline's parameters' defaults, as the run gets them."""
    inputs = pipeline.component_spec.inputs or {}
    return {name: spec.default for name, spec in inputs.items() if spec.default is not None}


def _record_arguments(outputs: Path, arguments: dict[str, Any]) -> None:
    """Every argument of the run on its training MLflow run, for ``conveyor run --replay``."""
    from conveyor.components.core.training import tracking
    from conveyor.pipelines.replay import record_arguments

    trained = _read_json(outputs / "train" / "executor_output.json") or {}
    (model,) = trained["artifacts"]["model"]["artifacts"]
    client = tracking.connect(arguments["mlflow_tracking_uri"])
    record_arguments(client, model["metadata"]["mlflow_run_id"], arguments)


def run_monitoring_locally(
    arguments: dict[str, Any], runs_dir: Path, terminal: TextIO, monitoring_parallelism: int = 2
) -> MonitoringSummary:
    """Runs the monitoring pipeline through kfp.local against the champion of earlier local
    runs (same ``runs_dir``; at most ``monitoring_parallelism`` partitions of the inputs read
    at once), and writes the run's ``summary.json``."""
    from conveyor.pipelines.definitions.monitoring import build_monitoring_pipeline
    from conveyor.pipelines.definitions.targets import Target

    target = Target("kubeflow", monitoring_parallelism=monitoring_parallelism)
    pipeline = build_monitoring_pipeline(target)
    run_id, run_dir, progress, failed_step = _run_locally(pipeline, arguments, runs_dir, terminal)
    outputs = _outputs_dir(run_dir)
    found = {  # kfp.local names each task's folder as the task: prediction-drift
        step: _read_json(outputs / step / "summary") if outputs else None
        for step in ("judge-drift", "prediction-drift", "quality", "monitoring-verdict")
    }
    found["drift"] = found.pop("judge-drift")
    drift, verdict = found["drift"], found["monitoring-verdict"]
    if failed_step:
        reason = progress.failure_line(failed_step)
    elif drift is None or verdict is None:  # every step succeeded, yet left no verdict
        reason = f"the run left no drift or verdict summary under {outputs or run_dir}"
    else:
        reason = "; ".join([*_findings(found), _retraining(outputs, progress, verdict)])
    summary = MonitoringSummary(
        run_id=run_id,
        status="failed" if failed_step or verdict is None else "succeeded",
        reason=reason,
        drifted=drift["dataset_drifted"] if drift else None,
        drifted_columns=list(drift["drifted_columns"]) if drift else [],
        retrained=progress.outcomes.get("train") == "success",
        artifacts=str(outputs or run_dir),
        failed_step=failed_step,
        steps=dict(progress.outcomes),
        prediction_drifted=_measured(found["prediction-drift"], "drifted"),
        degraded=_measured(found["quality"], "degraded"),
        triggers=list(verdict["triggers"]) if verdict else [],
    )
    (run_dir / "summary.json").write_text(summary.to_json())
    return summary


def _findings(found: dict[str, dict[str, Any] | None]) -> list[str]:
    """The drift verdict, then prediction drift and quality where they were measured."""
    clauses = [found["drift"]["verdict"]]
    for step, key in (("prediction-drift", "reason"), ("quality", "verdict")):
        summary = found[step]
        if summary and summary.get("measured", True):
            clauses.append(summary[key])
    return clauses


def _measured(summary: dict[str, Any] | None, key: str) -> bool | None:
    if not summary or not summary.get("measured", True):
        return None
    return bool(summary[key])


def _retraining(outputs: Path, progress: StepProgress, verdict: dict[str, Any]) -> str:
    """Whether the run retrained and what the nested training pipeline did, in a clause."""
    if not verdict["triggers"]:
        return "nothing to retrain"
    if not verdict["retraining"]:
        return "retraining is off"
    verdict = _read_json(outputs / "evaluate" / "evaluation")
    if verdict is None:
        return "the training pipeline failed"
    registered = _parameters(outputs / "register").get("model_version")
    done = f"registered as version {registered}" if registered else "not registered"
    return f"retrained: {verdict['reason']}; {done}"


def _run_locally(
    pipeline: Any, arguments: dict[str, Any], runs_dir: Path, terminal: TextIO
) -> tuple[str, Path, StepProgress, str | None]:
    """A new run folder under ``runs_dir``, kfp.local pointed at it, and the run itself."""
    from kfp import local

    from conveyor.pipelines.definitions.parameters import deploy_setting_problems, raise_problems

    runs_dir = runs_dir.resolve()
    arguments = {**local_defaults(runs_dir), **arguments}
    # Bad serving settings fail here, before anything is trained or registered (or a run
    # folder made), not in deploy.
    raise_problems(deploy_setting_problems(arguments, pipeline.component_spec.inputs or {}))
    run_id = f"{datetime.datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
    run_dir = runs_dir / run_id
    run_dir.mkdir(parents=True)
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(run_dir / "outputs"),
        raise_on_error=True,
    )
    terminal.write(f"Conveyor local run {run_id} (full log: {run_dir / 'pipeline.log'})\n")
    with (run_dir / "pipeline.log").open("w") as log:
        progress = StepProgress(log, terminal)
        failed_step = _run(pipeline, arguments, progress)
    return run_id, run_dir, progress, failed_step


def local_defaults(runs_dir: Path) -> dict[str, Any]:
    """Where a local run keeps MLflow and its model store; no rollout without a cluster
    (``--param rollout=true`` rolls out to the kubeconfig's cluster)."""
    return {
        "mlflow_tracking_uri": f"sqlite:///{runs_dir / 'mlflow.db'}",
        "model_store_uri": str(runs_dir / "models"),
        "rollout": False,
    }


def _run(pipeline: Any, arguments: dict[str, Any], progress: StepProgress) -> str | None:
    """Runs the pipeline with its output going to ``progress``; returns the failed step, if any."""
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(progress),  # type: ignore[type-var]
        contextlib.redirect_stderr(progress),  # type: ignore[type-var]
    ):
        # kfp.local warns that Conveyor's image is not a Python image, and that resource
        # settings do nothing locally: both true, and beside the point of a local run.
        warnings.filterwarnings("ignore", message="You may be attemping", category=RuntimeWarning)
        warnings.filterwarnings("ignore", message=".*have no effect in the current local runner")
        # kfp.local swaps builtins.print (to indent a task's prints) and the root logger's
        # handlers in and out around each task; tasks of a loop side by side (tuning trials)
        # can restore each other's swap, leaving every later print indented and a handler
        # writing to this run's closed log. Put both back.
        real_print, root = builtins.print, logging.getLogger()
        handlers, level = root.handlers[:], root.level
        try:
            pipeline(**arguments)
        except RuntimeError as error:
            failed = re.search(r"Inner task failed: '([^']+)'", _ANSI.sub("", str(error)))
            return failed.group(1) if failed else "pipeline"
        finally:
            builtins.print = real_print
            root.handlers[:] = handlers
            root.setLevel(level)
    return None


def _summarise(
    run_id: str, run_dir: Path, model_name: str, progress: StepProgress, failed_step: str | None
) -> RunSummary:
    outputs = _outputs_dir(run_dir)
    succeeded = {step for step, outcome in progress.outcomes.items() if outcome == "success"}
    verdict = _read_json(outputs / "evaluate" / "evaluation") if "evaluate" in succeeded else None
    registered = _parameters(outputs / "register") if "register" in succeeded else {}
    manifest = outputs / "deploy" / "manifest" if "deploy" in succeeded else None
    deployed = _parameters(outputs / "deploy") if "deploy" in succeeded else {}
    shadowed = _read_json(outputs / "shadow" / "summary") if "shadow" in succeeded else None
    reason = progress.failure_line(failed_step) if failed_step else verdict["reason"]
    if shadowed and not shadowed["passed"]:
        reason = f"{reason}; but {shadowed['reason']}"
    version = registered.get("model_version")
    return RunSummary(
        run_id=run_id,
        status="failed" if failed_step else "succeeded",
        metrics=verdict["metrics"] if verdict else {},
        blessed=bool(verdict and verdict["blessed"]),
        reason=reason,
        model_name=model_name,
        model_version=int(version) if version else None,
        manifest=str(manifest) if manifest else None,
        artifacts=str(outputs or run_dir),
        storage_uri=registered.get("storage_uri"),
        deployment=deployed.get("Output"),
        warnings=list(verdict.get("warnings", [])) if verdict else [],
        notes=_left_out(outputs / "validate" / "schema") if "validate" in succeeded else [],
        failed_step=failed_step,
        steps={step: progress.outcomes.get(step, "skipped") for step in _STEPS},
        shadow={"passed": shadowed["passed"], "reason": shadowed["reason"]} if shadowed else None,
        task=_task(outputs / "ingest") if "ingest" in succeeded else None,
    )


def _task(task_dir: Path) -> dict[str, str] | None:
    """What ingest decided of the target and why (its train split's metadata)."""
    executor_output = _read_json(task_dir / "executor_output.json") or {}
    artifacts = executor_output.get("artifacts", {}).get("train", {}).get("artifacts", [{}])
    metadata = artifacts[0].get("metadata", {})
    if "task" not in metadata:
        return None
    return {"task": metadata["task"], "rule": metadata.get("task_rule", "")}


def _left_out(schema_path: Path) -> list[str]:
    """Why each column the model does not learn from is left out (validate's schema)."""
    from conveyor.components.core.data.roles import role_note
    from conveyor.components.core.data.schema import load_schema

    roles = load_schema(schema_path).roles() if schema_path.is_file() else {}
    return [note for name, role in roles.items() if (note := role_note(name, role))]


def _outputs_dir(run_dir: Path) -> Path | None:
    """kfp.local writes outputs under ``<pipeline root>/<pipeline name>-<timestamp>/<task>/``."""
    found = sorted((run_dir / "outputs").glob("*/"))
    return found[-1] if found else None


def _parameters(task_dir: Path) -> dict[str, Any]:
    executor_output = _read_json(task_dir / "executor_output.json")
    return executor_output.get("parameterValues", {}) if executor_output else {}


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None
