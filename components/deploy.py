"""Deploy: render the KServe InferenceService for a registered model and validate it."""

from kfp import dsl
from kfp.dsl import Artifact, Output

from components.images import BASE_IMAGE

__all__ = ["deploy"]


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def deploy(
    model_name: str,
    model_version: str,
    storage_uri: str,
    manifest: Output[Artifact],
    namespace: str = "default",
    canary_traffic_percent: int = 10,
    serving_runtime: str = "",
    serving_cpu: str = "1",
    serving_memory: str = "2Gi",
    service_account: str = "",
):
    """Renders the InferenceService manifest and validates it against KServe's CRD schema.

    The canary rollout that applies it comes in a later release; this step is its seam.

    Args:
        model_name: The registered model's name; the InferenceService name derives from it.
        model_version: The registered version being deployed (an annotation).
        storage_uri: Where the model directory was published (``storageUri``).
        manifest: Output InferenceService YAML. Metadata: ``name``, ``namespace``, ``storage_uri``.
        namespace: Kubernetes namespace of the InferenceService.
        canary_traffic_percent: Share of traffic (0-100) the new revision gets on an update.
        serving_runtime: A ServingRuntime name; empty lets KServe pick one for sklearn.
        serving_cpu: CPU request and limit of the predictor.
        serving_memory: Memory request and limit of the predictor.
        service_account: Service account the predictor pulls the model with.
    """
    from pathlib import Path

    from components.core.errors import step_errors
    from components.core.manifests import ServingSpec, deploy_manifest

    spec = ServingSpec(
        model_name=model_name,
        model_version=model_version,
        storage_uri=storage_uri,
        namespace=namespace,
        canary_traffic_percent=canary_traffic_percent,
        runtime=serving_runtime,
        cpu=serving_cpu,
        memory=serving_memory,
        service_account=service_account,
    )
    with step_errors("deploy"):
        rendered = deploy_manifest(spec, Path(manifest.path))
    manifest.metadata.update(
        {
            "name": rendered["metadata"]["name"],
            "namespace": namespace,
            "storage_uri": storage_uri,
        }
    )
