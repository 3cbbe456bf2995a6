"""Compiled YAML, parsed back into KFP's PipelineSpec and PlatformSpec protos."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import json_format
from kfp.components import load_component_from_file
from kfp.kubernetes import kubernetes_executor_config_pb2 as k8s_pb2
from kfp.pipeline_spec import pipeline_spec_pb2

from conveyor.components.core.training.devices import GPUS_ENV
from conveyor.components.images import VERSION
from conveyor.pipelines.cli import main
from conveyor.pipelines.definitions.compile import COMPONENTS
from conveyor.pipelines.definitions.targets import STEP_RESOURCES

STEPS = (
    "ingest", "validate", "plan-trials", "tune-trial", "select-trial", "train", "evaluate",
    "shadow", "register", "deploy",
)  # fmt: skip
TRAINING_STEPS = ("tune-trial", "train")  # the GPU steps


def compile_to(tmp_path: Path, *options: str) -> Path:
    assert main(["compile", "--output-dir", str(tmp_path), *options]) == 0
    return tmp_path


def documents(path: Path) -> list[dict[str, Any]]:
    return list(yaml.safe_load_all(path.read_text()))


def pipeline_spec(path: Path) -> pipeline_spec_pb2.PipelineSpec:
    return json_format.ParseDict(documents(path)[0], pipeline_spec_pb2.PipelineSpec())


def executors(path: Path) -> dict[str, Any]:
    deployment = json_format.ParseDict(
        documents(path)[0]["deploymentSpec"], pipeline_spec_pb2.PipelineDeploymentConfig()
    )
    return {
        name.removeprefix("exec-"): spec.container for name, spec in deployment.executors.items()
    }


def kubernetes_settings(path: Path) -> dict[str, k8s_pb2.KubernetesExecutorConfig]:
    platform = json_format.ParseDict(documents(path)[1], pipeline_spec_pb2.PlatformSpec())
    configs = json_format.MessageToDict(platform.platforms["kubernetes"].deployment_spec)[
        "executors"
    ]
    return {
        name.removeprefix("exec-"): json_format.ParseDict(
            config, k8s_pb2.KubernetesExecutorConfig()
        )
        for name, config in configs.items()
    }


@pytest.fixture(scope="module")
def cpu_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_to(tmp_path_factory.mktemp("cpu"))


@pytest.fixture(scope="module")
def gpu_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_to(tmp_path_factory.mktemp("gpu"), "--gpus", "1")


def test_compile_writes_both_targets_and_every_component(cpu_build: Path) -> None:
    written = sorted(str(p.relative_to(cpu_build)) for p in cpu_build.rglob("*.yaml"))
    assert written == sorted(
        [f"{p}.{t}.yaml" for p in ("training", "monitoring") for t in ("kubeflow", "vertex")]
        + [f"components/{s}.yaml" for s in COMPONENTS]
    )


@pytest.mark.parametrize("target", ["kubeflow", "vertex"])
def test_every_step_runs_on_the_versioned_base_image_with_resources(
    cpu_build: Path, target: str
) -> None:
    containers = executors(cpu_build / f"training.{target}.yaml")
    assert set(containers) == set(STEPS)
    for step, container in containers.items():
        assert container.image == f"conveyor/conveyor-base:{VERSION}"
        wanted = STEP_RESOURCES[step.replace("-", "_")]
        assert container.resources.resource_cpu_limit == wanted.cpu_limit
        assert container.resources.resource_memory_request == wanted.memory_request
        assert not container.resources.HasField("accelerator")
        # No runtime pip install: the image carries the package.
        assert "pip install" not in " ".join(container.command)


def test_vertex_yaml_is_one_document_without_platform_settings(
    cpu_build: Path, gpu_build: Path
) -> None:
    for build in (cpu_build, gpu_build):
        text = (build / "training.vertex.yaml").read_text()
        assert len(documents(build / "training.vertex.yaml")) == 1
        assert "platforms" not in text and "secretAsEnv" not in text


def test_kubeflow_yaml_takes_mlflow_credentials_from_an_optional_secret(cpu_build: Path) -> None:
    settings = kubernetes_settings(cpu_build / "training.kubeflow.yaml")
    assert set(settings) == {
        "plan-trials", "tune-trial", "select-trial", "train", "evaluate", "shadow", "register",
        "deploy",
    }  # fmt: skip
    (secret,) = settings["train"].secret_as_env
    assert secret.secret_name == "conveyor-mlflow" and secret.optional
    assert {k.env_var for k in secret.key_to_env} == {
        "MLFLOW_TRACKING_URI",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
    }


def test_gpu_train_step_on_kubeflow(gpu_build: Path) -> None:
    train = executors(gpu_build / "training.kubeflow.yaml")["train"]
    assert train.image == f"conveyor/conveyor-gpu:{VERSION}"
    assert train.resources.accelerator.resource_type == "nvidia.com/gpu"
    assert train.resources.accelerator.resource_count == "1"
    settings = kubernetes_settings(gpu_build / "training.kubeflow.yaml")["train"]
    assert dict(settings.node_selector.labels) == {"nvidia.com/gpu.present": "true"}
    (toleration,) = settings.tolerations
    assert (toleration.key, toleration.operator, toleration.effect) == (
        "nvidia.com/gpu",
        "Exists",
        "NoSchedule",
    )
    others = executors(gpu_build / "training.kubeflow.yaml")
    assert others["tune-trial"].resources.accelerator.resource_count == "1"
    assert all(
        not others[s].resources.HasField("accelerator") for s in STEPS if s not in TRAINING_STEPS
    )


@pytest.mark.parametrize(
    ("options", "gpu"), [((), "NVIDIA_L4"), (("--gpu-type", "NVIDIA_TESLA_T4"), "NVIDIA_TESLA_T4")]
)
def test_gpu_train_step_on_vertex(tmp_path: Path, options: tuple[str, ...], gpu: str) -> None:
    build = compile_to(tmp_path, "--gpus", "1", *options)
    train = executors(build / "training.vertex.yaml")["train"]
    assert (
        train.resources.accelerator.resource_type,
        train.resources.accelerator.resource_count,
    ) == (gpu, "1")
    assert train.image == f"conveyor/conveyor-gpu:{VERSION}"
    kubeflow = executors(build / "training.kubeflow.yaml")["train"]
    assert kubeflow.resources.accelerator.resource_type == "nvidia.com/gpu"


@pytest.mark.parametrize("target", ["kubeflow", "vertex"])
@pytest.mark.parametrize("pipeline", ["training", "monitoring"])
def test_the_gpu_train_step_is_told_its_gpu_and_trains_xgboost_by_default(
    cpu_build: Path, gpu_build: Path, target: str, pipeline: str
) -> None:
    """The step checks the GPU it was given is used (``training.devices``); xgboost is the
    estimator that trains there."""
    for build, gpus, estimator in (
        (cpu_build, None, ""),  # the task's default, decided at run time
        (gpu_build, "1", "xgboost"),
    ):
        path = build / f"{pipeline}.{target}.yaml"
        environments = {
            step: {variable.name: variable.value for variable in container.env}
            for step, container in executors(path).items()
        }
        assert environments["train"].get(GPUS_ENV) == environments["tune-trial"].get(GPUS_ENV)
        assert environments["train"].get(GPUS_ENV) == gpus
        others = [env for step, env in environments.items() if step not in TRAINING_STEPS]
        assert all(GPUS_ENV not in env for env in others)
        parameters = pipeline_spec(path).root.input_definitions.parameters
        assert parameters["estimator"].default_value.string_value == estimator


def test_more_than_one_gpu_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["compile", "--output-dir", str(tmp_path), "--gpus", "2"]) == 2
    assert "--gpus 2: Conveyor's train step trains on one GPU" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_unknown_vertex_gpu_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["compile", "--output-dir", str(tmp_path), "--gpus", "1", "--gpu-type", "T4"]) == 2
    assert (
        "GPU type 'T4' is not a Vertex accelerator; choose one of: NVIDIA_TESLA_T4"
        in capsys.readouterr().err
    )
    assert not list(tmp_path.iterdir())


def test_image_registry_applies_to_pipelines_and_components(tmp_path: Path) -> None:
    build = compile_to(tmp_path, "--image-registry", "europe-docker.example/ml/", "--gpus", "1")
    for target in ("kubeflow", "vertex"):
        images = {step: c.image for step, c in executors(build / f"training.{target}.yaml").items()}
        assert images["train"] == f"europe-docker.example/ml/conveyor-gpu:{VERSION}"
        assert images["ingest"] == f"europe-docker.example/ml/conveyor-base:{VERSION}"
    component = load_component_from_file(str(build / "components" / "ingest.yaml"))
    assert component.component_spec.implementation.container.image.startswith(
        "europe-docker.example/ml/"
    )


def test_component_yaml_loads_back_with_its_interface(cpu_build: Path) -> None:
    evaluate = load_component_from_file(str(cpu_build / "components" / "evaluate.yaml"))
    spec = evaluate.component_spec
    assert {"model", "test", "target_column", "primary_metric", "metric_floors"} <= set(spec.inputs)
    assert set(spec.outputs) == {
        "metrics",
        "classification_metrics",
        "report",
        "evaluation",
        "reliability",
        "residuals",
        "Output",
    }
    assert spec.outputs["classification_metrics"].type == "system.ClassificationMetrics@0.0.1"
    assert spec.inputs["metric_floors"].default == {"accuracy": 0.7, "roc_auc": 0.7, "r2": 0.0}
    assert "Scores the model on the evaluation split" in spec.description


def test_pipeline_interface_gates_and_caching(cpu_build: Path) -> None:
    spec = pipeline_spec(cpu_build / "training.kubeflow.yaml")
    parameters = spec.root.input_definitions.parameters
    assert "model_store_uri" in parameters and not parameters["model_store_uri"].is_optional
    assert parameters["data_uri"].default_value.string_value == "builtin://breast_cancer"
    assert parameters["canary_steps"].default_value.string_value == "10,50"
    assert parameters["rollout"].default_value.bool_value is True
    (condition,) = [task for task in spec.root.dag.tasks.values() if task.trigger_policy.condition]
    assert condition.task_info.name == "blessed"
    assert condition.trigger_policy.condition == (
        "inputs.parameter_values['pipelinechannel--evaluate-Output'] == true"
    )
    blessed = spec.components[condition.component_ref.name].dag.tasks
    assert {task.task_info.name for task in blessed.values()} == {"shadow", "shadow-passed"}
    assert not blessed["shadow"].caching_options.enable_cache
    assert not spec.root.dag.tasks["evaluate"].caching_options.enable_cache
    assert spec.root.dag.tasks["train"].caching_options.enable_cache
    # Train fits what tuning chose (the given hyperparameters, without a search space).
    assert sorted(spec.root.dag.tasks["train"].dependent_tasks) == [
        "ingest", "select-trial", "validate"
    ]  # fmt: skip


def gated_by_shadow(spec: pipeline_spec_pb2.PipelineSpec) -> Any:
    """The tasks that run only when evaluate blessed the model and the shadow gate passed."""
    (blessed,) = [task for task in spec.root.dag.tasks.values() if task.trigger_policy.condition]
    tasks = spec.components[blessed.component_ref.name].dag.tasks.values()
    (inner,) = [task for task in tasks if task.task_info.name == "shadow-passed"]
    return inner, spec.components[inner.component_ref.name].dag.tasks


@pytest.mark.parametrize("target", ["kubeflow", "vertex"])
def test_register_and_deploy_run_only_when_the_shadow_gate_passes(
    cpu_build: Path, target: str
) -> None:
    spec = pipeline_spec(cpu_build / f"training.{target}.yaml")
    condition, gated = gated_by_shadow(spec)
    assert condition.task_info.name == "shadow-passed"
    assert condition.trigger_policy.condition == (
        "inputs.parameter_values['pipelinechannel--shadow-Output'] == true"
    )
    assert set(gated) == {"register", "deploy"}
    assert not gated["register"].caching_options.enable_cache
    parameters = spec.root.input_definitions.parameters
    assert parameters["shadow_days"].default_value.number_value == 7
    assert not parameters["shadow_policy"].default_value.struct_value.fields
    (blessed,) = [task for task in spec.root.dag.tasks.values() if task.trigger_policy.condition]
    shadow = spec.components[blessed.component_ref.name].dag.tasks["shadow"].inputs
    # Inside the condition's sub-DAG, train's model arrives as the condition's input.
    assert shadow.artifacts["model"].component_input_artifact == "pipelinechannel--train-model"
    assert shadow.parameters["policy"].component_input_parameter == (
        "pipelinechannel--shadow_policy"
    )
    assert shadow.parameters["payload_log_uri"].component_input_parameter == (
        "pipelinechannel--payload_log_uri"
    )


def test_register_and_deploy_share_the_rollout_choice_and_the_model_hash(cpu_build: Path) -> None:
    spec = pipeline_spec(cpu_build / "training.kubeflow.yaml")
    _, gated = gated_by_shadow(spec)
    register, deploy = gated["register"].inputs.parameters, gated["deploy"].inputs.parameters
    # One pipeline parameter decides both: champion at register, or candidate until promoted.
    assert register["rollout"].component_input_parameter == "pipelinechannel--rollout"
    assert deploy["rollout"].component_input_parameter == "pipelinechannel--rollout"
    sha256 = deploy["model_sha256"].task_output_parameter
    assert (sha256.producer_task, sha256.output_parameter_key) == ("register", "model_sha256")
    assert deploy["mlflow_tracking_uri"].component_input_parameter == (
        "pipelinechannel--mlflow_tracking_uri"
    )


def test_embedded_step_code_imports_conveyor_under_its_installed_name_only(
    cpu_build: Path,
) -> None:
    # A step's code is serialised into the YAML; a bare `components.core` import there would
    # load a user's own components/ package in the pod (or nothing), not Conveyor's.
    for path in cpu_build.rglob("*.yaml"):
        for name, container in executors(path).items():
            code = "\n".join([*container.command, *container.args])
            bare = re.findall(r"^\s*(?:from|import) (?:components|pipelines)\b.*$", code, re.M)
            assert not bare, f"{path.name} {name}: {bare}"
            assert "from conveyor.components" in code, f"{path.name} {name}"
