"""apply_step_settings on tasks of Conveyor's components and of a project's own."""

# No `from __future__ import annotations`: KFP reads the components' annotations as types.

from pathlib import Path
from typing import Any

import pytest
import yaml
from kfp import compiler, dsl

from conveyor.components import EvaluateOp
from conveyor.components.core.errors import ConveyorError
from conveyor.components.images import BASE_IMAGE, image
from conveyor.pipelines import Target, apply_step_settings

OWN_IMAGE = "python:3.11-slim"


@dsl.component(base_image=OWN_IMAGE)
def own_trainer(rows: int) -> int:
    return rows


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def on_conveyors_image(rows: int) -> int:
    return rows


def compiled(tmp_path: Path, target: Target, build: Any) -> list[dict[str, Any]]:
    @dsl.pipeline(name="steps")
    def steps():
        build(target)

    path = tmp_path / "steps.yaml"
    compiler.Compiler().compile(steps, str(path))
    return list(yaml.safe_load_all(path.read_text()))


def test_a_projects_own_trainer_takes_trains_settings_and_keeps_its_image(tmp_path: Path) -> None:
    target = Target("kubeflow", gpus=2, image_registry="registry.example/team")
    spec, platform = compiled(
        tmp_path, target, lambda t: apply_step_settings(own_trainer(rows=1), t, step="train")
    )
    container = spec["deploymentSpec"]["executors"]["exec-own-trainer"]["container"]
    assert container["image"] == OWN_IMAGE
    assert container["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert container["resources"]["accelerator"]["resourceCount"] == "2"
    assert container["resources"]["resourceMemoryLimit"] == "8Gi"
    settings = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert settings["exec-own-trainer"]["secretAsEnv"][0]["secretName"] == "conveyor-mlflow"
    assert settings["exec-own-trainer"]["nodeSelector"]["labels"] == {
        "nvidia.com/gpu.present": "true"
    }


def test_a_component_on_conveyors_image_moves_to_the_targets_registry(tmp_path: Path) -> None:
    target = Target("vertex", gpus=1, image_registry="registry.example/team")

    def pipeline(t: Target) -> None:
        apply_step_settings(on_conveyors_image(rows=1), t, step="validate")

    (spec,) = compiled(tmp_path, target, pipeline)
    container = spec["deploymentSpec"]["executors"]["exec-on-conveyors-image"]["container"]
    assert container["image"] == image("base", "registry.example/team")
    assert "accelerator" not in container["resources"]  # only train gets the GPUs


def test_conveyors_evaluate_gets_its_settings_by_its_own_name(tmp_path: Path) -> None:
    def pipeline(t: Target) -> None:
        model = dsl.importer(artifact_uri="gs://b/model", artifact_class=dsl.Model)
        table = dsl.importer(artifact_uri="gs://b/test", artifact_class=dsl.Dataset)
        apply_step_settings(
            EvaluateOp(model=model.output, test=table.output, target_column="y", model_name="m"),
            t,
        )

    (spec,) = compiled(tmp_path, Target("vertex"), pipeline)
    assert spec["root"]["dag"]["tasks"]["evaluate"].get("cachingOptions", {}) == {}
    container = spec["deploymentSpec"]["executors"]["exec-evaluate"]["container"]
    assert container["image"] == BASE_IMAGE
    assert container["resources"]["resourceCpuLimit"] == "2"


def test_a_step_without_conveyor_settings_is_refused_naming_the_choices(tmp_path: Path) -> None:
    with pytest.raises(
        ConveyorError,
        match=r"step 'own_trainer' has no Conveyor settings: pass step= one of .*train",
    ):
        compiled(
            tmp_path, Target("kubeflow"), lambda t: apply_step_settings(own_trainer(rows=1), t)
        )


def test_a_task_moved_to_a_registry_moves_again_to_the_gpu_image(tmp_path: Path) -> None:
    cpu, gpu = Target("kubeflow", image_registry="a.example/ml"), Target("kubeflow", gpus=1)

    def pipeline(t: Target) -> None:
        task = apply_step_settings(on_conveyors_image(rows=1), cpu, step="train")
        apply_step_settings(task, gpu, step="train")

    spec, _ = compiled(tmp_path, gpu, pipeline)
    container = spec["deploymentSpec"]["executors"]["exec-on-conveyors-image"]["container"]
    assert container["image"] == image("gpu")
