"""The monitoring pipeline: what the model was asked and what it answered, checked against
its training, and the training pipeline started when the inputs drifted or its quality
fell.

champion_reference fetches, through the MLflow registry, what the champion's run recorded:
its training split and schema, its feature importances and its scores on the evaluation
split; ingest_inputs reads the log whole, for the answers and labels, then deletes days past
its retention. The payload log's files are then fanned out: plan_partitions lists them (at most 90
partitions), and each is read in a pod of its own (at most ``monitoring_parallelism`` at
once, fixed at compile time) by profile_partition, which summarises it for validation and
drift; check_partitions merges the summaries and fails the run on a broken feed (a missing
column, a null spike, an unseen category), as validate_inputs would on the whole log, before
anything is measured on it. Then three findings:

- feature drift, weighed by importance: count_partition counts each partition in the bins
  check_partitions fixed, and judge_drift decides from the merged counts, as drift does on
  one table;
- prediction_drift: the logged scores and classes, or predicted values, against
  evaluation's, on the log ingest_inputs read;
- quality: labels joined to the logged predictions; not measured without ``labels_uri``.

monitoring_verdict weighs them, writes why, and pushes them to a Pushgateway when one is
set; when feature drift or a degradation was found and ``retrain`` is on, the training
pipeline runs nested in this one, on ``data_uri``, and registers and deploys a challenger
only if it beats the champion, as it always does.
"""

from typing import Any

from kfp import dsl
from kfp.dsl.graph_component import GraphComponent
from kfp.dsl.pipeline_task import PipelineTask

from conveyor.components.champion_reference import champion_reference
from conveyor.components.check_partitions import check_partitions
from conveyor.components.core.data.tables import DEFAULT_DATA_URI, DEFAULT_TARGET
from conveyor.components.count_partition import count_partition
from conveyor.components.ingest_inputs import ingest_inputs
from conveyor.components.judge_drift import judge_drift
from conveyor.components.monitoring_verdict import monitoring_verdict
from conveyor.components.plan_partitions import plan_partitions
from conveyor.components.prediction_drift import prediction_drift
from conveyor.components.profile_partition import profile_partition
from conveyor.components.quality import quality
from conveyor.pipelines.definitions.steps import apply_step_settings
from conveyor.pipelines.definitions.targets import Target
from conveyor.pipelines.definitions.training import (
    DEFAULT_MODEL_NAME,
    build_training_pipeline,
    default_estimator,
)

__all__ = ["MONITORING_PIPELINE_NAME", "build_monitoring_pipeline"]

MONITORING_PIPELINE_NAME = "conveyor-monitoring"


def build_monitoring_pipeline(target: Target) -> GraphComponent:
    """The monitoring pipeline compiled for ``target``, the training pipeline nested in it."""
    training = build_training_pipeline(target)

    @dsl.pipeline(name=MONITORING_PIPELINE_NAME, description=__doc__)
    def monitoring(
        inputs_uri: str,
        model_store_uri: str,
        inputs_days: int = 0,
        model_name: str = DEFAULT_MODEL_NAME,
        mlflow_tracking_uri: str = "",
        segment_column: str = "",
        exclude_columns: list = [],  # noqa: B006 - KFP reads defaults from the signature
        drift_thresholds: dict = {},  # noqa: B006
        drift_rule: str = "importance",
        drift_importance_threshold: float = 0.1,
        drift_weighted_share: float = 0.3,
        drift_share: float = 0.5,
        drift_alpha: float = 0.01,
        min_segment_rows: int = 100,
        labels_uri: str = "",
        label_id_column: str = "id",
        label_column: str = "label",
        quality_margin: float = 0.02,
        pushgateway_url: str = "",
        payload_log_retention_days: int = 0,
        retrain: bool = True,
        data_uri: str = DEFAULT_DATA_URI,
        target_column: str = DEFAULT_TARGET,
        dvc_repo: str = "",
        data_revision: str = "",
        schema_uri: str = "",
        task: str = "auto",
        estimator: str = default_estimator(target),
        namespace: str = "default",
        rollout: bool = True,
        prometheus_url: str = "",
        canary_steps: str = "10,50",
        canary_policy: dict = {},  # noqa: B006
        payload_log_uri: str = "",
        payload_log_exclude: list = [],  # noqa: B006
        id_columns: list = [],  # noqa: B006
        training_exclude_columns: list = [],  # noqa: B006
        text_columns: list = [],  # noqa: B006
    ):
        """Checks recent inputs, answers and labels; retrains on drift or degradation.

        Args:
            inputs_uri: Recent inference inputs: CSV or Parquet path or URI, or a folder of
                them such as the serving runtime's payload log of this model.
            model_store_uri: Folder, gs:// or s3:// URI that KServe pulls models from.
            inputs_days: With a payload log, read only its last this many days (today, UTC,
                included); 0 reads all of inputs_uri.
            model_name: The registered model whose champion's training data is the reference.
            mlflow_tracking_uri: MLflow tracking server; empty uses $MLFLOW_TRACKING_URI.
            segment_column: Also judge drift within each value of this column.
            exclude_columns: Input columns not tested for drift (request ids, timestamps).
            drift_thresholds: Test -> threshold (psi, ks, chisquare, jensenshannon).
            drift_rule: ``importance`` (a drifted column weighing at least
                drift_importance_threshold of the champion's importance, or drifted columns
                weighing drift_weighted_share together) or ``share`` (drift_share of the
                columns, Evidently's rule).
            drift_importance_threshold: See drift_rule.
            drift_weighted_share: See drift_rule.
            drift_share: With drift_rule ``share``, the share of drifted columns at which
                the inputs have drifted.
            drift_alpha: The run's false-alarm rate for sampling noise, shared by all its
                column tests (overall and per segment).
            min_segment_rows: Segments with fewer rows are not judged.
            labels_uri: Labels that have arrived (CSV or Parquet with label_id_column and
                label_column, optionally ``time``), joined to the logged predictions on
                ``conveyor.id``; empty: quality is not measured.
            label_id_column: The labels' id column.
            label_column: The labels' label column.
            quality_margin: How far (absolute) past the champion's offline value an online
                metric's interval must lie to be a degradation.
            pushgateway_url: A Prometheus Pushgateway the findings are pushed to (job
                ``conveyor_monitoring``, group ``model``); empty pushes nothing.
            payload_log_retention_days: Delete the payload log's day folders older than
                this many days (they hold production inputs); 0 keeps them all.
            retrain: Start the training pipeline on feature drift or a degradation.
            data_uri: The training table the retraining reads (refreshed by then).
            target_column: The label column of data_uri.
            dvc_repo: Git repository whose DVC tracks data_uri; empty when not DVC.
            data_revision: Git revision of dvc_repo to read; empty for HEAD.
            schema_uri: Schema file the retraining's splits must meet; empty infers one.
            task: The retraining's task: classification, regression or auto (as the
                training pipeline decides it).
            estimator: The retraining's estimator.
            namespace: Kubernetes namespace of the InferenceService.
            rollout: False renders and validates the InferenceService without a cluster.
            prometheus_url: Prometheus the canary is judged from; required unless
                canary_policy says analysis: none.
            canary_steps: Canary traffic percentages, comma-separated and increasing.
            canary_policy: How the canary is judged, as the training pipeline's.
            payload_log_uri: Where a retrained model's predictor logs its inputs, as the
                training pipeline's; keep it as deployed, or the new model logs nothing.
            payload_log_exclude: Columns a retrained model's predictor never logs, as the
                training pipeline's.
            id_columns: The model's id columns: never features, not tested for drift, and
                passed to a retraining.
            training_exclude_columns: A retraining's exclude_columns (never features), as
                the training pipeline's; the champion's schema already keeps them out of
                drift.
            text_columns: A retraining's free-text features, as the training pipeline's.
        """
        reference = apply_step_settings(
            champion_reference(model_name=model_name, mlflow_tracking_uri=mlflow_tracking_uri),
            target,
        )
        # ingest_inputs reads the log whole for the answers and labels, then deletes days
        # past the retention whatever else fails; validation and drift then list the days
        # kept and read them in partitions.
        recent = apply_step_settings(
            ingest_inputs(
                inputs_uri=inputs_uri, inputs_days=inputs_days,
                retention_days=payload_log_retention_days,
            ),
            target,
        )  # fmt: skip
        checked, drifted = _fan_out(
            target,
            inputs_uri=inputs_uri,
            inputs_days=inputs_days,
            retention_days=payload_log_retention_days,
            reference=reference,
            segment_column=segment_column,
            exclude_columns=exclude_columns,
            id_columns=id_columns,
            settings={
                "thresholds": drift_thresholds,
                "rule": drift_rule,
                "importance_threshold": drift_importance_threshold,
                "weighted_share": drift_weighted_share,
                "drift_share": drift_share,
                "alpha": drift_alpha,
                "min_segment_rows": min_segment_rows,
            },
            after=recent,
        )
        answers = apply_step_settings(
            prediction_drift(
                reference_scores=reference.outputs["reference_scores"],
                log=recent.outputs["log"],
                segment_column=segment_column,
                thresholds=drift_thresholds,
                min_segment_rows=min_segment_rows,
                alpha=drift_alpha,
            ).after(checked),
            target,
        )
        judged = apply_step_settings(
            quality(
                log=recent.outputs["log"],
                reference_scores=reference.outputs["reference_scores"],
                labels_uri=labels_uri,
                model_name=model_name,
                mlflow_tracking_uri=mlflow_tracking_uri,
                segment_column=segment_column,
                days=inputs_days,
                id_column=label_id_column,
                label_column=label_column,
                margin=quality_margin,
            ).after(checked),
            target,
        )
        verdict = apply_step_settings(
            monitoring_verdict(
                model_name=model_name,
                drift_summary=drifted.outputs["summary"],
                prediction_summary=answers.outputs["summary"],
                quality_summary=judged.outputs["summary"],
                retrain=retrain,
                pushgateway_url=pushgateway_url,
                mlflow_tracking_uri=mlflow_tracking_uri,
                pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            ),
            target,
        )
        # A single bool output: kfp.local cannot resolve a named output in a condition.
        with dsl.If(verdict.outputs["Output"] == True, name="retrain"):  # noqa: E712
            training(
                model_store_uri=model_store_uri,
                data_uri=data_uri,
                target_column=target_column,
                model_name=model_name,
                dvc_repo=dvc_repo,
                data_revision=data_revision,
                schema_uri=schema_uri,
                task=task,
                estimator=estimator,
                mlflow_tracking_uri=mlflow_tracking_uri,
                namespace=namespace,
                rollout=rollout,
                prometheus_url=prometheus_url,
                canary_steps=canary_steps,
                canary_policy=canary_policy,
                payload_log_uri=payload_log_uri,
                payload_log_exclude=payload_log_exclude,
                id_columns=id_columns,
                exclude_columns=training_exclude_columns,
                text_columns=text_columns,
                labels_uri=labels_uri,
                label_id_column=label_id_column,
                label_column=label_column,
            )

    return monitoring


def _fan_out(
    target: Target,
    inputs_uri: Any,
    inputs_days: Any,
    retention_days: Any,
    reference: PipelineTask,
    segment_column: Any,
    exclude_columns: Any,
    id_columns: Any,
    settings: dict[str, Any],
    after: PipelineTask,
) -> tuple[PipelineTask, PipelineTask]:
    """Validation and drift over the inputs' partitions, each read in a pod of its own,
    twice: profiled (validation's summary, drift's profile), then, once the merged
    summaries pass validation, counted in the bins they fix. Returns the validating task
    and the judging one."""
    planned = apply_step_settings(
        plan_partitions(
            inputs_uri=inputs_uri, inputs_days=inputs_days, retention_days=retention_days,
            reference=reference.outputs["reference"], schema=reference.outputs["schema"],
            segment_column=segment_column, exclude_columns=exclude_columns,
            id_columns=id_columns,
        ).after(after),
        target,
    )  # fmt: skip
    tested = planned.outputs["tested"]
    with dsl.ParallelFor(
        planned.outputs["Output"], parallelism=target.monitoring_parallelism, name="profiles"
    ) as partition:
        profiled = apply_step_settings(
            profile_partition(
                partition=partition, tested=tested, schema=reference.outputs["schema"]
            ),
            target,
        )
    checked = apply_step_settings(
        check_partitions(
            profiles=dsl.Collected(profiled.outputs["profile"]),
            reference=reference.outputs["reference"],
            schema=reference.outputs["schema"],
            tested=tested,
        ),
        target,
    )
    with dsl.ParallelFor(
        planned.outputs["Output"], parallelism=target.monitoring_parallelism, name="counts"
    ) as partition:
        counted = apply_step_settings(
            count_partition(
                partition=partition, plan=checked.outputs["plan"], merged=checked.outputs["merged"]
            ),
            target,
        )
    return checked, apply_step_settings(
        judge_drift(
            counts=dsl.Collected(counted.outputs["counts"]),
            plan=checked.outputs["plan"],
            merged=checked.outputs["merged"],
            reference=reference.outputs["reference"],
            importance=reference.outputs["importance"],
            **settings,
        ),
        target,
    )
