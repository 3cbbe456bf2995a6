"""Register: publish a blessed model to the model store and register it in MLflow, as the
rollout's candidate or, without a rollout, as the champion."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Input, Model

from conveyor.components.images import BASE_IMAGE

__all__ = ["register"]


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def register(
    model: Input[Model],
    evaluation: Input[Artifact],
    model_name: str,
    model_store_uri: str,
    mlflow_tracking_uri: str = "",
    pipeline_run_id: str = "",
    rollout: bool = True,
) -> NamedTuple(
    "Registration", [("model_version", str), ("storage_uri", str), ("model_sha256", str)]
):
    """Copies the model directory to the model store and registers it in MLflow.

    The ``champion`` alias names the model that serves: with ``rollout`` the version
    becomes the ``candidate`` and deploy makes it the champion only if its rollout
    promotes it; without, it becomes the champion here. Refuses a model its evaluation
    did not bless, and one judged against a champion that another run has replaced
    since. Safe to repeat: the store copy is content-addressed, and a version already
    registered from this training run is reused rather than registered twice.

    Args:
        model: The trained model directory (its metadata names the MLflow run and data hash).
        evaluation: The evaluation verdict (JSON) from evaluate.
        model_name: The registered model's name in MLflow.
        model_store_uri: A folder, ``gs://`` or ``s3://`` URI KServe can pull models from;
            the model lands in ``<model_store_uri>/<model_name>/<sha256 prefix>``.
        mlflow_tracking_uri: MLflow tracking server; empty uses ``$MLFLOW_TRACKING_URI``.
        pipeline_run_id: The KFP run, recorded as a version tag.
        rollout: Whether deploy will roll the model out (pass the pipeline's ``rollout``):
            True registers it as ``candidate``, False as ``champion`` (no cluster).

    Returns:
        model_version: The registered version number.
        storage_uri: Where the model directory was published.
        model_sha256: The sha256 of the model file (the version's ``sha256`` tag), which
            deploy pins in the predictor.
    """
    from collections import namedtuple
    from pathlib import Path

    from conveyor.components.core.errors import step_errors
    from conveyor.components.core.training.registry import register_model
    from conveyor.components.core.training.trainer import mlflow_run_id

    with step_errors("register"):
        registration = register_model(
            model_dir=Path(model.path),
            evaluation_path=Path(evaluation.path),
            model_name=model_name,
            tracking_uri=mlflow_tracking_uri,
            run_id=mlflow_run_id(model.metadata),
            model_store_uri=model_store_uri,
            pipeline_run_id=pipeline_run_id,
            data_hash=model.metadata.get("data_hash", ""),
            rollout=rollout,
        )
    outputs = namedtuple("Registration", ["model_version", "storage_uri", "model_sha256"])
    return outputs(registration.version, registration.storage_uri, registration.sha256)
