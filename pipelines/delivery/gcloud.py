"""Google Cloud credentials, and one line for whatever a Google client raises.

Credentials are Application Default Credentials (``gcloud auth application-default login``,
``GOOGLE_APPLICATION_CREDENTIALS``, or the metadata server on Google Cloud), refreshed once
up front: a missing or refused credential stops a command before any request is sent.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

from conveyor.components.core.errors import ConveyorError, first_line

__all__ = ["CLOUD_PLATFORM", "call", "credentials"]

CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
_REQUEST_PREFIX = re.compile(r"^[A-Z]+ https?://\S+: ")
_LOGIN = (
    "run 'gcloud auth application-default login', or set GOOGLE_APPLICATION_CREDENTIALS to "
    "a service account key file"
)


def credentials() -> Any:
    """Application Default Credentials for the cloud-platform scope, with a fresh token."""
    import google.auth
    import google.auth.transport.requests
    from google.auth.exceptions import DefaultCredentialsError

    try:
        found, _ = google.auth.default(scopes=[CLOUD_PLATFORM])
    except DefaultCredentialsError as error:
        if os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
            raise ConveyorError(f"GOOGLE_APPLICATION_CREDENTIALS: {first_line(error)}") from None
        raise ConveyorError(f"no Google Cloud credentials found: {_LOGIN}") from None
    call(
        "get an access token",
        "Google Cloud",
        lambda: found.refresh(google.auth.transport.requests.Request()),
    )
    return found


def call(what: str, service: str, request: Callable[[], Any]) -> Any:
    """Runs ``request``; a refusal, a missing permission or no answer becomes one line that
    names ``service`` and ``what`` was being done."""
    import urllib.error

    import requests
    from google.api_core.exceptions import GoogleAPICallError, RetryError
    from google.auth.exceptions import RefreshError, TransportError

    try:
        return request()
    except RefreshError as error:
        raise ConveyorError(
            f"Google Cloud refused the credentials ({_reason(error)}): {_LOGIN}"
        ) from None
    except GoogleAPICallError as error:
        # Over REST the message starts with the request: "POST https://…: <the service's>".
        message = _REQUEST_PREFIX.sub("", error.message or "")
        raise _refused(what, service, int(error.code or 0), message) from None
    except requests.HTTPError as error:
        response = error.response
        raise _refused(what, service, response.status_code, _message(response)) from None
    except urllib.error.HTTPError as error:  # aiplatform reads templates over HTTPS with urllib
        raise _refused(what, service, error.code, str(error.reason)) from None
    except (TransportError, RetryError, requests.ConnectionError, OSError) as error:
        raise ConveyorError(f"{service} is unreachable ({what}): {_cause(error)}") from None


def _refused(what: str, service: str, status: int, message: str) -> ConveyorError:
    detail = first_line(Exception(message))
    if status == 401:
        return ConveyorError(
            f"{service} refused the credentials (401) when trying to {what}: {detail}"
        )
    if status == 403:
        return ConveyorError(f"permission denied (403): cannot {what}: {detail}")
    if status == 404:
        return ConveyorError(f"not found (404): cannot {what}: {detail}")
    return ConveyorError(f"{service} could not {what} ({status}): {detail}")


def _message(response: Any) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text.strip() or response.reason


def _reason(error: BaseException) -> str:
    """google-auth passes the token endpoint's JSON answer as the error's second argument."""
    answer = error.args[1] if len(error.args) > 1 and isinstance(error.args[1], dict) else {}
    return answer.get("error_description") or answer.get("error") or first_line(error)


def _cause(error: BaseException) -> str:
    """The innermost error of a chain (the socket's, not the pool's summary), or the last
    answer a retry loop gave up on."""
    from google.api_core.exceptions import GoogleAPICallError, RetryError

    if isinstance(error, RetryError) and isinstance(error.cause, GoogleAPICallError):
        return first_line(Exception(error.cause.message))
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    return first_line(error)
