"""The ``conveyor`` command: ``run`` (a local run), ``compile`` (YAML for clusters),
``rollout`` (a canary rollout from a CD system), ``serve`` (a champion, locally), ``check``
(every pipeline and parameter file), ``validate`` and ``drift`` (data quality, in
``pipelines.quality``), and ``submit``, ``schedule`` and ``publish`` (delivery to Kubeflow
and Vertex AI, in ``pipelines.delivery``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import yaml

from components.core.errors import ConveyorError
from pipelines import delivery, quality

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except ConveyorError as error:
        print(f"conveyor {args.command}: {error}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conveyor", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the training pipeline locally through kfp.local")
    run.add_argument(
        "--data", help="CSV or Parquet path or URI (default: the embedded breast-cancer table)"
    )
    run.add_argument("--target", help="label column (required with --data)")
    run.add_argument("--model", help="registered model name (default: from the data file's name)")
    run.add_argument("--dvc-repo", default="", help="git repository whose DVC tracks --data")
    run.add_argument("--rev", default="", help="git revision of --dvc-repo to read")
    run.add_argument(
        "--schema", type=Path, help="schema file both splits must meet (conveyor validate)"
    )
    run.add_argument(
        "--estimator", help="logistic_regression, random_forest or hist_gradient_boosting"
    )
    run.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any other pipeline parameter; VALUE is read as YAML (numbers, true/false, {a: 1})",
    )
    run.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where local runs live")
    run.set_defaults(handler=_run)
    _add_monitor(commands)

    build = commands.add_parser(
        "compile", help="compile the pipeline (kubeflow, vertex) and components"
    )
    build.add_argument("--output-dir", type=Path, default=Path("build"))
    build.add_argument("--gpus", type=int, default=0, help="GPUs for the train step")
    build.add_argument("--gpu-type", default="", help="Vertex accelerator (default NVIDIA_L4)")
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
    _add_rollout(commands)
    _add_serve(commands)
    quality.add_commands(commands)
    delivery.add_commands(commands)
    check = commands.add_parser(
        "check", help="compile every pipeline for every target and check configs/*.yaml"
    )
    check.add_argument("--configs", type=Path, default=Path("configs"))
    check.set_defaults(handler=_check)
    return parser


def _add_rollout(commands: Any) -> None:
    rollout = commands.add_parser(
        "rollout", help="roll a model out to a KServe InferenceService as a canary"
    )
    rollout.add_argument("--name", required=True, help="InferenceService (and model) name")
    rollout.add_argument("--namespace", default="default")
    rollout.add_argument("--model-uri", required=True, help="storageUri of the model directory")
    rollout.add_argument("--model-version", default="", help="recorded as an annotation")
    rollout.add_argument("--steps", default="10,50", help="canary percentages, increasing")
    rollout.add_argument("--interval", type=float, default=60.0, help="seconds per step")
    rollout.add_argument("--prometheus", default="", help="Prometheus URL for the analysis")
    rollout.add_argument("--min-success-rate", type=float, default=0.99)
    rollout.add_argument("--max-latency-p99", type=float, default=0.5, help="seconds")
    rollout.add_argument("--min-requests", type=int, default=20)
    rollout.add_argument("--on-no-data", default="fail", choices=("fail", "wait", "pass"))
    rollout.add_argument("--failure-budget", type=int, default=0)
    rollout.add_argument("--window", default="1m", help="PromQL range of each measurement")
    rollout.add_argument(
        "--query",
        action="append",
        default=[],
        metavar="NAME=PROMQL",
        help="replace a default query (requests, success_rate, latency_p99); "
        "$namespace, $revision and $window are filled in",
    )
    rollout.add_argument("--ready-timeout", type=float, default=600.0, help="seconds")
    rollout.add_argument("--deadline", type=float, default=3600.0, help="seconds")
    rollout.add_argument("--runtime", default="", help="ServingRuntime name")
    rollout.add_argument("--cpu", default="1")
    rollout.add_argument("--memory", default="2Gi")
    rollout.add_argument("--service-account", default="")
    rollout.add_argument("--kubeconfig", default="", help="default: in-cluster, or ~/.kube")
    rollout.add_argument(
        "--run-id", default="", help="lock holder; reuse it to resume a crashed rollout"
    )
    rollout.add_argument("--report", type=Path, help="write the Markdown report here")
    rollout.add_argument("--dry-run", action="store_true", help="print the plan; touch nothing")
    rollout.set_defaults(handler=_rollout)


def _add_serve(commands: Any) -> None:
    serve = commands.add_parser("serve", help="serve a model's champion on this machine")
    serve.add_argument("--model", help="registered model (default: the last local run's)")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where local runs live")
    serve.set_defaults(handler=_serve)


def _run(args: argparse.Namespace) -> int:
    from pipelines.local import run_training_locally

    summary = run_training_locally(_run_arguments(args), args.runs_dir, sys.stdout)
    _print_summary(summary, args.runs_dir / summary.run_id / "summary.json", sys.stdout)
    return 0 if summary.status == "succeeded" else 1


def _add_monitor(commands: Any) -> None:
    monitor = commands.add_parser(
        "monitor",
        help="run the monitoring pipeline locally: inputs vs the champion's training data, "
        "retraining on drift; exit 0 without drift, 3 with drift",
    )
    monitor.add_argument(
        "--inputs", required=True,
        help="recent inference inputs: CSV/Parquet, or a folder of them (a payload log)",
    )  # fmt: skip
    monitor.add_argument(
        "--days", type=int, default=0,
        help="of a payload log, read only the last DAYS days (today, UTC, included)",
    )  # fmt: skip
    monitor.add_argument("--model", required=True, help="the registered model to monitor")
    monitor.add_argument("--data", help="the training table a retraining reads")
    monitor.add_argument("--target", help="its label column (required with --data)")
    monitor.add_argument("--segment", default="", help="also judge drift within each value")
    monitor.add_argument(
        "--no-retrain", action="store_true", help="report drift without starting training"
    )
    monitor.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE",
        help="any other monitoring pipeline parameter, read as YAML",
    )  # fmt: skip
    monitor.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where runs live")
    monitor.set_defaults(handler=_monitor)


def _monitor(args: argparse.Namespace) -> int:
    from pipelines.local import run_monitoring_locally
    from pipelines.quality import DATA_FAILED

    if args.data and not args.target:
        raise ConveyorError("--target is required with --data: name the label column")
    arguments: dict[str, Any] = {
        "inputs_uri": _local_path(args.inputs),
        "inputs_days": args.days,
        "model_name": args.model,
        "segment_column": args.segment,
        "retrain": not args.no_retrain,
    }
    if args.data:
        arguments.update(data_uri=_local_path(args.data), target_column=args.target)
    arguments.update(_parse_params(args.param))
    summary = run_monitoring_locally(arguments, args.runs_dir, sys.stdout)
    failed = summary.status == "failed"
    print(("Failed: " if failed else "") + summary.reason)
    print(f"Artifacts: {summary.artifacts}")
    if failed:
        return 1
    return DATA_FAILED if summary.drifted else 0


def _local_path(uri: str) -> str:
    """A path that exists here, made absolute (kfp.local runs steps elsewhere); URIs as given."""
    return str(Path(uri).resolve()) if Path(uri).exists() else uri


def _run_arguments(args: argparse.Namespace) -> dict[str, Any]:
    from components.core.data import DEFAULT_DATA_URI, Source, dataset_name
    from pipelines.training import DEFAULT_MODEL_NAME

    if args.data and not args.target:
        raise ConveyorError("--target (TARGET=) is required with --data: name the label column")
    data = args.data or DEFAULT_DATA_URI
    if Path(data).exists() and not args.dvc_repo:
        data = str(Path(data).resolve())
    arguments: dict[str, Any] = {
        "data_uri": data,
        "dvc_repo": args.dvc_repo,
        "data_revision": args.rev,
    }
    if args.target:
        arguments["target_column"] = args.target
    default_name = dataset_name(Source(data)) if args.data else DEFAULT_MODEL_NAME
    arguments["model_name"] = args.model or default_name
    if args.estimator:
        arguments["estimator"] = args.estimator
    if args.schema:
        arguments["schema_uri"] = str(args.schema.resolve())
    arguments.update(_parse_params(args.param))
    return arguments


def _parse_params(pairs: list[str]) -> dict[str, Any]:
    from pipelines.targets import Target
    from pipelines.training import build_training_pipeline

    known = build_training_pipeline(Target("kubeflow")).component_spec.inputs or {}
    parsed = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise ConveyorError(f"--param {pair!r}: expected NAME=VALUE")
        if name not in known:
            raise ConveyorError(
                f"--param {name!r}: no such pipeline parameter; known: {', '.join(known)}"
            )
        parsed[name] = yaml.safe_load(value) if value else ""
    return parsed


def _compile(args: argparse.Namespace) -> int:
    from pipelines.compile import compile_all

    options: dict[str, Any] = {"gpus": args.gpus}
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


def _rollout(args: argparse.Namespace) -> int:
    import tempfile
    import uuid

    from components.core.manifests import (
        ServingSpec,
        render_inference_service,
        validate_inference_service,
    )
    from components.core.rollout import deploy_model, describe_plan, rollout_settings
    from pipelines.parameters import option_pairs

    plan, policy = rollout_settings(
        args.steps, args.interval, args.ready_timeout, args.deadline, args.failure_budget,
        args.prometheus, args.min_success_rate, args.max_latency_p99, args.min_requests,
        args.on_no_data, args.window, option_pairs(args.query, "--query", "NAME=PROMQL"),
    )  # fmt: skip
    spec = ServingSpec(
        model_name=args.name,
        model_version=args.model_version,
        storage_uri=args.model_uri,
        namespace=args.namespace,
        canary_traffic_percent=plan.steps[0],
        runtime=args.runtime,
        cpu=args.cpu,
        memory=args.memory,
        service_account=args.service_account,
    )
    if args.dry_run:
        manifest = render_inference_service(spec)
        validate_inference_service(manifest)
        print(describe_plan(manifest, plan, policy), end="")
        return 0
    run_id = args.run_id or f"cli-{uuid.uuid4().hex[:12]}"
    report = args.report or Path(tempfile.mkdtemp(prefix="conveyor-rollout-")) / "report.md"
    print(f"rollout {run_id}: report at {report}", flush=True)
    progress = lambda line: print(line, flush=True)  # noqa: E731 - a CD log shows it live
    result = deploy_model(spec, plan, policy, run_id, report, args.kubeconfig, progress)
    print(report.read_text(), end="")
    if not result.succeeded:
        print(f"conveyor rollout: {result.decision}: {result.reason}", file=sys.stderr)
        return 1
    return 0


def _serve(args: argparse.Namespace) -> int:
    import json
    import os

    from components.core.inference import example_instance
    from components.core.registry import champion_model_dir
    from components.core.training import MODEL_CARD, ModelCard

    name = args.model or _last_run_model(args.runs_dir)
    model_dir = champion_model_dir(f"sqlite:///{args.runs_dir.resolve() / 'mlflow.db'}", name)
    card = ModelCard.from_json((model_dir / MODEL_CARD).read_text())
    body = json.dumps({"instances": [example_instance(card.features)]})
    print(
        f"Serving {name} (champion, {model_dir}) on port {args.port}. Try:\n"
        f"  curl -s -H 'Content-Type: application/json' "
        f"http://127.0.0.1:{args.port}/v1/models/{name}:predict -d '{body}'",
        flush=True,
    )
    command = [
        sys.executable, "-m", "components.core.serving", "--model_name", name,
        "--model_dir", str(model_dir), "--http_port", str(args.port), "--enable_grpc", "False",
    ]  # fmt: skip
    os.execv(sys.executable, command)
    return 0  # not reached: the server replaces this process


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
}


def _check(args: argparse.Namespace) -> int:
    import tempfile

    from pipelines.compile import PIPELINES, compile_all
    from pipelines.targets import Target

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
    problems = []
    for name, paths in files.items():
        pipeline = PIPELINES[name].build(Target("kubeflow"))
        for path in paths:
            found = _config_problems(path, pipeline)
            print(f"{path}: {'ok' if not found else f'{len(found)} problem(s)'}")
            problems += found
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


def _config_problems(path: Path, pipeline: Any) -> list[str]:
    """Unknown or mistyped parameters, then the settings deploy would refuse."""
    from pipelines.local import check_deployable
    from pipelines.parameters import load_parameters, parameter_problems

    values = load_parameters(path)
    found = parameter_problems(values, pipeline.component_spec.inputs, str(path))
    if found:
        return found
    try:
        check_deployable(values, pipeline)
    except ConveyorError as error:
        return [f"{path}: {error}"]
    return []


def _print_summary(summary: Any, summary_path: Path, out: TextIO) -> None:
    lines = [""]
    if summary.status == "failed":
        lines.append(f"Failed at step {summary.failed_step!r}:")
        lines += [f"  {line}" for line in summary.reason.splitlines()]
    if summary.metrics:
        shown = ", ".join(f"{name} {value:.4f}" for name, value in summary.metrics.items())
        lines.append(f"Metrics (evaluation split): {shown}")
    if summary.status == "succeeded":
        lines.append(f"{'Blessed' if summary.blessed else 'Not blessed'}: {summary.reason}")
    if summary.model_version is not None:
        lines.append(
            f"Registered: {summary.model_name} version {summary.model_version} (alias champion), "
            f"published to {summary.storage_uri}"
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


if __name__ == "__main__":
    sys.exit(main())
