"""Champion reference: the training data and schema of the model now serving."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Output

from components.images import BASE_IMAGE

__all__ = ["champion_reference"]


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def champion_reference(
    model_name: str,
    reference: Output[Dataset],
    schema: Output[Artifact],
    mlflow_tracking_uri: str = "",
) -> str:
    """Finds the ``champion`` of ``model_name`` in the MLflow registry and fetches what its
    training run recorded: the training split and the schema it was validated against.

    Fails the step, with one line, when the model has no champion or its run recorded no
    reference (a model trained before Conveyor recorded them).

    Args:
        model_name: The registered model.
        reference: Output Parquet dataset: the champion's training split without the label,
            that is the inputs the model learned from. Metadata: ``model_version``,
            ``mlflow_run_id``.
        schema: Output JSON schema of the training split.
        mlflow_tracking_uri: MLflow tracking server; empty uses ``$MLFLOW_TRACKING_URI``.

    Returns:
        The champion's version.
    """
    from pathlib import Path

    from components.core.errors import step_errors
    from components.core.registry import download_reference

    with step_errors("champion_reference"):
        champion = download_reference(
            mlflow_tracking_uri, model_name, Path(reference.path), Path(schema.path)
        )
    for artifact in (reference, schema):
        artifact.metadata.update(
            {"model_name": model_name, "model_version": champion.version,
             "mlflow_run_id": champion.run_id}
        )  # fmt: skip
    return champion.version
