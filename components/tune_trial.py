"""Tune trial: one trial's hyperparameters scored by cross-validation on the training split."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input

from conveyor.components.images import BASE_IMAGE

__all__ = ["tune_trial"]


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def tune_trial(
    train: Input[Dataset],
    target_column: str,
    estimator: str,
    trial: dict,
    primary_metric: str = "",
    folds: int = 3,
    seed: int = 42,
    positive_class: str = "",
    schema: Input[Artifact] = None,
    id_columns: list = [],  # noqa: B006 - KFP reads defaults from the signature
    calibration: str = "",
    mlflow_tracking_uri: str = "",
) -> dict:
    """Fits the trial's hyperparameters on all folds of the training split but one and
    scores the held-out fold, for each fold; logs an MLflow child run of the tuning run.

    The evaluation split is never read: it judges the model train fits from the chosen
    trial. Trains on the GPU as train does when the step is given one.

    Args:
        train: The training split (Parquet); the folds are carved from it (stratified
            for classification); its metadata's ``task`` says what the trial fits.
        target_column: The label column.
        estimator: The estimator, as train takes it.
        trial: One of plan_trials' trials: ``{trial, hyperparameters, tuning_run_id}``, the
            last the parent of this trial's run. Trial ``-1`` (no search space) is returned
            unscored, at once.
        primary_metric: The metric each held-out fold is scored by; empty: the task's.
        folds: Cross-validation folds.
        seed: Seed of the folds and the estimator.
        positive_class: A binary target's positive class, as train takes it.
        schema: validate's schema, whose recorded roles decide the features, as in train.
        id_columns: Columns that identify a row: never features.
        calibration: As train takes it.
        mlflow_tracking_uri: MLflow tracking server; empty uses ``$MLFLOW_TRACKING_URI``.

    Returns:
        ``{trial, hyperparameters, metric, folds, run_id, tuning_run_id}``: each fold's
        score and the trial's MLflow run.
    """
    from pathlib import Path

    from conveyor.components.core.data.task import CLASSIFICATION
    from conveyor.components.core.errors import step_errors
    from conveyor.components.core.training.devices import requested_gpus
    from conveyor.components.core.training.tuning import TrialSettings, run_trial

    settings = TrialSettings(
        train_path=Path(train.path),
        target=target_column,
        estimator=estimator,
        metric=primary_metric,
        folds=int(folds),
        seed=seed,
        positive_class=positive_class,
        schema_path=Path(schema.path) if schema is not None else None,
        id_columns=tuple(str(column) for column in id_columns),
        calibration=calibration,
        gpus=requested_gpus(),
        task=str(train.metadata.get("task", CLASSIFICATION)),
    )
    with step_errors("tune_trial"):
        result = run_trial(settings, trial, mlflow_tracking_uri)
    if result.folds:
        print(f"tune_trial: trial {result.trial}: {result.metric} {result.mean:.4f}")
    return result.to_dict()
