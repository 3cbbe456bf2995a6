"""Deploy's core: the InferenceService, validated against KServe's real CRD schema."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from conveyor.components.core.errors import ConveyorError
from conveyor.components.core.rollout.manifests import (
    CRD_FILE,
    ServingSpec,
    deploy_manifest,
    inference_service_name,
    inference_service_problems,
    packaged_crd,
    render_inference_service,
    validate_inference_service,
)
from tests.conftest import SHARED

SPEC = ServingSpec("Fraud_Detector v2", "7", "gs://models/fraud/ab12", namespace="ml-prod")


def test_rendered_service_is_valid_and_carries_the_model() -> None:
    manifest = render_inference_service(SPEC)
    validate_inference_service(manifest)
    predictor = manifest["spec"]["predictor"]
    assert manifest["metadata"]["name"] == "fraud-detector-v2"
    assert predictor["annotations"]["conveyor/model-version"] == "7"
    assert "annotations" not in manifest["metadata"]  # an ISVC annotation makes revisions
    assert predictor["canaryTrafficPercent"] == 10
    assert predictor["model"]["storageUri"] == "gs://models/fraud/ab12"
    assert predictor["model"]["modelFormat"] == {"name": "sklearn"}
    assert predictor["model"]["resources"]["limits"] == {"cpu": "1", "memory": "2Gi"}
    assert "runtime" not in predictor["model"]


def test_deploy_manifest_writes_yaml(tmp_path: Path) -> None:
    written = deploy_manifest(
        ServingSpec("m", "1", "/models/m", runtime="custom"), tmp_path / "isvc"
    )
    assert yaml.safe_load((tmp_path / "isvc").read_text()) == written
    assert written["spec"]["predictor"]["model"]["runtime"] == "custom"


@pytest.mark.parametrize(
    ("model_name", "expected"),
    [("breast_cancer", "breast-cancer"), ("2026 Churn!", "model-2026-churn"), ("x" * 80, "x" * 45)],
)
def test_names_are_dns_1035(model_name: str, expected: str) -> None:
    assert inference_service_name(model_name) == expected


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda m: m["spec"]["predictor"]["model"]["resources"]["requests"].update(
                memory="2 GB"
            ),
            "InferenceService spec.predictor.model.resources.requests.memory: '2 GB' is not a Kubernetes quantity (such as 500m, 1, 2Gi, 512Mi)",
        ),
        (
            lambda m: m["spec"]["predictor"].update(canaryTrafficPercent=150),
            "InferenceService spec.predictor.canaryTrafficPercent: 150 is not within 0-100",
        ),
        (
            lambda m: m["spec"]["predictor"]["model"].update(storageURI="gs://x"),
            "InferenceService spec.predictor.model: Additional properties are not allowed ('storageURI'",
        ),
        (
            lambda m: m["spec"]["predictor"].update(minReplicas="two"),
            "InferenceService spec.predictor.minReplicas: 'two' is not of type 'integer'",
        ),
        (
            lambda m: m["metadata"].update(namespace="ML_Prod"),
            "InferenceService metadata.namespace: 'ML_Prod' is not a valid namespace name",
        ),
    ],
)
def test_invalid_services_are_refused_naming_the_field(change, message: str) -> None:
    manifest = copy.deepcopy(render_inference_service(SPEC))
    change(manifest)
    with pytest.raises(ConveyorError) as raised:
        validate_inference_service(manifest)
    assert str(raised.value).startswith(message)


def test_every_problem_of_a_service_is_listed_a_line_each() -> None:
    assert inference_service_problems(render_inference_service(SPEC)) == []
    bad = ServingSpec("m", "1", "/models/m", namespace="ML_Prod", cpu="one", memory="2 GB")
    quantity = "is not a Kubernetes quantity (such as 500m, 1, 2Gi, 512Mi)"
    assert inference_service_problems(render_inference_service(bad)) == [
        "InferenceService metadata.namespace: 'ML_Prod' is not a valid namespace name",
        f"InferenceService spec.predictor.model.resources.limits.cpu: 'one' {quantity}",
        f"InferenceService spec.predictor.model.resources.limits.memory: '2 GB' {quantity}",
        f"InferenceService spec.predictor.model.resources.requests.cpu: 'one' {quantity}",
        f"InferenceService spec.predictor.model.resources.requests.memory: '2 GB' {quantity}",
    ]
    # validate_inference_service still raises with the first, and how many more there are.
    with pytest.raises(ConveyorError, match=r"namespace name \(and 4 more problem\(s\)\)$"):
        validate_inference_service(render_inference_service(bad))


def test_invalid_quantity_from_the_spec_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(
        ConveyorError, match="resources.limits.cpu: 'one' is not a Kubernetes quantity"
    ):
        deploy_manifest(ServingSpec("m", "1", "/models/m", cpu="one"), tmp_path / "isvc")
    assert list(tmp_path.iterdir()) == []


def test_packaged_crd_is_the_reference_copy() -> None:
    reference = SHARED / "kserve-crds" / CRD_FILE
    if not reference.exists():
        pytest.skip(
            "the team's reference CRDs (../shared/kserve-crds) are not beside this checkout"
        )
    packaged = packaged_crd()
    assert packaged.read_bytes() == reference.read_bytes()
