"""Evaluate: score the model, compare it with the champion, decide whether it is blessed."""

from kfp import dsl
from kfp.dsl import (
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
    mlflow_tracking_uri: str = "",
    primary_metric: str = "roc_auc",
    metric_direction: str = "auto",
    min_improvement: float = 0.0,
    min_relative_improvement: float = 0.0,
    metric_floors: dict = {"accuracy": 0.7, "roc_auc": 0.7},  # noqa: B006 - KFP reads defaults
    positive_class: str = "",
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
            (binary, or macro one-vs-rest for multi-class), and false_positive_rate (binary
            targets only).
        classification_metrics: Output confusion matrix, and ROC curve for binary targets.
        report: Output Markdown: the verdict and why, metrics, champion comparison.
        evaluation: Output JSON with the metrics, ``blessed``, ``reason``, the comparison
            and ``warnings`` (an evaluation split under 50 rows, with the accuracy's
            interval). Metadata: ``blessed``, ``reason``, ``warnings``.
        mlflow_tracking_uri: MLflow tracking server; empty uses ``$MLFLOW_TRACKING_URI``.
        primary_metric: The metric compared with the champion.
        metric_direction: ``auto`` (the metric's natural direction), ``maximize`` or ``minimize``.
        min_improvement: The challenger must beat the champion by more than this (absolute).
        min_relative_improvement: ...and by at least this fraction of the champion's value.
        metric_floors: Metric -> bound every model must meet (a ceiling for log_loss).
        positive_class: For a binary target, the class precision, recall, F1, the
            false-positive rate and the ROC curve are about; empty takes the one the model
            card recorded at training (the class serving scores), and for a card without
            one picks 1/true/yes if present, else the rarer class.

    Returns:
        Whether the model is blessed (register and deploy run only then).
    """
    from pathlib import Path

    from conveyor.components.core.errors import step_errors
    from conveyor.components.core.training.evaluation import Policy, evaluate_model
    from conveyor.components.core.training.trainer import mlflow_run_id

    policy = Policy(
        metric=primary_metric,
        direction=metric_direction,
        min_improvement=min_improvement,
        min_relative_improvement=min_relative_improvement,
        floors=metric_floors,
    )
    with step_errors("evaluate"):
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
        )
    scores, decision = result.scores, result.decision
    for name, value in scores.metrics.items():
        metrics.log_metric(name, value)
    classification_metrics.log_confusion_matrix(scores.curves.labels, scores.curves.confusion)
    if scores.curves.roc is not None:
        classification_metrics.log_roc_curve(*scores.curves.roc)
    evaluation.metadata.update(
        {"blessed": decision.blessed, "reason": decision.reason, "warnings": list(result.warnings)}
    )
    if scores.positive_class is not None:
        evaluation.metadata["positive_class"] = str(scores.positive_class)
    return decision.blessed
