"""The manifests in kserve/: valid against KServe's CRDs, consistent with the code, and the
alert rules checked and unit-tested by the real promtool."""

from __future__ import annotations

import copy
import fnmatch
import functools
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from jsonschema import Draft7Validator

from conveyor.components.core.errors import ConveyorError
from conveyor.components.core.rollout.manifests import (
    ServingSpec,
    _forbid_unknown_fields,
    render_inference_service,
    validate_inference_service,
)
from conveyor.components.core.serving.server import APP_LABEL_FILE_ENV, _arguments, _check_options
from conveyor.components.core.training.trainer import MODEL_SHA256_ENV
from conveyor.components.images import VERSION, image
from tests.conftest import ROOT, free_port, require_binary, save_species_model, wait_for_http

KSERVE = ROOT / "kserve"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
RUNTIME_CRD = FIXTURES / "kserve-crds" / "serving.kserve.io_servingruntimes.yaml"
RULE_TEST = FIXTURES / "prometheus-rule-test.yaml"
RULES_FILE = "conveyor-serving.rules.yaml"  # the name RULE_TEST's rule_files expects


def documents(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((KSERVE / name).read_text()) if doc is not None]


def document(name: str, kind: str) -> dict[str, Any]:
    (found,) = [doc for doc in documents(name) if doc["kind"] == kind]
    return found


@functools.cache
def serving_runtime_schema() -> dict[str, Any]:
    crd = yaml.safe_load(RUNTIME_CRD.read_text())
    (version,) = crd["spec"]["versions"]
    schema = version["schema"]["openAPIV3Schema"]
    _forbid_unknown_fields(schema)
    return schema


def schema_errors(manifest: dict[str, Any]) -> list[str]:
    validator = Draft7Validator(serving_runtime_schema())
    return [
        f"{'.'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(manifest)
    ]


def test_kserve_holds_only_yaml_manifests() -> None:
    assert not (KSERVE / "__init__.py").exists(), "kserve/ must never shadow the KServe SDK"
    names = sorted(path.name for path in KSERVE.iterdir())
    assert names == [
        "inference-service.yaml",
        "prometheus-rule.yaml",
        "rbac-crd-reader.yaml",
        "rbac.yaml",
        "serving-runtime.yaml",
    ]


@pytest.mark.parametrize("path", sorted(KSERVE.glob("*.yaml")), ids=lambda path: path.name)
def test_every_document_parses_and_starts_with_a_header(path: Path) -> None:
    text = path.read_text()
    assert text.startswith("# "), f"{path.name} needs a header comment"
    assert "kubectl apply" in text
    docs = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    assert docs
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= doc.keys()
        assert doc["metadata"]["name"]


def test_serving_runtime_is_valid_against_the_crd() -> None:
    runtime = document("serving-runtime.yaml", "ServingRuntime")
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert schema_errors(runtime) == []


def test_serving_runtime_schema_is_strict() -> None:
    runtime = copy.deepcopy(document("serving-runtime.yaml", "ServingRuntime"))
    runtime["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    runtime["spec"]["supportedModelFormats"][0]["priority"] = 0
    errors = schema_errors(runtime)
    assert any("imagePullPolicyy" in error for error in errors), errors
    assert any(error.startswith("spec.supportedModelFormats.0.priority") for error in errors)


def test_serving_runtime_runs_the_conveyor_predictor() -> None:
    runtime = document("serving-runtime.yaml", "ServingRuntime")
    spec = runtime["spec"]
    assert runtime["metadata"]["name"] == "conveyor-sklearn"
    assert spec["supportedModelFormats"] == [
        {"name": "sklearn", "version": "1", "autoSelect": True, "priority": 2}
    ]
    assert spec["protocolVersions"] == ["v1", "v2"]
    (container,) = spec["containers"]
    assert container["name"] == "kserve-container"
    assert container["args"] == [
        "--model_name={{.Name}}",
        "--model_dir=/mnt/models",
        "--http_port=8080",
        "--enable_grpc=false",  # REST only: the predictor refuses gRPC
    ]
    assert [port["containerPort"] for port in container["ports"]] == [8080]  # no gRPC port
    # The predictor accepts these arguments as they are: REST only, one worker.
    arguments = _arguments([arg.replace("{{.Name}}", "my-model") for arg in container["args"]])
    _check_options(arguments)
    assert (arguments.enable_grpc, arguments.workers, arguments.http_port) == (False, 1, 8080)
    assert container["resources"]["requests"] and container["resources"]["limits"]
    # Standard mode's revision label (the Deployment) comes from the pod's app label, which
    # KServe sets to isvc.<deployment>; the rest points writes at the scratch emptyDir.
    assert container["env"] == [
        {"name": APP_LABEL_FILE_ENV, "value": "/etc/podinfo/app"},
        {"name": "TMPDIR", "value": "/tmp"},
        {"name": "HOME", "value": "/tmp"},
        {"name": "MLFLOW_DISABLE_TELEMETRY", "value": "true"},
    ]
    # That file is the pod's app label, from the downward API.
    assert downward_api_files(spec) == {"/etc/podinfo/app": "metadata.labels['app']"}
    # Prometheus scrapes the port the predictor serves /metrics on.
    assert spec["annotations"] == {
        "prometheus.kserve.io/port": "8080",
        "prometheus.kserve.io/path": "/metrics",
    }
    assert importlib.util.find_spec("conveyor.components.core.serving.server") is not None


def downward_api_files(spec: dict[str, Any]) -> dict[str, str]:
    """Path in the container -> the pod field the downward API writes there."""
    (container,) = spec["containers"]
    volumes = {volume["name"]: volume for volume in spec.get("volumes", [])}
    files = {}
    for mount in container.get("volumeMounts", []):
        for source in volumes[mount["name"]].get("projected", {}).get("sources", []):
            for item in source.get("downwardAPI", {}).get("items", []):
                files[f"{mount['mountPath']}/{item['path']}"] = item["fieldRef"]["fieldPath"]
    return files


def test_grpc_is_off_in_the_runtime_and_in_make_serve_alike() -> None:
    """KServe's model server starts gRPC on 8081 unless told not to: the runtime says so
    and declares no port for it; ``make serve`` runs ``conveyor serve``, which passes no
    gRPC flag, and the predictor's own default is off."""
    (container,) = document("serving-runtime.yaml", "ServingRuntime")["spec"]["containers"]
    assert "--enable_grpc=false" in container["args"]
    assert {port["name"] for port in container["ports"]} == {"http1"}
    (serve_line,) = re.findall(r"^serve:.*\n\t(.*)$", (ROOT / "Makefile").read_text(), re.M)
    assert "conveyor serve" in serve_line and "grpc" not in serve_line
    assert _arguments(["--model_name", "m", "--model_dir", "d"]).enable_grpc is False


def test_serving_runtime_image_is_the_serving_image_of_this_version() -> None:
    (container,) = document("serving-runtime.yaml", "ServingRuntime")["spec"]["containers"]
    reference = container["image"]
    repository, _, tag = reference.rpartition(":")
    assert tag == VERSION
    name_and_tag = image("serving", registry="REGISTRY").removeprefix("REGISTRY/")
    assert reference.endswith(f"/{name_and_tag}")
    assert repository.rpartition("/")[2] == "conveyor-serving"


def test_serving_image_matches_the_runtime() -> None:
    dockerfile = (ROOT / "images" / "serving" / "Dockerfile").read_text()
    assert re.search(r"^EXPOSE 8080$", dockerfile, re.MULTILINE)
    assert 'ENTRYPOINT ["python", "-m", "conveyor.components.core.serving.server"]' in dockerfile
    assert "-c constraints.txt" in dockerfile
    # A numeric non-root user and group, the ones the runtime's securityContext names.
    (user,) = re.findall(r"^USER (\S+)$", dockerfile, re.MULTILINE)
    (container,) = document("serving-runtime.yaml", "ServingRuntime")["spec"]["containers"]
    context = container["securityContext"]
    assert user == f"{context['runAsUser']}:{context['runAsGroup']}"
    assert context["runAsUser"] != 0 and context["runAsGroup"] != 0
    base = (ROOT / "images" / "base" / "Dockerfile").read_text()
    first_from = re.compile(r"^FROM (\S+)", re.MULTILINE)
    assert first_from.search(dockerfile)[1] == first_from.search(base)[1]  # the same Python


def test_inference_service_is_valid_and_what_the_renderer_writes() -> None:
    service = document("inference-service.yaml", "InferenceService")
    validate_inference_service(service)
    rendered = render_inference_service(
        ServingSpec(
            model_name="my-model",
            model_version="1",
            storage_uri="gs://my-bucket/models/my-model/0123456789abcdef",
            namespace="ml-serving",
            canary_traffic_percent=10,
            runtime="conveyor-sklearn",
        )
    )
    assert service == rendered


def test_inference_service_uses_the_runtime_in_its_namespace() -> None:
    service = document("inference-service.yaml", "InferenceService")
    runtime = document("serving-runtime.yaml", "ServingRuntime")
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    formats = {entry["name"] for entry in runtime["spec"]["supportedModelFormats"]}
    assert model["modelFormat"]["name"] in formats
    assert service["metadata"]["namespace"] == runtime["metadata"]["namespace"]


# -- Pod Security Standards, "restricted" -------------------------------------------------
#
# The controls of https://kubernetes.io/docs/concepts/security/pod-security-standards/
# (Kubernetes v1.34; "restricted" includes "baseline") whose fields a ServingRuntime can set,
# as data: each rule's path is the page's "Restricted Fields" entry read against the
# ServingRuntime's spec, whose containers, volumes and hostIPC KServe copies into the pod
# (MergePodSpec in KServe's pkg/controller/v1beta1/inferenceservice/utils/utils.go). A
# ServingRuntime has no pod-level securityContext, so where the page lets a pod-level
# field stand in for the containers' (runAsNonRoot, seccompProfile), the container must set
# it. Fields it cannot hold (hostNetwork, hostPID, sysctls...) are left out.

UNSET = object()  # the page's "Undefined/nil"


@dataclass(frozen=True)
class Rule:
    """One control's check of one field.

    Attributes:
        control: The control's name on the page.
        path: The field, from the ServingRuntime's spec: ``[*]`` is every item of a list,
            ``['a/*']`` the keys of an object that match a glob.
        values: The values the page allows (or, with ``check="not"``, forbids).
        check: ``one of`` (the value is one of ``values``), ``not`` (it is none of them),
            ``includes`` (a list holding every one of ``values``), ``sets one of`` (an
            object setting at least one of the keys ``values`` to something) or ``keys
            within`` (an object, if any, with no key outside ``values``).
    """

    control: str
    path: str
    values: tuple[Any, ...]
    check: str = "one of"


_CONTAINER = "containers[*]"
_CONTEXT = f"{_CONTAINER}.securityContext"
_PROBES = [
    f"{_CONTAINER}.{probe}.{action}.host"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe")
    for action in ("httpGet", "tcpSocket")
] + [
    f"{_CONTAINER}.lifecycle.{hook}.{action}.host"
    for hook in ("postStart", "preStop")
    for action in ("httpGet", "tcpSocket")
]
RESTRICTED: list[Rule] = [
    # Baseline
    Rule("HostProcess", f"{_CONTEXT}.windowsOptions.hostProcess", (UNSET, False)),
    Rule("Host Namespaces", "hostIPC", (UNSET, False)),
    Rule("Privileged Containers", f"{_CONTEXT}.privileged", (UNSET, False)),
    Rule("HostPath Volumes", "volumes[*].hostPath", (UNSET,)),
    Rule("Host Ports", f"{_CONTAINER}.ports[*].hostPort", (UNSET, 0)),
    *[Rule("Host Probes / Lifecycle Hooks", path, (UNSET, "")) for path in _PROBES],
    Rule(
        "AppArmor",
        f"{_CONTEXT}.appArmorProfile.type",
        (UNSET, "RuntimeDefault", "Localhost"),
    ),
    Rule(
        "AppArmor",
        "annotations['container.apparmor.security.beta.kubernetes.io/*']",
        ("runtime/default",),  # or localhost/*: none here
    ),
    Rule(
        "SELinux",
        f"{_CONTEXT}.seLinuxOptions.type",
        (UNSET, "", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"),
    ),
    Rule("SELinux", f"{_CONTEXT}.seLinuxOptions.user", (UNSET, "")),
    Rule("SELinux", f"{_CONTEXT}.seLinuxOptions.role", (UNSET, "")),
    Rule("/proc Mount Type", f"{_CONTEXT}.procMount", (UNSET, "Default")),
    # Restricted
    Rule(
        "Volume Types",
        "volumes[*]",
        (
            "configMap",
            "csi",
            "downwardAPI",
            "emptyDir",
            "ephemeral",
            "persistentVolumeClaim",
            "projected",
            "secret",
        ),
        "sets one of",
    ),  # fmt: skip
    Rule("Privilege Escalation", f"{_CONTEXT}.allowPrivilegeEscalation", (False,)),
    Rule("Running as Non-root", f"{_CONTEXT}.runAsNonRoot", (True,)),
    Rule("Running as Non-root user", f"{_CONTEXT}.runAsUser", (0,), "not"),
    Rule("Non-root groups", f"{_CONTEXT}.runAsGroup", (UNSET, 0), "not"),  # optional control
    Rule("Seccomp", f"{_CONTEXT}.seccompProfile.type", ("RuntimeDefault", "Localhost")),
    Rule("Capabilities", f"{_CONTEXT}.capabilities.drop", ("ALL",), "includes"),
    Rule("Capabilities", f"{_CONTEXT}.capabilities.add[*]", ("NET_BIND_SERVICE",)),
]


def field_values(node: Any, path: str, at: str = "spec") -> Iterator[tuple[str, Any]]:
    """(concrete path, value) for each field ``path`` names under ``node``; UNSET where a
    field is absent, and nothing for the items of an absent list."""
    step, rest = re.fullmatch(r"(\[\*\]|\['[^']*'\]|[^.\[]+)\.?(.*)", path).groups()
    if step == "[*]":
        items = [] if node is UNSET else list(enumerate(node))
        found = [(f"{at}[{index}]", item) for index, item in items]
    elif step.startswith("['"):
        pattern = step[2:-2]
        keys = [] if node is UNSET else [k for k in node if fnmatch.fnmatch(k, pattern)]
        found = [(f"{at}[{key!r}]", node[key]) for key in keys]
    else:
        value = UNSET if node is UNSET or not isinstance(node, dict) else node.get(step, UNSET)
        found = [(f"{at}.{step}", value)]
    for where, value in found:
        if rest:
            yield from field_values(value, rest, where)
        else:
            yield where, value


def violations(spec: dict[str, Any], rules: list[Rule] | None = None) -> list[str]:
    """What in a ServingRuntime's spec breaks ``rules`` (the restricted profile's by
    default), one line each."""
    broken = []
    for rule in RESTRICTED if rules is None else rules:
        for where, value in field_values(spec, rule.path):
            if not _allowed(rule, value):
                shown = "unset" if value is UNSET else repr(value)
                broken.append(f"{rule.control}: {where} is {shown}")
    return broken


def _allowed(rule: Rule, value: Any) -> bool:
    # Compared by identity and type too: False must not pass for 0, nor True for 1.
    def same(a: Any, b: Any) -> bool:
        return a is b or (a is not UNSET and b is not UNSET and type(a) is type(b) and a == b)

    if rule.check == "one of":
        return any(same(value, allowed) for allowed in rule.values)
    if rule.check == "not":
        return not any(same(value, forbidden) for forbidden in rule.values)
    if rule.check == "includes":
        return isinstance(value, list) and all(item in value for item in rule.values)
    if rule.check == "keys within":
        return value is UNSET or (isinstance(value, dict) and set(value) <= set(rule.values))
    assert rule.check == "sets one of", rule.check
    return isinstance(value, dict) and any(value.get(key) is not None for key in rule.values)


def runtime_spec() -> dict[str, Any]:
    return copy.deepcopy(document("serving-runtime.yaml", "ServingRuntime")["spec"])


def test_serving_runtime_meets_the_restricted_pod_security_standard() -> None:
    assert violations(runtime_spec()) == []


DELETE = object()


@pytest.mark.parametrize(
    ("field", "value", "control"),
    [
        ("containers.0.securityContext.seccompProfile", DELETE, "Seccomp"),
        ("containers.0.securityContext.seccompProfile.type", "Unconfined", "Seccomp"),
        ("containers.0.securityContext.runAsNonRoot", DELETE, "Running as Non-root"),
        ("containers.0.securityContext.runAsUser", 0, "Running as Non-root user"),
        ("containers.0.securityContext.runAsGroup", 0, "Non-root groups"),
        ("containers.0.securityContext.allowPrivilegeEscalation", DELETE, "Privilege Escalation"),
        ("containers.0.securityContext.capabilities.drop", ["NET_RAW"], "Capabilities"),
        ("containers.0.securityContext.capabilities.add", ["SYS_ADMIN"], "Capabilities"),
        ("containers.0.securityContext.privileged", True, "Privileged Containers"),
        ("containers.0.securityContext.procMount", "Unmasked", "/proc Mount Type"),
        ("containers.0.securityContext.seLinuxOptions", {"user": "system_u"}, "SELinux"),
        ("containers.0.securityContext.windowsOptions", {"hostProcess": True}, "HostProcess"),
        ("containers.0.ports.0.hostPort", 8080, "Host Ports"),
        ("containers.0.readinessProbe", {"httpGet": {"host": "10.0.0.1", "port": 8080}},
         "Host Probes / Lifecycle Hooks"),
        ("volumes.0", {"name": "scratch", "hostPath": {"path": "/tmp"}}, "Volume Types"),
        ("hostIPC", True, "Host Namespaces"),
        ("annotations.container.apparmor.security.beta.kubernetes.io/kserve-container",
         "unconfined", "AppArmor"),
    ],
)  # fmt: skip
def test_the_restricted_check_catches_each_broken_control(
    field: str, value: Any, control: str
) -> None:
    spec = runtime_spec()
    set_field(spec, field, value)
    assert [line for line in violations(spec) if line.startswith(f"{control}: ")], violations(spec)


def set_field(spec: dict[str, Any], field: str, value: Any) -> None:
    """Sets (or with DELETE removes) a field; digits index lists, and the annotation
    key, which holds dots, is the rest of the path after ``annotations.``."""
    if field.startswith("annotations."):
        spec.setdefault("annotations", {})[field.removeprefix("annotations.")] = value
        return
    *parents, last = field.split(".")
    node: Any = spec
    for part in parents:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    if value is DELETE:
        del node[last]
    elif last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value


# -- Knative's admission, with its default features ----------------------------------------
#
# In Knative (Serverless) mode KServe puts the runtime's container and volumes into a Knative
# Service, whose webhook refuses fields outside its masks unless a feature flag allows them
# (knative/serving: pkg/apis/serving/fieldmask.go, SecurityContextMask, CapabilitiesMask,
# VolumeSourceMask, VolumeProjectionMask and EnvVarSourceMask; pkg/apis/serving/
# k8s_validation.go, its reserved env vars, ports and port names; the flags' defaults in
# pkg/apis/config/features.go: emptyDir on; env fieldRef, hostIPC, added capabilities off).
# The same runtime serves both modes, so it keeps within them.

KNATIVE_DEFAULTS: list[Rule] = [
    Rule("env fieldRef (kubernetes.podspec-fieldref)", f"{_CONTAINER}.env[*].valueFrom.fieldRef",
         (UNSET,)),
    Rule("env resourceFieldRef", f"{_CONTAINER}.env[*].valueFrom.resourceFieldRef", (UNSET,)),
    Rule("reserved env vars", f"{_CONTAINER}.env[*].name",
         ("PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"), "not"),
    Rule("volume types", "volumes[*]", ("name", "secret", "configMap", "projected", "emptyDir"),
         "keys within"),
    Rule("projected sources", "volumes[*].projected.sources[*]",
         ("secret", "configMap", "serviceAccountToken", "downwardAPI"), "keys within"),
    Rule("reserved mount paths", f"{_CONTAINER}.volumeMounts[*].mountPath",
         ("/", "/dev", "/dev/log"), "not"),
    Rule("securityContext fields", _CONTEXT,
         ("capabilities", "readOnlyRootFilesystem", "runAsUser", "runAsGroup", "runAsNonRoot",
          "allowPrivilegeEscalation", "seccompProfile", "privileged"), "keys within"),
    Rule("privileged (only false)", f"{_CONTEXT}.privileged", (UNSET, False)),
    Rule("added capabilities", f"{_CONTEXT}.capabilities.add", (UNSET,)),
    Rule("hostIPC (kubernetes.podspec-hostipc)", "hostIPC", (UNSET, False)),
    Rule("reserved ports", f"{_CONTAINER}.ports[*].containerPort",
         (8012, 8013, 8022, 9090, 9091, 8008), "not"),
    Rule("port names", f"{_CONTAINER}.ports[*].name", (UNSET, "http1", "h2c")),
]  # fmt: skip


def test_serving_runtime_is_admitted_by_knative_with_its_default_features() -> None:
    spec = runtime_spec()
    assert violations(spec, KNATIVE_DEFAULTS) == []
    (container,) = spec["containers"]
    assert len(container["ports"]) == 1  # Knative serves one port
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    for mount in container["volumeMounts"]:  # only an emptyDir may be mounted writable
        assert mount.get("readOnly") or "emptyDir" in volumes[mount["name"]], mount


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("containers.0.env.0",
         {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}}),
        ("containers.0.securityContext.procMount", "Default"),
        ("volumes.0", {"name": "scratch", "hostPath": {"path": "/tmp"}}),
        ("containers.0.ports.0.name", "grpc"),
    ],
)  # fmt: skip
def test_the_knative_check_catches_what_its_webhook_refuses(field: str, value: Any) -> None:
    spec = runtime_spec()
    set_field(spec, field, value)
    assert violations(spec, KNATIVE_DEFAULTS)


def test_the_predictor_writes_only_where_the_runtime_mounts_scratch() -> None:
    """Not in the profile, but asked of the runtime: a read-only root filesystem, with the
    emptyDir mounted where TMPDIR and HOME point."""
    spec = runtime_spec()
    (container,) = spec["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    env = {item["name"]: item.get("value") for item in container["env"]}
    for variable in ("TMPDIR", "HOME"):
        assert "emptyDir" in volumes[mounts[env[variable]]], variable
    assert set(mounts.values()) == set(volumes)


def test_the_predictor_serves_with_the_runtimes_read_only_root(tmp_path: Path) -> None:
    """The real predictor started as the ServingRuntime starts it (its arguments, its
    environment and volumes, the image's environment), with every file system read-only but
    the emptyDir and a folder standing in for the payload log's bucket: it serves V1 and V2,
    labels its metrics with the Deployment from the pod's app label, opens no gRPC port,
    and writes its payload log when stopped."""
    model_dir = save_species_model(tmp_path / "model")  # stands in for /mnt/models
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    spec = runtime_spec()
    (container,) = spec["containers"]
    # A Standard-mode pod of the Deployment species-predictor, as KServe labels it.
    pod_fields = {"metadata.labels['app']": "isvc.species-predictor"}
    volumes = pod_volumes(spec, tmp_path / "volumes", pod_fields)
    port, grpc_port = free_port(), free_port()
    arguments = {
        "--model_name={{.Name}}": "--model_name=species",
        "--model_dir=/mnt/models": f"--model_dir={model_dir}",
        "--http_port=8080": f"--http_port={port}",
    }
    command = [
        sys.executable, "-m", "conveyor.components.core.serving.server",
        *[arguments.get(arg, arg) for arg in container["args"]],
        "--http_host=127.0.0.1", f"--grpc_port={grpc_port}", f"--payload_log={bucket}",
    ]  # fmt: skip
    environment = {
        **{k: v for k, v in os.environ.items() if k not in ("K_REVISION", "HOME", "TMPDIR")},
        **{e["name"]: in_volumes(e["value"], volumes) for e in container["env"]},
        "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1",  # the image's ENV
        "PYTHONPATH": str(ROOT),
    }  # fmt: skip
    writable = [volumes[m["mountPath"]] for m in container["volumeMounts"] if not m.get("readOnly")]
    log = tmp_path / "predictor.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            read_only_root([*writable, bucket], [tmp_path, ROOT, Path(sys.prefix)], command),
            stdout=output, stderr=subprocess.STDOUT, env=environment, cwd=ROOT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/v2/models/species/ready", process, timeout=90, log=log)
        row = {"size": 12.0, "weight": 50.0, "color": "red"}
        assert httpx.post(f"{url}/v1/models/species:predict", json={"instances": [row]}).is_success
        inputs = [
            {"name": "size", "shape": [1], "datatype": "FP64", "data": [12.0]},
            {"name": "weight", "shape": [1], "datatype": "FP64", "data": [50.0]},
            {"name": "color", "shape": [1], "datatype": "BYTES", "data": ["red"]},
        ]
        assert httpx.post(f"{url}/v2/models/species/infer", json={"inputs": inputs}).is_success
        metrics = httpx.get(f"{url}/metrics").text
        assert 'revision="species-predictor"' in metrics
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", grpc_port), timeout=5).close()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    assert process.returncode == 0, log.read_text()[-3000:]
    written = sorted(bucket.glob("*/*.parquet"))
    assert [path.name.startswith("species-predictor-") for path in written] == [True]


def pod_volumes(spec: dict[str, Any], root: Path, pod_fields: dict[str, str]) -> dict[str, Path]:
    """A local folder for each of the container's mounts, as the kubelet would fill it: an
    emptyDir empty, a downward API volume with the files of ``pod_fields``."""
    (container,) = spec["containers"]
    files = downward_api_files(spec)
    folders = {}
    for mount in container["volumeMounts"]:
        folder = root / mount["name"]
        folder.mkdir(parents=True)
        folders[mount["mountPath"]] = folder
        for path, field in files.items():
            if path.startswith(f"{mount['mountPath']}/"):
                (folder / path.rpartition("/")[2]).write_text(pod_fields[field])
    return folders


def in_volumes(value: str, folders: dict[str, Path]) -> str:
    """``value`` with a mount path it starts with replaced by that mount's local folder."""
    for mount_path, folder in folders.items():
        if value == mount_path or value.startswith(f"{mount_path}/"):
            return str(folder) + value.removeprefix(mount_path)
    return value


def read_only_root(writable: list[Path], read_only: list[Path], command: list[str]) -> list[str]:
    """``command`` in a mount namespace where the file systems holding ``read_only`` (and
    the root) are read-only and only the ``writable`` folders can be written, as a container
    with readOnlyRootFilesystem and emptyDir volumes; skips where namespaces cannot be made."""
    require_binary("unshare")
    mounts = sorted({_mount_point(path) for path in [Path("/"), *read_only]})
    script = (
        'for dir in $WRITABLE; do mount --bind "$dir" "$dir" || exit 97; done; '
        'for point in $READ_ONLY; do mount -o remount,bind,ro "$point" || exit 97; done; '
        'exec "$@"'
    )
    sandbox = [
        "env", f"WRITABLE={' '.join(map(str, writable))}", f"READ_ONLY={' '.join(mounts)}",
        "unshare", "--user", "--map-root-user", "--mount", "--", "sh", "-c", script, "sh",
    ]  # fmt: skip
    probe = subprocess.run(
        [*sandbox, "sh", "-c", f'touch "{writable[0]}/probe" && ! touch "{read_only[0]}/probe"'],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    if probe.returncode != 0:
        reason = f"cannot make a read-only root here: {probe.stderr.strip() or probe.returncode}"
        if os.environ.get("CONVEYOR_REQUIRE_SYSTEM_DEPS") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    assert not (read_only[0] / "probe").exists()
    return [*sandbox, *command]


def _mount_point(path: Path) -> str:
    """The mount point of the file system ``path`` is on."""
    path = path.resolve()
    while not os.path.ismount(path):
        path = path.parent
    return str(path)


def test_the_rendered_predictor_carries_the_registry_sha256() -> None:
    sha256 = "0123456789abcdef" * 4
    spec = ServingSpec("fraud", "3", "gs://models/fraud/0123", model_sha256=sha256,
                       payload_log_uri="gs://logs")  # fmt: skip
    manifest = render_inference_service(spec)
    validate_inference_service(manifest)  # against KServe's CRD
    assert manifest["spec"]["predictor"]["model"]["env"] == [
        {"name": "CONVEYOR_PAYLOAD_LOG", "value": "gs://logs/fraud"},
        {"name": MODEL_SHA256_ENV, "value": sha256},
    ]
    unpinned = render_inference_service(ServingSpec("fraud", "3", "gs://models/fraud/0123"))
    assert "env" not in unpinned["spec"]["predictor"]["model"]


@pytest.mark.parametrize("sha256", ["0123", "0123456789ABCDEF" * 4, "g" * 64, " " + "0" * 64])
def test_a_malformed_model_sha256_is_refused_in_one_line(sha256: str) -> None:
    with pytest.raises(ConveyorError) as raised:
        ServingSpec("fraud", "3", "gs://models/fraud/0123", model_sha256=sha256)
    assert str(raised.value) == (
        f"ServingSpec.model_sha256 {sha256!r}: expected 64 lower-case hex digits (the "
        "registry's sha256 of model.joblib)"
    )


# What the rollout does in the serving namespace, and so all kserve/rbac.yaml may grant:
# (API group, resource) -> verbs.
ROLLOUT_NEEDS = {
    ("serving.kserve.io", "inferenceservices"): {"get", "create", "patch"},
    # delete: only so an object created with an ownerReference passes the
    # OwnerReferencesPermissionEnforcement admission plugin (OpenShift's default).
    ("coordination.k8s.io", "leases"): {"get", "create", "update", "delete"},
    ("", "configmaps"): {"get", "create", "update", "delete"},
    ("", "events"): {"create"},
}


def granted(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    """(API group, resource) -> verbs, as a Role's rules grant them."""
    grants: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        assert set(rule) <= {"apiGroups", "resources", "verbs", "resourceNames"}, rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                grants.setdefault((group, resource), set()).update(rule["verbs"])
    return grants


def test_role_grants_exactly_what_the_rollout_uses() -> None:
    rbac = documents("rbac.yaml")
    assert [doc["kind"] for doc in rbac] == ["Role", "RoleBinding"]  # nothing cluster-wide
    (role,) = [doc for doc in rbac if doc["kind"] == "Role"]
    assert role["apiVersion"] == "rbac.authorization.k8s.io/v1"
    assert role["metadata"]["name"] == "conveyor-deployer"
    assert granted(role["rules"]) == ROLLOUT_NEEDS
    assert all("resourceNames" not in rule for rule in role["rules"])  # names vary by model


def test_role_check_catches_an_extra_verb() -> None:
    (role,) = [doc for doc in documents("rbac.yaml") if doc["kind"] == "Role"]
    role["rules"][0]["verbs"].append("delete")
    assert granted(role["rules"]) != ROLLOUT_NEEDS


def test_role_binding_binds_the_role_to_the_pipeline_account_where_it_lives() -> None:
    rbac = documents("rbac.yaml")
    (role,) = [doc for doc in rbac if doc["kind"] == "Role"]
    (binding,) = [doc for doc in rbac if doc["kind"] == "RoleBinding"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["metadata"]["namespace"] == role["metadata"]["namespace"]
    # Standalone Kubeflow Pipelines runs pipeline-runner in kubeflow, not in the serving
    # namespace; the header says how to bind multi-user Kubeflow's default-editor instead.
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "pipeline-runner", "namespace": "kubeflow"}
    ]
    header = (KSERVE / "rbac.yaml").read_text().split("---")[0]
    assert "default-editor in the profile's namespace" in header
    assert "kubectl -n ml-serving patch rolebinding conveyor-deployer" in header
    service = document("inference-service.yaml", "InferenceService")
    assert role["metadata"]["namespace"] == service["metadata"]["namespace"]


def test_reading_the_crd_is_a_separate_optional_grant_of_one_object() -> None:
    reader = documents("rbac-crd-reader.yaml")
    assert [doc["kind"] for doc in reader] == ["ClusterRole", "ClusterRoleBinding"]
    role, binding = reader
    assert role["rules"] == [
        {
            "apiGroups": ["apiextensions.k8s.io"],
            "resources": ["customresourcedefinitions"],
            "resourceNames": ["inferenceservices.serving.kserve.io"],
            "verbs": ["get"],
        }
    ]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == document("rbac.yaml", "RoleBinding")["subjects"]
    header = (KSERVE / "rbac-crd-reader.yaml").read_text()
    assert header.startswith("# Optional")
    assert "Without it the rollout assumes spec.canary exists" in header


def test_prometheus_rule_names_the_runtime_metrics() -> None:
    rule = document("prometheus-rule.yaml", "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert [group["name"] for group in rule["spec"]["groups"]] == [
        "conveyor-serving",
        "conveyor-monitoring",
    ]
    alerts = {entry["alert"]: entry for entry in rule["spec"]["groups"][0]["rules"]}
    assert set(alerts) == {"ConveyorHighErrorRate", "ConveyorHighLatencyP99"}
    assert "conveyor_inference_requests_total" in alerts["ConveyorHighErrorRate"]["expr"]
    assert (
        "conveyor_inference_request_duration_seconds_bucket"
        in alerts["ConveyorHighLatencyP99"]["expr"]
    )
    assert alerts["ConveyorHighErrorRate"]["for"] == "5m"
    assert alerts["ConveyorHighLatencyP99"]["for"] == "10m"
    for entry in alerts.values():
        assert entry["labels"]["severity"]
        for text in (entry["annotations"]["summary"], entry["annotations"]["description"]):
            assert "{{ $labels.model }}" in text and "{{ $labels.revision }}" in text


def test_monitoring_alerts_read_what_monitoring_pushes() -> None:
    """Per model, from the Pushgateway's job (the names the monitoring pipeline pushes)."""
    groups = document("prometheus-rule.yaml", "PrometheusRule")["spec"]["groups"]
    alerts = {entry["alert"]: entry for entry in groups[1]["rules"]}
    metrics = {
        "ConveyorFeatureDrift": "conveyor_drift_detected",
        "ConveyorPredictionDrift": "conveyor_prediction_drift_detected",
        "ConveyorQualityDegraded": "conveyor_quality_degraded",
        "ConveyorMonitoringNotRun": "push_time_seconds",
    }
    assert set(alerts) == set(metrics)
    for alert, metric in metrics.items():
        entry = alerts[alert]
        assert f'{metric}{{job="conveyor_monitoring"}}' in entry["expr"]
        assert "by (model)" in entry["expr"]
        assert "for" not in entry  # one run's verdict: no reason to wait for a second look
        assert entry["labels"]["severity"]
        for text in (entry["annotations"]["summary"], entry["annotations"]["description"]):
            assert "{{ $labels.model }}" in text


def promtool(
    tmp_path: Path, groups: list[dict[str, Any]], *args: str
) -> subprocess.CompletedProcess:
    (tmp_path / RULES_FILE).write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return subprocess.run(
        ["promtool", *args], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )


def rule_groups() -> list[dict[str, Any]]:
    return document("prometheus-rule.yaml", "PrometheusRule")["spec"]["groups"]


def test_prometheus_rule_groups_pass_promtool_check(tmp_path: Path) -> None:
    require_binary("promtool")
    checked = promtool(tmp_path, rule_groups(), "check", "rules", RULES_FILE)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 6 rules found" in checked.stdout


def test_alerts_fire_for_a_bad_revision_only(tmp_path: Path) -> None:
    """promtool's unit tests: each serving alert fires for its bad revision and for no
    other; each monitoring alert fires for its model while the last run found the problem, and
    clears once a run no longer does."""
    require_binary("promtool")
    shutil.copy(RULE_TEST, tmp_path / RULE_TEST.name)
    tested = promtool(tmp_path, rule_groups(), "test", "rules", RULE_TEST.name)
    assert tested.returncode == 0, tested.stdout + tested.stderr


@pytest.mark.parametrize(
    ("alert", "old", "new"),
    [
        ("ConveyorHighErrorRate", "> 0.05", "> 0.01"),  # the borderline revision would fire
        ("ConveyorHighLatencyP99", "> 0.5", "> 5"),  # the slow revision would stay silent
        ("ConveyorFeatureDrift", "> 0", "> 1"),  # drift would never alert
        ("ConveyorPredictionDrift", "> 0", ">= 0"),  # every model would alert
        ("ConveyorQualityDegraded", "conveyor_monitoring", "other"),  # would read no pushed series
        ("ConveyorMonitoringNotRun", "> 26 * 3600", "> 25 * 3600"),  # 26h would already fire
    ],
)
def test_rule_unit_tests_catch_a_wrong_threshold(
    tmp_path: Path, alert: str, old: str, new: str
) -> None:
    require_binary("promtool")
    groups = copy.deepcopy(rule_groups())
    (entry,) = [entry for group in groups for entry in group["rules"] if entry["alert"] == alert]
    assert old in entry["expr"]
    entry["expr"] = entry["expr"].replace(old, new)
    shutil.copy(RULE_TEST, tmp_path / RULE_TEST.name)
    tested = promtool(tmp_path, groups, "test", "rules", RULE_TEST.name)
    assert tested.returncode != 0
    assert alert in tested.stdout + tested.stderr
