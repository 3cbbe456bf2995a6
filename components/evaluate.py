"""Evaluate: score the model, compare it with the champion, decide whether it is blessed."""

from kfp import dsl
from kfp.dsl import (
    HTML,
    Artifact,
    ClassificationMetrics,
    Dataset,
    Input,
    Markdown,
    Metrics,
    Model,
    Output,
)

from conveyor.components.images import BASE_IMAGE

__all__ = ["evaluate"]


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def evaluate(
    model: Input[Model],
    test: Input[Dataset],
    target_column: str,
    model_name: str,
    metrics: Output[Metrics],
    classification_metrics: Output[ClassificationMetrics],
    report: Output[Markdown],
    evaluation: Output[Artifact],
    reliability: Output[HTML],
    residuals: Output[HTML],
    mlflow_tracking_uri: str = "",
    primary_metric: str = "",
    metric_direction: str = "auto",
    min_improvement: float = 0.0,
    min_relative_improvement: float = 0.0,
    metric_floors: dict = {"accuracy": 0.7, "roc_auc": 0.7, "r2": 0.0},  # noqa: B006
    positive_class: str = "",
    threshold_policy: dict = {},  # noqa: B006 - KFP reads defaults
) -> bool:
    """Scores the model on the evaluation split and judges it against floors and the champion.

    The champion (the version holding the ``champion`` alias of ``model_name`` in
    MLflow's registry) is scored on the same evaluation split. With no champion
    yet, only the floors apply.

    Args:
        model: The trained model directory (its metadata names the MLflow run).
        test: The evaluation split (Parquet).
        target_column: The label column.
        model_name: The registered model name the champion is looked up under.
        metrics: Output scalar metrics: accuracy, precision, recall, f1, roc_auc, log_loss
            (binary, or macro one-vs-rest for multi-class), false_positive_rate (binary
            targets only), brier_score and expected_calibration_error (see
            ``reliability``), and decision_threshold (with a threshold policy met); for a
            regression model rmse, mae, r2 and mape (a fraction; only where no true value
            is zero).
        classification_metrics: Output confusion matrix (at the decision threshold), and
            ROC curve for binary targets; empty for a regression model.
        report: Output Markdown: the verdict and why, metrics, champion comparison.
        evaluation: Output JSON with the metrics, ``blessed``, ``reason``, the comparison,
            ``warnings`` (an evaluation split under 50 rows, with the accuracy's
            interval) and ``threshold`` (the chosen one, its policy, precision, recall and
            false-positive rate with its 95 % interval; null without a policy), which
            register stores with the model, and ``reliability`` (the diagram's bins, the
            Brier score and the expected calibration error). Metadata: ``blessed``,
            ``reason``, ``warnings``, ``decision_threshold``.
        reliability: Output HTML: the reliability diagram on the evaluation split (the
            positive class's probability for a binary model, the predicted class's for
            more), with each bin's observed rate and its 95 % interval, the Brier score
            and the expected calibration error beside its noise floor (a regression model:
            a page saying it has none).
        residuals: Output HTML: a regression model's predicted against true values, its
            residuals against predicted values, their histogram and quantiles (a
            classification model: a page saying it has none).
        mlflow_tracking_uri: MLflow tracking server; empty uses ``$MLFLOW_TRACKING_URI``.
        primary_metric: The metric compared with the champion; empty: ``roc_auc`` for a
            classification model, ``rmse`` for a regression model.
        metric_direction: ``auto`` (the metric's natural direction), ``maximize`` or ``minimize``.
        min_improvement: The challenger must beat the champion by more than this (absolute).
        min_relative_improvement: ...and by at least this fraction of the champion's value.
        metric_floors: Metric -> bound every model must meet (a ceiling for log_loss,
            false_positive_rate, rmse, mae and mape). A floor on the other task's metric
            does not apply (the report lists it), so one dict serves both tasks.
        positive_class: For a binary target, the class precision, recall, F1, the
            false-positive rate and the ROC curve are about; empty takes the one the model
            card recorded at training (the class serving scores), and for a card without
            one picks 1/true/yes if present, else the rarer class.
        threshold_policy: How a binary model's decision threshold is chosen on the
            evaluation split: ``{max_false_positive_rate: 0.05}``, ``{min_precision: 0.9}``
            (each with the most recall), ``{min_recall: 0.8}`` (with the fewest false
            positives) or ``{costs: {false_positive: 1, false_negative: 20}}`` (the least
            total cost); empty predicts the most probable class (0.5). The class metrics,
            floors and champion comparison are at the chosen threshold (the champion at
            its own); a policy no threshold meets leaves the model unblessed.

    Returns:
        Whether the model is blessed (register and deploy run only then).
    """
    from pathlib import Path

    from conveyor.components.core.errors import step_errors
    from conveyor.components.core.training.evaluation import Policy, evaluate_model
    from conveyor.components.core.training.thresholds import ThresholdPolicy
    from conveyor.components.core.training.trainer import mlflow_run_id

    with step_errors("evaluate"):
        policy = Policy(
            metric=primary_metric,
            direction=metric_direction,
            min_improvement=min_improvement,
            min_relative_improvement=min_relative_improvement,
            floors=metric_floors,
            threshold=ThresholdPolicy.from_dict(threshold_policy),
        )
        result = evaluate_model(
            model_dir=Path(model.path),
            test_path=Path(test.path),
            target=target_column,
            model_name=model_name,
            tracking_uri=mlflow_tracking_uri,
            run_id=mlflow_run_id(model.metadata),
            policy=policy,
            positive_class=positive_class,
            evaluation_path=Path(evaluation.path),
            report_path=Path(report.path),
            reliability_path=Path(reliability.path),
            residuals_path=Path(residuals.path),
        )
    scores, decision = result.scores, result.decision
    for name, value in scores.metrics.items():
        metrics.log_metric(name, value)
    if scores.curves is not None:
        classification_metrics.log_confusion_matrix(scores.curves.labels, scores.curves.confusion)
    if scores.curves is not None and scores.curves.roc is not None:
        classification_metrics.log_roc_curve(*scores.curves.roc)
    evaluation.metadata.update(
        {"blessed": decision.blessed, "reason": decision.reason, "warnings": list(result.warnings)}
    )
    if scores.positive_class is not None:
        evaluation.metadata["positive_class"] = str(scores.positive_class)
    evaluation.metadata["task"] = result.task
    if result.reliability is not None:
        metrics.log_metric("brier_score", result.reliability.brier_score)
        calibration_error = result.reliability.expected_calibration_error
        metrics.log_metric("expected_calibration_error", calibration_error)
    threshold = result.decision_threshold()
    if threshold is not None:
        metrics.log_metric("decision_threshold", threshold)
        evaluation.metadata["decision_threshold"] = threshold
    return decision.blessed
