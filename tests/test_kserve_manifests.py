"""The manifests in kserve/: valid against KServe's CRDs, consistent with the code, and the
alert rules checked and unit-tested by the real promtool."""

from __future__ import annotations

import copy
import functools
import importlib.util
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator

from components.core.manifests import (
    ServingSpec,
    _forbid_unknown_fields,
    render_inference_service,
    validate_inference_service,
)
from components.core.serving import _arguments, _check_options
from components.images import VERSION, image
from tests.conftest import ROOT, require_binary

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
    # Standard mode's revision label (the Deployment) comes from the pod's name.
    assert container["env"] == [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    ]
    # Prometheus scrapes the port the predictor serves /metrics on.
    assert spec["annotations"] == {
        "prometheus.kserve.io/port": "8080",
        "prometheus.kserve.io/path": "/metrics",
    }
    assert importlib.util.find_spec("components.core.serving") is not None


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
    assert 'ENTRYPOINT ["python", "-m", "components.core.serving"]' in dockerfile
    assert "-c constraints.txt" in dockerfile
    assert re.search(r"^USER (?!0\b|root\b)\S+$", dockerfile, re.MULTILINE)
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


def test_role_grants_exactly_deploying_inference_services() -> None:
    (role,) = [doc for doc in documents("rbac.yaml") if doc["kind"] == "Role"]
    assert role["apiVersion"] == "rbac.authorization.k8s.io/v1"
    assert role["metadata"]["name"] == "conveyor-deployer"
    (rule,) = role["rules"]
    assert rule["apiGroups"] == ["serving.kserve.io"]
    assert rule["resources"] == ["inferenceservices"]
    assert sorted(rule["verbs"]) == sorted(["get", "list", "watch", "create", "patch", "update"])
    assert set(rule) == {"apiGroups", "resources", "verbs"}
    granted = rule["apiGroups"] + rule["resources"] + rule["verbs"]
    assert "*" not in granted
    assert "delete" not in granted and "deletecollection" not in granted
    kinds = {doc["kind"] for doc in documents("rbac.yaml")}
    assert kinds == {"ServiceAccount", "Role", "RoleBinding"}  # no ClusterRole


def test_role_binding_binds_the_role_to_the_pipeline_account() -> None:
    rbac = documents("rbac.yaml")
    (role,) = [doc for doc in rbac if doc["kind"] == "Role"]
    (binding,) = [doc for doc in rbac if doc["kind"] == "RoleBinding"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["metadata"]["namespace"] == role["metadata"]["namespace"]
    accounts = {(s["kind"], s["name"]) for s in binding["subjects"]}
    assert ("ServiceAccount", "pipeline-runner") in accounts
    service = document("inference-service.yaml", "InferenceService")
    assert role["metadata"]["namespace"] == service["metadata"]["namespace"]


def test_prometheus_rule_names_the_runtime_metrics() -> None:
    rule = document("prometheus-rule.yaml", "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    (group,) = rule["spec"]["groups"]
    assert group["name"] == "conveyor-serving"
    alerts = {entry["alert"]: entry for entry in group["rules"]}
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
    assert "SUCCESS: 2 rules found" in checked.stdout


def test_alerts_fire_for_a_bad_revision_only(tmp_path: Path) -> None:
    """promtool's unit tests: each alert fires for its bad revision and for no other."""
    require_binary("promtool")
    shutil.copy(RULE_TEST, tmp_path / RULE_TEST.name)
    tested = promtool(tmp_path, rule_groups(), "test", "rules", RULE_TEST.name)
    assert tested.returncode == 0, tested.stdout + tested.stderr


@pytest.mark.parametrize(
    ("alert", "old", "new"),
    [
        ("ConveyorHighErrorRate", "> 0.05", "> 0.01"),  # the borderline revision would fire
        ("ConveyorHighLatencyP99", "> 0.5", "> 5"),  # the slow revision would stay silent
    ],
)
def test_rule_unit_tests_catch_a_wrong_threshold(
    tmp_path: Path, alert: str, old: str, new: str
) -> None:
    require_binary("promtool")
    groups = copy.deepcopy(rule_groups())
    (entry,) = [entry for entry in groups[0]["rules"] if entry["alert"] == alert]
    assert old in entry["expr"]
    entry["expr"] = entry["expr"].replace(old, new)
    shutil.copy(RULE_TEST, tmp_path / RULE_TEST.name)
    tested = promtool(tmp_path, groups, "test", "rules", RULE_TEST.name)
    assert tested.returncode != 0
    assert alert in tested.stdout + tested.stderr
