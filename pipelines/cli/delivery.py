"""``conveyor submit``, ``schedule`` and ``publish``: the training pipeline delivered to a
Kubeflow cluster or to Vertex AI.

Each command checks every setting before it sends anything, prints what it did with the
id and link of what it made, and with ``--dry-run`` prints as JSON exactly what it would
send, contacting nothing (no credentials are read either).
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
from pathlib import Path
from typing import Any

from conveyor.components.core.errors import ConveyorError

__all__ = ["add_commands", "deploy_problems"]

_KUBEFLOW_ONLY = ("host", "experiment", "namespace")
_VERTEX_ONLY = ("project", "region", "pipeline_root", "job_label", "template")
_VERTEX_SCHEDULE_ONLY = ("replace", "schedule_name")


def add_commands(commands: Any) -> None:
    """Adds submit, schedule and publish to the ``conveyor`` sub-command parsers."""
    for name, text in (
        ("submit", "upload the pipeline to Kubeflow and start a run, or submit it to Vertex AI"),
        ("schedule", "run the pipeline on a cron, on Kubeflow or on Vertex AI"),
    ):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument(
            "--target", required=True, choices=("kubeflow", "vertex"), help="the platform"
        )
        _add_pipeline_option(command)
        command.add_argument("--params", type=Path, help="parameter file, such as configs/dev.yaml")
        command.add_argument("--run-name", default="", help="default: the pipeline's name")
        command.add_argument("--service-account", default="", help="what the run runs as")
        command.add_argument("--image-registry", default="", help="where images are pulled from")
        command.add_argument("--dry-run", action="store_true", help="print what would be sent")
        kubeflow = command.add_argument_group("--target kubeflow")
        kubeflow.add_argument("--host", default="", help="the KFP API, such as http://…/pipeline")
        kubeflow.add_argument(
            "--experiment", default="", help="the experiment the run goes in (empty: conveyor)"
        )
        kubeflow.add_argument("--namespace", default="", help="a Kubeflow profile namespace")
        vertex = command.add_argument_group("--target vertex")
        vertex.add_argument("--project", default="", help="Google Cloud project id")
        vertex.add_argument("--region", default="", help="such as europe-west4")
        vertex.add_argument("--pipeline-root", default="", help="gs://BUCKET/PATH for artifacts")
        vertex.add_argument(
            "--job-label",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="a label of the Vertex AI job; repeatable",
        )
        # --label, its older name, is the label column in run, monitor and validate.
        vertex.add_argument(
            "--label", dest="job_label", action=_DeprecatedJobLabel, help=argparse.SUPPRESS
        )
        vertex.add_argument(
            "--template",
            default="",
            help="a published template, https://REGION-kfp.pkg.dev/P/R/PIPELINE/TAG, "
            "instead of this checkout's pipeline",
        )
        if name == "schedule":
            command.add_argument("--cron", required=True, help="standard 5-field cron")
            command.add_argument("--timezone", default="UTC", help="Vertex: IANA time zone")
            command.add_argument(
                "--max-concurrent", type=int, default=1, help="most runs of it at one time"
            )
            vertex.add_argument(
                "--schedule-name", default="", help="default: pipeline and --params name"
            )
            vertex.add_argument(
                "--replace", action="store_true", help="pause, then delete, the schedule of "
                "the same name once the new one exists",
            )  # fmt: skip
        command.set_defaults(handler=_deliver)
    publish = commands.add_parser(
        "publish", help="publish the pipeline as a template to Artifact Registry"
    )
    publish.add_argument(
        "--target", required=True, choices=("vertex",), help="the platform (Vertex AI only)"
    )
    _add_pipeline_option(publish)
    publish.add_argument("--repo", required=True, help="https://REGION-kfp.pkg.dev/P/R")
    publish.add_argument("--tag", required=True, help="such as v1.2.0")
    publish.add_argument("--image-registry", default="", help="where images are pulled from")
    publish.add_argument("--dry-run", action="store_true", help="print what would be sent")
    publish.set_defaults(handler=_publish)


class _DeprecatedJobLabel(argparse.Action):
    """``--label KEY=VALUE`` where it meant a Vertex AI job label: added to ``--job-label``'s,
    with a line on stderr, since ``--label`` is the label column everywhere else."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
        option_string: str | None = None,
    ) -> None:  # fmt: skip
        print(
            f"{parser.prog}: --label is deprecated for Vertex job labels; use --job-label",
            file=sys.stderr,
        )
        # A new list, as argparse's append does: the default one is shared between parses.
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest, None) or []), values])


def _add_pipeline_option(command: Any) -> None:
    command.add_argument(
        "--pipeline", default="training", choices=("training", "monitoring"),
        help="which pipeline",
    )  # fmt: skip


def _deliver(args: argparse.Namespace) -> int:
    _check_options(args)
    if args.target == "kubeflow":
        return _deliver_kubeflow(args)
    return _deliver_vertex(args)


def _check_options(args: argparse.Namespace) -> None:
    """Each target's options are refused with the other, and its required ones asked for."""
    other = _VERTEX_ONLY + _VERTEX_SCHEDULE_ONLY if args.target == "kubeflow" else _KUBEFLOW_ONLY
    for option in other:
        if getattr(args, option, None):
            raise ConveyorError(
                f"--{option.replace('_', '-')} does not apply to --target {args.target}"
            )
    required = ("host",) if args.target == "kubeflow" else ("project", "region", "pipeline_root")
    for option in required:
        if not getattr(args, option):
            raise ConveyorError(
                f"--{option.replace('_', '-')} is required with --target {args.target}"
            )


def _parameters(args: argparse.Namespace) -> dict[str, Any]:
    from conveyor.pipelines.definitions.parameters import load_parameters

    return load_parameters(args.params) if args.params else {}


def _where(args: argparse.Namespace) -> str:
    return str(args.params or "(no --params file)")


def _target(name: str, image_registry: str) -> Any:
    from conveyor.pipelines.definitions.targets import Target

    return Target(name, **({"image_registry": image_registry} if image_registry else {}))


def _pipeline(target: Any, args: argparse.Namespace) -> Any:
    from conveyor.pipelines.definitions.compile import PIPELINES

    return PIPELINES[args.pipeline].build(target)


def _pipeline_name(args: argparse.Namespace) -> str:
    from conveyor.pipelines.definitions.compile import PIPELINES

    return PIPELINES[args.pipeline].name


def deploy_problems(values: dict[str, Any], pipeline: Any, where: str) -> list[str]:
    """The serving and rollout settings deploy would refuse, a line each starting with
    ``where``: named before a run starts, beside any problem of the parameters themselves
    (which are left to ``parameter_problems``)."""
    from conveyor.pipelines.definitions.parameters import deploy_setting_problems

    inputs = pipeline.component_spec.inputs or {}
    return [f"{where}: {problem}" for problem in deploy_setting_problems(values, inputs)]


def _deliver_kubeflow(args: argparse.Namespace) -> int:
    from conveyor.pipelines.definitions.compile import compile_pipeline
    from conveyor.pipelines.definitions.parameters import raise_problems
    from conveyor.pipelines.delivery import kubeflow
    from conveyor.pipelines.delivery.cron import kubeflow_cron

    name = _pipeline_name(args)
    target = _target("kubeflow", args.image_registry)
    cron = kubeflow_cron(args.cron) if args.command == "schedule" else ""
    with tempfile.TemporaryDirectory(prefix="conveyor-submit-") as scratch:
        package = compile_pipeline(target, Path(scratch), args.pipeline)
        request = kubeflow.KubeflowRequest(
            host=args.host,
            pipeline_name=name,
            version_name=kubeflow.version_name(name, package),
            experiment=args.experiment or "conveyor",
            namespace=args.namespace,
            run_name=args.run_name or f"{name} {datetime.datetime.now():%Y-%m-%d %H:%M:%S}",
            parameters=_parameters(args),
            service_account=args.service_account,
            cron=cron,
            timezone=getattr(args, "timezone", "UTC"),
            max_concurrency=getattr(args, "max_concurrent", 1),
        )
        pipeline = _pipeline(target, args)
        problems = kubeflow.request_problems(request, pipeline.component_spec.inputs, _where(args))
        raise_problems(problems + deploy_problems(request.parameters, pipeline, _where(args)))
        if args.dry_run:
            print(request.to_json())
            return 0
        act = kubeflow.schedule if args.command == "schedule" else kubeflow.submit
        identifier, link = act(request, package, kubeflow.connector(args.host, args.namespace))
    kind = "recurring run" if args.command == "schedule" else "run"
    print(f"{kind} {identifier} of {request.pipeline_name} version {request.version_name}: {link}")
    return 0


def _deliver_vertex(args: argparse.Namespace) -> int:
    from conveyor.pipelines.definitions.compile import compile_pipeline
    from conveyor.pipelines.definitions.parameters import raise_problems
    from conveyor.pipelines.delivery import gcloud, templates, vertex

    published = templates.TemplateRef.parse(args.template) if args.template else None
    target = _target("vertex", args.image_registry)
    with tempfile.TemporaryDirectory(prefix="conveyor-submit-") as scratch:
        local = None if published else compile_pipeline(target, Path(scratch), args.pipeline)
        request = _vertex_request(args, _local_label(local) if local else published.url)
        # A published template is checked against its own signature once it is downloaded.
        pipeline = None if published else _pipeline(target, args)
        inputs = pipeline and pipeline.component_spec.inputs
        problems = vertex.request_problems(request, inputs, _where(args))
        if pipeline:
            problems += deploy_problems(request.parameters, pipeline, _where(args))
        raise_problems(problems)
        if args.dry_run:
            if published:
                print(f"conveyor {args.command}: a dry run does not read {published.url}, so "
                      "the parameters were not checked against it", file=sys.stderr)  # fmt: skip
            print(request.to_json())
            return 0
        auth = gcloud.credentials()
        template_path = str(local)
        if published:
            request, template_path = _pinned(args, published, auth, Path(scratch))
        vertex.preflight(request, auth)
        if args.command == "schedule":
            return _print_schedule(request, *vertex.schedule(request, template_path, auth))
        job_id, link = vertex.submit(request, template_path, auth)
    print(f"pipeline job {job_id} ({request.display_name}) of {request.template}: {link}")
    return 0


def _pinned(args: argparse.Namespace, published: Any, auth: Any, scratch: Path) -> tuple[Any, str]:
    """The request for a published template resolved to its version, checked against that
    version's own signature; and the URL aiplatform reads it from."""
    from conveyor.pipelines.definitions.parameters import raise_problems
    from conveyor.pipelines.delivery import templates, vertex

    pinned = templates.resolve(published, auth)
    template = _load_template(templates.download(pinned, auth, scratch))
    request = _vertex_request(args, pinned.url)
    problems = vertex.request_problems(request, template.component_spec.inputs or {}, _where(args))
    raise_problems(problems + deploy_problems(request.parameters, template, _where(args)))
    return request, pinned.url


def _vertex_request(args: argparse.Namespace, template: str) -> Any:
    from conveyor.pipelines.definitions.parameters import option_pairs
    from conveyor.pipelines.delivery.cron import vertex_cron
    from conveyor.pipelines.delivery.vertex import VertexRequest

    schedule = args.command == "schedule"
    return VertexRequest(
        project=args.project,
        region=args.region,
        pipeline_root=args.pipeline_root,
        template=template,
        display_name=_schedule_name(args) if schedule else (args.run_name or _pipeline_name(args)),
        parameters=_parameters(args),
        service_account=args.service_account,
        labels=option_pairs(args.job_label, "--job-label", "KEY=VALUE", empty_values=True),
        cron=vertex_cron(args.cron, args.timezone) if schedule else "",
        max_concurrent=getattr(args, "max_concurrent", 1),
        replace=getattr(args, "replace", False),
    )


def _schedule_name(args: argparse.Namespace) -> str:
    """``--schedule-name``, else one per pipeline and environment (``conveyor-training-dev``),
    so that ``--replace`` for dev never touches prod's schedule."""
    if args.schedule_name:
        return args.schedule_name
    name = _pipeline_name(args)
    return f"{name}-{args.params.stem}" if args.params else name


def _local_label(package: Path) -> str:
    """How the dry run and the output name this checkout's compiled pipeline."""
    import hashlib

    return f"{package.name} (sha256:{hashlib.sha256(package.read_bytes()).hexdigest()[:12]}...)"


def _load_template(path: Path) -> Any:
    """A downloaded template as a component: its signature is ``component_spec.inputs``."""
    from kfp import components

    try:
        return components.load_component_from_file(str(path))
    except Exception as error:  # kfp raises bare errors of several kinds for a bad file
        raise ConveyorError(f"{path.name}: not a KFP pipeline template ({error})") from None


def _print_schedule(
    request: Any, schedule_id: str, link: str, replaced: list[tuple[str, str]]
) -> int:
    """The new schedule, then each it replaced; exit 1 when one of those is left paused."""
    print(
        f"schedule {schedule_id} ({request.display_name}, {request.cron}) of "
        f"{request.template}: {link}"
    )
    for old, error in replaced:
        if error:
            print(f"conveyor schedule: replaced schedule {old} is paused but not deleted "
                  f"({error}): delete it by hand", file=sys.stderr)  # fmt: skip
        else:
            print(f"replaced schedule {old}: paused, then deleted")
    return 1 if any(error for _, error in replaced) else 0


def _publish(args: argparse.Namespace) -> int:
    import json

    from conveyor.pipelines.definitions.compile import compile_pipeline
    from conveyor.pipelines.delivery import gcloud, templates

    name = _pipeline_name(args)
    repository = templates.Repository.parse(args.repo)
    templates.check_tag(args.tag)
    with tempfile.TemporaryDirectory(prefix="conveyor-publish-") as scratch:
        target = _target("vertex", args.image_registry)
        package = compile_pipeline(target, Path(scratch), args.pipeline)
        if args.dry_run:
            sent = {"repository": repository.url, "package": name, "tag": args.tag}
            print(json.dumps(sent | {"file": _local_label(package)}, indent=2))
            return 0
        published = templates.publish(repository, name, args.tag, package, gcloud.credentials())
    done = "published" if published.uploaded else "already published"
    print(f"{done}: {published.template.url} (tag {published.tag})")
    tagged = f"{published.template.repository.url}/{published.template.package}/{published.tag}"
    print(f"schedule it with: conveyor schedule --target vertex --template {tagged} …")
    return 0
