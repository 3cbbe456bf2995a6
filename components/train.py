"""Train: fit a scikit-learn classifier and write a KServe-loadable model directory."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components.images import BASE_IMAGE

__all__ = ["train"]


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def train(
    train: Input[Dataset],
    target_column: str,
    model_name: str,
    model: Output[Model],
    estimator: str = "logistic_regression",
    hyperparameters: dict = {},  # noqa: B006 - KFP reads defaults from the signature
    seed: int = 42,
    mlflow_tracking_uri: str = "",
    pipeline_run_id: str = "",
    positive_class: str = "",
    schema: Input[Artifact] = None,
):
    """Fits imputation, scaling, one-hot encoding and the estimator; logs the run to MLflow.

    Args:
        train: The training split (Parquet).
        target_column: The label column.
        model_name: The registered model name; also the MLflow experiment name.
        model: Output directory with ``model.joblib`` (KServe's sklearn format) and
            ``model.json`` (sha256, features, classes, library versions). Metadata:
            ``sha256``, ``estimator``, ``mlflow_run_id`` (the run holding params, training
            metrics and the model files), ``data_hash``, ``train_<metric>``.
        estimator: ``logistic_regression``, ``random_forest`` or ``hist_gradient_boosting``.
        hyperparameters: Keyword arguments for the estimator, checked against what it accepts.
        seed: Seed for the estimator's randomness.
        mlflow_tracking_uri: MLflow tracking server; empty uses ``$MLFLOW_TRACKING_URI``.
        pipeline_run_id: The KFP run, recorded as a tag on the MLflow run.
        positive_class: The binary positive class of the training metrics (see evaluate).
        schema: The schema validate checked the splits against. The MLflow run records it
            and the training split under ``reference/``, which monitoring compares
            inference inputs with; without it, one is inferred from the split.
    """
    from pathlib import Path

    from components.core.errors import step_errors
    from components.core.training import train_model

    data_hash = train.metadata.get("content_hash", "")
    with step_errors("train"):
        result = train_model(
            train_path=Path(train.path),
            target=target_column,
            estimator=estimator,
            hyperparameters=hyperparameters,
            seed=seed,
            model_dir=Path(model.path),
            tracking_uri=mlflow_tracking_uri,
            experiment=model_name,
            tags={"pipeline_run_id": pipeline_run_id, "data_hash": data_hash},
            positive_class=positive_class,
            schema_path=Path(schema.path) if schema is not None else None,
            model_name=model_name,
        )
    model.metadata.update(
        {
            "sha256": result.card.sha256,
            "estimator": estimator,
            "mlflow_run_id": result.run_id,
            "data_hash": data_hash,
        }
    )
    model.metadata.update({f"train_{name}": value for name, value in result.metrics.items()})
