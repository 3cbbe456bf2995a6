"""Compiling each pipeline for each target, and each component on its own, to YAML."""

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kfp import compiler
from kfp.dsl.base_component import BaseComponent
from kfp.dsl.graph_component import GraphComponent

from conveyor import components
from conveyor.components import STEP_MODULES
from conveyor.pipelines.definitions.monitoring import (
    MONITORING_PIPELINE_NAME,
    build_monitoring_pipeline,
)
from conveyor.pipelines.definitions.targets import Target
from conveyor.pipelines.definitions.training import PIPELINE_NAME, build_training_pipeline

__all__ = [
    "COMPONENTS",
    "PIPELINES",
    "Pipeline",
    "compile_all",
    "compile_components",
    "compile_pipeline",
]

# Every public component, by its step name (the name of its YAML file).
COMPONENTS: dict[str, BaseComponent] = {
    step: getattr(components, name) for name, step in STEP_MODULES.items()
}


@dataclass(frozen=True)
class Pipeline:
    """One of Conveyor's pipelines: its name on a cluster and how to build it for a target."""

    name: str
    build: Callable[[Target], GraphComponent]


PIPELINES = {
    "training": Pipeline(PIPELINE_NAME, build_training_pipeline),
    "monitoring": Pipeline(MONITORING_PIPELINE_NAME, build_monitoring_pipeline),
}


def compile_pipeline(target: Target, output_dir: Path, pipeline: str = "training") -> Path:
    """Writes ``<pipeline>.<target>.yaml``; only kubeflow files have a ``platforms`` document."""
    path = output_dir / f"{pipeline}.{target.name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(PIPELINES[pipeline].build(target), str(path))
    return path


def compile_components(target: Target, output_dir: Path) -> list[Path]:
    """Writes one YAML per component (loadable with ``kfp.components.load_component_from_file``)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, component in COMPONENTS.items():
        path = output_dir / f"{name}.yaml"
        compiler.Compiler().compile(_with_image(component, target.step_image(name)), str(path))
        paths.append(path)
    return paths


def compile_all(output_dir: Path, **target_options: object) -> list[Path]:
    """Every pipeline for both targets, then the components (with the kubeflow target's images)."""
    targets = [Target(name, **target_options) for name in ("kubeflow", "vertex")]
    pipelines = [
        compile_pipeline(target, output_dir, name) for name in PIPELINES for target in targets
    ]
    return pipelines + compile_components(targets[0], output_dir / "components")


def _with_image(component: BaseComponent, image: str) -> BaseComponent:
    """A copy of ``component`` that runs on ``image`` (the decorator fixed the default one)."""
    clone = copy.deepcopy(component)
    clone.component_spec.implementation.container.image = image
    return clone
