"""Champion reference: the training data and schema of the model now serving."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Output

from conveyor.components.images import BASE_IMAGE

__all__ = ["champion_reference"]


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def champion_reference(
    model_name: str,
    reference: Output[Dataset],
    schema: Output[Artifact],
    importance: Output[Artifact],
    reference_scores: Output[Dataset],
    mlflow_tracking_uri: str = "",
) -> str:
    """Finds the ``champion`` of ``model_name`` in the MLflow registry and fetches what its
    training run recorded: the training split and the schema it was validated against, and
    the model's feature importance and scores on its evaluation split.

    Fails the step, with one line, when the model has no champion or its run recorded no
    training split and schema (a model trained before Conveyor recorded them). A champion
    trained before Conveyor recorded importance and scores does not fail it: those two
    outputs are then empty files, with metadata ``recorded`` False and a ``note`` saying why.

    Args:
        model_name: The registered model.
        reference: Output Parquet dataset: the champion's training split without the label,
            that is the inputs the model learned from. Metadata: ``model_version``,
            ``mlflow_run_id``.
        schema: Output JSON schema of the training split.
        importance: Output JSON: permutation importance of each input column on the
            evaluation split, and each column's share of the total (``importance.json``).
            Metadata: ``recorded``, and ``note`` when not recorded.
        reference_scores: Output Parquet dataset: the evaluation split's inputs with the
            champion's predicted class, score and class probabilities in the payload log's
            ``conveyor.*`` columns; what prediction drift compares logged scores with.
            Metadata: as ``importance``.
        mlflow_tracking_uri: MLflow tracking server; empty uses ``$MLFLOW_TRACKING_URI``.

    Returns:
        The champion's version.
    """
    from pathlib import Path

    from conveyor.components.core.errors import step_errors
    from conveyor.components.core.training.registry import download_reference

    with step_errors("champion_reference"):
        champion = download_reference(
            mlflow_tracking_uri, model_name, Path(reference.path), Path(schema.path),
            Path(importance.path), Path(reference_scores.path),
        )  # fmt: skip
    for artifact in (reference, schema, importance, reference_scores):
        artifact.metadata.update(
            {"model_name": model_name, "model_version": champion.version,
             "mlflow_run_id": champion.run_id}
        )  # fmt: skip
    for artifact in (importance, reference_scores):
        recorded = Path(artifact.path).stat().st_size > 0
        artifact.metadata["recorded"] = recorded
        if not recorded:
            artifact.metadata["note"] = (
                f"{model_name} version {champion.version} was trained before Conveyor "
                "recorded importance and evaluation scores; retrain it to have them"
            )
    return champion.version
