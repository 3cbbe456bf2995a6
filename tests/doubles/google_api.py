"""What the Google Cloud doubles share: a request as a service sees it, and Google's JSON
error shape."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Answer", "CloudError", "CloudRequest", "not_implemented"]

_STATUS = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
    404: "NOT_FOUND", 409: "ALREADY_EXISTS", 501: "UNIMPLEMENTED", 502: "UNAVAILABLE",
}  # fmt: skip


class CloudError(Exception):
    """An answer other than 2xx, in Google's JSON error shape."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "code": self.status,
                "message": self.message,
                "status": _STATUS.get(self.status, "UNKNOWN"),
            }
        }


@dataclass(frozen=True)
class CloudRequest:
    """One request as it reached a service (after TLS), for assertions."""

    method: str
    host: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    body: bytes
    json: Any = None
    files: dict[str, tuple[str, bytes]] | None = None  # multipart: (filename, data)
    form: dict[str, str] | None = None  # application/x-www-form-urlencoded

    @property
    def token(self) -> str:
        scheme, _, token = self.headers.get("authorization", "").partition(" ")
        return token if scheme.lower() == "bearer" else ""


# A service answers (status, body, content type); body bytes are sent as they are.
Answer = tuple[int, Any, str]


def not_implemented(request: CloudRequest) -> CloudError:
    return CloudError(501, f"the double does not implement {request.method} {request.path}")
