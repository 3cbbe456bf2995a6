"""The Kubernetes API as a rollout needs it: InferenceServices in one namespace.

Plain ``CustomObjectsApi`` calls with dicts (the KServe SDK's patch cannot clear a
field). Transient failures (5xx, 429, a dropped connection) are retried with
backoff; a write conflict (409) is re-read and rebuilt; a missing permission
becomes one line naming it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

from components.core.errors import ConveyorError, first_line

__all__ = ["GROUP", "PLURAL", "RESOURCE", "VERSION", "InferenceServices", "api_client"]

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
RESOURCE = f"{PLURAL}.{GROUP}"  # the CRD is named for it too
_TRANSIENT = {429, 500, 502, 503, 504}


def api_client(kubeconfig: str = "", context: str = "") -> Any:
    """A client for the cluster: in-cluster credentials in a pod, else the kubeconfig."""
    from kubernetes import client, config

    try:
        if not kubeconfig and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config()
            return client.ApiClient()
        configuration = client.Configuration()
        config.load_kube_config(
            # $KUBECONFIG read now: the client reads it once, when it is first imported.
            config_file=kubeconfig or os.environ.get("KUBECONFIG") or None,
            context=context or None,
            client_configuration=configuration,
        )
        return client.ApiClient(configuration)
    except (config.ConfigException, OSError, TypeError) as error:
        raise ConveyorError(
            f"no Kubernetes credentials ({first_line(error)}): pass a kubeconfig, "
            "or run inside the cluster"
        ) from None


class InferenceServices:
    """Get, create and patch InferenceServices in ``namespace``."""

    def __init__(
        self,
        client: Any,
        namespace: str,
        attempts: int = 5,
        backoff_s: float = 0.2,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        from kubernetes.client import ApiextensionsV1Api, CustomObjectsApi

        self.namespace, self.attempts, self.backoff_s, self.sleep = (
            namespace,
            attempts,
            backoff_s,
            sleep,
        )
        self._objects = CustomObjectsApi(client)
        self._extensions = ApiextensionsV1Api(client)
        self._host = client.configuration.host

    def get(self, name: str) -> dict[str, Any] | None:
        """The InferenceService, or None where there is none."""
        from kubernetes.client.exceptions import ApiException

        try:
            return self._call(
                "get",
                name,
                lambda: self._objects.get_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, name
                ),
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body["metadata"]["name"]
        return self._call(
            "create",
            name,
            lambda: self._objects.create_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, body
            ),
        )

    def patch_fresh(
        self, name: str, build: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> dict[str, Any]:
        """Reads the object, merge-patches it with ``build(current)`` guarded by its
        resourceVersion, and on a conflict (409) reads again and rebuilds."""
        from kubernetes.client.exceptions import ApiException

        for attempt in range(self.attempts):
            current = self.get(name)
            if current is None:
                raise ConveyorError(f"InferenceService {self.namespace}/{name} was deleted")
            patch = build(current)
            version = current["metadata"]["resourceVersion"]
            patch.setdefault("metadata", {})["resourceVersion"] = version
            try:
                return self._call(
                    "patch",
                    name,
                    lambda patch=patch: self._objects.patch_namespaced_custom_object(
                        GROUP, VERSION, self.namespace, PLURAL, name, patch
                    ),
                )
            except ApiException as error:
                if error.status == 404:
                    raise ConveyorError(
                        f"InferenceService {self.namespace}/{name} was deleted"
                    ) from None
                if error.status != 409:
                    raise
                self.sleep(self.backoff_s * 2**attempt)
        raise ConveyorError(
            f"InferenceService {self.namespace}/{name} kept changing under the rollout: "
            f"{self.attempts} writes in a row conflicted (409)"
        )

    def crd_has_canary(self) -> bool:
        """Whether the installed InferenceService CRD offers ``spec.canary`` (KServe >= 0.20)."""
        response = self._call(
            "get",
            RESOURCE,
            # The raw JSON: the CRD is large, and only one key of its schema matters here.
            lambda: self._extensions.read_custom_resource_definition(
                RESOURCE, _preload_content=False
            ),
            resource="customresourcedefinitions.apiextensions.k8s.io",
        )
        versions = json.loads(response.data)["spec"]["versions"]
        return any(
            "canary" in version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            for version in versions
        )

    def _call(
        self, verb: str, name: str, request: Callable[[], Any], resource: str = RESOURCE
    ) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        for attempt in range(self.attempts):
            try:
                return request()
            except ApiException as error:
                if error.status not in _TRANSIENT or attempt == self.attempts - 1:
                    self._raise_if_final(error, verb, name, resource)
                    raise
            except HTTPError as error:
                if attempt == self.attempts - 1:
                    raise ConveyorError(
                        f"the Kubernetes API at {self._host} is unreachable: {first_line(error)}"
                    ) from None
            self.sleep(self.backoff_s * 2**attempt)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _raise_if_final(self, error: Any, verb: str, name: str, resource: str) -> None:
        """ConveyorError for an answer no retry mends; 404 and 409 are the caller's."""
        message = first_line(_status_message(error))
        if error.status == 401:
            raise ConveyorError(
                f"the Kubernetes API at {self._host} refused the credentials (401): {message}"
            ) from None
        if error.status == 403:
            where = f" in namespace {self.namespace}" if resource == RESOURCE else ""
            raise ConveyorError(
                f"permission denied: cannot {verb} {resource}{where} ({message}); "
                "grant it with kserve/rbac.yaml"
            ) from None
        if error.status in (404, 409) and verb != "create":
            return
        raise ConveyorError(
            f"the Kubernetes API refused to {verb} {resource} {name!r} in namespace "
            f"{self.namespace} ({error.status}): {message}"
        ) from None


def _status_message(error: Any) -> str:
    try:
        return json.loads(error.body).get("message") or error.reason
    except (TypeError, ValueError):
        return str(error.reason)
