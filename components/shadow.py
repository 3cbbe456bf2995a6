"""Shadow: replay the champion's logged production inputs through it and the challenger,
and gate the challenger before it is registered or any user sees its answers."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Input, Markdown, Metrics, Model, Output

from conveyor.components.images import BASE_IMAGE

__all__ = ["shadow"]


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def shadow(
    model: Input[Model],
    evaluation: Input[Artifact],
    model_name: str,
    metrics: Output[Metrics],
    report: Output[Markdown],
    html_report: Output[HTML],
    summary: Output[Artifact],
    payload_log_uri: str = "",
    mlflow_tracking_uri: str = "",
    days: int = 7,
    segment_column: str = "",
    labels_uri: str = "",
    label_id_column: str = "id",
    label_column: str = "label",
    policy: dict = {},  # noqa: B006 - KFP reads defaults from the signature
    show_rows: int = 0,
    enabled: bool = True,
) -> bool:
    """Scores the last ``days`` of the champion's payload log with the champion and the
    challenger, and passes the challenger only if they agree closely enough.

    The gate fails when the models' predicted classes differ on more than
    ``max_disagreement`` of the rows (overall or in a segment) beyond sampling noise, when
    the PSI between their scores reaches ``max_score_shift``, when an online metric
    (accuracy, log loss) on the labelled rows is worse by more than ``max_metric_drop``
    beyond noise, or when the challenger's batch scoring time per row exceeds
    ``max_latency_ratio`` times the champion's (each model's fastest of 5 timed calls). The
    statistical tests share a 5 % chance of failing a challenger exactly at the limits.

    Two regressors (the log's task, which champion and challenger must share: a classifier
    against a regressor fails the step in one line) are compared on their predicted values
    instead: the gate fails when their mean absolute difference, over the champion's mean
    absolute deviation, is above ``max_relative_difference`` (overall or in a segment)
    beyond noise, when the PSI of the predicted values on the champion's deciles reaches
    ``max_score_shift``, when the online MAE on numeric labels is higher than the
    champion's by more than ``max_metric_drop`` of it (a fraction) beyond noise, or on the
    scoring time as above.

    With no payload log configured, no champion yet, no log written yet, fewer than
    ``min_rows`` logged rows, or ``enabled`` false, nothing is judged and the gate passes,
    saying why. Fails the step, with one line and nothing registered, on a log of another
    model, a challenger whose feature columns the log lacks, an empty window, a corrupt log
    file, or (regressors) labels that are not numbers.

    Args:
        model: The challenger's model directory (train's output; its ``mlflow_run_id``
            metadata names the run the verdict is recorded on: tags ``shadow.passed`` and
            ``shadow.reason``, ``shadow.md``, and an audit event).
        evaluation: evaluate's verdict (JSON): the challenger predicts at the decision
            threshold it chose, as it will serve (the champion at its own).
        model_name: The registered model: its champion is compared with, and its
            InferenceService's payload log (``<payload_log_uri>/<service name>``) replayed.
        metrics: Output metrics: ``passed``, ``rows``, ``disagreement``, ``score_psi``,
            ``mean_absolute_score_difference``, ``online_<metric>_difference`` and
            ``scoring_time_ratio`` (those measured); for regressors
            ``relative_difference`` and ``mean_absolute_difference`` in place of the
            disagreement, ``score_psi`` of the predicted values, and
            ``online_mae_difference``, ``online_rmse_difference``.
        report: Output Markdown: the verdict and why, disagreement (regressors: relative
            difference) per segment, score shift, online metrics, batch scoring time, and
            the thresholds.
        html_report: Output HTML: disagreement (relative difference) by segment and both
            models' score (predicted value) histograms.
        summary: Output JSON: everything the report shows. Metadata: ``passed``, ``reason``.
        payload_log_uri: The training pipeline's ``payload_log_uri``; empty: not judged.
        mlflow_tracking_uri: MLflow tracking server; empty uses ``$MLFLOW_TRACKING_URI``.
        days: The last this many UTC days of the log, ending with its newest row; 0: all.
        segment_column: Also compare within each value of this logged input column.
        labels_uri: Labels (CSV or Parquet: an id and a label column) to compare both
            models' online accuracy and log loss on (regressors: numbers, MAE and RMSE);
            empty compares none.
        label_id_column: The labels' id column, matched with the log's ``conveyor.id``.
        label_column: The labels' label column.
        policy: Thresholds merged by name onto the defaults: ``max_disagreement`` (0.1),
            ``max_relative_difference`` (0.25, regressors), ``max_score_shift`` (0.25),
            ``max_metric_drop`` (0.02: accuracy points; regressors, a fraction of the
            champion's MAE), ``max_latency_ratio`` (10.0), ``latency_floor_ms`` (1.0),
            ``confidence`` (0.95), ``min_rows`` (100).
        show_rows: List this many rows where the models differ most in the report (they
            are production inputs; 0 lists none).
        enabled: False replays nothing and passes, saying so (a challenger with a feature
            the log lacks, registered on purpose).

    Returns:
        Whether the challenger passed (register and deploy run only then).
    """
    from pathlib import Path

    from conveyor.components.core.errors import step_errors
    from conveyor.components.core.monitoring.shadow import (
        ShadowPolicy,
        ShadowRun,
        ShadowSettings,
        not_judged,
        shadow_gate,
    )
    from conveyor.components.core.monitoring.shadow_report import (
        ShadowOutputs,
        log_to_run,
        write_outputs,
    )
    from conveyor.components.core.rollout.manifests import model_log_uri
    from conveyor.components.core.training.evaluation import decision_threshold
    from conveyor.components.core.training.trainer import load_model_dir, mlflow_run_id

    with step_errors("shadow"):
        settings = ShadowSettings(
            days=days, segment=segment_column, show_rows=show_rows,
            id_column=label_id_column, label_column=label_column,
        )  # fmt: skip
        run = ShadowRun(
            model=model_name,
            log_uri=model_log_uri(payload_log_uri, model_name),
            tracking_uri=mlflow_tracking_uri,
            policy=ShadowPolicy.from_dict(policy),
            settings=settings,
            labels_uri=labels_uri,
        )
        threshold = decision_threshold(Path(evaluation.path))
        report_ = (
            shadow_gate(load_model_dir(Path(model.path)).at_threshold(threshold), run)
            if enabled
            else not_judged(
                "Not judged: the shadow replay is off (shadow_replay=false)", run.policy
            )
        )
        log_to_run(mlflow_tracking_uri, mlflow_run_id(model.metadata), model_name, report_)
    write_outputs(
        report_,
        ShadowOutputs(Path(report.path), Path(html_report.path), Path(summary.path)),
    )
    for name, value in report_.metrics().items():
        metrics.log_metric(name, value)
    summary.metadata.update({"passed": report_.passed, "reason": report_.reason})
    return report_.passed
