"""Rendering a KServe InferenceService and validating it against KServe's own CRD schema."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from conveyor.components.core.errors import ConveyorError
from conveyor.components.core.files import write_text_atomically
from conveyor.components.core.serving.payload_log import (
    PAYLOAD_LOG_ENV,
    PAYLOAD_LOG_EXCLUDE_ENV,
    parse_exclude,
)
from conveyor.components.core.training.trainer import MODEL_SHA256_ENV, is_sha256

__all__ = [
    "CRD_FILE",
    "RENDERED_ANNOTATIONS",
    "RENDERED_ENV",
    "RENDERED_FIELDS",
    "ServingSpec",
    "deploy_manifest",
    "inference_service_name",
    "inference_service_problems",
    "inference_service_schema",
    "model_log_uri",
    "render_inference_service",
    "validate_inference_service",
]

API_VERSION = "serving.kserve.io/v1beta1"
# The predictor's environment variables and annotations Conveyor renders, and so owns: a
# rollout replaces them as a set, and leaves every other one as it finds it.
RENDERED_ENV = (PAYLOAD_LOG_ENV, PAYLOAD_LOG_EXCLUDE_ENV, MODEL_SHA256_ENV)
# The predictor fields ``render_inference_service`` writes (and, under ``model``, the keys):
# all a rollback may put back.
RENDERED_FIELDS = {
    "annotations": None,
    "serviceAccountName": None,
    "model": {"modelFormat", "storageUri", "resources", "runtime", "env"},
}
CRD_FILE = "serving.kserve.io_inferenceservices.yaml"
# KServe derives host names such as <name>-predictor-<namespace>; keep room for them in 63.
MAX_NAME_LENGTH = 45
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
ANNOTATION_PREFIX = "conveyor"
RENDERED_ANNOTATIONS = (f"{ANNOTATION_PREFIX}/model-name", f"{ANNOTATION_PREFIX}/model-version")


@dataclass(frozen=True)
class ServingSpec:
    """What a deployment of one registered model version needs.

    Attributes:
        model_name: The registered model's name; the InferenceService name derives from it.
        model_version: The registered version being deployed.
        storage_uri: Where KServe's storage initializer pulls the model directory from.
        namespace: Kubernetes namespace of the InferenceService.
        canary_traffic_percent: Share of traffic (0-100) the new revision gets on an update.
        runtime: A ServingRuntime name; empty lets KServe pick one for the sklearn format.
        cpu: CPU request and limit (a Kubernetes quantity).
        memory: Memory request and limit (a Kubernetes quantity).
        service_account: Service account the predictor pulls the model with; empty for the default.
        payload_log_uri: Folder or URI under which the predictor logs the inputs it answers,
            in a folder named for the InferenceService; empty logs nothing.
        model_sha256: The registry's sha256 of ``model.joblib`` (64 lower-case hex digits);
            the predictor gets it as ``CONVEYOR_MODEL_SHA256`` and refuses to load any other
            file, whatever the ``model.json`` beside it says. Empty pins nothing.
        payload_log_exclude: Input columns the predictor never writes to its payload log
            (``CONVEYOR_PAYLOAD_LOG_EXCLUDE``, rendered with the log only).
    """

    model_name: str
    model_version: str
    storage_uri: str
    namespace: str = "default"
    canary_traffic_percent: int = 10
    runtime: str = ""
    cpu: str = "1"
    memory: str = "2Gi"
    service_account: str = ""
    payload_log_uri: str = ""
    model_sha256: str = ""
    payload_log_exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "payload_log_exclude", tuple(self.payload_log_exclude))
        parse_exclude(",".join(self.payload_log_exclude))  # refuses the log's own columns
        if any("," in name or not name.strip() for name in self.payload_log_exclude):
            raise ConveyorError(
                f"ServingSpec.payload_log_exclude {list(self.payload_log_exclude)}: expected "
                "column names, without commas"
            )
        if self.model_sha256 and not is_sha256(self.model_sha256):
            raise ConveyorError(
                f"ServingSpec.model_sha256 {self.model_sha256!r}: expected 64 lower-case hex "
                "digits (the registry's sha256 of model.joblib)"
            )

    def payload_log(self) -> str:
        """Where this service's predictor writes its payload log; empty for none."""
        return model_log_uri(self.payload_log_uri, self.model_name)


def model_log_uri(payload_log_uri: str, model_name: str) -> str:
    """Where the predictor of ``model_name``'s InferenceService writes its payload log under
    a pipeline's ``payload_log_uri`` (a folder per service); empty for none."""
    if not payload_log_uri:
        return ""
    return f"{payload_log_uri.rstrip('/')}/{inference_service_name(model_name)}"


def deploy_manifest(spec: ServingSpec, manifest_path: Path) -> dict[str, Any]:
    """Renders the InferenceService, validates it against KServe's CRD, and writes it as YAML."""
    manifest = render_inference_service(spec)
    validate_inference_service(manifest)
    write_text_atomically(manifest_path, yaml.safe_dump(manifest, sort_keys=False))
    return manifest


def inference_service_name(model_name: str) -> str:
    """A DNS-1035 name (lower-case letters, digits, hyphens; a letter first) for a model name."""
    name = re.sub(r"[^a-z0-9]+", "-", model_name.lower()).strip("-")
    if not name[:1].isalpha():
        name = f"model-{name}".rstrip("-")
    return name[:MAX_NAME_LENGTH].rstrip("-")


def render_inference_service(spec: ServingSpec) -> dict[str, Any]:
    """The InferenceService manifest for ``spec`` (validate it before use)."""
    quantities = {"cpu": spec.cpu, "memory": spec.memory}
    model: dict[str, Any] = {
        "modelFormat": {"name": "sklearn"},
        "storageUri": spec.storage_uri,
        "resources": {"requests": dict(quantities), "limits": dict(quantities)},
    }
    if spec.runtime:
        model["runtime"] = spec.runtime
    env = _predictor_env(spec)
    if env:
        model["env"] = env
    predictor: dict[str, Any] = {
        "canaryTrafficPercent": spec.canary_traffic_percent,
        # On the predictor, not the service: they change with the model's spec, in the same
        # revision (Knative) or canary Deployment (Standard), and restart nothing else.
        "annotations": dict(
            zip(RENDERED_ANNOTATIONS, (spec.model_name, str(spec.model_version)), strict=True)
        ),
        "model": model,
    }
    if spec.service_account:
        predictor["serviceAccountName"] = spec.service_account
    name = inference_service_name(spec.model_name)
    return {
        "apiVersion": API_VERSION,
        "kind": "InferenceService",
        "metadata": {
            "name": name,
            "namespace": spec.namespace,
            "labels": {"app.kubernetes.io/name": name, "app.kubernetes.io/managed-by": "conveyor"},
        },
        "spec": {"predictor": predictor},
    }


def _predictor_env(spec: ServingSpec) -> list[dict[str, str]]:
    env = []
    if spec.payload_log_uri:
        env.append({"name": PAYLOAD_LOG_ENV, "value": spec.payload_log()})
        if spec.payload_log_exclude:
            exclude = ",".join(spec.payload_log_exclude)
            env.append({"name": PAYLOAD_LOG_EXCLUDE_ENV, "value": exclude})
    if spec.model_sha256:
        env.append({"name": MODEL_SHA256_ENV, "value": spec.model_sha256})
    return env


def validate_inference_service(manifest: dict[str, Any]) -> None:
    """Raises ConveyorError naming the first problems the API server would reject."""
    problems = inference_service_problems(manifest)
    if problems:
        raise ConveyorError(problems[0] + _more(problems))


def inference_service_problems(manifest: dict[str, Any]) -> list[str]:
    """Every problem the API server would reject ``manifest`` for, a line each naming the
    field (``InferenceService spec.predictor...: ...``); empty when it would accept it."""
    from jsonschema import Draft7Validator

    problems = _metadata_problems(manifest.get("metadata", {}))
    percent = manifest.get("spec", {}).get("predictor", {}).get("canaryTrafficPercent")
    if isinstance(percent, int) and not 0 <= percent <= 100:
        problems.append(f"spec.predictor.canaryTrafficPercent: {percent} is not within 0-100")
    validator = Draft7Validator(inference_service_schema())
    for error in sorted(validator.iter_errors(manifest), key=lambda e: list(e.absolute_path)):
        problems.append(f"{_field_path(error.absolute_path)}: {_describe(error)}")
    return [f"InferenceService {problem}" for problem in problems]


def packaged_crd() -> resources.abc.Traversable:
    """KServe's InferenceService CRD, as packaged beside this module (``crds/``)."""
    return resources.files(__package__) / "crds" / CRD_FILE


@functools.cache
def inference_service_schema() -> dict[str, Any]:
    """The CRD's openAPIV3Schema, made strict: unknown fields are errors, not silently pruned."""
    crd = yaml.load(
        packaged_crd().read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    )
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    _forbid_unknown_fields(schema)
    return schema


def _forbid_unknown_fields(schema: dict[str, Any]) -> None:
    if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        schema.setdefault("additionalProperties", False)
    for child in schema.get("properties", {}).values():
        _forbid_unknown_fields(child)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            _forbid_unknown_fields(schema[key])
    for key in ("anyOf", "allOf", "oneOf"):
        for child in schema.get(key, []):
            _forbid_unknown_fields(child)


def _metadata_problems(metadata: dict[str, Any]) -> list[str]:
    name, namespace = metadata.get("name", ""), metadata.get("namespace", "")
    problems = []
    if not _DNS_1035.match(name) or len(name) > MAX_NAME_LENGTH:
        problems.append(
            f"metadata.name: {name!r} must be lower-case letters, digits and '-', start with a "
            f"letter, and be at most {MAX_NAME_LENGTH} characters"
        )
    if not _DNS_1123_LABEL.match(namespace) or len(namespace) > 63:
        problems.append(f"metadata.namespace: {namespace!r} is not a valid namespace name")
    return problems


def _field_path(path: Any) -> str:
    parts = [f"[{p}]" if isinstance(p, int) else f".{p}" for p in path]
    return "".join(parts).lstrip(".") or "(root)"


def _describe(error: Any) -> str:
    if error.validator != "pattern":
        return error.message
    if error.schema.get("x-kubernetes-int-or-string"):
        return f"{error.instance!r} is not a Kubernetes quantity (such as 500m, 1, 2Gi, 512Mi)"
    return f"{error.instance!r} is not in the expected format (pattern {error.validator_value})"


def _more(problems: list[str]) -> str:
    return f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
