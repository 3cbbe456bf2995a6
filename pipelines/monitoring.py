"""The monitoring pipeline: recent inference inputs checked against the champion's training
data, and the training pipeline started when they have drifted.

ingest_inputs reads the inputs (a payload log); champion_reference fetches, through the
MLflow registry, the training split and schema the champion's run recorded; validate_inputs
fails the run on a broken feed (a missing column, a null spike, an unseen category) before
drift is measured on it; drift decides, and records why in its Markdown, HTML and Metrics;
when the dataset has drifted and ``retrain`` is on, the training pipeline runs nested in
this one, on ``data_uri``, and registers and deploys a challenger only if it beats the
champion, as it always does.
"""

from kfp import dsl
from kfp.dsl.graph_component import GraphComponent

from components.champion_reference import champion_reference
from components.core.data import DEFAULT_DATA_URI, DEFAULT_TARGET
from components.drift import drift
from components.ingest_inputs import ingest_inputs
from components.validate_inputs import validate_inputs
from pipelines.targets import Target
from pipelines.training import DEFAULT_MODEL_NAME, build_training_pipeline, configure_step

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
        drift_share: float = 0.5,
        min_segment_rows: int = 100,
        retrain: bool = True,
        data_uri: str = DEFAULT_DATA_URI,
        target_column: str = DEFAULT_TARGET,
        dvc_repo: str = "",
        data_revision: str = "",
        schema_uri: str = "",
        estimator: str = "logistic_regression",
        namespace: str = "default",
        rollout: bool = True,
        prometheus_url: str = "",
        canary_steps: str = "10,50",
        canary_policy: dict = {},  # noqa: B006
        payload_log_uri: str = "",
    ):
        """Checks recent inference inputs for drift; retrains when they have drifted.

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
            drift_share: Share of drifted columns at which the inputs have drifted.
            min_segment_rows: Segments with fewer rows are not judged.
            retrain: Start the training pipeline when the inputs have drifted.
            data_uri: The training table the retraining reads (refreshed by then).
            target_column: The label column of data_uri.
            dvc_repo: Git repository whose DVC tracks data_uri; empty when not DVC.
            data_revision: Git revision of dvc_repo to read; empty for HEAD.
            schema_uri: Schema file the retraining's splits must meet; empty infers one.
            estimator: The retraining's estimator.
            namespace: Kubernetes namespace of the InferenceService.
            rollout: False renders and validates the InferenceService without a cluster.
            prometheus_url: Prometheus the canary is judged from; required unless
                canary_policy says analysis: none.
            canary_steps: Canary traffic percentages, comma-separated and increasing.
            canary_policy: How the canary is judged, as the training pipeline's.
            payload_log_uri: Where a retrained model's predictor logs its inputs, as the
                training pipeline's; keep it as deployed, or the new model logs nothing.
        """
        reference = configure_step(
            champion_reference(model_name=model_name, mlflow_tracking_uri=mlflow_tracking_uri),
            "champion_reference",
            target,
        )
        recent = configure_step(
            ingest_inputs(inputs_uri=inputs_uri, inputs_days=inputs_days), "ingest_inputs", target
        )
        checked = configure_step(
            validate_inputs(inputs=recent.outputs["inputs"], schema=reference.outputs["schema"]),
            "validate_inputs",
            target,
        )
        drifted = configure_step(
            drift(
                reference=reference.outputs["reference"],
                current=recent.outputs["inputs"],
                segment_column=segment_column,
                exclude_columns=exclude_columns,
                thresholds=drift_thresholds,
                drift_share=drift_share,
                min_segment_rows=min_segment_rows,
            ).after(checked),
            "drift",
            target,
        )
        # A single bool output: kfp.local cannot resolve a named output in a condition.
        with (
            dsl.If(drifted.outputs["Output"] == True, name="drifted"),  # noqa: E712
            dsl.If(retrain == True, name="retrain"),  # noqa: E712
        ):
            training(
                model_store_uri=model_store_uri,
                data_uri=data_uri,
                target_column=target_column,
                model_name=model_name,
                dvc_repo=dvc_repo,
                data_revision=data_revision,
                schema_uri=schema_uri,
                estimator=estimator,
                mlflow_tracking_uri=mlflow_tracking_uri,
                namespace=namespace,
                rollout=rollout,
                prometheus_url=prometheus_url,
                canary_steps=canary_steps,
                canary_policy=canary_policy,
                payload_log_uri=payload_log_uri,
            )

    return monitoring
