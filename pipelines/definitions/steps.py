"""What every Conveyor step gets in a compiled pipeline, as one public function: its image (from
the target's registry, the GPU image for a GPU train step), CPU and memory, caching, and on
Kubeflow the MLflow Secret and the GPU node's selector and toleration.

Conveyor's own pipelines call it on each task; a pipeline of your own calls it on each task
made from Conveyor's components, so they run as they do in Conveyor's pipelines.
"""

from __future__ import annotations

from kfp import kubernetes
from kfp.dsl import PipelineTask

from conveyor.components.core.errors import ConveyorError
from conveyor.components.core.training.devices import GPUS_ENV
from conveyor.components.images import image as image_of
from conveyor.pipelines.definitions.targets import (
    GPU_STEPS,
    MLFLOW_SECRET,
    MLFLOW_SECRET_KEYS,
    STEP_RESOURCES,
    Target,
)

__all__ = ["MLFLOW_STEPS", "UNCACHED_STEPS", "apply_step_settings"]

# Steps that read what changes under the same name (a table refreshed in place, the registry)
# or that change the registry must never come from KFP's cache: a scheduled run with the
# same parameters would otherwise reuse last week's data.
UNCACHED_STEPS = frozenset(
    {
        "ingest",
        "ingest_inputs",
        # A log's files are listed and read in place: the listing grows, a day moves on,
        # and a folder's file may be rewritten under the same name.
        "plan_partitions",
        "profile_partition",
        "count_partition",
        "plan_trials",  # starts the tuning run its trials log under
        "champion_reference",
        "evaluate",
        "shadow",  # the payload log grows under the same URI
        "register",
        "deploy",
        "quality",  # labels arrive under the same URI
        "monitoring_verdict",  # pushes the run's findings
    }
)
# Steps that talk to MLflow: on Kubeflow they read its address and credentials from a Secret.
MLFLOW_STEPS = frozenset(
    {
        "plan_trials",
        "tune_trial",
        "select_trial",
        "train",
        "evaluate",
        "shadow",
        "register",
        "deploy",
        "champion_reference",
        "quality",
        "monitoring_verdict",
    }
)


def apply_step_settings(
    task: PipelineTask, target: Target, step: str | None = None
) -> PipelineTask:
    """Applies Conveyor's settings for ``step`` to ``task``, for ``target``.

    A task on one of Conveyor's step images, in any registry (Conveyor's components, or a
    component of yours built on that image), is moved to the target's registry, and a GPU
    train step to the GPU image; any other image is left as it is. Resources, caching, the MLflow
    Secret (Kubeflow only) and the GPU request are applied whatever the image.

    Args:
        task: The task, as a pipeline function makes it (``train(...)``).
        target: The compile target: ``Target("kubeflow")`` or ``Target("vertex")``, with
            its GPUs and image registry.
        step: Whose settings to apply, one of Conveyor's step names (``train``,
            ``evaluate``, ...). Default: the task's component name, which must then be one
            of them; a component of your own passes the step it stands in for.

    Returns:
        The same task, for chaining.
    """
    step = step or task.component_spec.name.replace("-", "_")
    if step not in STEP_RESOURCES:
        raise ConveyorError(
            f"step {step!r} has no Conveyor settings: pass step= one of "
            f"{', '.join(sorted(STEP_RESOURCES))}"
        )
    if task.container_spec is not None and _on_conveyors_image(task.container_spec.image):
        task.set_container_image(target.step_image(step))
    resources = STEP_RESOURCES[step]
    task.set_cpu_request(resources.cpu_request).set_cpu_limit(resources.cpu_limit)
    task.set_memory_request(resources.memory_request).set_memory_limit(resources.memory_limit)
    if step in UNCACHED_STEPS:
        task.set_caching_options(enable_caching=False)
    if step in GPU_STEPS and target.gpus:
        task.set_accelerator_type(target.accelerator_type).set_accelerator_limit(target.gpus)
        task.set_env_variable(GPUS_ENV, str(target.gpus))  # what the step checks it can use
    if target.platform_settings:
        _apply_platform_settings(task, step, target)
    return task


def _on_conveyors_image(image: str) -> bool:
    """Whether ``image`` is one of Conveyor's step images of this version, in any registry
    (a task moved to a registry once may be moved again, to a GPU image, say)."""
    return image.rpartition("/")[2] in {
        kind_image.rpartition("/")[2] for kind_image in (image_of("base"), image_of("gpu"))
    }


def _apply_platform_settings(task: PipelineTask, step: str, target: Target) -> None:
    """kfp-kubernetes settings, which only the Kubeflow target may carry."""
    if step in MLFLOW_STEPS:
        kubernetes.use_secret_as_env(
            task, MLFLOW_SECRET, {key: key for key in MLFLOW_SECRET_KEYS}, optional=True
        )
    if step in GPU_STEPS and target.gpus:
        kubernetes.add_node_selector(task, *target.gpu_node_selector)
        kubernetes.add_toleration(
            task, key="nvidia.com/gpu", operator="Exists", effect="NoSchedule"
        )
