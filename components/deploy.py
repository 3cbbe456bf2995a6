"""Deploy: a canary rollout of the registered model to a KServe InferenceService, and the
MLflow ``champion`` alias moved to it when it serves."""

from kfp import dsl
from kfp.dsl import Artifact, Markdown, Metrics, Output

from conveyor.components.images import BASE_IMAGE

__all__ = ["deploy"]


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def deploy(
    model_name: str,
    model_version: str,
    storage_uri: str,
    run_id: str,
    manifest: Output[Artifact],
    report: Output[Markdown],
    rollout_metrics: Output[Metrics],
    model_sha256: str = "",
    mlflow_tracking_uri: str = "",
    namespace: str = "default",
    serving_runtime: str = "",
    serving_cpu: str = "1",
    serving_memory: str = "2Gi",
    service_account: str = "",
    payload_log_uri: str = "",
    payload_log_exclude: list = [],  # noqa: B006 - KFP reads defaults from the signature
    rollout: bool = True,
    canary_steps: str = "10,50",
    canary_interval_s: float = 60.0,
    ready_timeout_s: float = 600.0,
    rollout_deadline_s: float = 3600.0,
    prometheus_url: str = "",
    canary_policy: dict = {},  # noqa: B006 - KFP reads defaults from the signature
) -> str:
    """Renders the InferenceService and rolls it out as a canary: promoted or rolled back.

    A first deploy creates the service. An update sends the new model each share of
    ``canary_steps`` in turn, analyses the canary after ``canary_interval_s`` at each
    step, promotes it to 100 % when all pass, and otherwise rolls back and fails.

    Args:
        model_name: The registered model's name; the InferenceService name derives from it.
        model_version: The registered version being deployed (an annotation).
        storage_uri: Where the model directory was published (``storageUri``).
        run_id: The pipeline run, holder of the rollout lock.
        manifest: Output InferenceService YAML. Metadata: ``name``, ``namespace``, ``storage_uri``.
        report: Output Markdown: the decision, why, the revisions and every measurement.
            Metadata: ``decision``, ``url``, ``stable_revision``, ``canary_revision``,
            ``analysis``, ``champion`` (the champion's version after the rollout).
        rollout_metrics: Output Metrics: each measured value, ``step<percent>_<role>_<measure>``.
        model_sha256: The registry's sha256 of the model file (register's ``model_sha256``);
            the predictor refuses a file with any other hash. Empty checks the file
            against its model card only.
        mlflow_tracking_uri: MLflow tracking server holding ``model_version``; empty uses
            ``$MLFLOW_TRACKING_URI``. Not contacted when ``rollout`` is false.
        namespace: Kubernetes namespace of the InferenceService.
        serving_runtime: A ServingRuntime name; empty lets KServe pick one for sklearn.
        serving_cpu: CPU request and limit of the predictor.
        serving_memory: Memory request and limit of the predictor.
        service_account: Service account the predictor pulls the model with.
        payload_log_uri: Folder or URI under which the predictor logs the inputs it answers
            (a folder per InferenceService and day), for the monitoring pipeline; empty
            logs nothing.
        payload_log_exclude: Input columns the predictor never writes to its payload log
            (personal data, ...).
        rollout: False renders and validates the InferenceService only, without a cluster,
            and register makes the model the champion; true rolls it out, and it becomes
            the champion only if the rollout promotes it.
        canary_steps: Canary traffic percentages, comma-separated and increasing (1-99).
        canary_interval_s: Seconds between looks at the canary; the first is warm-up.
        ready_timeout_s: Seconds a new revision may take to become ready.
        rollout_deadline_s: Seconds the whole rollout may take before it is rolled back.
        prometheus_url: Prometheus the canary is judged from; required unless the canary
            policy says analysis: none.
        canary_policy: How the canary is judged (metrics, margins, error rates, limits),
            merged by name onto the defaults; empty uses the defaults.

    Returns:
        The decision: ``created``, ``promoted``, ``promoted_without_analysis`` (``analysis:
        none``) or ``skipped`` (``rollout`` false). A rolled back or failed rollout fails
        the step, with the reason as its last log line.
    """
    from pathlib import Path

    from conveyor.components.core.errors import ConveyorError, first_line, step_errors
    from conveyor.components.core.files import write_text_atomically
    from conveyor.components.core.rollout.manifests import ServingSpec, deploy_manifest
    from conveyor.components.core.rollout.runner import RolloutSettings, deploy_model
    from conveyor.components.core.rollout.settings import SETTING_NAMES
    from conveyor.components.core.training.registry import check_rollout_allowed, record_rollout

    # KFP ships only this function's source, so the declared settings are passed on by
    # name from its parameters (a test checks the signature declares each of them).
    parameters = locals()
    with step_errors("deploy"):
        settings = RolloutSettings.from_parameters(
            {name: parameters[name] for name in SETTING_NAMES}
        )
        spec = ServingSpec(
            model_name=model_name,
            model_version=model_version,
            storage_uri=storage_uri,
            namespace=namespace,
            canary_traffic_percent=settings.plan.steps[0],
            runtime=serving_runtime,
            cpu=serving_cpu,
            memory=serving_memory,
            service_account=service_account,
            payload_log_uri=payload_log_uri,
            model_sha256=model_sha256,
            payload_log_exclude=tuple(str(column) for column in payload_log_exclude),
        )
        rendered = deploy_manifest(spec, Path(manifest.path))
        manifest.metadata.update(
            {
                "name": rendered["metadata"]["name"],
                "namespace": namespace,
                "storage_uri": storage_uri,
            }
        )
        if not rollout:
            write_text_atomically(
                Path(report.path),
                f"# {rendered['metadata']['name']}: not rolled out\n\n"
                "`rollout` is false: the manifest was rendered and validated only.\n",
            )
            return "skipped"
        check_rollout_allowed(mlflow_tracking_uri, model_name, model_version, run_id)
        result = deploy_model(spec, settings, run_id, Path(report.path))
        try:
            champion = record_rollout(
                mlflow_tracking_uri, model_name, model_version, result, run_id
            )
        except Exception as error:  # noqa: BLE001 - an MLflow outage too; the outcome first
            raise ConveyorError(
                f"{result.decision}: {result.reason or 'done'}; but the registry was not "
                f"updated ({first_line(error)}): re-run the step to record it"
            ) from None
        for key, value in result.metrics().items():
            rollout_metrics.log_metric(key, value)
        report.metadata.update(
            {
                "decision": result.decision,
                "url": result.url,
                "stable_revision": result.stable_revision,
                "canary_revision": result.canary_revision,
                "analysis": settings.policy.analysis,
                "champion": champion,
            }
        )
        result.check()  # a rolled-back or failed rollout fails the step, with its reason
    if result.decision == "promoted" and not settings.policy.analysed:
        return "promoted_without_analysis"
    return result.decision
