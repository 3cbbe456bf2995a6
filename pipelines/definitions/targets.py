"""Compile-time profiles: what differs between a Kubeflow cluster and Vertex AI Pipelines.

Accelerator names differ (a Kubernetes resource name vs Vertex's machine-type
names), and only Kubeflow understands kfp-kubernetes settings (node selectors,
tolerations, Secrets as env): they add a second YAML document Vertex cannot load.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from conveyor.components.core.errors import ConveyorError
from conveyor.components.images import DEFAULT_REGISTRY, ImageKind, image

__all__ = [
    "DEFAULT_VERTEX_GPU",
    "GPU_STEPS",
    "MLFLOW_SECRET",
    "STEP_RESOURCES",
    "VERTEX_GPU_TYPES",
    "Resources",
    "Target",
]

TargetName = Literal["kubeflow", "vertex"]
# The steps that train a model: they get the GPUs a target requests.
GPU_STEPS = frozenset({"train", "tune_trial"})
KUBEFLOW_GPU_RESOURCE = "nvidia.com/gpu"
# NVIDIA GPU Feature Discovery labels every GPU node with this.
DEFAULT_GPU_NODE_SELECTOR = ("nvidia.com/gpu.present", "true")
DEFAULT_VERTEX_GPU = "NVIDIA_L4"
VERTEX_GPU_TYPES = (
    "NVIDIA_TESLA_T4",
    "NVIDIA_L4",
    "NVIDIA_TESLA_V100",
    "NVIDIA_TESLA_P100",
    "NVIDIA_TESLA_P4",
    "NVIDIA_TESLA_A100",
    "NVIDIA_A100_80GB",
    "NVIDIA_H100_80GB",
    "NVIDIA_H100_MEGA_80GB",
    "NVIDIA_H200_141GB",
    "NVIDIA_B200",
)
# Kubeflow only: an optional Secret whose keys become the MLflow steps' environment.
MLFLOW_SECRET = "conveyor-mlflow"
MLFLOW_SECRET_KEYS = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


@dataclass(frozen=True)
class Resources:
    cpu_request: str
    cpu_limit: str
    memory_request: str
    memory_limit: str


STEP_RESOURCES = {
    "ingest": Resources("1", "2", "2Gi", "4Gi"),
    "validate": Resources("1", "2", "2Gi", "4Gi"),
    "champion_reference": Resources("500m", "1", "2Gi", "4Gi"),
    "ingest_inputs": Resources("1", "2", "2Gi", "4Gi"),
    "validate_inputs": Resources("1", "2", "2Gi", "4Gi"),
    "drift": Resources("2", "4", "4Gi", "8Gi"),
    "plan_partitions": Resources("500m", "1", "1Gi", "2Gi"),
    "profile_partition": Resources("1", "2", "2Gi", "4Gi"),
    "check_partitions": Resources("1", "2", "2Gi", "4Gi"),
    "count_partition": Resources("1", "2", "2Gi", "4Gi"),
    "judge_drift": Resources("1", "2", "2Gi", "4Gi"),
    "prediction_drift": Resources("1", "2", "2Gi", "4Gi"),
    "quality": Resources("2", "4", "4Gi", "8Gi"),
    "monitoring_verdict": Resources("250m", "500m", "512Mi", "1Gi"),
    "plan_trials": Resources("250m", "500m", "512Mi", "1Gi"),
    "tune_trial": Resources("2", "4", "4Gi", "8Gi"),
    "select_trial": Resources("250m", "500m", "512Mi", "1Gi"),
    "train": Resources("2", "4", "4Gi", "8Gi"),
    "evaluate": Resources("1", "2", "2Gi", "4Gi"),
    "shadow": Resources("2", "4", "4Gi", "8Gi"),
    "register": Resources("500m", "1", "1Gi", "2Gi"),
    "deploy": Resources("250m", "500m", "512Mi", "1Gi"),
}


@dataclass(frozen=True)
class Target:
    """One compile target.

    Attributes:
        name: ``kubeflow`` or ``vertex``.
        gpus: GPUs the train step requests (0: CPU only, on the base image).
        gpu_type: Vertex accelerator name; ignored by Kubeflow, which uses the node selector.
        gpu_node_selector: Kubeflow node label (key, value) a GPU train step is pinned to.
        image_registry: Where Conveyor's images are pulled from.
        tuning_parallelism: The most tuning trials run at once (kfp fixes a ParallelFor's
            parallelism when it compiles).
        monitoring_parallelism: The most partitions of the inputs monitoring reads at once.
    """

    name: TargetName
    gpus: int = 0
    gpu_type: str = DEFAULT_VERTEX_GPU
    gpu_node_selector: tuple[str, str] = DEFAULT_GPU_NODE_SELECTOR
    image_registry: str = DEFAULT_REGISTRY
    tuning_parallelism: int = 4
    monitoring_parallelism: int = 8

    def __post_init__(self) -> None:
        if self.name not in ("kubeflow", "vertex"):
            raise ConveyorError(f"unknown target {self.name!r}; choose kubeflow or vertex")
        if self.gpus < 0:
            raise ConveyorError(f"gpus must be 0 or more, got {self.gpus}")
        for name in ("tuning", "monitoring"):
            if getattr(self, f"{name}_parallelism") < 1:
                raise ConveyorError(
                    f"{name} parallelism must be 1 or more, got "
                    f"{getattr(self, f'{name}_parallelism')}"
                )
        if self.name == "vertex" and self.gpus and self.gpu_type not in VERTEX_GPU_TYPES:
            raise ConveyorError(
                f"GPU type {self.gpu_type!r} is not a Vertex accelerator; "
                f"choose one of: {', '.join(VERTEX_GPU_TYPES)}"
            )

    @property
    def platform_settings(self) -> bool:
        """Whether kfp-kubernetes settings may be compiled in."""
        return self.name == "kubeflow"

    @property
    def accelerator_type(self) -> str:
        return KUBEFLOW_GPU_RESOURCE if self.name == "kubeflow" else self.gpu_type

    def image(self, kind: ImageKind) -> str:
        return image(kind, self.image_registry)

    def step_image(self, step: str) -> str:
        """The steps that train run on the GPU image when GPUs are requested, the rest on
        the base."""
        return self.image("gpu" if step in GPU_STEPS and self.gpus else "base")
