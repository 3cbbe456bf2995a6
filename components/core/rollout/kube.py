"""The Kubernetes API as a rollout needs it, in one namespace: InferenceServices, the
rollout's Lease and snapshot ConfigMap, and its Events.

Plain API calls with dicts (the KServe SDK's patch cannot clear a field). Every call has
a request timeout; transient failures (5xx, 429, a dropped connection, a timeout) are
retried with backoff for a time budget (``retry_s``: a few seconds, raised with
``patience`` for the writes that restore traffic); a missing permission becomes one line
naming it. A write conflict (409) is the caller's: ``patch_fresh`` re-reads and rebuilds,
the Lease decides who holds it.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from conveyor.components.core.errors import ConveyorError, first_line

__all__ = [
    "GROUP",
    "PLURAL",
    "RESOURCE",
    "VERSION",
    "Conflict",
    "Gone",
    "InferenceServices",
    "PermissionDenied",
    "Unavailable",
    "Namespaced",
    "Objects",
    "api_client",
]

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
RESOURCE = f"{PLURAL}.{GROUP}"  # the CRD is named for it too
_TRANSIENT = {429, 500, 502, 503, 504}
# (connect, read) seconds: no call the rollout makes streams, so a slower answer is a hang.
REQUEST_TIMEOUT_S = (5.0, 30.0)
_MAX_BACKOFF_S = 10.0


class Conflict(ConveyorError):
    """The object changed since it was read (409), or already exists on create."""


class Gone(ConveyorError):
    """The object was deleted (404 on a write)."""


class PermissionDenied(ConveyorError):
    """RBAC refused the call (403)."""


class Unavailable(ConveyorError):
    """The API kept failing transiently (5xx, 429, no connection) for the whole budget."""


def api_client(kubeconfig: str = "", context: str = "") -> Any:
    """A client for the cluster: in-cluster credentials in a pod, else the kubeconfig."""
    from kubernetes import client, config

    try:
        configuration = client.Configuration()
        if not kubeconfig and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)
        else:
            config.load_kube_config(
                # $KUBECONFIG read now: the client reads it once, when it is first imported.
                config_file=kubeconfig or os.environ.get("KUBECONFIG") or None,
                context=context or None,
                client_configuration=configuration,
            )
        # Retried here, within a budget: urllib3's own three retries would multiply it.
        configuration.retries = False
        return client.ApiClient(configuration)
    except (config.ConfigException, OSError, TypeError) as error:
        raise ConveyorError(
            f"no Kubernetes credentials ({first_line(error)}): pass a kubeconfig, "
            "or run inside the cluster"
        ) from None


class Namespaced:
    """API calls in ``namespace`` with a request timeout, retries and one-line errors.

    Args:
        client: A ``kubernetes.client.ApiClient``.
        namespace: Where the objects live.
        retry_s: How long transient failures of one call are retried.
        backoff_s: The first wait between tries; it doubles, up to 10 s.
        timeout_s: (connect, read) timeout of each request.
        sleep: Waits between tries (injected by tests).
        clock: Measures the retry budget (injected by tests).
    """

    def __init__(
        self,
        client: Any,
        namespace: str,
        retry_s: float = 3.0,
        backoff_s: float = 0.2,
        timeout_s: tuple[float, float] = REQUEST_TIMEOUT_S,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client, self.namespace = client, namespace
        self.retry_s, self.backoff_s, self.timeout_s = retry_s, backoff_s, timeout_s
        self.sleep, self.clock = sleep, clock
        self._host = client.configuration.host

    @contextlib.contextmanager
    def patience(self, seconds: float) -> Iterator[None]:
        """Transient failures retried for at least ``seconds`` while inside."""
        previous = self.retry_s
        self.retry_s = max(previous, seconds)
        try:
            yield
        finally:
            self.retry_s = previous

    def call(self, verb: str, resource: str, name: str, request: Callable[[Any], Any]) -> Any:
        """``request(timeout)``, retried while transient and within the budget: a call
        lasts at most ``retry_s`` plus one request timeout."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        started, waited, attempt = self.clock(), 0.0, 0
        while True:
            try:
                return request(self.timeout_s)
            except ApiException as error:
                if error.status not in _TRANSIENT:
                    self._raise_if_final(error, verb, name, resource)
                    raise
                failure = f"{error.status}: {first_line(_status_message(error))}"
            except HTTPError as error:  # refused, reset, or timed out
                failure = first_line(error)
            delay = min(self.backoff_s * 2**attempt, _MAX_BACKOFF_S)
            if max(self.clock() - started, waited) + delay > self.retry_s:
                raise Unavailable(
                    f"the Kubernetes API at {self._host} kept failing to {verb} {resource} "
                    f"{name!r} for {self.retry_s:g} s: {failure}"
                ) from None
            self.sleep(delay)
            waited += delay
            attempt += 1

    def _raise_if_final(self, error: Any, verb: str, name: str, resource: str) -> None:
        """ConveyorError for an answer no retry mends; Conflict for 409; 404 is the caller's."""
        message = first_line(_status_message(error))
        if error.status == 401:
            raise ConveyorError(
                f"the Kubernetes API at {self._host} refused the credentials (401): {message}"
            ) from None
        if error.status == 403:
            cluster_wide = resource.startswith("customresourcedefinitions")
            where = "" if cluster_wide else f" in namespace {self.namespace}"
            grant = "kserve/rbac-crd-reader.yaml" if cluster_wide else "kserve/rbac.yaml"
            raise PermissionDenied(
                f"permission denied: cannot {verb} {resource}{where} ({message}); "
                f"grant it with {grant}"
            ) from None
        if error.status == 409:
            raise Conflict(f"{resource} {name!r} in namespace {self.namespace}: {message}")
        if error.status == 404 and verb != "create":
            return
        raise ConveyorError(
            f"the Kubernetes API refused to {verb} {resource} {name!r} in namespace "
            f"{self.namespace} ({error.status}): {message}"
        ) from None


class InferenceServices(Namespaced):
    """Get, create and patch InferenceServices.

    ``before_write``, when set, runs before every write attempt (the rollout renews its
    Lease there, so each write is made while the Lease is known to be held).
    """

    def __init__(self, client: Any, namespace: str, conflicts: int = 5, **options: Any) -> None:
        from kubernetes.client import ApiextensionsV1Api, CustomObjectsApi

        super().__init__(client, namespace, **options)
        self.conflicts = conflicts
        self.before_write: Callable[[], None] | None = None
        self._objects = CustomObjectsApi(client)
        self._extensions = ApiextensionsV1Api(client)

    def get(self, name: str) -> dict[str, Any] | None:
        """The InferenceService, or None where there is none."""
        return _or_none(
            lambda: self.call(
                "get",
                RESOURCE,
                name,
                lambda timeout: self._objects.get_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, name, _request_timeout=timeout
                ),
            )
        )

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        self._guard()
        return self.call(
            "create",
            RESOURCE,
            body["metadata"]["name"],
            lambda timeout: self._objects.create_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, body, _request_timeout=timeout
            ),
        )

    def patch_fresh(
        self, name: str, build: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> dict[str, Any]:
        """Reads the object, merge-patches it with ``build(current)`` guarded by its
        resourceVersion, and on a conflict (409) reads again and rebuilds."""
        for attempt in range(self.conflicts):
            self._guard()
            current = self.get(name)
            if current is None:
                raise ConveyorError(f"InferenceService {self.namespace}/{name} was deleted")
            patch = build(current)
            patch.setdefault("metadata", {})["resourceVersion"] = current["metadata"][
                "resourceVersion"
            ]
            try:
                patched = _or_none(lambda patch=patch: self._patch(name, patch))
            except Conflict:
                self.sleep(self.backoff_s * 2**attempt)
                continue
            if patched is None:
                raise ConveyorError(f"InferenceService {self.namespace}/{name} was deleted")
            return patched
        raise ConveyorError(
            f"InferenceService {self.namespace}/{name} kept changing under the rollout: "
            f"{self.conflicts} writes in a row conflicted (409)"
        )

    def check_write(self, name: str) -> None:
        """A server-side dry run of an empty patch: raises PermissionDenied now, before
        anything is written, when this account may not patch the service. Any other answer
        (a webhook without dry-run support, say) is left for the real write to meet."""
        try:
            self.call(
                "patch",
                RESOURCE,
                name,
                lambda timeout: self._objects.patch_namespaced_custom_object(
                    GROUP,
                    VERSION,
                    self.namespace,
                    PLURAL,
                    name,
                    {},
                    dry_run="All",
                    _request_timeout=timeout,
                ),  # fmt: skip
            )
        except PermissionDenied:
            raise
        except Exception:  # noqa: BLE001, S110 - only the permission is checked here
            pass

    def crd_has_canary(self) -> bool:
        """Whether the installed InferenceService CRD offers ``spec.canary`` (KServe >= 0.20)."""
        response = self.call(
            "get",
            "customresourcedefinitions.apiextensions.k8s.io",
            RESOURCE,
            # The raw JSON: the CRD is large, and only one key of its schema matters here.
            lambda timeout: self._extensions.read_custom_resource_definition(
                RESOURCE, _preload_content=False, _request_timeout=timeout
            ),
        )
        versions = json.loads(response.data)["spec"]["versions"]
        return any(
            "canary" in version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            for version in versions
        )

    def _patch(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self.call(
            "patch",
            RESOURCE,
            name,
            lambda timeout: self._objects.patch_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name, patch, _request_timeout=timeout
            ),
        )

    def _guard(self) -> None:
        if self.before_write is not None:
            self.before_write()


class Objects(Namespaced):
    """Get, create and replace one built-in kind as dicts: ``lease`` (coordination.k8s.io),
    ``config_map`` or ``event`` (core). A replace carries the resourceVersion read: 409 is
    Conflict."""

    _APIS = {"lease": "CoordinationV1Api", "config_map": "CoreV1Api", "event": "CoreV1Api"}
    _RESOURCES = {
        "lease": "leases.coordination.k8s.io", "config_map": "configmaps", "event": "events"
    }  # fmt: skip

    def __init__(self, client: Any, namespace: str, kind: str, **options: Any) -> None:
        import kubernetes.client

        super().__init__(client, namespace, **options)
        self.kind, self.resource = kind, self._RESOURCES[kind]
        self._api = getattr(kubernetes.client, self._APIS[kind])(client)

    def get(self, name: str) -> dict[str, Any] | None:
        """The object, or None where there is none."""
        read = getattr(self._api, f"read_namespaced_{self.kind}")
        return _or_none(
            lambda: self._json(
                self.call(
                    "get",
                    self.resource,
                    name,
                    lambda timeout: read(
                        name, self.namespace, _preload_content=False, _request_timeout=timeout
                    ),
                )
            )
        )

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        create = getattr(self._api, f"create_namespaced_{self.kind}")
        return self._json(
            self.call(
                "create",
                self.resource,
                body["metadata"]["name"],
                lambda timeout: create(
                    self.namespace, body, _preload_content=False, _request_timeout=timeout
                ),
            )
        )

    def replace(self, body: dict[str, Any]) -> dict[str, Any]:
        """Writes ``body`` whole; raises Conflict when it changed since its resourceVersion,
        ConveyorError when it is gone."""
        name = body["metadata"]["name"]
        replace = getattr(self._api, f"replace_namespaced_{self.kind}")
        found = _or_none(
            lambda: self._json(
                self.call(
                    "update",
                    self.resource,
                    name,
                    lambda timeout: replace(
                        name,
                        self.namespace,
                        body,
                        _preload_content=False,
                        _request_timeout=timeout,
                    ),  # fmt: skip
                )
            )
        )
        if found is None:
            raise Gone(f"{self.resource} {self.namespace}/{name} was deleted")
        return found

    @staticmethod
    def _json(response: Any) -> dict[str, Any]:
        return json.loads(response.data)


def _or_none(request: Callable[[], Any]) -> Any:
    """The answer, or None for 404."""
    from kubernetes.client.exceptions import ApiException

    try:
        return request()
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def _status_message(error: Any) -> str:
    try:
        return json.loads(error.body).get("message") or error.reason
    except (TypeError, ValueError):
        return str(error.reason)
