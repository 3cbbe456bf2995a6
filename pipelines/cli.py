"""The ``conveyor`` command: ``run`` (a local run) and ``compile`` (YAML for clusters)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import yaml

from components.core.errors import ConveyorError

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
    return parser


def _run(args: argparse.Namespace) -> int:
    from pipelines.local import run_training_locally

    summary = run_training_locally(_run_arguments(args), args.runs_dir, sys.stdout)
    _print_summary(summary, args.runs_dir / summary.run_id / "summary.json", sys.stdout)
    return 0 if summary.status == "succeeded" else 1


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
    else:
        lines.append("Deployed: nothing")
    lines += [f"Artifacts: {summary.artifacts}", "Summary:", str(summary_path.resolve())]
    out.write("\n".join(lines) + "\n")
