"""Plan trials: expand a search space into the trials the tuning loop runs."""

from kfp import dsl
from kfp.dsl import Dataset, Input

from conveyor.components.images import BASE_IMAGE

__all__ = ["plan_trials"]


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def plan_trials(
    train: Input[Dataset],
    estimator: str,
    model_name: str,
    hyperparameters: dict = {},  # noqa: B006 - KFP reads defaults from the signature
    search_space: dict = {},  # noqa: B006
    search: str = "random",
    max_trials: int = 8,
    seed: int = 42,
    primary_metric: str = "",
    metric_direction: str = "auto",
    tuning_folds: int = 3,
    mlflow_tracking_uri: str = "",
    pipeline_run_id: str = "",
) -> list[dict]:  # KFP types the loop's items (dicts) from this
    """Checks the search space and lists the trials, each checked against the estimator.

    Args:
        train: The training split; only its metadata's ``task`` is read here (what the
            trials fit: classifiers or regressors).
        estimator: The estimator the trials train (as train takes it).
        model_name: The registered model name; also the MLflow experiment of the tuning run.
        hyperparameters: The hyperparameters every trial starts from; the search space's
            values replace them.
        search_space: Hyperparameter -> a list of values, ``{range: [low, high]}``,
            ``{int_range: [low, high]}`` or ``{log_range: [low, high]}``
            (``training.tuning``). Empty: no tuning; train fits ``hyperparameters``.
        search: ``random`` (``max_trials`` distinct draws, seeded) or ``grid`` (every
            combination of lists, at most ``max_trials``).
        max_trials: The most trials.
        seed: Seed of the random draws.
        primary_metric: The metric the trials will be scored by (checked here); empty:
            the task's, as evaluate takes it.
        metric_direction: Its direction, as evaluate takes it (checked here).
        tuning_folds: The folds each trial is scored on, 2 to 20 (checked here).
        mlflow_tracking_uri: MLflow tracking server; empty uses ``$MLFLOW_TRACKING_URI``.
        pipeline_run_id: The KFP run, recorded as a tag on the tuning run.

    Returns:
        ``{trial, hyperparameters, tuning_run_id}`` per trial, numbered from 0, each with
        the MLflow run its own run is a child of (one list, what the loop iterates); without
        a search space, the one trial ``-1`` of ``hyperparameters``, which the loop skips,
        and no run.
    """
    from conveyor.components.core.data.task import CLASSIFICATION
    from conveyor.components.core.errors import step_errors
    from conveyor.components.core.training.tuning import plan_trials as plan
    from conveyor.components.core.training.tuning import start_tuning

    with step_errors("plan_trials"):
        scoring = (primary_metric, metric_direction, int(tuning_folds))
        task = str(train.metadata.get("task", CLASSIFICATION))
        trials = plan(
            estimator, hyperparameters, search_space, search, int(max_trials), seed, scoring, task
        )
        trials = start_tuning(trials, mlflow_tracking_uri, model_name, pipeline_run_id)
    print(f"plan_trials: {len(trials)} trial(s)")
    return trials
