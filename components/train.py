"""Train: fit a classifier or a regressor (scikit-learn, XGBoost, LightGBM) and write a
model directory."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from conveyor.components.images import BASE_IMAGE

__all__ = ["train"]


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def train(
    train: Input[Dataset],
    test: Input[Dataset],
    target_column: str,
    model_name: str,
    model: Output[Model],
    estimator: str = "",
    hyperparameters: dict = {},  # noqa: B006 - KFP reads defaults from the signature
    seed: int = 42,
    mlflow_tracking_uri: str = "",
    pipeline_run_id: str = "",
    positive_class: str = "",
    schema: Input[Artifact] = None,
    id_columns: list = [],  # noqa: B006 - KFP reads defaults from the signature
    calibration: str = "",
):
    """Fits imputation, scaling, one-hot encoding and the estimator; logs the run to MLflow.

    What is fitted, a classifier or a regressor, is the task ingest decided (the ``task``
    in ``train``'s metadata; classification for a dataset without one).

    A pipeline compiled with ``--gpus N`` gives this step N GPUs and sets
    ``CONVEYOR_TRAIN_GPUS``: the estimator then trains on the GPU (``xgboost``, in the gpu
    image), or the step fails in one line, before any work, when the estimator trains on the
    CPU only, XGBoost is a CPU-only build or no GPU is visible.

    Args:
        train: The training split (Parquet); its metadata's ``task`` says what to fit.
        test: The evaluation split (Parquet): the model's permutation importance and its
            scores are measured on it and recorded (see ``model``) for monitoring.
        target_column: The label column.
        model_name: The registered model name; also the MLflow experiment name.
        model: Output directory with ``model.joblib`` (KServe's sklearn format),
            ``model.json`` (sha256, features, classes, library versions), and, outside the
            card's sha256, ``importance.json`` (permutation importance of each input column
            on ``test``) and ``scores.parquet`` (``test``'s inputs with the model's predicted
            class, score and probabilities); the last two also go to the MLflow run's
            ``reference/``. Metadata:
            ``sha256``, ``estimator``, ``task``, ``device`` (``cpu`` or ``cuda``: what it trained
            on, also the run's ``device`` param), ``gpu`` (the GPU's name, on a GPU; also
            the run's ``gpu`` tag), ``mlflow_run_id`` (the run holding params, training
            metrics and the model files; tagged with the split's ``data_hash``, the whole
            table's ``source_content_hash`` and the resolved ``data_revision``),
            ``data_hash``, ``train_<metric>``, and for a
            binary target ``positive_class`` (the model card's).
        estimator: ``random_forest``, ``hist_gradient_boosting``, ``xgboost`` or
            ``lightgbm`` (either task), ``logistic_regression`` (classification) or
            ``ridge`` (regression); empty: ``logistic_regression`` or ``ridge``, by task.
        hyperparameters: Keyword arguments for the estimator, checked against what it accepts.
        seed: Seed for the estimator's randomness.
        mlflow_tracking_uri: MLflow tracking server; empty uses ``$MLFLOW_TRACKING_URI``.
        pipeline_run_id: The KFP run, recorded as a tag on the MLflow run.
        positive_class: A binary target's positive class, recorded in the model card: what
            serving's score is the probability of, and what evaluate and online quality
            measure. Empty picks 1/true/yes if present, else the training split's rarer
            class. A regression model takes none.
        schema: The schema validate checked the splits against. The MLflow run records it
            and the training split under ``reference/``, which monitoring compares
            inference inputs with; without it, one is inferred from the split. With
            validate's metadata (``columns``, ``source``, ``warnings``), its passing
            verdict becomes the run's first audit event.
        id_columns: Columns that identify a row (an order id, ...): never features. The
            model card lists them; the predictor accepts them in requests and writes them
            to its payload log beside ``conveyor.id``, which takes the first one's value.
        calibration: ``sigmoid`` or ``isotonic`` calibrates the estimator's probabilities
            (5-fold ``CalibratedClassifierCV``; sigmoid for small splits, isotonic from a
            few thousand rows), recorded in the model card; empty leaves them as the
            estimator gives them. evaluate draws the reliability diagram either way. A
            regression model takes none.
    """
    from pathlib import Path

    from conveyor.components.core.audit import record_event, validation_event
    from conveyor.components.core.data.task import CLASSIFICATION
    from conveyor.components.core.errors import step_errors
    from conveyor.components.core.training import tracking
    from conveyor.components.core.training.devices import requested_gpus
    from conveyor.components.core.training.trainer import train_model

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
            tags={
                "pipeline_run_id": pipeline_run_id,
                "data_hash": data_hash,
                # What a replay checks its data against (the table before the split).
                "source_content_hash": train.metadata.get("source_content_hash", ""),
                "data_revision": train.metadata.get("revision", ""),
            },
            positive_class=positive_class,
            schema_path=Path(schema.path) if schema is not None else None,
            model_name=model_name,
            test_path=Path(test.path),
            id_columns=[str(column) for column in id_columns],
            calibration=calibration,
            gpus=requested_gpus(),
            task=str(train.metadata.get("task", CLASSIFICATION)),
        )
        if schema is not None and "columns" in schema.metadata:
            record_event(
                tracking.connect(mlflow_tracking_uri),
                result.run_id,
                validation_event(model_name, schema.metadata),
            )
    model.metadata.update(
        {
            "sha256": result.card.sha256,
            "estimator": result.card.estimator,
            "task": result.card.task,
            "device": result.device,
            "mlflow_run_id": result.run_id,
            "data_hash": data_hash,
        }
    )
    model.metadata.update({f"train_{name}": value for name, value in result.metrics.items()})
    if result.gpu:
        model.metadata["gpu"] = result.gpu
    if result.card.positive_class is not None:
        model.metadata["positive_class"] = result.card.positive_class
