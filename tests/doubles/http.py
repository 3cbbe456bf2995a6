"""What the loopback doubles share: the server, a handler dispatching every method, and
multipart form bodies read the way a server reads them."""

from __future__ import annotations

import email.policy
import threading
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["DoubleServer", "MethodHandler", "multipart_parts"]


class DoubleServer(ThreadingHTTPServer):
    """A loopback server on a free port whose handlers answer through ``double``."""

    daemon_threads = True

    def __init__(self, double: Any, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.double = double
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)

    def start(self) -> DoubleServer:
        """Serves from a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)


class MethodHandler(BaseHTTPRequestHandler):
    """Sends GET, POST, PUT, PATCH and DELETE to ``_serve(method)``, and logs nothing (the
    doubles record their requests instead)."""

    protocol_version = "HTTP/1.1"  # keep-alive, and chunked streams
    disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms stalls

    def do_GET(self) -> None:  # noqa: N802 - the names http.server dispatches to
        self._serve("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._serve("PUT")

    def do_PATCH(self) -> None:  # noqa: N802
        self._serve("PATCH")

    def do_DELETE(self) -> None:  # noqa: N802
        self._serve("DELETE")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Quiet: the recorded requests say what happened."""

    def _serve(self, method: str) -> None:
        raise NotImplementedError


def multipart_parts(header: str, body: bytes) -> dict[str, tuple[str, bytes]]:
    """The parts of a ``multipart/form-data`` body by field name: (filename, data)."""
    message = BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + header.encode() + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        return {}
    parts: dict[str, tuple[str, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            parts[name] = (part.get_filename() or "", part.get_payload(decode=True) or b"")
    return parts
