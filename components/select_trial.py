"""Select trial: the best trial by the primary metric, whose hyperparameters train fits."""

from kfp import dsl
from kfp.dsl import Markdown, Output

from conveyor.components.images import BASE_IMAGE

__all__ = ["select_trial"]


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def select_trial(
    results: list,
    report: Output[Markdown],
    primary_metric: str = "",
    metric_direction: str = "auto",
    mlflow_tracking_uri: str = "",
) -> dict:
    """Chooses the trial with the best mean score across its folds (the earliest of equals)
    and writes a Markdown table of every trial.

    Args:
        results: Every tune_trial's result (``dsl.Collected`` over the tuning loop).
        report: Output Markdown: each trial's hyperparameters, its folds' mean and spread,
            the chosen one marked; also ``tuning.md`` of the trials' tuning run in MLflow,
            which is tagged with the chosen trial and its run, then ended.
        primary_metric: The metric the trials were scored by; empty: the one they name.
        metric_direction: ``auto`` (the metric's own), ``maximize`` or ``minimize``, as
            evaluate takes it.
        mlflow_tracking_uri: MLflow tracking server; empty uses ``$MLFLOW_TRACKING_URI``.

    Returns:
        The chosen trial's hyperparameters; without a search space, the ones given.
    """
    from pathlib import Path

    from conveyor.components.core.errors import step_errors
    from conveyor.components.core.training.tuning import select_trials

    with step_errors("select_trial"):
        selection = select_trials(results, primary_metric, metric_direction, mlflow_tracking_uri)
    Path(report.path).write_text(selection.report, encoding="utf-8")
    if selection.chosen is not None:
        report.metadata.update({"chosen_trial": selection.chosen.trial, "trials": len(results)})
        print(f"select_trial: trial {selection.chosen.trial} of {len(results)}")
    return selection.hyperparameters
