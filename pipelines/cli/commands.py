"""The ``conveyor`` command: ``run`` and ``monitor`` (local runs), ``compile`` (YAML for
clusters), ``serve`` (a model, locally), ``check`` (every pipeline and parameter file);
``rollout`` and ``judge`` (a canary rollout from a CD system, and a canary judged now) are in
``cli.rollout``, ``validate``, ``drift`` and ``quality`` (data and model quality) in
``cli.data``, and ``submit``, ``schedule`` and ``publish`` (delivery to Kubeflow and Vertex
AI) in ``cli.delivery``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from conveyor.components.core.errors import ConveyorError
from conveyor.pipelines.cli import audit, delivery
from conveyor.pipelines.cli import data as quality
from conveyor.pipelines.cli import rollout as canary

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    # MLflow draws a progress bar on stderr per download; a command's stderr is its one line.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        return args.handler(args)
    except ConveyorError as error:  # one line a problem, each naming the command
        for line in str(error).splitlines() or [type(error).__name__]:
            print(f"conveyor {args.command}: {line}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`conveyor ... | head`): end quietly
        _silence_stdout()
        return 1


def _silence_stdout() -> None:
    """Points stdout at /dev/null, so the interpreter's last flush on exit does not raise
    BrokenPipeError again (as Python's documentation on SIGPIPE advises)."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Ends an option's help with its default, unless it has none to show (None, False, an
    empty text or list): such an option's help says what leaving it out does."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if _no_default(action.default):
            return action.help
        return super()._get_help_string(action)


def _no_default(default: Any) -> bool:
    # `is`, not `in`: 0 == False, and a default of 0 is worth showing.
    return default is None or default is False or (isinstance(default, str | list) and not default)


class _CommandParser(argparse.ArgumentParser):
    """A sub-command's parser: its help shows each option's default (``_HelpFormatter``)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(**kwargs)


def _parser() -> argparse.ArgumentParser:
    from conveyor.components.images import VERSION

    parser = argparse.ArgumentParser(
        prog="conveyor", description=__doc__, formatter_class=_HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"conveyor {VERSION}")
    # Every module's sub-commands (cli.rollout's, cli.data's, cli.delivery's) get it too.
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_CommandParser)

    run = commands.add_parser("run", help="run the training pipeline locally through kfp.local")
    run.add_argument(
        "--data", help="CSV or Parquet path or URI (default: the embedded breast-cancer table)"
    )
    quality.add_label_option(run, "label column (required with --data)")
    run.add_argument("--model", help="registered model name (default: from the data file's name)")
    run.add_argument("--dvc-repo", default="", help="git repository whose DVC tracks --data")
    run.add_argument("--rev", default="", help="git revision of --dvc-repo to read")
    run.add_argument(
        "--schema", type=Path, help="schema file both splits must meet (conveyor validate)"
    )
    run.add_argument(
        "--task",
        choices=("auto", "classification", "regression"),
        help="what the label is: classes or numbers (default auto: text and booleans are "
        "classes; numbers are regressed when one is not whole or over 50 are distinct)",
    )
    run.add_argument(
        "--estimator",
        help="random_forest, hist_gradient_boosting, xgboost, lightgbm, logistic_regression "
        "(classification) or ridge (regression); default: logistic_regression or ridge",
    )
    run.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any other training pipeline parameter, repeatable; VALUE is read as YAML "
        "(numbers, true/false, {a: 1}), or as written for a text parameter",
    )
    run.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where local runs live")
    run.add_argument(
        "--replay",
        metavar="RUN_ID",
        help="train again with a recorded run's data, parameters and seed (an MLflow run id, "
        "or an audit event's pipeline run), into runs-dir/replays; exit 1 when its metrics "
        "differ, 2 when it cannot replay (its data changed, nothing recorded)",
    )
    _add_tuning_parallelism(run, default=2)
    run.set_defaults(handler=_run)
    _add_monitor(commands)

    build = commands.add_parser(
        "compile", help="compile the pipeline (kubeflow, vertex) and components"
    )
    build.add_argument(
        "--output-dir", type=Path, default=Path("build"), help="where the YAML is written"
    )
    build.add_argument(
        "--gpus",
        type=int,
        default=0,
        help="GPUs for the train step: 0, or 1 (XGBoost trains on it)",
    )
    build.add_argument("--gpu-type", default="", help="Vertex accelerator (default NVIDIA_L4)")
    _add_tuning_parallelism(build, default=4)
    _add_monitoring_parallelism(build, default=8)
    build.add_argument(
        "--gpu-node-selector",
        default="",
        metavar="KEY=VALUE",
        help="Kubeflow node label a GPU train step needs (default nvidia.com/gpu.present=true)",
    )
    build.add_argument(
        "--image-registry", default="", help="where Conveyor's images are pulled from"
    )
    build.set_defaults(handler=_compile)
    canary.add_commands(commands)
    _add_serve(commands)
    quality.add_commands(commands)
    audit.add_commands(commands)
    delivery.add_commands(commands)
    check = commands.add_parser(
        "check", help="compile every pipeline for every target and check configs/*.yaml"
    )
    check.add_argument(
        "--configs", type=Path, default=Path("configs"),
        help="parameter files: *.yaml for training, monitoring/*.yaml for monitoring",
    )  # fmt: skip
    check.set_defaults(handler=_check)
    return parser


def _add_serve(commands: Any) -> None:
    serve = commands.add_parser(
        "serve", help="serve a model on this machine: a local champion, or a model directory"
    )
    source = serve.add_mutually_exclusive_group()
    source.add_argument(
        "--model", help="registered model whose champion to serve (default: the last local run's)"
    )
    source.add_argument(
        "--model-dir", type=Path, help="a model directory (what train writes, register publishes)"
    )
    serve.add_argument(
        "--name", default="",
        help="with --model-dir, the name to serve it under (default: the registered name its "
        "model.json records; for older cards the model store folder's, "
        "<store>/<name>/<sha256[:16]>, else the folder's name)",
    )  # fmt: skip
    serve.add_argument(
        "--revision", default="local",
        help="revision label of its metrics (what K_REVISION gives in a cluster), so a stable "
        "and a canary can stand side by side",
    )  # fmt: skip
    serve.add_argument(
        "--sha256", default="",
        help="the registry's sha256 of model.joblib: the server refuses any other file, "
        "whatever model.json says (sets CONVEYOR_MODEL_SHA256; default: that variable)",
    )  # fmt: skip
    serve.add_argument(
        "--payload-log", default="", metavar="URI",
        help="folder or URI to log what the server answers to (inputs, ids, predictions, "
        "scores), as payload_log_uri does in a cluster (default: $CONVEYOR_PAYLOAD_LOG)",
    )  # fmt: skip
    serve.add_argument(
        "--payload-log-exclude", action="append", default=None, metavar="COLUMN",
        help="an input column never written to the payload log; repeatable "
        "(default: $CONVEYOR_PAYLOAD_LOG_EXCLUDE, comma-separated)",
    )  # fmt: skip
    serve.add_argument(
        "--payload-log-max-buffer-rows", type=int, default=None, metavar="ROWS",
        help="most rows the payload log holds while its storage is unreachable; past it rows "
        "are dropped and counted (default: $CONVEYOR_PAYLOAD_LOG_MAX_BUFFER_ROWS, else 20000)",
    )  # fmt: skip
    serve.add_argument(
        "--id-column", action="append", default=[], metavar="COLUMN",
        help="a column identifying a row (never a feature): accepted in requests and passed "
        "to the payload log; repeatable, added to the model card's id_columns",
    )  # fmt: skip
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8080, help="port to listen on")
    serve.add_argument("--workers", type=int, default=1, help="only 1: start more servers instead")
    serve.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where local runs live")
    serve.set_defaults(handler=_serve)


def _add_monitoring_parallelism(parser: argparse.ArgumentParser, default: int) -> None:
    parser.add_argument(
        "--monitoring-parallelism",
        type=int,
        default=default,
        metavar="N",
        help="the most partitions of the inputs monitoring reads at once, each in a pod of "
        "its own (kfp fixes it when it compiles)",
    )


def _add_tuning_parallelism(parser: argparse.ArgumentParser, default: int) -> None:
    parser.add_argument(
        "--tuning-parallelism",
        type=int,
        default=default,
        metavar="N",
        help="the most tuning trials at once (kfp fixes it when it compiles)",
    )


def _run(args: argparse.Namespace) -> int:
    from conveyor.pipelines.local import run_training_locally

    if args.replay:
        return _replay(args)
    arguments = _run_arguments(args)
    summary = run_training_locally(arguments, args.runs_dir, sys.stdout, args.tuning_parallelism)
    _print_summary(summary, args.runs_dir / summary.run_id / "summary.json", sys.stdout)
    return 0 if summary.status == "succeeded" else 1


def _replay(args: argparse.Namespace) -> int:
    """The recorded run again, in its own registry; 0 when every metric matches."""
    from conveyor.components.core.training import tracking
    from conveyor.pipelines import replay
    from conveyor.pipelines.definitions.parameters import parse_param_options
    from conveyor.pipelines.local import local_defaults, run_training_locally

    options = ("data", "label", "model", "dvc_repo", "rev", "schema", "estimator", "task")
    given = [f"--{name.replace('_', '-')}" for name in options if getattr(args, name)]
    known = _pipeline_inputs("training")  # built once: it takes a while
    params = parse_param_options(args.param, known, "training") if args.param else {}
    if given or set(params) - {"mlflow_tracking_uri"}:
        raise ConveyorError(
            "--replay takes the recorded run's data and parameters; drop "
            f"{', '.join(given + sorted(set(params) - {'mlflow_tracking_uri'}))}"
        )
    where = params.get("mlflow_tracking_uri") or local_defaults(args.runs_dir.resolve())[
        "mlflow_tracking_uri"]  # fmt: skip
    client = tracking.connect(where)
    run = replay.find_training_run(client, args.replay)
    recorded = replay.recorded_metrics(run)
    arguments = replay.check_data(run, replay.recorded_arguments(client, run, set(known)))
    runs_dir = args.runs_dir / "replays"
    summary = run_training_locally(arguments, runs_dir, sys.stdout)
    _print_summary(summary, runs_dir / summary.run_id / "summary.json", sys.stdout)
    if summary.status != "succeeded":
        return 1
    missed = replay.differences(recorded, summary.metrics)
    for line in missed:
        print(f"Replay differs: {line}")
    if not missed:
        print(f"Replay of run {run.info.run_id}: all {len(recorded)} evaluation metrics equal "
              f"the recorded ones to {replay.TOLERANCE:g}")  # fmt: skip
    return 1 if missed else 0


def _add_monitor(commands: Any) -> None:
    monitor = commands.add_parser(
        "monitor",
        help="run the monitoring pipeline locally: feature drift, prediction drift and (with "
        "--labels) online quality, retraining on drift or degradation; exit 0 when nothing "
        "was found, 3 when something was",
    )
    monitor.add_argument(
        "--inputs", required=True,
        help="recent inference inputs: CSV/Parquet, or a folder of them (a payload log)",
    )  # fmt: skip
    monitor.add_argument(
        "--days", type=int, default=0,
        help="of a payload log, read only the last DAYS days (today, UTC, included); 0: all",
    )  # fmt: skip
    monitor.add_argument("--model", required=True, help="the registered model to monitor")
    monitor.add_argument("--data", help="the training table a retraining reads")
    quality.add_label_option(monitor, "the label column of --data (required with it)")
    monitor.add_argument("--segment", default="", help="also judge drift within each value")
    monitor.add_argument(
        "--schema", type=Path,
        help="schema file a retraining's splits must meet, as run's --schema (default: one "
        "inferred from the data)",
    )  # fmt: skip
    monitor.add_argument(
        "--labels", default="",
        help="labels that have arrived (id, label[, time]): online quality is measured too",
    )  # fmt: skip
    monitor.add_argument(
        "--pushgateway", default="", help="push the findings to this Prometheus Pushgateway"
    )
    monitor.add_argument(
        "--no-retrain", action="store_true", help="report findings without starting training"
    )
    monitor.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE",
        help="any other monitoring pipeline parameter, repeatable; VALUE read as in run",
    )  # fmt: skip
    monitor.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where runs live")
    _add_monitoring_parallelism(monitor, default=2)
    monitor.set_defaults(handler=_monitor)


def _monitor(args: argparse.Namespace) -> int:
    from conveyor.pipelines.cli.data import DATA_FAILED
    from conveyor.pipelines.local import run_monitoring_locally

    if args.data and not args.label:
        raise ConveyorError("--label is required with --data: name the label column")
    arguments: dict[str, Any] = {
        "inputs_uri": _local_path(args.inputs),
        "inputs_days": args.days,
        "model_name": args.model,
        "segment_column": args.segment,
        "retrain": not args.no_retrain,
        "labels_uri": _local_path(args.labels) if args.labels else "",
        "pushgateway_url": args.pushgateway,
    }
    if args.data:
        arguments.update(data_uri=_local_path(args.data), target_column=args.label)
    if args.schema:
        arguments["schema_uri"] = _local_path(str(args.schema))
    arguments.update(_parse_params(args.param, "monitoring"))
    summary = run_monitoring_locally(
        arguments, args.runs_dir, sys.stdout, args.monitoring_parallelism
    )
    failed = summary.status == "failed"
    print(("Failed: " if failed else "") + summary.reason)
    print(f"Artifacts: {summary.artifacts}")
    if failed:
        return 1
    return DATA_FAILED if summary.found else 0


def _local_path(uri: str) -> str:
    """A path that exists here, made absolute (kfp.local runs steps elsewhere); URIs as given."""
    return str(Path(uri).resolve()) if Path(uri).exists() else uri


def _run_arguments(args: argparse.Namespace) -> dict[str, Any]:
    from conveyor.components.core.data.tables import DEFAULT_DATA_URI, Source, dataset_name
    from conveyor.pipelines.definitions.training import DEFAULT_MODEL_NAME

    if args.data and not args.label:
        raise ConveyorError("--label (LABEL=) is required with --data: name the label column")
    data = args.data or DEFAULT_DATA_URI
    if Path(data).exists() and not args.dvc_repo:
        data = str(Path(data).resolve())
    arguments: dict[str, Any] = {
        "data_uri": data,
        "dvc_repo": args.dvc_repo,
        "data_revision": args.rev,
    }
    if args.label:
        arguments["target_column"] = args.label
    default_name = dataset_name(Source(data)) if args.data else DEFAULT_MODEL_NAME
    arguments["model_name"] = args.model or default_name
    if args.estimator:
        arguments["estimator"] = args.estimator
    if args.task:
        arguments["task"] = args.task
    if args.schema:
        arguments["schema_uri"] = str(args.schema.resolve())
    arguments.update(_parse_params(args.param))
    return arguments


def _parse_params(pairs: list[str], pipeline: str = "training") -> dict[str, Any]:
    """``--param NAME=VALUE`` pairs, each checked against ``pipeline``'s own parameters."""
    from conveyor.pipelines.definitions.parameters import parse_param_options

    if not pairs:
        return {}
    return parse_param_options(pairs, _pipeline_inputs(pipeline), pipeline)


def _pipeline_inputs(pipeline: str) -> dict[str, Any]:
    """The pipeline's parameters, by name."""
    from conveyor.pipelines.definitions.compile import PIPELINES
    from conveyor.pipelines.definitions.targets import Target

    return PIPELINES[pipeline].build(Target("kubeflow")).component_spec.inputs or {}


def _compile(args: argparse.Namespace) -> int:
    from conveyor.pipelines.definitions.compile import compile_all

    options: dict[str, Any] = {
        "gpus": args.gpus,
        "tuning_parallelism": args.tuning_parallelism,
        "monitoring_parallelism": args.monitoring_parallelism,
    }
    if args.gpu_type:
        options["gpu_type"] = args.gpu_type
    if args.image_registry:
        options["image_registry"] = args.image_registry
    if args.gpu_node_selector:
        key, sep, value = args.gpu_node_selector.partition("=")
        if not sep or not key:
            raise ConveyorError(
                f"--gpu-node-selector {args.gpu_node_selector!r}: expected KEY=VALUE"
            )
        options["gpu_node_selector"] = (key, value)
    for path in compile_all(args.output_dir, **options):
        print(path)
    return 0


def _serve(args: argparse.Namespace) -> int:
    import json
    import os

    from conveyor.components.core.serving.inference import example_instance
    from conveyor.components.core.training.trainer import MODEL_SHA256_ENV, is_sha256

    pinned = args.sha256 or os.environ.get(MODEL_SHA256_ENV, "")
    if pinned and not is_sha256(pinned):
        raise ConveyorError(
            f"--sha256 {pinned!r} (or ${MODEL_SHA256_ENV}): expected the registry's sha256 of "
            "model.joblib, 64 lower-case hex digits"
        )
    if args.workers != 1:
        raise ConveyorError(
            f"--workers {args.workers}: a server runs one worker; KServe's multi-process mode "
            "re-imports the app without Conveyor's metrics middleware, so each worker would "
            "count nothing. Start more servers (in a cluster, replicas) instead"
        )
    log_options = _serve_log_options(args)
    name, model_dir, card, what = _served_model(args)
    body = json.dumps({"instances": [example_instance(card.features)]})
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    url = f"http://{f'[{host}]' if ':' in host else host}:{args.port}"
    print(
        f"Serving {name} ({what}, {model_dir}) as revision {args.revision} on "
        f"{args.host}:{args.port}. Try:\n"
        f"  curl -s -H 'Content-Type: application/json' "
        f"{url}/v1/models/{name}:predict -d '{body}'",
        flush=True,
    )
    command = [
        sys.executable, "-m", "conveyor.components.core.serving.server", "--model_name", name,
        "--model_dir", str(model_dir), "--http_port", str(args.port), "--http_host", args.host,
    ]  # fmt: skip
    command += log_options
    environment = {**os.environ, "K_REVISION": args.revision}
    if pinned:  # the server checks the file against it before unpickling anything
        environment[MODEL_SHA256_ENV] = pinned
    os.execve(sys.executable, command, environment)
    return 0  # not reached: the server replaces this process


def _serve_log_options(args: argparse.Namespace) -> list[str]:
    """The server's options for ``serve``'s payload log and id column flags."""
    options = []
    if args.payload_log:
        options += ["--payload_log", args.payload_log]
    for column in args.payload_log_exclude or []:
        options += ["--payload_log_exclude", column]
    if args.payload_log_max_buffer_rows is not None:
        if args.payload_log_max_buffer_rows < 1:
            raise ConveyorError(
                f"--payload-log-max-buffer-rows {args.payload_log_max_buffer_rows}: expected "
                "a positive number of rows"
            )
        options += ["--payload_log_max_buffer_rows", str(args.payload_log_max_buffer_rows)]
    for column in args.id_column:
        options += ["--id_column", column]
    return options


def _alias(deployment: str | None) -> str:
    """The version's alias after the run: champion once it serves (or without a rollout,
    where register makes it so), else still the candidate."""
    serving = ("skipped", "created", "promoted", "promoted_without_analysis")
    return "alias champion" if deployment in serving else "alias candidate: not deployed"


def _served_model(args: argparse.Namespace) -> tuple[str, Path, Any, str]:
    """The name, directory and card of the model ``serve`` serves, and what it is."""
    from conveyor.components.core.training.registry import champion_model_dir
    from conveyor.components.core.training.trainer import MODEL_CARD, read_model_card

    if args.model_dir is None:
        if args.name:
            raise ConveyorError("--name goes with --model-dir: a champion keeps its model's name")
        name = args.model or _last_run_model(args.runs_dir)
        model_dir = champion_model_dir(f"sqlite:///{args.runs_dir.resolve() / 'mlflow.db'}", name)
        return name, model_dir, read_model_card(model_dir), "champion"
    model_dir = args.model_dir.resolve()
    if not (model_dir / MODEL_CARD).is_file():
        raise ConveyorError(
            f"--model-dir {args.model_dir}: no {MODEL_CARD}; expected a model directory written "
            "by train or register"
        )
    card = read_model_card(model_dir)  # names the file and the key a bad card gets wrong
    # Cards written before they kept the name: register publishes to
    # <store>/<name>/<sha256[:16]>, so the parent folder is the name.
    published = bool(card.sha256) and model_dir.name == card.sha256[:16]
    name = args.name or card.name or (model_dir.parent.name if published else model_dir.name)
    return name, model_dir, card, "model directory"


def _last_run_model(runs_dir: Path) -> str:
    import json

    summaries = sorted(runs_dir.glob("*/summary.json"))
    if not summaries:
        raise ConveyorError(f"no local runs in {runs_dir}: run `make run` first, or pass MODEL=")
    return json.loads(summaries[-1].read_text())["model_name"]


_DEPLOYMENTS = {
    "skipped": "Deployed: not rolled out (a local run has no cluster; --param rollout=true "
    "rolls out to the one in your kubeconfig)",
    "created": "Deployed: created the InferenceService (first deploy)",
    "promoted": "Deployed: the canary passed every step and was promoted to 100 %",
    "promoted_without_analysis": "Deployed: promoted to 100 % WITHOUT ANALYSIS (canary_policy "
    "says analysis: none): nothing about the canary was judged",
}


def _check(args: argparse.Namespace) -> int:
    """Every problem of every parameter file, a line each under the file's own line, then
    the total; exit 2 when there is any."""
    import tempfile

    from conveyor.pipelines.definitions.compile import PIPELINES, compile_all
    from conveyor.pipelines.definitions.targets import Target

    with tempfile.TemporaryDirectory(prefix="conveyor-check-") as scratch:
        compiled = compile_all(Path(scratch))
        print(f"compiled: {', '.join(path.name for path in compiled)}")
    # configs/*.yaml are the training pipeline's; configs/monitoring/*.yaml the monitoring one's.
    files = {
        "training": sorted(args.configs.glob("*.yaml")),
        "monitoring": sorted((args.configs / "monitoring").glob("*.yaml")),
    }
    if not files["training"]:
        raise ConveyorError(f"{args.configs}: no parameter files (*.yaml) to check")
    total, failed = 0, 0
    for name, paths in files.items():
        pipeline = PIPELINES[name].build(Target("kubeflow"))
        for path in paths:
            found = _config_problems(path, pipeline)
            # The file's line on stdout, its problems on stderr: flushed in turn, so a
            # terminal shows each file's problems beneath it.
            print(f"{path}: {'ok' if not found else f'{len(found)} problem(s)'}", flush=True)
            for problem in found:
                print(problem, file=sys.stderr, flush=True)
            total, failed = total + len(found), failed + bool(found)
    checked = sum(len(paths) for paths in files.values())
    if not total:
        print(f"no problems in {checked} parameter file(s)")
        return 0
    print(f"{total} problem(s) in {failed} of {checked} parameter file(s)")
    return 2


def _config_problems(path: Path, pipeline: Any) -> list[str]:
    """Unknown or mistyped parameters, and the settings deploy would refuse, in one pass."""
    from conveyor.pipelines.definitions.parameters import load_parameters, parameter_problems

    try:
        values = load_parameters(path)
    except ConveyorError as error:  # not YAML, or not a mapping: the file's one problem
        return str(error).splitlines()
    found = parameter_problems(values, pipeline.component_spec.inputs, str(path))
    return found + delivery.deploy_problems(values, pipeline, str(path))


def _print_summary(summary: Any, summary_path: Path, out: TextIO) -> None:
    lines = [""]
    if summary.status == "failed":
        lines.append(f"Failed at step {summary.failed_step!r}:")
        lines += [f"  {line}" for line in summary.reason.splitlines()]
    task = getattr(summary, "task", None)
    if task:
        lines.append(f"Task: {task['task']} ({task['rule']})")
    if summary.metrics:
        shown = ", ".join(f"{name} {value:.4f}" for name, value in summary.metrics.items())
        lines.append(f"Metrics (evaluation split): {shown}")
    if summary.status == "succeeded":
        lines.append(f"{'Blessed' if summary.blessed else 'Not blessed'}: {summary.reason}")
    shadow = getattr(summary, "shadow", None)
    if shadow and shadow["passed"]:
        lines.append(f"Shadow: {shadow['reason']}")
    lines += [f"Warning: {warning}" for warning in summary.warnings]
    lines += [f"Note: {note}" for note in getattr(summary, "notes", [])]
    if summary.model_version is not None:
        lines.append(
            f"Registered: {summary.model_name} version {summary.model_version} "
            f"({_alias(summary.deployment)}), published to {summary.storage_uri}"
        )
    else:
        lines.append(f"Registered: nothing ({summary.model_name} unchanged)")
    if summary.manifest:
        lines.append(f"InferenceService (validated against KServe's CRD), {summary.manifest}:")
        lines += [f"  {line}" for line in Path(summary.manifest).read_text().splitlines()]
        lines.append(_DEPLOYMENTS.get(summary.deployment, f"Deployed: {summary.deployment}"))
    else:
        lines.append("Deployed: nothing")
    lines += [f"Artifacts: {summary.artifacts}", "Summary:", str(summary_path.resolve())]
    out.write("\n".join(lines) + "\n")


if __name__ == "__main__":  # python -m conveyor.pipelines.cli.commands, as before __main__.py
    sys.exit(main())
