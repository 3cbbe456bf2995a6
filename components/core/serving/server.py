"""Conveyor's KServe predictor: serves a model directory written by the register step.

Run it as ``python -m conveyor.components.core.serving.server --model_name NAME --model_dir DIR``
(KServe's own flags, such as ``--http_port``, work too). Before anything is unpickled it
refuses, in one line and with a non-zero exit, a ``model.json`` of a newer format than it
reads or with unknown or mistyped keys, a ``model_file`` outside the model directory, and
a model file whose sha256 differs from the card's or from ``--model_sha256``
(``CONVEYOR_MODEL_SHA256``: the registry's sha256, which deploy sets on the predictor, so a
bucket whose model and card were both replaced is refused too). It answers KServe's V1 and
V2 (Open Inference) REST protocols, REST only and in one process: KServe's gRPC server and
its multi-process mode (``--workers`` above 1) would bypass the metrics below, so
``--enable_grpc true`` and ``--workers 2`` are refused (scale with replicas). It binds
``--http_host`` (default 0.0.0.0; ``conveyor serve`` passes 127.0.0.1).

A client's mistake is answered with a 4xx whose JSON ``error`` names it: 400 for a body that
is not JSON or not the protocol's shape, missing or mistyped columns, a V2 input whose data
its datatype or shape cannot hold, NaN or infinity in a numeric feature, no rows, an unknown
output; 413 for a body over ``--max_request_bytes`` (``CONVEYOR_MAX_REQUEST_BYTES``, default
4 MiB), checked from Content-Length and while a chunked body streams in. A 5xx means the
server failed (500: the model raised). The connection stays usable after either.

Requests read together are predicted in one call of the model (``serving.batching``), up
to ``--max_batch_rows`` rows (``CONVEYOR_MAX_BATCH_ROWS``, default 256; 1 turns it off);
each keeps its own answer, metrics and payload-log rows.

``/metrics`` exports, for the canary analysis (``serving.http_layer`` keeps them),
by ``revision`` (Knative's ``K_REVISION``, or the Deployment's name in Standard mode: see
``revision_label``) and ``model`` (the served name; requests naming another model are
counted under ``_unknown``, so a client cannot create series at will):

- ``conveyor_inference_requests_total{model, revision, code}``: inference requests by HTTP
  status code; the codes this server answers start at 0 for the served model.
- ``conveyor_inference_request_duration_seconds{model, revision}``: their latency, buckets
  from ``--latency_buckets`` (``CONVEYOR_LATENCY_BUCKETS``; comma-separated seconds).
- ``conveyor_predictions_total{model, revision, class}``: answered (200) rows by predicted
  class (its string form); every class of the model card starts at 0.
- ``conveyor_prediction_score{model, revision}``: a histogram (buckets 0.05 ... 1.0) of one
  score per answered row: for a binary model the probability of the positive class its card
  records (decided at training; for a card written before, the class called 1, true, yes,
  y, positive or pos, case-insensitive, else the second class in the card's order); for more
  classes, the top probability. ``payload_log.score_column`` decides it.
- ``conveyor_predictor_start_time_seconds{model, revision}``: when the process started; a
  crash and restart on the same pod changes it, which the canary judge counts.

A regression model (its card's ``task``) answers one number per row: V1 ``{"predictions":
[numbers]}``, V2 the output ``predictions`` (FP64, shape [rows]) only, a request naming
``probabilities`` being refused with 400. Its requests are counted and timed as any; its
rows have no class for ``conveyor_predictions_total`` and no probability for
``conveyor_prediction_score``, so neither gets anything from it; each answered (200) row's
predicted number goes to ``conveyor_predicted_value{model, revision}`` instead, a histogram
on one fixed grid for every model (``http_layer.VALUE_BUCKETS``: 10 log-spaced bounds a
decade from 1e-3 to 1e10, both signs, and 0), which the canary judge's ``predicted_value``
compares between revisions. A classifier has no child of it.

Every inference request has an id: the V2 request's ``id``, else its ``X-Request-Id``
header, else a fresh one (printable ASCII, at most 256 characters, or 400). It is echoed in
the V2 response's ``id`` and, for V1 and V2, an ``X-Request-Id`` response header, so a client
can report the outcome later. The model card's ``id_columns`` (and ``--id_column``, repeatable)
name columns that identify a row: never features, accepted in requests, passed to the log.

With ``--payload_log URI`` (or ``CONVEYOR_PAYLOAD_LOG``) it writes what it answered there,
inputs, ids, prediction and scores, for the monitoring pipeline
(``serving.payload_log``): ``--payload_log_exclude COL`` (repeatable, or
``CONVEYOR_PAYLOAD_LOG_EXCLUDE``, comma-separated) names input columns never written, and
``--payload_log_max_buffer_rows`` (``CONVEYOR_PAYLOAD_LOG_MAX_BUFFER_ROWS``, default 20,000)
bounds the rows held while storage is unreachable; past it rows are dropped and counted in
``conveyor_payload_log_dropped_rows_total{model, revision}`` (beside
``conveyor_payload_log_written_rows_total``, ``conveyor_payload_log_write_failures_total``
and ``conveyor_payload_log_buffered_rows``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import os
import sys
import uuid
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
from fastapi import Request
from fastapi.exceptions import FastAPIDeprecationWarning, RequestValidationError
from fastapi.responses import JSONResponse
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
from kserve.constants.constants import (
    FASTAPI_APP_IMPORT_STRING,
    INFERENCE_CONTENT_LENGTH_HEADER,
    PredictorProtocol,
)
from kserve.errors import InvalidInput
from kserve.logging import logger
from kserve.model_server import app
from kserve.model_server import parser as kserve_parser
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.rest.server import RESTServer
from kserve.protocol.rest.v2_datamodels import InferenceRequest
from prometheus_client import REGISTRY
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from conveyor.components.core.errors import ConveyorError, first_line
from conveyor.components.core.serving.batching import DEFAULT_MAX_BATCH_ROWS, Batcher
from conveyor.components.core.serving.http_layer import (
    DEFAULT_LATENCY_BUCKETS,
    BodyLimit,
    RequestMetrics,
    ServingMetrics,
    record_answered,
    record_values,
)
from conveyor.components.core.serving.inference import (
    Predictions,
    ids_from_instances,
    ids_from_tensors,
    predict_table,
    table_from_instances,
    table_from_tensors,
)
from conveyor.components.core.serving.payload_log import (
    DEFAULT_MAX_BUFFER_ROWS,
    PAYLOAD_LOG_ENV,
    PAYLOAD_LOG_EXCLUDE_ENV,
    PAYLOAD_LOG_MAX_BUFFER_ROWS_ENV,
    LoggedModel,
    PayloadLog,
    parse_exclude,
)
from conveyor.components.core.training.trainer import (
    MODEL_SHA256_ENV,
    Feature,
    TrainedModel,
    is_sha256,
    load_model_dir,
)

__all__ = [
    "APP_LABEL_FILE_ENV",
    "DEFAULT_MAX_REQUEST_BYTES",
    "LATENCY_BUCKETS_ENV",
    "MAX_REQUEST_BYTES_ENV",
    "MAX_REQUEST_ID_LENGTH",
    "REQUEST_ID_HEADER",
    "ConveyorDataPlane",
    "ConveyorModel",
    "main",
    "parse_latency_buckets",
    "revision_label",
]

MAX_REQUEST_BYTES_ENV = "CONVEYOR_MAX_REQUEST_BYTES"
MAX_BATCH_ROWS_ENV = "CONVEYOR_MAX_BATCH_ROWS"
DEFAULT_MAX_REQUEST_BYTES = 4 * 1024 * 1024
LATENCY_BUCKETS_ENV = "CONVEYOR_LATENCY_BUCKETS"
# The file holding the pod's ``app`` label, which the ServingRuntime's downward API volume
# writes. A volume, not an env var: Knative refuses env fieldRefs unless a cluster enables
# its kubernetes.podspec-fieldref feature, and the same runtime serves both modes.
APP_LABEL_FILE_ENV = "CONVEYOR_APP_LABEL_FILE"
# KServe's Standard-mode pod label is this prefix and the Deployment's name.
STANDARD_APP_LABEL_PREFIX = "isvc."
OUTPUTS = ("predictions", "probabilities")
REGRESSION_OUTPUTS = ("predictions",)  # a regressor's one number per row, no probabilities
REQUEST_ID_HEADER = "x-request-id"
MAX_REQUEST_ID_LENGTH = 256


class ConveyorModel(Model):
    """A KServe model answering V1 and V2 requests from a Conveyor model directory."""

    def __init__(
        self,
        name: str,
        model_dir: Path,
        payload_log: PayloadLog | None = None,
        pinned_sha256: str = "",
        id_columns: Sequence[str] = (),
        max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS,
    ) -> None:
        super().__init__(name, return_response_headers=True)
        self.model_dir = model_dir
        self.model: TrainedModel | None = None
        self.batcher = Batcher(self._predict_table, max_batch_rows)
        self.payload_log = payload_log
        self.pinned_sha256 = pinned_sha256
        self.extra_id_columns = tuple(id_columns)
        self.id_columns: tuple[str, ...] = ()
        self._label_type = "BYTES"
        self._outputs: tuple[str, ...] = OUTPUTS

    def load(self) -> bool:
        model = load_model_dir(self.model_dir, self.pinned_sha256)
        features = {feature.name for feature in model.card.features}
        clash = [name for name in self.extra_id_columns if name in features]
        if clash:
            raise ConveyorError(
                f"--id_column {clash[0]}: a feature of the model; an id column is never a feature"
            )
        self.id_columns = tuple(dict.fromkeys([*model.card.id_columns, *self.extra_id_columns]))
        self.model = model
        if model.card.is_regression:
            self._label_type, self._outputs = "FP64", REGRESSION_OUTPUTS
        else:
            self._label_type = _v2_datatype(np.asarray(model.card.classes))
            self._outputs = OUTPUTS
        self.ready = True
        return self.ready

    def logged_model(self) -> LoggedModel:
        """What the payload log records of this model."""
        assert self.model is not None, "load() runs first"
        card = self.model.card
        return LoggedModel(
            self.name, card.sha256, tuple(card.classes), self.id_columns, card.positive_class,
            tuple((f.name, _logged_type(f)) for f in card.features), card.task,
        )  # fmt: skip

    def stop(self) -> None:
        """On SIGTERM, while the process can still reach its storage: the payload log's
        last rows are written."""
        if self.payload_log is not None:
            self.payload_log.close()
        super().stop()

    def get_input_types(self) -> list[dict[str, Any]]:
        """V2 metadata: one input per feature column, any number of rows."""
        assert self.model is not None, "load() runs before the server starts"
        return [
            {"name": f.name, "datatype": "FP64" if f.kind == "numeric" else "BYTES", "shape": [-1]}
            for f in self.model.card.features
        ]

    def get_output_types(self) -> list[dict[str, Any]]:
        """V2 metadata: a label per row, and each row's probability of each class; a
        regression model's number per row only."""
        assert self.model is not None, "load() runs before the server starts"
        if self.model.card.is_regression:
            return [{"name": "predictions", "datatype": "FP64", "shape": [-1]}]
        classes = len(self.model.card.classes)
        return [
            {"name": "predictions", "datatype": self._label_type, "shape": [-1]},
            {"name": "probabilities", "datatype": "FP64", "shape": [-1, classes]},
        ]

    def _predict_table(self, table: pd.DataFrame) -> Predictions:
        assert self.model is not None, "load() runs before the server starts"
        return predict_table(self.model, table)

    async def predict(self, payload: Any, headers: Any = None, response_headers: Any = None) -> Any:
        assert self.model is not None, "load() runs before the server starts"
        features, id_columns = self.model.card.features, self.id_columns
        v2 = isinstance(payload, InferRequest)
        ids = None
        try:
            request_id = _request_id(payload.id if v2 else None, headers)
            if v2:
                outputs = _requested_outputs(payload, self._outputs)
                table = table_from_tensors(payload.inputs, features, id_columns)
                if id_columns:
                    ids = ids_from_tensors(payload.inputs, id_columns, len(table))
            else:
                instances = _v1_instances(payload)
                table = table_from_instances(instances, features)
                if id_columns:
                    ids = ids_from_instances(instances, id_columns)
        except ConveyorError as error:
            raise InvalidInput(str(error)) from None
        predictions = await self.batcher.predict(table)  # with the requests read alongside
        if predictions.is_regression:  # a number has no class to count nor a score
            record_values(predictions.values)  # observed if 200
        else:
            record_answered(predictions.probabilities, predictions.picked)  # counted if 200
        if v2:
            response = _v2_response(request_id, self.name, predictions, outputs, self._label_type)
        else:
            response = _v1_response(predictions)
        if response_headers is not None:
            response_headers[REQUEST_ID_HEADER] = request_id
        if self.payload_log is not None:  # only what the model answered
            probabilities = None if predictions.is_regression else predictions.probabilities
            self.payload_log.append(table, predictions.labels, probabilities, request_id, ids)
        return response


class ConveyorDataPlane(DataPlane):
    """KServe's data plane, whose request decoding calls any failure the client's mistake.

    Decoding reads only the request (the body, the V2 binary extension's header): whatever
    fails there, a KeyError or a reshape's ValueError included, is answered with 400 naming
    it, not with KServe's 500. A V2 body without the binary extension's header is read as
    JSON whatever its Content-Type (``curl -d`` sends a form's).
    """

    def decode(
        self,
        body: Any,
        headers: Any,
        protocol_version: str = PredictorProtocol.REST_V1.value,
        model_name: str | None = None,
    ) -> Any:
        if (
            isinstance(body, bytes)
            and protocol_version == PredictorProtocol.REST_V2.value
            and INFERENCE_CONTENT_LENGTH_HEADER not in (headers or {})
        ):
            body = _inference_request(body)
        try:
            return super().decode(body, headers, protocol_version, model_name)
        except InvalidInput as error:
            if isinstance(error.__context__, orjson.JSONDecodeError):  # "Unrecognized request"
                raise InvalidInput(f"the request body is not JSON: {error.__context__}") from None
            raise
        except KeyError as error:
            raise InvalidInput(f"the request has no {error} field") from None
        except Exception as error:  # noqa: BLE001 - all of it is the request's reading
            raise InvalidInput(f"the request cannot be read: {first_line(error)}") from None


def _inference_request(body: bytes) -> InferenceRequest:
    try:
        return InferenceRequest.model_validate_json(body)
    except ValidationError as error:
        raise InvalidInput(_validation_message(error.errors())) from None


def revision_label(environment: Mapping[str, str]) -> str:
    """The revision requests are counted under, as the canary analysis queries it.

    Knative's ``K_REVISION`` where set. In Standard (RawDeployment) mode, the Deployment's
    name: KServe labels the pods of each Deployment it creates ``app: isvc.<deployment>``
    (``createRawDefaultDeployment`` in KServe's
    ``pkg/controller/v1beta1/inferenceservice/reconcilers/deployment/deployment_reconciler.go``,
    the prefix from ``GetRawServiceLabel`` in ``pkg/constants/constants.go``), and the
    ServingRuntime's downward API volume writes that label to the file
    ``CONVEYOR_APP_LABEL_FILE`` names. A label value is at most 63 characters, so this holds
    for every name KServe can deploy, where the pod's name (which Kubernetes truncates for
    long Deployment names) did not. Otherwise ``local``.
    """
    if environment.get("K_REVISION"):
        return environment["K_REVISION"]
    label = _app_label(environment.get(APP_LABEL_FILE_ENV, ""))
    deployment = label.removeprefix(STANDARD_APP_LABEL_PREFIX)
    return deployment if label.startswith(STANDARD_APP_LABEL_PREFIX) and deployment else "local"


def _app_label(path: str) -> str:
    """The label the downward API wrote to ``path``; empty without one (not in a pod)."""
    if not path:
        return ""
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return ""


def parse_latency_buckets(text: str) -> tuple[float, ...]:
    """Comma-separated seconds, increasing, as histogram bucket bounds."""
    try:
        bounds = tuple(float(part) for part in text.split(","))
    except ValueError:
        bounds = ()
    increasing = all(low < high for low, high in itertools.pairwise(bounds))
    if not bounds or not increasing or bounds[0] <= 0 or not np.isfinite(bounds).all():
        raise ConveyorError(
            f"--latency_buckets {text!r} (or ${LATENCY_BUCKETS_ENV}): expected comma-separated "
            "seconds, positive and increasing, such as 0.005,0.05,0.5,5"
        )
    return bounds


def _request_id(given: str | None, headers: Mapping[str, str] | None) -> str:
    """The V2 request's ``id``, else the ``X-Request-Id`` header, else a fresh one. One that
    cannot go back in a header (not printable ASCII) or is over the limit is replaced by a
    fresh one rather than refused: a client's odd id must not cost it its answer (the
    response carries the id the log holds)."""
    if not given:
        given = (headers or {}).get(REQUEST_ID_HEADER, "")
    if given and len(given) <= MAX_REQUEST_ID_LENGTH and given.isascii() and given.isprintable():
        return given
    return uuid.uuid4().hex


def _logged_type(feature: Feature) -> str:
    """How the payload log types a feature's column: booleans stay booleans, other numbers
    are numbers, the rest text."""
    if feature.kind != "numeric":
        return "text"
    return "bool" if feature.dtype == "bool" else "number"


def _v1_instances(payload: Any) -> Any:
    if isinstance(payload, (bytes, str)):  # a Content-Type KServe does not read as JSON
        try:
            payload = orjson.loads(payload)
        except orjson.JSONDecodeError as error:
            raise ConveyorError(f"the request body is not JSON: {error}") from None
    if not isinstance(payload, dict) or "instances" not in payload:
        raise ConveyorError("a V1 request body is an object with an 'instances' list")
    return payload["instances"]


def _v1_response(predictions: Predictions) -> dict[str, Any]:
    if predictions.is_regression:
        return {"predictions": predictions.labels}
    return {
        "predictions": predictions.labels,
        "probabilities": predictions.probabilities.tolist(),
        "classes": predictions.classes,
    }


def _requested_outputs(request: InferRequest, answered: Sequence[str] = OUTPUTS) -> list[str]:
    """The outputs a V2 request asks for, of those the model answers (``answered``; all when it
    names none)."""
    names = [output.name for output in request.request_outputs or ()]
    unknown = [name for name in names if name not in answered]
    if unknown:
        listed = ", ".join(map(repr, unknown))
        if all(name in OUTPUTS for name in unknown):  # a classifier's, asked of a regressor
            raise ConveyorError(
                f"outputs {listed}: a regression model answers one number per row and no "
                f"class probabilities; this model answers {', '.join(answered)}"
            )
        raise ConveyorError(f"unknown outputs: {listed}; this model answers {', '.join(answered)}")
    return [name for name in answered if name in names] if names else list(answered)


def _v2_response(
    request_id: str,
    model_name: str,
    predictions: Predictions,
    outputs: list[str],
    label_type: str,
) -> InferResponse:
    answered = []
    if "predictions" in outputs:
        labels = predictions.labels
        answered.append(InferOutput("predictions", [len(labels)], label_type, labels))
    if "probabilities" in outputs:
        probabilities = predictions.probabilities
        answered.append(
            InferOutput(
                "probabilities",
                list(probabilities.shape),
                "FP64",
                probabilities.reshape(-1).tolist(),
                parameters={"classes": json.dumps(predictions.classes)},
            )
        )
    return InferResponse(request_id, model_name, answered)


def _v2_datatype(labels: np.ndarray) -> str:
    return "BYTES" if labels.dtype.kind in "OUS" else _V2_TYPES.get(labels.dtype.kind, "FP64")


_V2_TYPES = {"i": "INT64", "u": "UINT64", "b": "BOOL", "f": "FP64"}


async def _invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
    """FastAPI's refusal of a V2 body (not JSON, or not the protocol's shape), as a 400 with
    an ``error`` like every other refusal, rather than its 422 with ``detail``."""
    return JSONResponse(status_code=400, content={"error": _validation_message(error.errors())})


def _validation_message(errors: Sequence[Mapping[str, Any]]) -> str:
    """Pydantic's complaints about a V2 body, as one line naming each field. FastAPI checks
    the body against InferenceRequest or bytes; the bytes branch says nothing useful."""
    problems = []
    for error in errors:
        location = [str(part) for part in error.get("loc", ()) if part not in _NOT_FIELDS]
        if error.get("type") == "json_invalid":
            reason = error.get("ctx", {}).get("error", "")
            where = f" at character {location[0]}" if location else ""  # FastAPI's parse
            return f"the request body is not JSON: {reason}{where}"
        if error.get("type") == "missing" and not location:
            return "the request body is empty; expected a V2 inference request"
        if error.get("loc", ())[-1:] != ("bytes",):
            problems.append(f"{'.'.join(location) or 'body'}: {error.get('msg', 'invalid')}")
    return f"the request body is not a V2 inference request: {'; '.join(problems)}"


_NOT_FIELDS = ("body", "InferenceRequest", "bytes")


async def _http_error(request: Request, error: HTTPException) -> JSONResponse:
    """Starlette's and FastAPI's own refusals (405, 404 for no route...) with an ``error``."""
    return JSONResponse(
        status_code=error.status_code, content={"error": str(error.detail)}, headers=error.headers
    )


class _RestServer(ModelServer):
    """KServe's ModelServer, REST only, in this process, bound to ``host``.

    KServe 0.21's RESTServer binds 0.0.0.0 with no way to say otherwise; this sets its
    uvicorn configuration's host before it serves. Neither its gRPC server nor its
    multi-process mode is ever started (see the module docstring).
    """

    def __init__(self, host: str, **options: Any) -> None:
        super().__init__(workers=1, enable_grpc=False, **options)
        self.host = host
        self.dataplane = ConveyorDataPlane(model_registry=self.registered_models)

    def start(self, models: list[Model]) -> None:  # type: ignore[override]
        for model in models:
            self.register_model(model)
            model.enable_latency_logging = self.enable_latency_logging
            model.start()
        rest = _Rest(
            FASTAPI_APP_IMPORT_STRING,
            self.dataplane,
            self.model_repository_extension,
            self.http_port,
            access_log_format=self.access_log_format,
            workers=1,
            grace_period=self.grace_period,
            event_loop=self.event_loop,
            timeout_keep_alive=self.timeout_keep_alive,
            ssl_certfile=self.ssl_certfile,
            ssl_keyfile=self.ssl_keyfile,
        )
        rest.config.host = self.host
        self.servers.append(rest.start())
        self.setup_event_loop()
        self.register_signal_handler()
        asyncio.run(_serve_all(self.servers))


class _Rest(RESTServer):
    """KServe's REST server, with a client's mistake logged as one line at INFO: its own
    handler logs each as an ERROR with a traceback, so a bad client would flood the log
    and trip error-based alerts."""

    def create_application(self) -> None:
        super().create_application()  # registers KServe's handlers: ours replace one
        app.add_exception_handler(InvalidInput, _refused)


async def _refused(request: Request, error: InvalidInput) -> JSONResponse:
    logger.info("refused %s %s: %s", request.method, request.url.path, first_line(error))
    return JSONResponse(status_code=400, content={"error": str(error)})


async def _serve_all(servers: list[Any]) -> None:
    await asyncio.gather(*servers)


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(parents=[kserve_parser], conflict_handler="resolve")
    parser.add_argument(
        "--model_dir", type=Path, required=True, help="The model directory register published."
    )
    parser.add_argument(
        "--payload_log",
        default=os.environ.get(PAYLOAD_LOG_ENV, ""),
        help=f"Folder or URI to write answered inputs to (default: ${PAYLOAD_LOG_ENV}).",
    )
    parser.add_argument(
        "--payload_log_exclude",
        action="append",
        default=None,
        metavar="COLUMN",
        help="An input column never written to the payload log; repeatable (default: "
        f"${PAYLOAD_LOG_EXCLUDE_ENV}, comma-separated).",
    )
    parser.add_argument(
        "--payload_log_max_buffer_rows",
        default=os.environ.get(PAYLOAD_LOG_MAX_BUFFER_ROWS_ENV, str(DEFAULT_MAX_BUFFER_ROWS)),
        help="Most rows the payload log holds while storage is unreachable; past it rows are "
        f"dropped and counted (default: ${PAYLOAD_LOG_MAX_BUFFER_ROWS_ENV}, else 20000).",
    )
    parser.add_argument(
        "--id_column",
        action="append",
        default=[],
        metavar="COLUMN",
        help="A column identifying a row, passed to the payload log and never a feature; "
        "repeatable, added to the model card's id_columns.",
    )
    parser.add_argument("--http_host", default="0.0.0.0", help="The address to listen on.")
    parser.add_argument(
        "--model_sha256",
        default=os.environ.get(MODEL_SHA256_ENV, ""),
        help="The registry's sha256 of the model file; any other file is refused, whatever "
        f"model.json says (default: ${MODEL_SHA256_ENV}; empty checks model.json's only).",
    )
    parser.add_argument(
        "--max_request_bytes",
        default=os.environ.get(MAX_REQUEST_BYTES_ENV, str(DEFAULT_MAX_REQUEST_BYTES)),
        help=f"Larger request bodies get 413 (default: ${MAX_REQUEST_BYTES_ENV}, else 4 MiB).",
    )
    parser.add_argument(
        "--max_batch_rows",
        default=os.environ.get(MAX_BATCH_ROWS_ENV, str(DEFAULT_MAX_BATCH_ROWS)),
        help="Requests read together are predicted in one call of the model, up to this many "
        f"rows; 1 predicts each alone (default: ${MAX_BATCH_ROWS_ENV}, else "
        f"{DEFAULT_MAX_BATCH_ROWS}).",
    )
    parser.add_argument(
        "--latency_buckets",
        default=os.environ.get(LATENCY_BUCKETS_ENV, ""),
        help=f"Latency histogram bounds in seconds, comma-separated (${LATENCY_BUCKETS_ENV}).",
    )
    # KServe's --enable_grpc defaults to true: here it is false unless asked for (and refused).
    return parser.parse_args(argv, namespace=argparse.Namespace(enable_grpc=False))


def _log_options(arguments: argparse.Namespace) -> tuple[list[str], int]:
    """The payload log's never-logged columns and buffer bound; raises on a bad one."""
    if arguments.payload_log_exclude is None:
        exclude = parse_exclude(os.environ.get(PAYLOAD_LOG_EXCLUDE_ENV, ""))
    else:
        exclude = parse_exclude(",".join(arguments.payload_log_exclude))
    max_buffer_rows = _positive(
        arguments.payload_log_max_buffer_rows,
        "--payload_log_max_buffer_rows",
        PAYLOAD_LOG_MAX_BUFFER_ROWS_ENV,
        "rows",
    )
    return exclude, max_buffer_rows


def _check_options(arguments: argparse.Namespace) -> tuple[int, int, tuple[float, ...]]:
    """The body cap, the batch cap and the latency buckets; raises on any option the
    predictor refuses."""
    if arguments.enable_grpc:
        raise ConveyorError(
            "--enable_grpc true: the predictor serves REST only; KServe's gRPC server cannot "
            "carry its per-revision metrics"
        )
    if arguments.workers != 1:
        raise ConveyorError(
            f"--workers {arguments.workers}: the predictor runs one worker; KServe's "
            "multi-process mode re-imports the app without Conveyor's metrics middleware, so "
            "each worker would count nothing. Scale with replicas instead"
        )
    if arguments.model_sha256 and not is_sha256(arguments.model_sha256):
        raise ConveyorError(
            f"--model_sha256 {arguments.model_sha256!r} (or ${MODEL_SHA256_ENV}): expected the "
            "registry's sha256 of the model file, 64 lower-case hex digits"
        )
    max_request_bytes = _positive(
        arguments.max_request_bytes, "--max_request_bytes", MAX_REQUEST_BYTES_ENV, "bytes"
    )
    max_batch_rows = _positive(
        arguments.max_batch_rows, "--max_batch_rows", MAX_BATCH_ROWS_ENV, "rows"
    )
    buckets = arguments.latency_buckets
    return (
        max_request_bytes,
        max_batch_rows,
        parse_latency_buckets(buckets) if buckets else DEFAULT_LATENCY_BUCKETS,
    )


def _positive(given: Any, option: str, environment: str, unit: str) -> int:
    text = str(given).strip()
    if not text.isdigit() or int(text) <= 0:
        raise ConveyorError(
            f"{option} {text!r} (or ${environment}): expected a positive number of {unit}"
        )
    return int(text)


def main(argv: list[str] | None = None) -> None:
    """Loads the model (checking its card and sha256 first) and serves it until terminated."""
    arguments = _arguments(sys.argv[1:] if argv is None else argv)
    try:
        max_request_bytes, max_batch_rows, latency_buckets = _check_options(arguments)
        exclude, max_buffer_rows = _log_options(arguments)
    except ConveyorError as error:
        raise SystemExit(f"serving: {error}") from None
    revision = revision_label(os.environ)
    model = ConveyorModel(
        arguments.model_name,
        arguments.model_dir,
        pinned_sha256=arguments.model_sha256,
        id_columns=arguments.id_column,
        max_batch_rows=max_batch_rows,
    )
    try:
        model.load()
    except (ConveyorError, OSError) as error:
        raise SystemExit(f"serving: {error}") from None
    assert model.model is not None
    if arguments.payload_log:
        model.payload_log = _payload_log(
            arguments.payload_log, revision, model, exclude, max_buffer_rows
        )
    card = model.model.card
    metrics = ServingMetrics(
        arguments.model_name, revision, card.classes, latency_buckets, card.positive_class,
        regression=card.is_regression,
    )  # fmt: skip
    app.add_middleware(BodyLimit, max_bytes=max_request_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)  # outside BodyLimit: 413s are counted
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(HTTPException, _http_error)
    # KServe 0.21 warns about ORJSONResponse on every request; the warning is not ours to fix.
    warnings.filterwarnings("ignore", category=FastAPIDeprecationWarning)
    # Objects from imports and the model live as long as the process: a full collection
    # walking them stalls every request in flight (the p99), so they are frozen out of it.
    gc.collect()
    gc.freeze()
    server = _RestServer(
        arguments.http_host,
        http_port=arguments.http_port,
        grpc_port=arguments.grpc_port,
        enable_latency_logging=arguments.enable_latency_logging,
    )
    server.start([model])


def _payload_log(
    uri: str, revision: str, model: ConveyorModel, exclude: list[str], max_buffer_rows: int
) -> PayloadLog:
    assert model.model is not None
    columns = [feature.name for feature in model.model.card.features] + list(model.id_columns)
    unknown = [name for name in exclude if name not in columns]
    if unknown:  # not fatal (one list may serve several models), but likely a typo
        logger.warning(
            "payload log: never-logged columns %s are not among the model's inputs (%s)",
            ", ".join(unknown), ", ".join(columns),
        )  # fmt: skip
    try:
        return PayloadLog(
            uri,
            revision,
            model.logged_model(),
            max_buffer_rows=max_buffer_rows,
            exclude=exclude,
            registry=REGISTRY,
        )
    except (ImportError, ValueError) as error:  # a filesystem not installed, or no such
        raise SystemExit(f"serving: --payload_log {uri}: {error}") from None


if __name__ == "__main__":
    main()
