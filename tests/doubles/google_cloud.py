"""Google Cloud on loopback, for tests: the real ``google-auth``, ``google-cloud-aiplatform``,
``google-cloud-storage`` and ``kfp.registry`` clients run unchanged against it.

``GoogleCloudDouble`` is an HTTPS proxy on 127.0.0.1. The clients reach Google's real host
names (``oauth2.googleapis.com``, ``REGION-aiplatform.googleapis.com``,
``storage.googleapis.com``, ``REGION-kfp.pkg.dev``, ``artifactregistry.googleapis.com``)
through ``HTTPS_PROXY``; the proxy answers each ``CONNECT`` itself, terminates TLS with a
certificate from a CA made for the test (trusted through ``REQUESTS_CA_BUNDLE`` and
``SSL_CERT_FILE``), and hands each request to the service that owns the host:

- OAuth 2.0: the refresh-token grant of an ``authorized_user`` credentials file that
  ``environment()`` points ``GOOGLE_APPLICATION_CREDENTIALS`` at; every other service
  demands one of the access tokens it issued (401 ``UNAUTHENTICATED`` otherwise).
- Cloud Storage: bucket metadata (``GET /storage/v1/b/NAME``) for the buckets given.
- Cloud Resource Manager v3 ``Projects.GetProject``, over gRPC as its client speaks it: the
  tunnel to ``cloudresourcemanager.googleapis.com`` is spliced to a local gRPC server with
  the same certificate (trusted through ``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH``).
- Vertex AI (``tests.doubles.vertex_api``) and Artifact Registry
  (``tests.doubles.artifact_registry``).

Errors have Google's JSON shape, ``{"error": {"code", "message", "status"}}``; tests can
deny a method and path prefix (403 ``PERMISSION_DENIED``), revoke the issued tokens, and
read every request. Nothing leaves the machine: a host no service owns answers 502.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import json
import re
import secrets
import shutil
import socket
import ssl
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from tests.doubles.artifact_registry import ArtifactRegistryDouble
from tests.doubles.google_api import Answer, CloudError, CloudRequest
from tests.doubles.http import DoubleServer, MethodHandler, multipart_parts
from tests.doubles.vertex_api import VertexAiDouble

__all__ = ["GoogleCloudDouble"]

# Hosts whose certificate the test CA signs.
_NAMES = ("*.googleapis.com", "*.pkg.dev")
_GRPC_HOST = "cloudresourcemanager.googleapis.com"
_UNAUTHENTICATED = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
    "cookie or other valid authentication credential."
)


class GoogleCloudDouble:
    """The proxy and the services behind it; a context manager.

    Args:
        workdir: Where the credentials file is written.
        project: The project id the services know.
        project_number: What Vertex AI writes into resource names in place of the id.
        buckets: Cloud Storage buckets that exist, owned by the project. ``self.buckets`` maps
            each bucket to its owner's project number; add one owned by someone else there.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        project: str = "example-ml",
        project_number: str = "123456789012",
        buckets: tuple[str, ...] = ("example-ml-pipelines",),
    ) -> None:
        self.workdir = workdir
        self.project, self.project_number = project, project_number
        self.buckets = dict.fromkeys(buckets, project_number)
        self.vertex = VertexAiDouble(project, project_number)
        self.registry = ArtifactRegistryDouble(project)
        self.requests: list[CloudRequest] = []
        self.errors: list[BaseException] = []  # the double's own failures, raised at exit
        self.refresh_token = secrets.token_urlsafe(16)
        self._tokens: set[str] = set()
        self._denied: list[tuple[str, str, int]] = []
        self._lock = threading.RLock()
        self._server: DoubleServer | None = None
        self._tls: ssl.SSLContext | None = None
        self._grpc: Any = None
        self.grpc_port = 0
        self.proxy_url = ""

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> GoogleCloudDouble:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._tls.load_cert_chain(_CERTIFICATES / "server.pem", _CERTIFICATES / "server.key")
        self._grpc, self.grpc_port = self._resource_manager()
        self._server = DoubleServer(self, _ProxyHandler).start()
        self.proxy_url = self._server.url
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if self._server:
            self._server.stop()
        if self._grpc:
            self._grpc.stop(grace=None)
        if self.errors and exc_type is None:
            raise self.errors[0]

    def environment(self) -> dict[str, str]:
        """What a client process needs to reach the double, and only the double: the proxy,
        the CA, a credentials file, and no GCE metadata server or gcloud configuration."""
        credentials = self.workdir / "application_default_credentials.json"
        credentials.write_text(
            json.dumps(
                {
                    "type": "authorized_user",
                    "client_id": "conveyor-tests.apps.googleusercontent.com",
                    "client_secret": "not-a-secret",
                    "refresh_token": self.refresh_token,
                }
            )
        )
        ca = str(_CERTIFICATES / "ca.pem")
        return {
            "HTTPS_PROXY": self.proxy_url,
            "https_proxy": self.proxy_url,
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            "REQUESTS_CA_BUNDLE": ca,
            "SSL_CERT_FILE": ca,
            "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH": ca,
            "GOOGLE_APPLICATION_CREDENTIALS": str(credentials),
            "CLOUDSDK_CONFIG": str(self.workdir / "gcloud"),
            # The metadata server's address is not on loopback: point it at a closed port.
            "GCE_METADATA_HOST": "127.0.0.1:9",
            "GCE_METADATA_IP": "127.0.0.1:9",
        }

    # -- fault injection -------------------------------------------------------------------

    def deny(self, method: str, host: str, path_prefix: str = "/", status: int = 403) -> None:
        """Requests with ``method`` ("*" for any) to ``host`` whose path starts with
        ``path_prefix`` answer 403 PERMISSION_DENIED, as for a missing IAM permission (or
        401 UNAUTHENTICATED with ``status=401``, as for a token the service no longer takes)."""
        with self._lock:
            self._denied.append((method.upper(), f"{host}{path_prefix}", status))

    def revoke(self) -> None:
        """Every issued access token and the refresh token stop working."""
        with self._lock:
            self._tokens.clear()
            self.refresh_token = ""

    def sent(self, host_suffix: str) -> list[CloudRequest]:
        """The requests that reached hosts ending in ``host_suffix``."""
        return [request for request in self.requests if request.host.endswith(host_suffix)]

    # -- answering -------------------------------------------------------------------------

    def _respond(self, request: CloudRequest) -> Answer:
        with self._lock:
            self.requests.append(request)
            try:
                if request.host == "oauth2.googleapis.com":
                    return self._oauth(request)
                self._admit(request)
                return self._service(request.host)(request)
            except CloudError as error:
                return error.status, error.body(), "application/json"
            except Exception as error:  # a bug in the double: answer 500, raise it at __exit__
                self.errors.append(error)
                return 500, CloudError(500, f"double failed: {error!r}").body(), "application/json"

    def _admit(self, request: CloudRequest) -> None:
        denied = [
            status
            for method, prefix, status in self._denied
            if method in ("*", request.method)
            and f"{request.host}{request.path}".startswith(prefix)
        ]
        if request.token not in self._tokens or 401 in denied:
            raise CloudError(401, _UNAUTHENTICATED)
        if denied:
            raise CloudError(
                403, f"Permission denied on resource {request.path} (or it may not exist)."
            )

    def _service(self, host: str) -> Callable[[CloudRequest], Answer]:
        if host == "storage.googleapis.com":
            return self._storage
        if host.endswith("-aiplatform.googleapis.com"):
            return self.vertex.answer
        if host == "artifactregistry.googleapis.com" or host.endswith("-kfp.pkg.dev"):
            return self.registry.answer
        raise CloudError(502, f"the double has no service at {host}")

    def _oauth(self, request: CloudRequest) -> Answer:
        form = request.form or {}
        if form.get("grant_type") != "refresh_token":
            return 400, {"error": "unsupported_grant_type"}, "application/json"
        if not self.refresh_token or form.get("refresh_token") != self.refresh_token:
            body = {
                "error": "invalid_grant",
                "error_description": "Token has been expired or revoked.",
            }
            return 400, body, "application/json"
        token = f"ya29.{secrets.token_urlsafe(24)}"
        self._tokens.add(token)
        body = {"access_token": token, "expires_in": 3599, "token_type": "Bearer"}
        return 200, body, "application/json"

    def _storage(self, request: CloudRequest) -> Answer:
        match = re.fullmatch(r"/storage/v1/b/([^/]+)", request.path)
        if request.method != "GET" or not match:
            raise CloudError(501, f"the double does not implement {request.method} {request.path}")
        name = match.group(1)
        if name not in self.buckets:
            raise CloudError(404, "The specified bucket does not exist.")
        body = {
            "kind": "storage#bucket",
            "id": name,
            "name": name,
            "location": "EU",
            "projectNumber": self.buckets[name],
        }
        return 200, body, "application/json"

    def _resource_manager(self) -> tuple[Any, int]:
        """A gRPC server answering ``Projects.GetProject`` for this project, by id or number."""
        import grpc
        from google.cloud.resourcemanager_v3.types import projects

        def get_project(request: Any, context: Any) -> Any:
            metadata = dict(context.invocation_metadata())
            headers = {"authorization": metadata.get("authorization", "")}
            path = f"/GetProject/{request.name}"
            cloud = CloudRequest("GRPC", _GRPC_HOST, path, {}, headers, b"")
            with self._lock:
                self.requests.append(cloud)
                if cloud.token not in self._tokens:
                    context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid credentials")
            if request.name not in (f"projects/{self.project}", f"projects/{self.project_number}"):
                context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"Permission denied on resource '{request.name}' (or it may not exist).",
                )
            return projects.Project(
                name=f"projects/{self.project_number}",
                project_id=self.project,
                state=projects.Project.State.ACTIVE,
            )

        handler = grpc.method_handlers_generic_handler(
            "google.cloud.resourcemanager.v3.Projects",
            {
                "GetProject": grpc.unary_unary_rpc_method_handler(
                    get_project,
                    request_deserializer=projects.GetProjectRequest.deserialize,
                    response_serializer=projects.Project.serialize,
                )
            },
        )
        server = grpc.server(ThreadPoolExecutor(max_workers=2), handlers=(handler,))
        key, chain = (
            (_CERTIFICATES / "server.key").read_bytes(),
            (_CERTIFICATES / "server.pem").read_bytes(),
        )
        port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key, chain)]))
        server.start()
        return server, port


class _ProxyHandler(MethodHandler):
    """``CONNECT`` opens a TLS tunnel the handler then reads requests from; requests for
    the tunnelled host go to the double."""

    server: DoubleServer
    tunnel_host = ""

    def do_CONNECT(self) -> None:  # noqa: N802 - the name http.server dispatches to
        host = self.path.rsplit(":", 1)[0]
        self.send_response(200, "Connection established")
        self.end_headers()
        self.wfile.flush()
        if host == _GRPC_HOST:  # HTTP/2: the gRPC server speaks it, with the same certificate
            self._splice(socket.create_connection(("127.0.0.1", self.server.double.grpc_port)))
            return
        tls = self.server.double._tls.wrap_socket(self.connection, server_side=True)
        self.connection = tls
        self.rfile = tls.makefile("rb")
        self.wfile = tls.makefile("wb")
        self.tunnel_host = host
        self.close_connection = False  # clients send CONNECT as HTTP/1.0: keep the tunnel

    def _splice(self, upstream: socket.socket) -> None:
        """Copies bytes both ways until either side closes."""

        def pump(source: socket.socket, sink: socket.socket) -> None:
            try:
                while data := source.recv(65536):
                    sink.sendall(data)
            except OSError:
                pass
            finally:
                for end in (source, sink):
                    with contextlib.suppress(OSError):
                        end.shutdown(socket.SHUT_RDWR)

        back = threading.Thread(target=pump, args=(upstream, self.connection), daemon=True)
        back.start()
        pump(self.connection, upstream)
        back.join(timeout=5)
        upstream.close()
        self.close_connection = True

    def _serve(self, method: str) -> None:
        if not self.tunnel_host:  # plain http through the proxy: nothing of Google's is there
            self._send(502, b"plain http is not proxied", "text/plain")
            return
        url = urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        header = self.headers.get("Content-Type") or ""
        content_type = header.split(";")[0].strip().lower()
        parsed, files, form = None, None, None
        if content_type == "multipart/form-data":
            files = multipart_parts(header, body)
        elif content_type == "application/x-www-form-urlencoded":
            form = dict(parse_qsl(body.decode()))
        elif body and "json" in content_type:
            try:
                parsed = json.loads(body)
            except ValueError:
                self._send(
                    400,
                    json.dumps(CloudError(400, "Invalid JSON payload.").body()).encode(),
                    "application/json",
                )
                return
        request = CloudRequest(
            method=method,
            host=self.tunnel_host,
            path=unquote(url.path),
            query=dict(parse_qsl(url.query, keep_blank_values=True)),
            headers={name.lower(): value for name, value in self.headers.items()},
            body=body,
            json=parsed,
            files=files,
            form=form,
        )
        status, payload, kind = self.server.double._respond(request)
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self._send(status, data, kind)

    def _send(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _write_certificates(workdir: Path) -> Path:
    """A CA (``ca.pem``, for the clients to trust) and the certificate it signed for Google's
    host names (``server.pem``, ``server.key``), written to ``workdir``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Conveyor test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "googleapis.com")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in _NAMES]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (workdir / "ca.pem").write_bytes(ca.public_bytes(pem))
    (workdir / "server.pem").write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
    (workdir / "server.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return workdir


# One CA for the whole test process: gRPC reads GRPC_DEFAULT_SSL_ROOTS_FILE_PATH only once.
_CERTIFICATES = _write_certificates(Path(tempfile.mkdtemp(prefix="google-cloud-double-")))
atexit.register(shutil.rmtree, _CERTIFICATES, ignore_errors=True)
