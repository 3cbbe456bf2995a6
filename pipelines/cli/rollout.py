"""``conveyor rollout`` and ``conveyor judge``: a canary rollout from a CD system, and the
canary judged now, by the same code the rollout uses, contacting only Prometheus.

``rollout`` exits 0 when the model was created or promoted, 1 when it was rolled back and
2 on bad input. ``rollout --recover NAME`` only settles what a stopped run left (its canary
rolled back): 0 when the service is settled, 1 when that failed. ``judge`` exits 0 when
the canary passes, 3 when it fails, 4 when the evidence is inconclusive, 1 when a query
failed, 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from conveyor.components.core.errors import ConveyorError
from conveyor.components.core.rollout.policy import REMOVED_SETTINGS, TASKS
from conveyor.components.core.rollout.settings import SETTINGS, Setting, setting

__all__ = ["JUDGE_EXIT_CODES", "add_commands"]

JUDGE_EXIT_CODES = {"pass": 0, "error": 1, "fail": 3, "inconclusive": 4}
# Flags of earlier releases: refused with what replaced them, not with argparse's usage.
_REMOVED_FLAGS = {
    "--min-success-rate": "min_success_rate",
    "--max-latency-p99": "max_latency_p99_s",
    "--min-requests": "min_canary_requests",
    "--on-no-data": "on_no_data",
    "--failure-budget": "failure_budget",
    "--window": "analysis_window",
    "--query": "analysis_queries",
}
# A dict setting's flag names a YAML file, so its help says what the file holds and what
# leaving the flag out does; the setting's own help (shared with the pipeline's docstring
# and the README) speaks of the value, where "empty" means an empty mapping.
_FILE_HELP = {
    "canary_policy": "YAML file of the canary policy: metrics, margins, error rates and "
    "limits, merged by name onto the built-in policy; without it, the built-in policy",
}


def add_commands(commands: Any) -> None:
    """Adds rollout and judge to the ``conveyor`` sub-command parsers."""
    _add_rollout(commands)
    _add_judge(commands)


def _add_rollout(commands: Any) -> None:
    rollout = commands.add_parser(
        "rollout", help="roll a model out to a KServe InferenceService as a canary"
    )
    rollout.add_argument("--name", help="InferenceService (and model) name")
    rollout.add_argument("--model-uri", help="storageUri of the model directory")
    rollout.add_argument(
        "--recover", metavar="NAME",
        help="only roll back what a stopped or failed rollout of NAME left, then exit",
    )  # fmt: skip
    rollout.add_argument("--model-version", default="", help="recorded as an annotation")
    rollout.add_argument(
        "--model-sha256", default="",
        help="the registry's sha256 of model.joblib: the predictor refuses any other file",
    )  # fmt: skip
    rollout.add_argument(
        "--task", default="", choices=("", *TASKS), metavar="TASK",
        help="the model's task, classification or regression, which picks the canary metrics "
        "that apply (predicted_class and score, or predicted_value); empty reads it from the "
        "model card at --model-uri when the rollout starts (classification when it cannot "
        "be read)",
    )  # fmt: skip
    for each in SETTINGS:
        if each.flags:
            _add_setting(rollout, each)
    rollout.add_argument(
        "--kubeconfig", default="",
        help="kubeconfig file; empty uses the in-cluster account, else ~/.kube/config",
    )  # fmt: skip
    rollout.add_argument(
        "--run-id", default="", help="the run the rollout is recorded under; empty makes a new id"
    )
    rollout.add_argument("--report", type=Path, help="write the Markdown report here")
    rollout.add_argument(
        "--dry-run", action="store_true",
        help="print the InferenceService as YAML, the plan in comments; touch nothing",
    )  # fmt: skip
    for flag, removed in _REMOVED_FLAGS.items():
        rollout.add_argument(flag, dest=f"removed_{removed}", help=argparse.SUPPRESS)
    rollout.set_defaults(handler=_rollout)


def _add_judge(commands: Any) -> None:
    judge = commands.add_parser(
        "judge",
        help="judge a canary revision against the stable one now, from Prometheus only; "
        "exit 0 pass, 3 fail, 4 inconclusive, 1 a query failed, 2 bad input",
    )
    judge.add_argument("--prometheus", required=True, help="Prometheus base URL")
    judge.add_argument("--namespace", required=True, help="the revisions' namespace")
    judge.add_argument("--canary", required=True, help="the canary revision (K_REVISION)")
    judge.add_argument("--stable", required=True, help="the stable revision")
    _add_setting(judge, setting("canary_policy"))
    judge.add_argument(
        "--task", default=TASKS[0], choices=TASKS, metavar="TASK",
        help="the model's task, classification or regression, which picks the metrics that "
        "apply (predicted_class and score, or predicted_value); classification when not given",
    )  # fmt: skip
    judge.add_argument(
        "--since", default="10m",
        help="how far back the canary's traffic is read, as a PromQL duration",
    )  # fmt: skip
    judge.add_argument(
        "--warmup", default="0s", help="of that, how much at the start latency leaves out"
    )
    judge.set_defaults(handler=_judge)


def _add_setting(parser: argparse.ArgumentParser, declared: Setting) -> None:
    """The flags of a declared setting (``rollout.settings``), stored under its name, with
    its type, default and help; a dict setting's flag names a YAML file holding it, with
    the help ``_FILE_HELP`` writes for that file."""
    text = declared.help.replace("%", "%%")  # argparse formats help with %
    if declared.type is dict:  # a mapping is given as a file; without one, the default
        if declared.name not in _FILE_HELP:
            raise TypeError(f"setting {declared.name}: no help in _FILE_HELP for its file flag")
        parser.add_argument(
            *declared.flags, dest=declared.name, type=Path, metavar="FILE",
            help=_FILE_HELP[declared.name].replace("%", "%%"),
        )  # fmt: skip
        return
    if declared.type not in (str, float):  # argparse would read "false" as True
        raise TypeError(f"setting {declared.name}: no flag for a {declared.type.__name__}")
    metavar = declared.flags[0].lstrip("-").replace("-", "_").upper()  # --steps STEPS, as before
    parser.add_argument(
        *declared.flags, dest=declared.name, type=declared.type, default=declared.default,
        metavar=metavar, help=text,
    )  # fmt: skip


def _settings_given(args: argparse.Namespace) -> dict[str, Any]:
    """The declared settings the command has flags for, by name; a dict one read from its
    YAML file, or its default without one."""
    from conveyor.components.core.files import read_yaml

    given = {}
    for each in SETTINGS:
        if not each.flags:
            continue
        value = getattr(args, each.name)
        if each.type is dict:
            value = read_yaml(value) if value else dict(each.default)
        given[each.name] = value
    return given


def _policy(path: Path | None) -> Any:
    from conveyor.components.core.rollout.policy import DEFAULT_POLICY, load_policy

    return load_policy(path) if path else DEFAULT_POLICY


def _rollout(args: argparse.Namespace) -> int:
    import tempfile
    import uuid

    from conveyor.components.core.rollout.manifests import (
        ServingSpec,
        render_inference_service,
        validate_inference_service,
    )
    from conveyor.components.core.rollout.runner import RolloutSettings, deploy_model, describe_plan

    _refuse_removed_flags(args)
    if args.recover:
        return _recover(args)
    if not args.name or not args.model_uri:
        raise ConveyorError("rollout needs --name and --model-uri (or --recover NAME)")
    settings = RolloutSettings.from_parameters(
        _settings_given(args), str(args.canary_policy or "--policy")
    )
    spec = ServingSpec(
        model_name=args.name,
        model_version=args.model_version,
        storage_uri=args.model_uri,
        namespace=args.namespace,
        canary_traffic_percent=settings.plan.steps[0],
        runtime=args.serving_runtime,
        cpu=args.serving_cpu,
        memory=args.serving_memory,
        service_account=args.service_account,
        model_sha256=args.model_sha256,
    )
    if args.dry_run:
        settings.prometheus()  # what the rollout would refuse, the plan refuses too
        manifest = render_inference_service(spec)
        validate_inference_service(manifest)
        print(describe_plan(manifest, settings, args.task), end="")
        return 0
    settings.prometheus()  # refused before anything is contacted
    run_id = args.run_id or f"cli-{uuid.uuid4().hex[:12]}"
    report = args.report or Path(tempfile.mkdtemp(prefix="conveyor-rollout-")) / "report.md"
    print(f"rollout {run_id}: report at {report}", flush=True)
    progress = lambda line: print(line, flush=True)  # noqa: E731 - a CD log shows it live
    result = deploy_model(spec, settings, run_id, report, args.kubeconfig, progress, args.task)
    print(report.read_text(), end="")
    if not result.succeeded:
        print(f"conveyor rollout: {result.decision}: {result.reason}", file=sys.stderr)
        return 1
    return 0


def _recover(args: argparse.Namespace) -> int:
    import uuid

    from conveyor.components.core.rollout.kube import InferenceServices, api_client
    from conveyor.components.core.rollout.policy import CanaryPolicy
    from conveyor.components.core.rollout.runner import (
        Rollout,
        RolloutFailed,
        RolloutPlan,
        RolloutSettings,
    )

    settings = RolloutSettings(
        RolloutPlan(ready_timeout_s=args.ready_timeout_s), CanaryPolicy(analysis="none")
    )
    services = InferenceServices(api_client(args.kubeconfig), args.namespace)
    run_id = args.run_id or f"cli-{uuid.uuid4().hex[:12]}"
    progress = lambda line: print(line, flush=True)  # noqa: E731 - a CD log shows it live
    try:
        result = Rollout.recovery(services, args.recover, settings, run_id, progress).recover()
    except RolloutFailed as failed:
        print(f"conveyor rollout: {failed.result.reason}", file=sys.stderr)
        return 1
    print(f"{result.decision}: {result.reason}")
    return 0


def _refuse_removed_flags(args: argparse.Namespace) -> None:
    for flag, removed in _REMOVED_FLAGS.items():
        if getattr(args, f"removed_{removed}") is not None:
            raise ConveyorError(f"{flag} was removed: {REMOVED_SETTINGS[removed]} (--policy FILE)")


def _judge(args: argparse.Namespace) -> int:
    from conveyor.components.core.rollout.analysis import analyse
    from conveyor.components.core.rollout.prometheus import Prometheus, Window, duration_seconds

    policy = _policy(args.canary_policy).for_task(args.task)  # only the metrics that apply
    since, warmup = (
        duration_seconds(args.since, "--since"),
        duration_seconds(args.warmup, "--warmup"),
    )
    if warmup >= since:
        raise ConveyorError(f"--warmup {args.warmup} must be shorter than --since {args.since}")
    prometheus = Prometheus(args.prometheus)
    window = Window(time.time(), since, since - warmup)
    judgement = analyse(prometheus, policy, args.namespace, args.canary, args.stable, window)
    print(
        f"judging {args.canary} against {args.stable} in {args.namespace} over the last "
        f"{args.since}, from {prometheus.url}, as a {policy.task} model"
    )
    print(_judgement_text(judgement))
    print(f"outcome: {judgement.outcome}: {judgement.reason}")
    return JUDGE_EXIT_CODES[judgement.outcome]


def _judgement_text(judgement: Any) -> str:
    """One row per metric, columns aligned for a terminal."""
    header = ("metric", "outcome", "canary", "stable", "samples", "test")
    rows = [
        (
            r.name,
            r.outcome,
            _number(r.canary),
            _number(r.stable),
            f"{r.samples}/{r.needed}" if r.needed else "-",
            r.test or r.reason,
        )  # fmt: skip
        for r in judgement.results
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]])
        for row in [header, *rows]
    )


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"
