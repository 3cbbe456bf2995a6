"""Conveyor's KServe predictor: serves a model directory written by the register step.

Run it as ``python -m components.core.serving --model_name NAME --model_dir DIR``
(KServe's own flags, such as ``--http_port`` and ``--workers``, work too). It
refuses to start when ``model.joblib`` is not the file the model card's sha256
names, answers KServe's V1 and V2 (Open Inference) REST protocols, and exports
per-revision request counts and latencies on ``/metrics`` for the canary analysis. With
``--payload_log URI`` (or ``CONVEYOR_PAYLOAD_LOG``) it writes the inputs it answered there,
for the monitoring pipeline (``components.core.payload_log``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.exceptions import FastAPIDeprecationWarning
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
from kserve.errors import InvalidInput
from kserve.model_server import app
from kserve.model_server import parser as kserve_parser
from prometheus_client import Counter, Histogram

from components.core.errors import ConveyorError
from components.core.inference import (
    Predictions,
    predict_table,
    table_from_columns,
    table_from_instances,
)
from components.core.payload_log import PAYLOAD_LOG_ENV, PayloadLog
from components.core.training import Feature, TrainedModel, load_model_dir

__all__ = [
    "REQUESTS",
    "REQUEST_SECONDS",
    "ConveyorModel",
    "RequestMetrics",
    "main",
    "revision_label",
]

REQUESTS = Counter(
    "conveyor_inference_requests",
    "Inference requests by model, revision and HTTP status code.",
    ["model", "revision", "code"],
)
REQUEST_SECONDS = Histogram(
    "conveyor_inference_request_duration_seconds",
    "Inference request latency by model and revision.",
    ["model", "revision"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
_INFERENCE_SUFFIXES = (":predict", "/infer")


class RequestMetrics:
    """ASGI middleware counting inference requests by status code and timing them."""

    def __init__(self, app: Any, model: str, revision: str) -> None:
        self.app, self.model, self.revision = app, model, revision
        self._seconds = REQUEST_SECONDS.labels(model, revision)
        self._requests: dict[int, Any] = {}  # status code -> its counter, looked up once

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].endswith(_INFERENCE_SUFFIXES):
            await self.app(scope, receive, send)
            return
        status = 500  # an exception escaping the app is answered with 500

        async def record_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, record_status)
        finally:
            self._seconds.observe(time.perf_counter() - started)
            counter = self._requests.get(status)
            if counter is None:
                counter = REQUESTS.labels(self.model, self.revision, str(status))
                self._requests[status] = counter
            counter.inc()


class ConveyorModel(Model):
    """A KServe model answering V1 and V2 requests from a Conveyor model directory."""

    def __init__(self, name: str, model_dir: Path, payload_log: PayloadLog | None = None) -> None:
        super().__init__(name)
        self.model_dir = model_dir
        self.model: TrainedModel | None = None
        self.payload_log = payload_log

    def load(self) -> bool:
        self.model = load_model_dir(self.model_dir)
        self.ready = True
        return self.ready

    def stop(self) -> None:
        """On SIGTERM, while the process can still reach its storage: the payload log's
        last rows are written."""
        if self.payload_log is not None:
            self.payload_log.close()
        super().stop()

    def predict(self, payload: Any, headers: Any = None, response_headers: Any = None) -> Any:
        assert self.model is not None, "load() runs before the server starts"
        features = self.model.card.features
        v2 = isinstance(payload, InferRequest)
        try:
            if v2:
                table = table_from_columns(_v2_columns(payload, features), features)
            else:
                table = table_from_instances(_v1_instances(payload), features)
        except ConveyorError as error:
            raise InvalidInput(str(error)) from None
        predictions = predict_table(self.model, table)
        if self.payload_log is not None:  # only inputs the model answered
            self.payload_log.append(table)
        return _v2_response(payload, self.name, predictions) if v2 else _v1_response(predictions)


def revision_label(environment: Mapping[str, str]) -> str:
    """The revision requests are counted under: Knative's ``K_REVISION``; in Standard mode
    the Deployment's name, from ``POD_NAME`` (``<deployment>-<replica set>-<pod>``, which
    the ServingRuntime passes from the downward API); else ``local``."""
    if environment.get("K_REVISION"):
        return environment["K_REVISION"]
    parts = environment.get("POD_NAME", "").rsplit("-", 2)
    return parts[0] if len(parts) == 3 and all(parts) else "local"


def _v1_instances(payload: Any) -> Any:
    if not isinstance(payload, dict) or "instances" not in payload:
        raise ConveyorError("a V1 request body is an object with an 'instances' list")
    return payload["instances"]


def _v1_response(predictions: Predictions) -> dict[str, Any]:
    return {
        "predictions": predictions.labels,
        "probabilities": predictions.probabilities.tolist(),
        "classes": predictions.classes,
    }


def _v2_columns(request: InferRequest, features: list[Feature]) -> dict[str, Any]:
    """One input per column (named by column), or one 2-D input in training column order."""
    inputs = {tensor.name: tensor for tensor in request.inputs}
    names = [feature.name for feature in features]
    if len(inputs) == 1 and next(iter(inputs)) not in names:
        matrix = _as_array(next(iter(inputs.values())))
        if matrix.ndim != 2 or matrix.shape[1] != len(names):
            raise ConveyorError(
                f"a single input must have shape [rows, {len(names)}], columns in training "
                f"order ({', '.join(names)}); got {list(matrix.shape)}"
            )
        return {name: matrix[:, index] for index, name in enumerate(names)}
    return {name: _as_array(tensor).reshape(-1) for name, tensor in inputs.items()}


def _as_array(tensor: Any) -> np.ndarray:
    array = tensor.as_numpy()
    if tensor.datatype == "BYTES":
        array = np.vectorize(_text, otypes=[object])(array)
    return array


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def _v2_response(request: InferRequest, model_name: str, predictions: Predictions) -> InferResponse:
    labels = np.asarray(predictions.labels)
    label_type = "BYTES" if labels.dtype.kind in "OUS" else _V2_TYPES.get(labels.dtype.kind, "FP64")
    outputs = [
        InferOutput("predictions", [len(labels)], label_type, labels.tolist()),
        InferOutput(
            "probabilities",
            list(predictions.probabilities.shape),
            "FP64",
            predictions.probabilities.reshape(-1).tolist(),
            parameters={"classes": json.dumps(predictions.classes)},
        ),
    ]
    # KServe's response model requires an id; a request without one gets a fresh one.
    return InferResponse(request.id or uuid.uuid4().hex, model_name, outputs)


_V2_TYPES = {"i": "INT64", "u": "UINT64", "b": "BOOL", "f": "FP64"}


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
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Loads the model (checking its sha256) and serves it until terminated."""
    arguments = _arguments(sys.argv[1:] if argv is None else argv)
    revision = revision_label(os.environ)
    try:
        payload_log = PayloadLog(arguments.payload_log, revision) if arguments.payload_log else None
    except (ImportError, ValueError) as error:  # a filesystem not installed, or no such
        raise SystemExit(f"serving: --payload_log {arguments.payload_log}: {error}") from None
    model = ConveyorModel(arguments.model_name, arguments.model_dir, payload_log)
    try:
        model.load()
    except (ConveyorError, OSError) as error:
        raise SystemExit(f"serving: {error}") from None
    # Series that exist from the start, at 0, so the first requests count in increase().
    REQUESTS.labels(arguments.model_name, revision, "200")
    REQUEST_SECONDS.labels(arguments.model_name, revision)
    app.add_middleware(RequestMetrics, model=arguments.model_name, revision=revision)
    # KServe 0.21 warns about ORJSONResponse on every request; the warning is not ours to fix.
    warnings.filterwarnings("ignore", category=FastAPIDeprecationWarning)
    # Objects from imports and the model live as long as the process: a full collection
    # walking them stalls every request in flight (the p99), so they are frozen out of it.
    gc.collect()
    gc.freeze()
    server = ModelServer(
        http_port=arguments.http_port,
        grpc_port=arguments.grpc_port,
        workers=arguments.workers,
        enable_grpc=arguments.enable_grpc,
        enable_latency_logging=arguments.enable_latency_logging,
    )
    server.start([model])


if __name__ == "__main__":
    main()
