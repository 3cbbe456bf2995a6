"""A loopback Kubeflow Pipelines API server (REST v2beta1), for tests.

``KfpApiDouble`` answers the requests ``kfp.Client`` sends the way a single-user KFP 2.17
API server does, so the real client runs against it unchanged: the multipart pipeline
uploads, filtered and paged lists, experiments, runs and recurring runs, with JSON in the
server's snake_case (``UseProtoNames``) and RFC 3339 timestamps. What the server checks,
the double checks: uploaded packages must hold one KFP v2 pipeline spec (schema 2.1.0,
``pipelineInfo.name``, ``root``), names are unique, run parameters must match the root
component's inputs by name and type, and cron schedules go through robfig/cron v1's parser,
which reads six fields, seconds first, and also accepts five (day of week left out), so a
standard cron such as ``0 2 * * *`` is silently taken as "second 0, minute 2, every hour".

Errors are shaped like the server's: grpc-gateway's ``{"code": <gRPC code>, "message": ...,
"details": [google.rpc.Status]}`` on the gateway routes, ``{"error_message": ...,
"error_details": ...}`` from the two upload handlers. Tests can demand a bearer token
(401 without it), deny routes (403), queue transient failures, and read every request.
Endpoints the double leaves out answer 501 and say so; everything is kept in memory.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import re
import tarfile
import threading
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import yaml

from tests.doubles.http import DoubleServer, MethodHandler, multipart_parts

__all__ = ["ApiError", "CronError", "KfpApiDouble", "RecordedRequest", "parse_cron"]

API = "/apis/v2beta1"
SCHEMA_VERSION = "2.1.0"
DEFAULT_EXPERIMENT = "Default"
_UPLOADS = (f"{API}/pipelines/upload", f"{API}/pipelines/upload_version")
# HTTP status -> the gRPC code grpc-gateway maps to it.
_GRPC = {400: 3, 401: 16, 403: 7, 404: 5, 409: 6, 429: 8, 500: 13, 501: 12, 503: 14, 504: 4}
_RPC_STATUS = "type.googleapis.com/google.rpc.Status"


@dataclass(frozen=True)
class RecordedRequest:
    """One request as it reached the server (before auth), for assertions."""

    method: str
    path: str
    query: dict[str, str]
    content_type: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    json: Any = None  # the parsed body when it was JSON
    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # multipart: (filename, data)


class ApiError(Exception):
    """An answer other than 2xx. ``message`` is what the server logs and sends back (the
    wrapped chain); ``external`` the user-facing part it also puts in ``details``."""

    def __init__(self, status: int, message: str, external: str = "") -> None:
        super().__init__(message)
        self.status, self.message, self.external = status, message, external or message

    def gateway_body(self) -> dict[str, Any]:
        code = _GRPC.get(self.status, 2)
        detail = {"@type": _RPC_STATUS, "code": code, "message": self.external}
        return {"code": code, "message": self.message, "details": [detail]}

    def upload_body(self) -> dict[str, Any]:
        return {"error_message": self.message, "error_details": self.message}


def _invalid(message: str, wrap: str = "") -> ApiError:
    chain = f"Invalid input error: {message}"
    return ApiError(400, f"{wrap}: {chain}" if wrap else chain, message)


def _not_found(kind: str, ident: str, wrap: str) -> ApiError:
    external = f"{kind} {ident} not found"
    return ApiError(404, f"{wrap}: ResourceNotFoundError: {external}", external)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _message(**fields: Any) -> dict[str, Any]:
    """A message as protojson writes it with EmitUnpopulated off: unset fields left out."""
    return {
        key: value for key, value in fields.items() if value not in (None, "", 0, False, {}, [])
    }


# -- robfig/cron v1.2.0, as the API server validates schedules --------------------------------


class CronError(ValueError):
    """robfig/cron refused the expression; the message is the parser's."""


_MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_MONTHS = {name: number for number, name in enumerate(_MONTH_NAMES, start=1)}
_DAYS = {
    name: number for number, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))
}
_CRON_FIELDS = ((0, 59, {}), (0, 59, {}), (0, 23, {}), (1, 31, {}), (1, 12, _MONTHS), (0, 6, _DAYS))
_DESCRIPTORS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
_GO_DURATION = re.compile(r"[-+]?(?:(?:\d+\.?\d*|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+|[-+]?0")


def parse_cron(spec: str) -> tuple[str, ...]:
    """The six fields (second, minute, hour, day of month, month, day of week) robfig/cron
    v1's ``cron.Parse`` reads from ``spec``, or the descriptor itself; raises CronError with
    its message. Five fields are accepted: day of week is then ``*``."""
    if not spec:
        raise CronError("Empty spec string")
    if spec.startswith("@"):
        if spec in _DESCRIPTORS:
            return (spec,)
        if spec.startswith("@every "):
            duration = spec[len("@every ") :]
            if not _GO_DURATION.fullmatch(duration):
                raise CronError(
                    f'Failed to parse duration {spec}: time: invalid duration "{duration}"'
                )
            return (spec,)
        raise CronError(f"Unrecognized descriptor: {spec}")
    fields = spec.split()
    if not 5 <= len(fields) <= 6:
        raise CronError(f"Expected 5 to 6 fields, found {len(fields)}: {spec}")
    fields += ["*"] * (6 - len(fields))
    for text, bounds in zip(fields, _CRON_FIELDS, strict=True):
        for expr in filter(None, text.split(",")):
            _cron_range(expr, *bounds)
    return tuple(fields)


def _cron_range(expr: str, low: int, high: int, names: dict[str, int]) -> None:
    range_and_step = expr.split("/")
    ends = range_and_step[0].split("-")
    if ends[0] in ("*", "?"):
        start, end = low, high
    else:
        start = _cron_value(ends[0], names)
        if len(ends) > 2:
            raise CronError(f"Too many hyphens: {expr}")
        end = start if len(ends) == 1 else _cron_value(ends[1], names)
    step = 1
    if len(range_and_step) == 2:
        step = _cron_int(range_and_step[1])
        if len(ends) == 1:  # "N/step" runs from N to the maximum
            end = high
    elif len(range_and_step) > 2:
        raise CronError(f"Too many slashes: {expr}")
    if start < low:
        raise CronError(f"Beginning of range ({start}) below minimum ({low}): {expr}")
    if end > high:
        raise CronError(f"End of range ({end}) above maximum ({high}): {expr}")
    if start > end:
        raise CronError(f"Beginning of range ({start}) beyond end of range ({end}): {expr}")
    if step == 0:
        raise CronError(f"Step of range should be a positive number: {expr}")


def _cron_value(text: str, names: dict[str, int]) -> int:
    return names[text.lower()] if text.lower() in names else _cron_int(text)


def _cron_int(text: str) -> int:
    if not re.fullmatch(r"[+-]?[0-9]+", text):
        raise CronError(
            f'Failed to parse int from {text}: strconv.Atoi: parsing "{text}": invalid syntax'
        )
    number = int(text)
    if number < 0:
        raise CronError(f"Negative number ({number}) not allowed: {text}")
    return number


# -- pipeline packages -------------------------------------------------------------------------


@dataclass
class _Template:
    spec: dict[str, Any]  # the pipeline spec (or an Argo workflow for v1 packages)
    platform: dict[str, Any] | None = None
    v2: bool = True

    def api_spec(self) -> dict[str, Any]:
        """``pipeline_spec`` as the server returns it: the spec, or both specs side by side."""
        if self.platform is None:
            return copy.deepcopy(self.spec)
        return {
            "pipeline_spec": copy.deepcopy(self.spec),
            "platform_spec": copy.deepcopy(self.platform),
        }

    def inputs(self) -> dict[str, Any]:
        return ((self.spec.get("root") or {}).get("inputDefinitions") or {}).get("parameters") or {}


def _read_package(filename: str, data: bytes) -> bytes:
    """The pipeline file in an upload: YAML or JSON as is, the first file of a zip or tarball."""
    if filename.endswith((".yaml", ".yml", ".json")):
        return data
    try:
        if data[:4] == b"PK\x03\x04":
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                member = next(info for info in archive.infolist() if not info.is_dir())
                return archive.read(member)
        if data[:2] == b"\x1f\x8b":
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
                member = next(info for info in archive.getmembers() if info.isfile())
                return archive.extractfile(member).read()  # type: ignore[union-attr]
    except (StopIteration, zipfile.BadZipFile, tarfile.TarError, OSError) as error:
        raise ValueError(f"cannot unpack {filename}: {error}") from None
    raise ValueError("Unexpected pipeline file format. Support .zip, .tar.gz, .json or YAML")


def _is_pipeline_spec(doc: Any) -> bool:
    info, root = doc.get("pipelineInfo"), doc.get("root")
    return isinstance(info, dict) and bool(info.get("name")) and isinstance(root, dict)


def _is_platform_spec(doc: Any) -> bool:
    return isinstance(doc.get("platforms"), dict) and "kubernetes" in doc["platforms"]


def _template(data: bytes | dict[str, Any]) -> _Template:
    """Parses a package (bytes) or an inline ``pipeline_spec`` (dict) as ``template.New``."""
    if isinstance(data, dict):
        docs = (
            [data["pipeline_spec"], data.get("platform_spec")]
            if "pipeline_spec" in data
            else [data]
        )
    else:
        try:
            docs = list(yaml.safe_load_all(data))
        except yaml.YAMLError:
            raise _invalid("unknown template format") from None
    docs = [doc for doc in docs if isinstance(doc, dict)]
    for doc in docs:
        if doc.get("kind") == "Workflow" and str(doc.get("apiVersion", "")).startswith(
            "argoproj.io"
        ):
            return _Template(doc, v2=False)
    specs = [doc for doc in docs if _is_pipeline_spec(doc)]
    if not specs:
        raise _invalid("unknown template format")
    if len(specs) > 1:
        raise _invalid("multiple pipeline specs provided")
    spec = specs[0]
    if spec.get("schemaVersion") != SCHEMA_VERSION:
        raise _invalid(
            f"KFP only supports schema version {SCHEMA_VERSION}, but the pipeline spec has "
            f"version {spec.get('schemaVersion', '')}"
        )
    if not re.search(r"[a-z0-9]", str(spec["pipelineInfo"]["name"])):
        raise _invalid(
            "invalid v2 pipeline spec: name should consist of lower case alphanumeric "
            "characters, '-' or '.', and must start and end with an alphanumeric character"
        )
    platforms = [doc for doc in docs if doc is not spec and _is_platform_spec(doc)]
    if len(platforms) > 1:
        raise _invalid("multiple platform specs provided")
    return _Template(spec, platforms[0] if platforms else None)


_KINDS: dict[str, tuple[type, ...]] = {
    "NUMBER_DOUBLE": (int, float), "NUMBER_INTEGER": (int, float), "STRING": (str,),
    "BOOLEAN": (bool,), "LIST": (list,), "STRUCT": (dict,),
}  # fmt: skip
_KIND_WORDS = {
    "NUMBER_DOUBLE": "double or integer", "NUMBER_INTEGER": "double or integer",
    "STRING": "string", "BOOLEAN": "bool", "LIST": "list", "STRUCT": "struct",
}  # fmt: skip
_VALUE_WORDS = {
    "NUMBER_DOUBLE": "the parameter value is not of number value type",
    "NUMBER_INTEGER": "the parameter value is not of number value type",
}


def _check_inputs(template: _Template, runtime: dict[str, Any] | None) -> None:
    """Run parameters against the root component's inputs, as ``validatePipelineJobInputs``."""
    if not template.v2:
        return
    inputs = template.inputs()
    if runtime is None:
        if inputs:
            raise _invalid(
                "pipeline requiring input has no parameter(s) provided. Need parameter(s): "
                + ", ".join(sorted(inputs))
            )
        return
    values = runtime.get("parameters") or {}
    for name, spec in inputs.items():
        if name not in values:
            if not spec.get("isOptional") and "defaultValue" not in spec:
                raise _invalid(
                    f"parameter {name} is not optional, yet has neither default value nor user "
                    "provided value"
                )
            continue
        kind, value = spec.get("parameterType", ""), values[name]
        if kind not in _KINDS:
            raise _invalid(f"input parameter {name} requires type {kind or 'unknown'}")
        if not isinstance(value, _KINDS[kind]) or (isinstance(value, bool) and kind != "BOOLEAN"):
            reason = _VALUE_WORDS.get(
                kind, f"the input parameter is not of {_KIND_WORDS[kind]} value type"
            )
            raise _invalid(
                f"input parameter {name} requires type {_KIND_WORDS[kind]}, but {reason}"
            )
    extra = sorted(set(values) - set(inputs))
    if extra:
        raise _invalid(f"parameter(s) provided are not required by pipeline: {', '.join(extra)}")


# -- request bodies, read as protojson does ----------------------------------------------------


def _fields(names: str, **messages: str) -> dict[str, str | None]:
    """Proto field names (space-separated), plus nested message fields and their types."""
    return {**dict.fromkeys(names.split()), **messages}


_SHARED_RUN_FIELDS = (
    "display_name description pipeline_version_id pipeline_spec service_account created_at "
    "experiment_id plugins_input error"
)
_RUN_MESSAGES = {
    "pipeline_version_reference": "PipelineVersionReference",
    "runtime_config": "RuntimeConfig",
}
# Message fields by proto name; a nested message names its type, anything else is None.
_FIELDS: dict[str, dict[str, str | None]] = {
    "Experiment": _fields(
        "experiment_id display_name description created_at namespace storage_state "
        "last_run_created_at"
    ),
    "PipelineVersionReference": _fields("pipeline_id pipeline_version_id"),
    "RuntimeConfig": _fields("parameters pipeline_root"),
    "CronSchedule": _fields("start_time end_time cron"),
    "PeriodicSchedule": _fields("start_time end_time interval_second"),
    "Trigger": _fields("", cron_schedule="CronSchedule", periodic_schedule="PeriodicSchedule"),
    "Run": _fields(
        f"{_SHARED_RUN_FIELDS} run_id storage_state scheduled_at finished_at state run_details "
        "recurring_run_id state_history plugins_output",
        **_RUN_MESSAGES,
    ),
    "RecurringRun": _fields(
        f"{_SHARED_RUN_FIELDS} recurring_run_id max_concurrency mode updated_at status "
        "no_catchup namespace",
        **_RUN_MESSAGES,
        trigger="Trigger",
    ),
}


def _int64(value: Any, name: str) -> int:
    """An int64 field: protojson takes a number or a decimal string."""
    try:
        return int(value or 0) if not isinstance(value, bool | float) else int(str(value))
    except (TypeError, ValueError):
        raise ApiError(400, f"proto: invalid value for int64 field {name}: {value!r}") from None


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _decode(kind: str, body: Any) -> dict[str, Any]:
    """``body`` with proto field names; unknown fields refused (DiscardUnknown is off)."""
    if not isinstance(body, dict):
        raise ApiError(400, f"proto: syntax error: unexpected token for message {kind}")
    fields = _FIELDS[kind]
    names = {**{_camel(name): name for name in fields}, **{name: name for name in fields}}
    decoded: dict[str, Any] = {}
    for key, value in body.items():
        if key not in names:
            raise ApiError(400, f'proto: unknown field "{key}"')
        name = names[key]
        nested = fields[name]
        decoded[name] = _decode(nested, value) if nested and value is not None else value
    return decoded


# -- lists: filter, sort, page -----------------------------------------------------------------

_OPERATIONS = {
    1: "EQUALS", 2: "NOT_EQUALS", 3: "GREATER_THAN", 5: "GREATER_THAN_EQUALS", 6: "LESS_THAN",
    7: "LESS_THAN_EQUALS", 8: "IN", 9: "IS_SUBSTRING",
}  # fmt: skip
_VALUE_KEYS = (
    "string_value", "stringValue", "int_value", "intValue", "long_value", "longValue",
    "timestamp_value", "timestampValue", "bool_value", "boolValue",
)  # fmt: skip


_IN_KEYS = ("string_values", "stringValues", "int_values", "intValues", "long_values", "longValues")


def _predicate(raw: dict[str, Any]) -> Callable[[dict[str, Any]], bool]:
    operation = raw.get("operation", "")
    operation = _OPERATIONS.get(operation, operation) if isinstance(operation, int) else operation
    key = raw.get("key", "")
    if operation == "IN":
        listed = next((raw[k] for k in raw if k in _IN_KEYS), {}) or {}
        wanted: Any = [str(value) for value in listed.get("values", [])]
    else:
        wanted = next((raw[k] for k in _VALUE_KEYS if k in raw), None)
        if wanted is None:
            raise ValueError(f"predicate on {key!r} has no value")
        wanted = str(wanted).lower() if isinstance(wanted, bool) else str(wanted)
    tests: dict[str, Callable[[str], bool]] = {
        "EQUALS": lambda have: have == wanted,
        "NOT_EQUALS": lambda have: have != wanted,
        "GREATER_THAN": lambda have: have > wanted,
        "GREATER_THAN_EQUALS": lambda have: have >= wanted,
        "LESS_THAN": lambda have: have < wanted,
        "LESS_THAN_EQUALS": lambda have: have <= wanted,
        "IN": lambda have: have in wanted,
        "IS_SUBSTRING": lambda have: wanted in have,
    }
    if operation not in tests:
        raise ValueError(f"invalid predicate operation: {operation!r}")
    test = tests[operation]
    return lambda obj: test(str(_field(obj, key)))


def _field(obj: dict[str, Any], key: str) -> Any:
    value = obj.get(key, "")
    return value if not isinstance(value, bool) else str(value).lower()


def _listing(
    items: list[dict[str, Any]], query: dict[str, str], fields: tuple[str, ...], what: str
) -> tuple[list[dict[str, Any]], int, str]:
    """One page of ``items`` after ``filter`` and ``sort_by``; (page, total size, next token)."""
    wrap = f"Failed to list {what}"
    try:
        raw = json.loads(query["filter"]) if query.get("filter") else {}
        predicates = raw.get("predicates") or []
        for predicate in predicates:
            if predicate.get("key") not in fields:
                raise ValueError(
                    f"no support for filtering on unrecognized field {predicate.get('key')!r}"
                )
        tests = [_predicate(predicate) for predicate in predicates]
    except (ValueError, AttributeError, TypeError) as error:
        raise _invalid(f"Failed to parse the filter: {error}", wrap) from None
    chosen = [item for item in items if all(test(item) for test in tests)]
    sort_by = query.get("sort_by", "").split()
    if sort_by:
        if sort_by[0] not in fields or sort_by[1:] not in ([], ["desc"], ["asc"]):
            raise _invalid(f"Invalid sorting field: {query['sort_by']!r}", wrap)
        chosen.sort(key=lambda item: str(item.get(sort_by[0], "")), reverse=sort_by[1:] == ["desc"])
    try:
        start = (
            int(base64.urlsafe_b64decode(query["page_token"]).decode())
            if query.get("page_token")
            else 0
        )
        size = int(query.get("page_size") or 20)
    except ValueError:
        raise _invalid("Invalid page token or page size", wrap) from None
    size = size if size > 0 else 20
    page = chosen[start : start + size]
    following = start + size
    token = (
        base64.urlsafe_b64encode(str(following).encode()).decode()
        if following < len(chosen)
        else ""
    )
    return copy.deepcopy(page), len(chosen), token


_PIPELINE_KEYS = ("pipeline_id", "name", "display_name", "description", "created_at", "namespace")
_VERSION_KEYS = (
    "pipeline_version_id",
    "pipeline_id",
    "name",
    "display_name",
    "description",
    "created_at",
)
_EXPERIMENT_KEYS = (
    "experiment_id",
    "display_name",
    "description",
    "created_at",
    "namespace",
    "storage_state",
)
_RUN_KEYS = (
    "run_id",
    "display_name",
    "experiment_id",
    "created_at",
    "state",
    "storage_state",
    "recurring_run_id",
)
_RECURRING_KEYS = (
    "recurring_run_id",
    "display_name",
    "experiment_id",
    "created_at",
    "updated_at",
    "status",
    "mode",
)


# -- HTTP --------------------------------------------------------------------------------------


@dataclass
class _Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    files: dict[str, tuple[str, bytes]]


_Answer = Callable[..., dict[str, Any]]


class _Handler(MethodHandler):
    """Reads a request, lets the double answer it, writes its JSON answer."""

    server: DoubleServer

    def _serve(self, method: str) -> None:
        url = urlsplit(self.path)
        path = unquote(url.path)
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        header = self.headers.get("Content-Type") or ""
        content_type = header.split(";")[0].strip().lower()
        parsed, files, bad_json = None, {}, False
        if content_type == "multipart/form-data":
            files = multipart_parts(header, body)
        elif body and "json" in content_type:
            try:
                parsed = json.loads(body)
            except ValueError:
                bad_json = True
        headers = {name.lower(): value for name, value in self.headers.items()}
        recorded = RecordedRequest(method, path, query, content_type, headers, body, parsed, files)
        status, payload, extra = self.server.double._respond(recorded, bad_json)
        self._send(status, payload, extra)

    def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


# -- the double --------------------------------------------------------------------------------


class KfpApiDouble:
    """A single-user KFP API server (REST v2beta1) on 127.0.0.1; a context manager.

    ``token``: when set, requests must carry ``Authorization: Bearer <token>`` or get 401
    (as from an authenticating proxy in front of the server; ``kfp.Client`` sends it when
    built with ``existing_token``). Stored objects are kept as the server returns them.
    """

    def __init__(self, *, token: str = "") -> None:
        self.token = token
        self.url = ""
        self.requests: list[RecordedRequest] = []
        self.pipelines: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, dict[str, Any]] = {}
        self.experiments: dict[str, dict[str, Any]] = {}
        self.runs: dict[str, dict[str, Any]] = {}
        self.recurring_runs: dict[str, dict[str, Any]] = {}
        self._templates: dict[str, _Template] = {}  # by version id
        self._denied: list[tuple[str, str, bool]] = []
        self._failures: list[tuple[str, str, int]] = []
        self.errors: list[BaseException] = []  # the double's own failures, raised at exit
        self._lock = threading.RLock()
        self._server: DoubleServer | None = None
        self._routes = self._route_table()

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> KfpApiDouble:
        self._server = DoubleServer(self, _Handler).start()
        self.url = self._server.url
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if self._server:
            self._server.stop()
        if self.errors and exc_type is None:
            raise self.errors[0]

    # -- fault injection -------------------------------------------------------------------

    def deny(self, method: str, path_prefix: str, *, apiserver: bool = False) -> None:
        """Requests with ``method`` ("*" for any) whose path starts with ``path_prefix``
        answer 403 PermissionDenied. With ``apiserver=True`` the refusal is the KFP server's
        own authorization check instead: the same 403 on gateway routes, but the upload
        handlers answer it with 400 ("Failed to create a pipeline[ version]"), as KFP 2.17's do."""
        with self._lock:
            self._denied.append((method.upper(), path_prefix, apiserver))

    def fail_next(self, method: str, path_prefix: str, status: int = 503, times: int = 1) -> None:
        """The next ``times`` matching requests answer ``status`` (e.g. 503 while the API
        server restarts) before anything else is checked."""
        with self._lock:
            self._failures.extend([(method.upper(), path_prefix, status)] * times)

    # -- answering -------------------------------------------------------------------------

    def _respond(
        self, request: RecordedRequest, bad_json: bool
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        upload = request.path in _UPLOADS
        with self._lock:
            self.requests.append(request)
            try:
                self._admit(request, upload)
                handler, groups = self._route(request.method, request.path)
                if bad_json:
                    raise ApiError(400, "proto: syntax error: the request body is not JSON")
                call = _Request(
                    request.method, request.path, request.query, request.json, request.files
                )
                return 200, handler(call, *groups), {}
            except ApiError as error:
                extra = {"WWW-Authenticate": "Bearer"} if error.status == 401 else {}
                from_upload = upload and error.status != 401
                return (
                    error.status,
                    error.upload_body() if from_upload else error.gateway_body(),
                    extra,
                )
            except Exception as error:  # a bug in the double: answer 500, raise it at __exit__
                self.errors.append(error)
                return 500, ApiError(500, f"KfpApiDouble failed: {error!r}").gateway_body(), {}

    def _admit(self, request: RecordedRequest, upload: bool) -> None:
        """Injected failures, then the bearer token, then denials."""
        method, path = request.method, request.path
        for index, (want, prefix, status) in enumerate(self._failures):
            if want in ("*", method) and path.startswith(prefix):
                del self._failures[index]
                raise ApiError(status, f"injected failure: {method} {path} answers {status}")
        if self.token and request.headers.get("authorization") != f"Bearer {self.token}":
            raise ApiError(401, "Unauthenticated: the request has no valid bearer token")
        for want, prefix, apiserver in self._denied:
            if want in ("*", method) and path.startswith(prefix):
                if upload and apiserver:
                    what = "pipeline version" if path.endswith("upload_version") else "pipeline"
                    raise ApiError(400, f"Failed to create a {what}")
                raise ApiError(
                    403,
                    f"Failed to authorize the request: PermissionDenied: {method} {path} is not "
                    "allowed for this user",
                    f"{method} {path} is not allowed for this user",
                )

    def _route(self, method: str, path: str) -> tuple[_Answer, tuple[str, ...]]:
        if not path.startswith(API + "/"):
            raise ApiError(404, "Not Found")
        for pattern, methods in self._routes:
            match = pattern.fullmatch(path[len(API) :])
            if not match:
                continue
            handler = methods.get(method, methods.get("*", ...))
            if handler is ...:
                raise ApiError(501, "Method Not Allowed")
            if handler is None:
                raise ApiError(501, f"KfpApiDouble does not implement {method} {path}")
            return handler, match.groups()
        raise ApiError(404, "Not Found")

    def _route_table(self) -> list[tuple[re.Pattern[str], dict[str, _Answer | None]]]:
        ident = r"([^/:]+)"
        table: list[tuple[str, dict[str, _Answer | None]]] = [
            ("/healthz", {"GET": self._healthz}),
            ("/pipelines/upload", {"*": self._upload_pipeline}),
            ("/pipelines/upload_version", {"*": self._upload_version}),
            ("/pipelines/create", {"POST": None}),
            ("/pipelines", {"GET": self._list_pipelines, "POST": None}),
            ("/pipelines/names/([^/]+)", {"GET": self._pipeline_by_name}),
            (f"/pipelines/{ident}", {"GET": self._get_pipeline, "DELETE": None, "PATCH": None}),
            (f"/pipelines/{ident}/versions", {"GET": self._list_versions, "POST": None}),
            (f"/pipelines/{ident}/versions/{ident}", {"GET": self._get_version, "DELETE": None, "PATCH": None}),
            ("/experiments", {"GET": self._list_experiments, "POST": self._create_experiment}),
            (f"/experiments/{ident}", {"GET": self._get_experiment, "DELETE": None}),
            (f"/experiments/{ident}:(?:archive|unarchive)", {"POST": None}),
            ("/runs", {"GET": self._list_runs, "POST": self._create_run}),
            (f"/runs/{ident}", {"GET": self._get_run, "DELETE": None}),
            (f"/runs/{ident}:(?:archive|unarchive|terminate|retry)", {"POST": None}),
            ("/recurringruns", {"GET": self._list_recurring, "POST": self._create_recurring}),
            (f"/recurringruns/{ident}", {"GET": self._get_recurring, "DELETE": self._delete_recurring}),
            (f"/recurringruns/{ident}:(enable|disable)", {"POST": self._switch_recurring}),
        ]  # fmt: skip
        return [(re.compile(pattern), methods) for pattern, methods in table]

    # -- healthz and pipelines -------------------------------------------------------------

    def _healthz(self, _: _Request) -> dict[str, Any]:
        return {
            "commit_sha": "unknown",
            "tag_name": "unknown",
            "multi_user": False,
            "pipeline_store": "database",
        }

    @staticmethod
    def _package(request: _Request, missing: str, unreadable: str) -> tuple[str, bytes]:
        """The uploaded file's name and pipeline file, or 400 with the handler's message."""
        if "uploadfile" not in request.files:
            raise ApiError(400, missing)
        filename, data = request.files["uploadfile"]
        try:
            return filename, _read_package(filename, data)
        except ValueError:
            raise ApiError(400, unreadable) from None

    @staticmethod
    def _parse(data: bytes) -> _Template:
        try:
            return _template(data)
        except ApiError as error:  # the upload handlers answer with the external message only
            raise ApiError(400, error.external) from None

    def _upload_pipeline(self, request: _Request) -> dict[str, Any]:
        filename, data = self._package(
            request, "Failed to read pipeline from file", "Failed to read a pipeline spec file"
        )
        query = request.query
        name = query.get("name") or query.get("display_name") or filename
        template = self._parse(data)
        if any(pipeline["name"] == name for pipeline in self.pipelines.values()):
            raise ApiError(409, "Failed to create a pipeline and a pipeline version")
        namespace = ""  # single-user mode: the server replaces any namespace with ""
        now, pipeline_id = _now(), str(uuid.uuid4())
        pipeline = _message(
            pipeline_id=pipeline_id, display_name=query.get("display_name") or name, name=name,
            description=query.get("description"), created_at=now, namespace=namespace,
        )  # fmt: skip
        self.pipelines[pipeline_id] = pipeline
        self._store_version(pipeline_id, name, pipeline["display_name"], query, template, now)
        return copy.deepcopy(pipeline)

    def _upload_version(self, request: _Request) -> dict[str, Any]:
        failure = "Failed to create a pipeline version"
        filename, data = self._package(request, failure, failure)
        query = request.query
        pipeline_id = query.get("pipelineid", "")
        if not pipeline_id or pipeline_id not in self.pipelines:
            raise ApiError(400, failure)
        name = query.get("name") or query.get("display_name") or filename
        template = self._parse(data)
        mine = [v for v in self.versions.values() if v["pipeline_id"] == pipeline_id]
        if any(version["name"] == name for version in mine):
            raise ApiError(409, failure)
        version = self._store_version(
            pipeline_id, name, query.get("display_name") or name, query, template, _now()
        )
        return copy.deepcopy(version)

    def _store_version(
        self, pipeline_id: str, name: str, display_name: str, query: dict[str, str],
        template: _Template, now: str,
    ) -> dict[str, Any]:  # fmt: skip
        version_id = str(uuid.uuid4())
        version = _message(
            pipeline_id=pipeline_id, pipeline_version_id=version_id, display_name=display_name,
            name=name, description=query.get("description"), created_at=now,
            code_source_url=query.get("code_source_url"), pipeline_spec=template.api_spec(),
        )  # fmt: skip
        self.versions[version_id] = version
        self._templates[version_id] = template
        return version

    def _list_pipelines(self, request: _Request) -> dict[str, Any]:
        page, total, token = _listing(
            list(self.pipelines.values()), request.query, _PIPELINE_KEYS, "pipelines"
        )
        return _message(pipelines=page, total_size=total, next_page_token=token)

    def _pipeline(self, pipeline_id: str, wrap: str) -> dict[str, Any]:
        if pipeline_id not in self.pipelines:
            raise _not_found("Pipeline", pipeline_id, wrap)
        return self.pipelines[pipeline_id]

    def _get_pipeline(self, _: _Request, pipeline_id: str) -> dict[str, Any]:
        return copy.deepcopy(self._pipeline(pipeline_id, f"Failed to get pipeline {pipeline_id}"))

    def _pipeline_by_name(self, _: _Request, name: str) -> dict[str, Any]:
        for pipeline in self.pipelines.values():
            if pipeline["name"] == name:
                return copy.deepcopy(pipeline)
        raise _not_found("Pipeline", name, f"Failed to get pipeline by name {name}")

    def _list_versions(self, request: _Request, pipeline_id: str) -> dict[str, Any]:
        self._pipeline(pipeline_id, f"Failed to list pipeline versions of pipeline {pipeline_id}")
        mine = [v for v in self.versions.values() if v["pipeline_id"] == pipeline_id]
        page, total, token = _listing(mine, request.query, _VERSION_KEYS, "pipeline versions")
        return _message(pipeline_versions=page, total_size=total, next_page_token=token)

    def _get_version(self, _: _Request, pipeline_id: str, version_id: str) -> dict[str, Any]:
        version = self.versions.get(version_id)
        if version is None or version["pipeline_id"] != pipeline_id:
            raise _not_found(
                "PipelineVersion", version_id, f"Failed to get pipeline version {version_id}"
            )
        return copy.deepcopy(version)

    # -- experiments -----------------------------------------------------------------------

    def _create_experiment(self, request: _Request) -> dict[str, Any]:
        wrap = "Failed to create an experiment"
        body = _decode("Experiment", request.body or {})
        name = body.get("display_name") or ""
        if not name:
            raise _invalid("Experiment name is empty. Please specify a valid experiment name", wrap)
        return copy.deepcopy(self._new_experiment(name, body.get("description", ""), wrap))

    def _new_experiment(self, name: str, description: str, wrap: str) -> dict[str, Any]:
        if any(e["display_name"] == name for e in self.experiments.values()):
            external = (
                f"Failed to create a new experiment. An experiment with name {name} already exists"
            )
            raise ApiError(409, f"{wrap}: Already exist error: {external}", external)
        experiment_id = str(uuid.uuid4())
        experiment = _message(
            experiment_id=experiment_id, display_name=name, description=description,
            created_at=_now(), storage_state="AVAILABLE",
        )  # fmt: skip
        self.experiments[experiment_id] = experiment
        return experiment

    def _list_experiments(self, request: _Request) -> dict[str, Any]:
        items = list(self.experiments.values())
        page, total, token = _listing(items, request.query, _EXPERIMENT_KEYS, "experiments")
        return _message(experiments=page, total_size=total, next_page_token=token)

    def _experiment(self, experiment_id: str, wrap: str) -> dict[str, Any]:
        if not experiment_id:  # runs without an experiment land in the default one
            for experiment in self.experiments.values():
                if experiment["display_name"] == DEFAULT_EXPERIMENT:
                    return experiment
            grouped = "All runs created without specifying an experiment will be grouped here."
            return self._new_experiment(DEFAULT_EXPERIMENT, grouped, wrap)
        if experiment_id not in self.experiments:
            raise _not_found("Experiment", experiment_id, wrap)
        return self.experiments[experiment_id]

    def _get_experiment(self, _: _Request, experiment_id: str) -> dict[str, Any]:
        return copy.deepcopy(
            self._experiment(experiment_id, f"Failed to get experiment {experiment_id}")
        )

    # -- runs and recurring runs -----------------------------------------------------------

    def _resolve(self, body: dict[str, Any], wrap: str) -> tuple[_Template, dict[str, Any] | None]:
        """The template a run uses: a stored version (the latest when only the pipeline is
        named) or an inline spec; with the reference echoed back."""
        reference = body.get("pipeline_version_reference") or {}
        if reference:
            version_id = reference.get("pipeline_version_id", "")
            pipeline_id = reference.get("pipeline_id", "")
            if not version_id:
                self._pipeline(pipeline_id, wrap)
                mine = [v for v in self.versions.values() if v["pipeline_id"] == pipeline_id]
                if not mine:
                    raise _not_found("PipelineVersion", f"(latest of pipeline {pipeline_id})", wrap)
                version_id = mine[-1]["pipeline_version_id"]
            if version_id not in self.versions:
                raise _not_found("PipelineVersion", version_id, wrap)
            version = self.versions[version_id]
            pinned = {"pipeline_id": version["pipeline_id"], "pipeline_version_id": version_id}
            return self._templates[version_id], pinned
        if body.get("pipeline_spec"):
            try:
                return _template(body["pipeline_spec"]), None
            except ApiError as error:
                raise _invalid(error.external, wrap) from None
        raise _invalid(
            "Failed to get pipeline: pipeline spec or pipeline version reference is required", wrap
        )

    def _common(self, body: dict[str, Any], wrap: str, what: str) -> dict[str, Any]:
        """Fields a run and a recurring run share, checked in the server's order."""
        if not body.get("display_name"):
            raise _invalid(f"{what} name is empty. Please specify a valid name", wrap)
        experiment = self._experiment(body.get("experiment_id", ""), wrap)
        template, reference = self._resolve(body, wrap)
        try:
            _check_inputs(template, body.get("runtime_config"))
        except ApiError as error:
            raise _invalid(error.external, wrap) from None
        runtime = body.get("runtime_config") or {}
        return _message(
            display_name=body["display_name"], description=body.get("description"),
            experiment_id=experiment["experiment_id"], pipeline_version_reference=reference,
            pipeline_spec=None if reference else template.api_spec(),
            runtime_config=_message(
                parameters=copy.deepcopy(runtime.get("parameters")),
                pipeline_root=runtime.get("pipeline_root"),
            ),
            service_account=body.get("service_account"),
        )  # fmt: skip

    def _create_run(self, request: _Request) -> dict[str, Any]:
        wrap = "Failed to create a run"
        run = self._common(_decode("Run", request.body or {}), wrap, "The run")
        now, run_id = _now(), str(uuid.uuid4())
        run.update(
            run_id=run_id, storage_state="AVAILABLE", state="PENDING", created_at=now,
            scheduled_at=now, state_history=[{"update_time": now, "state": "PENDING"}],
        )  # fmt: skip
        self.runs[run_id] = run
        self.experiments[run["experiment_id"]]["last_run_created_at"] = now
        return copy.deepcopy(run)

    def _list_runs(self, request: _Request) -> dict[str, Any]:
        items = list(self.runs.values())
        if request.query.get("experiment_id"):
            items = [run for run in items if run["experiment_id"] == request.query["experiment_id"]]
        page, total, token = _listing(items, request.query, _RUN_KEYS, "runs")
        return _message(runs=page, total_size=total, next_page_token=token)

    def _get_run(self, _: _Request, run_id: str) -> dict[str, Any]:
        if run_id not in self.runs:
            raise _not_found("Run", run_id, f"Failed to get a run {run_id}")
        return copy.deepcopy(self.runs[run_id])

    def _create_recurring(self, request: _Request) -> dict[str, Any]:
        wrap = "Failed to create a recurring run"
        body = _decode("RecurringRun", request.body or {})
        trigger = body.get("trigger") or {}
        converting = f"{wrap} due to conversion error"
        concurrency = _int64(body.get("max_concurrency"), "max_concurrency")
        if not 1 <= concurrency <= 10:
            raise _invalid(
                "Max concurrency of a recurring run must be at least 1 and at most 10. "
                f"Received {concurrency}",
                converting,
            )
        cron = trigger.get("cron_schedule")
        if cron is not None:
            try:
                parse_cron(cron.get("cron", ""))
            except CronError as error:
                raise _invalid(
                    f"Schedule cron is not a supported format (robfig/cron). Error: {error}",
                    converting,
                ) from None
        periodic = trigger.get("periodic_schedule")
        interval = _int64(periodic.get("interval_second"), "interval_second") if periodic else 0
        if periodic is not None and interval < 1:
            raise _invalid(
                f"Found invalid period schedule interval {interval}. "
                "Set at interval to least 1 second",
                converting,
            )
        recurring = self._common(body, wrap, "Recurring run")
        enabled = body.get("mode") == "ENABLE"
        now, recurring_id = _now(), str(uuid.uuid4())
        if periodic is not None:  # int64 fields come back as JSON strings
            trigger = {
                **trigger,
                "periodic_schedule": {**periodic, "interval_second": str(interval)},
            }
        recurring.update(
            recurring_run_id=recurring_id, max_concurrency=str(concurrency), trigger=trigger,
            mode="ENABLE" if enabled else "DISABLE", status="ENABLED" if enabled else "DISABLED",
            created_at=now, updated_at=now,
        )  # fmt: skip
        if body.get("no_catchup"):
            recurring["no_catchup"] = True
        self.recurring_runs[recurring_id] = recurring
        return copy.deepcopy(recurring)

    def _recurring(self, recurring_id: str, wrap: str) -> dict[str, Any]:
        if recurring_id not in self.recurring_runs:
            raise _not_found("RecurringRun", recurring_id, wrap)
        return self.recurring_runs[recurring_id]

    def _list_recurring(self, request: _Request) -> dict[str, Any]:
        items = list(self.recurring_runs.values())
        if request.query.get("experiment_id"):
            items = [
                item for item in items if item["experiment_id"] == request.query["experiment_id"]
            ]
        page, total, token = _listing(items, request.query, _RECURRING_KEYS, "recurring runs")
        # The one camelCase field of the API: the proto names it recurringRuns.
        return _message(recurringRuns=page, total_size=total, next_page_token=token)

    def _get_recurring(self, _: _Request, recurring_id: str) -> dict[str, Any]:
        return copy.deepcopy(self._recurring(recurring_id, "Failed to fetch a recurring run"))

    def _switch_recurring(self, _: _Request, recurring_id: str, action: str) -> dict[str, Any]:
        recurring = self._recurring(recurring_id, f"Failed to {action} a recurring run")
        enabled = action == "enable"
        recurring.update(
            mode="ENABLE" if enabled else "DISABLE", status="ENABLED" if enabled else "DISABLED",
            updated_at=_now(),
        )  # fmt: skip
        return {}

    def _delete_recurring(self, _: _Request, recurring_id: str) -> dict[str, Any]:
        self._recurring(recurring_id, "Failed to delete a recurring run")
        del self.recurring_runs[recurring_id]
        return {}
