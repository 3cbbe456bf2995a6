"""The training pipeline: ingest, validate, train, evaluate, then (if blessed) a shadow replay
of the champion's production traffic, then (if it passes) register, deploy."""

from kfp import dsl
from kfp.dsl.graph_component import GraphComponent

from conveyor.components.core.data.tables import DEFAULT_DATA_URI, DEFAULT_TARGET
from conveyor.components.core.errors import ConveyorError
from conveyor.components.deploy import deploy
from conveyor.components.evaluate import evaluate
from conveyor.components.ingest import ingest
from conveyor.components.plan_trials import plan_trials
from conveyor.components.register import register
from conveyor.components.select_trial import select_trial
from conveyor.components.shadow import shadow
from conveyor.components.train import train
from conveyor.components.tune_trial import tune_trial
from conveyor.components.validate import validate
from conveyor.pipelines.definitions.steps import apply_step_settings
from conveyor.pipelines.definitions.targets import Target

__all__ = [
    "DEFAULT_MODEL_NAME",
    "PIPELINE_NAME",
    "build_training_pipeline",
    "default_estimator",
]

PIPELINE_NAME = "conveyor-training"
DEFAULT_MODEL_NAME = "breast-cancer"


def default_estimator(target: Target) -> str:
    """The estimator by default: on a GPU, the one that trains there; else empty, the
    task's default (``estimators.DEFAULT_ESTIMATORS``)."""
    return "xgboost" if target.gpus else ""


def build_training_pipeline(target: Target) -> GraphComponent:
    """The training pipeline compiled for ``target`` (images, GPUs, platform settings).

    With a GPU the estimator is ``xgboost`` by default, the one that trains there; the train
    step uses one GPU, so more are refused here rather than left idle.
    """
    if target.gpus > 1:
        raise ConveyorError(
            f"--gpus {target.gpus}: Conveyor's train step trains on one GPU (XGBoost, one "
            "process); compile with --gpus 1"
        )

    @dsl.pipeline(name=PIPELINE_NAME, description=__doc__)
    def training(
        model_store_uri: str,
        data_uri: str = DEFAULT_DATA_URI,
        target_column: str = DEFAULT_TARGET,
        model_name: str = DEFAULT_MODEL_NAME,
        dvc_repo: str = "",
        data_revision: str = "",
        schema_uri: str = "",
        test_size: float = 0.2,
        seed: int = 42,
        task: str = "auto",
        estimator: str = default_estimator(target),
        hyperparameters: dict = {},  # noqa: B006 - KFP reads defaults from the signature
        search_space: dict = {},  # noqa: B006
        search: str = "random",
        max_trials: int = 8,
        tuning_folds: int = 3,
        calibration: str = "",
        mlflow_tracking_uri: str = "",
        primary_metric: str = "",
        metric_direction: str = "auto",
        min_improvement: float = 0.0,
        min_relative_improvement: float = 0.0,
        metric_floors: dict = {"accuracy": 0.7, "roc_auc": 0.7, "r2": 0.0},  # noqa: B006
        positive_class: str = "",
        threshold_policy: dict = {},  # noqa: B006
        id_columns: list = [],  # noqa: B006
        exclude_columns: list = [],  # noqa: B006
        text_columns: list = [],  # noqa: B006
        namespace: str = "default",
        serving_runtime: str = "",
        serving_cpu: str = "1",
        serving_memory: str = "2Gi",
        service_account: str = "",
        payload_log_uri: str = "",
        payload_log_exclude: list = [],  # noqa: B006
        rollout: bool = True,
        canary_steps: str = "10,50",
        canary_interval_s: float = 60.0,
        ready_timeout_s: float = 600.0,
        rollout_deadline_s: float = 3600.0,
        prometheus_url: str = "",
        canary_policy: dict = {},  # noqa: B006
        shadow_replay: bool = True,
        shadow_days: int = 7,
        shadow_segment_column: str = "",
        shadow_policy: dict = {},  # noqa: B006
        shadow_show_rows: int = 0,
        labels_uri: str = "",
        label_id_column: str = "id",
        label_column: str = "label",
    ):
        """Trains a classifier or a regressor, and registers and deploys it when it beats the
        champion and agrees closely enough with it on the champion's logged production inputs.

        Args:
            model_store_uri: Folder, gs:// or s3:// URI that KServe pulls models from.
            data_uri: CSV or Parquet table: path, URI, builtin://breast_cancer, or path in dvc_repo.
            target_column: The label column.
            model_name: Registered model name (MLflow) and InferenceService name.
            dvc_repo: Git repository whose DVC tracks data_uri; empty when not DVC.
            data_revision: Git revision of dvc_repo to read; empty for HEAD.
            schema_uri: Schema file the splits must meet (conveyor validate --write-schema);
                empty infers one from the training split.
            test_size: Share of rows held out for evaluation.
            seed: Seed of the split and the estimator.
            task: classification, regression, or auto: text and booleans are classes;
                numbers are regressed when one is not whole or there are more than 50
                distinct ones, else classes. The run's summary states the reason.
            estimator: random_forest, hist_gradient_boosting, xgboost or lightgbm (either
                task), logistic_regression (classification) or ridge (regression); empty:
                logistic_regression or ridge by task (xgboost when compiled with a GPU,
                the one that trains there).
            hyperparameters: Keyword arguments for the estimator (what tuning starts from).
            search_space: Hyperparameter -> values to try: a list, {range: [low, high]},
                {int_range: [low, high]} or {log_range: [low, high]}. Each trial is scored
                by cross-validation on the training split, one pod each, and train fits the
                best; empty: no tuning.
            search: random (max_trials distinct draws, seeded) or grid (every combination
                of lists).
            max_trials: The most trials.
            tuning_folds: Cross-validation folds each trial is scored on.
            calibration: sigmoid or isotonic calibrates the model's probabilities (5-fold);
                empty leaves them as the estimator gives them.
            mlflow_tracking_uri: MLflow tracking server; empty uses $MLFLOW_TRACKING_URI.
            primary_metric: Metric compared with the champion; empty: roc_auc for
                classification, rmse for regression.
            metric_direction: auto, maximize or minimize.
            min_improvement: Absolute gain over the champion the challenger must exceed.
            min_relative_improvement: Relative gain over the champion the challenger must reach.
            metric_floors: Metric -> bound every model must meet (a ceiling for log_loss,
                false_positive_rate, rmse, mae, mape); floors on the other task's metrics
                do not apply.
            positive_class: Binary positive class; empty picks 1/true/yes, else the rarer class.
            threshold_policy: How a binary model's decision threshold is chosen on the
                evaluation split ({max_false_positive_rate: 0.05}, {min_precision: 0.9},
                {min_recall: 0.8} or {costs: {false_positive: 1, false_negative: 20}});
                the predictor serves at it. Empty: the most probable class (0.5).
            id_columns: Columns identifying a row (an order id, ...): never features; the
                predictor passes them to its payload log, where labels join on the first.
                Text columns whose every value is distinct, and columns named like ids
                (customer_id) whose values are, are found without being named.
            exclude_columns: Columns never used as features (a column leaking the label).
            text_columns: Free-text columns to learn from (TF-IDF); free text found in the
                table and not named here is left out, with a note in validate's report.
            namespace: Kubernetes namespace of the InferenceService.
            serving_runtime: A ServingRuntime name; empty lets KServe pick one for sklearn.
            serving_cpu: CPU request and limit of the predictor.
            serving_memory: Memory request and limit of the predictor.
            service_account: Service account the predictor pulls the model with.
            payload_log_uri: Folder or URI under which the predictor logs the inputs it
                answers (a folder per InferenceService and day), for the monitoring
                pipeline; empty logs nothing.
            payload_log_exclude: Input columns the predictor never writes to its payload
                log (personal data, ...).
            rollout: False renders and validates the InferenceService only, without a
                cluster, and register makes the model the champion; true rolls it out, and
                it becomes the champion only if the rollout promotes it.
            canary_steps: Canary traffic percentages, comma-separated and increasing (1-99).
            canary_interval_s: Seconds between looks at the canary; the first is warm-up.
            ready_timeout_s: Seconds a new revision may take to become ready.
            rollout_deadline_s: Seconds the whole rollout may take before it is rolled back.
            prometheus_url: Prometheus the canary is judged from; required unless the
                canary policy says analysis: none.
            canary_policy: How the canary is judged (metrics, margins, error rates,
                limits), merged by name onto the defaults; empty uses the defaults.
            shadow_replay: False registers a blessed challenger without the replay (one
                whose new feature the champion's log lacks, on purpose).
            shadow_days: The last this many days of the champion's payload log (under
                payload_log_uri) are replayed through it and the challenger before
                registering; 0 replays all of it. No log, no champion: not judged.
            shadow_segment_column: Also compare the two models within each value of this
                logged input column.
            shadow_policy: The shadow gate's thresholds (max_disagreement, or
                max_relative_difference for a regression; max_score_shift,
                max_metric_drop, max_latency_ratio, confidence, min_rows), merged by name
                onto the defaults; empty uses the defaults.
            shadow_show_rows: List this many rows where the models differ most in the
                shadow report (production inputs; 0 lists none).
            labels_uri: Labels of logged requests (an id and a label column): the shadow
                replay compares both models' online accuracy and log loss on them.
            label_id_column: The labels' id column, matched with the log's conveyor.id.
            label_column: The labels' label column.
        """
        ingested = apply_step_settings(
            ingest(
                data_uri=data_uri,
                target_column=target_column,
                dvc_repo=dvc_repo,
                data_revision=data_revision,
                test_size=test_size,
                seed=seed,
                task=task,
            ),
            target,
        )
        validated = apply_step_settings(
            validate(
                train=ingested.outputs["train"],
                test=ingested.outputs["test"],
                target_column=target_column,
                schema_uri=schema_uri,
                id_columns=id_columns,
                exclude_columns=exclude_columns,
                text_columns=text_columns,
            ),
            target,
        )
        planned = apply_step_settings(
            plan_trials(
                train=ingested.outputs["train"],
                estimator=estimator,
                model_name=model_name,
                hyperparameters=hyperparameters,
                search_space=search_space,
                search=search,
                max_trials=max_trials,
                seed=seed,
                primary_metric=primary_metric,
                metric_direction=metric_direction,
                tuning_folds=tuning_folds,
                mlflow_tracking_uri=mlflow_tracking_uri,
                pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            ),
            target,
        )
        # Without a search space the loop runs its one trial, which does nothing.
        trials = dsl.ParallelFor(
            planned.output, parallelism=target.tuning_parallelism, name="trials"
        )
        with trials as trial:
            tried = apply_step_settings(
                tune_trial(
                    train=ingested.outputs["train"],
                    target_column=target_column,
                    estimator=estimator,
                    trial=trial,
                    primary_metric=primary_metric,
                    folds=tuning_folds,
                    seed=seed,
                    positive_class=positive_class,
                    schema=validated.outputs["schema"],
                    id_columns=id_columns,
                    calibration=calibration,
                    mlflow_tracking_uri=mlflow_tracking_uri,
                ),
                target,
            )
        selected = apply_step_settings(
            select_trial(
                results=dsl.Collected(tried.output),
                primary_metric=primary_metric,
                metric_direction=metric_direction,
                mlflow_tracking_uri=mlflow_tracking_uri,
            ),
            target,
        )
        trained = apply_step_settings(
            train(
                train=ingested.outputs["train"],
                test=ingested.outputs["test"],
                target_column=target_column,
                model_name=model_name,
                estimator=estimator,
                hyperparameters=selected.outputs["Output"],
                seed=seed,
                mlflow_tracking_uri=mlflow_tracking_uri,
                pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                positive_class=positive_class,
                schema=validated.outputs["schema"],
                id_columns=id_columns,
                calibration=calibration,
            ),
            target,
        )
        evaluated = apply_step_settings(
            evaluate(
                model=trained.outputs["model"],
                test=ingested.outputs["test"],
                target_column=target_column,
                model_name=model_name,
                mlflow_tracking_uri=mlflow_tracking_uri,
                primary_metric=primary_metric,
                metric_direction=metric_direction,
                min_improvement=min_improvement,
                min_relative_improvement=min_relative_improvement,
                metric_floors=metric_floors,
                positive_class=positive_class,
                threshold_policy=threshold_policy,
            ),
            target,
        )
        # A single bool output: kfp.local cannot resolve a named output in a condition.
        with dsl.If(evaluated.outputs["Output"] == True, name="blessed"):  # noqa: E712
            shadowed = apply_step_settings(
                shadow(
                    model=trained.outputs["model"],
                    evaluation=evaluated.outputs["evaluation"],
                    model_name=model_name,
                    payload_log_uri=payload_log_uri,
                    mlflow_tracking_uri=mlflow_tracking_uri,
                    days=shadow_days,
                    segment_column=shadow_segment_column,
                    labels_uri=labels_uri,
                    label_id_column=label_id_column,
                    label_column=label_column,
                    policy=shadow_policy,
                    show_rows=shadow_show_rows,
                    enabled=shadow_replay,
                ),
                target,
            )
            with dsl.If(shadowed.outputs["Output"] == True, name="shadow-passed"):  # noqa: E712
                registered = apply_step_settings(
                    register(
                        model=trained.outputs["model"],
                        evaluation=evaluated.outputs["evaluation"],
                        model_name=model_name,
                        model_store_uri=model_store_uri,
                        mlflow_tracking_uri=mlflow_tracking_uri,
                        pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                        rollout=rollout,
                    ),
                    target,
                )
                apply_step_settings(
                    deploy(
                        model_name=model_name,
                        model_version=registered.outputs["model_version"],
                        storage_uri=registered.outputs["storage_uri"],
                        model_sha256=registered.outputs["model_sha256"],
                        run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                        mlflow_tracking_uri=mlflow_tracking_uri,
                        namespace=namespace,
                        serving_runtime=serving_runtime,
                        serving_cpu=serving_cpu,
                        serving_memory=serving_memory,
                        service_account=service_account,
                        payload_log_uri=payload_log_uri,
                        payload_log_exclude=payload_log_exclude,
                        rollout=rollout,
                        canary_steps=canary_steps,
                        canary_interval_s=canary_interval_s,
                        ready_timeout_s=ready_timeout_s,
                        rollout_deadline_s=rollout_deadline_s,
                        prometheus_url=prometheus_url,
                        canary_policy=canary_policy,
                    ),
                    target,
                )

    return training
