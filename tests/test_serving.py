"""The serving runtime: Conveyor's real KServe predictor process answering V1 and V2 over HTTP."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families

from conveyor.components.core.errors import ConveyorError
from conveyor.components.core.rollout.canary import StandardCanary, standard_canary_name
from conveyor.components.core.rollout.manifests import MAX_NAME_LENGTH
from conveyor.components.core.serving.http_layer import (
    ANSWERED_CODES,
    DEFAULT_LATENCY_BUCKETS,
    SCORE_BUCKETS,
    ServingMetrics,
    score_column,
)
from conveyor.components.core.serving.inference import (
    predict_table,
    table_from_columns,
    table_from_instances,
)
from conveyor.components.core.serving.payload_log import read_log
from conveyor.components.core.serving.server import _arguments, _check_options, main, revision_label
from conveyor.components.core.training.trainer import load_model_dir
from conveyor.pipelines.cli import main as conveyor
from tests.conftest import (
    ROOT,
    free_port,
    multiclass_table,
    predictor,
    predictors,
    save_species_model,
    wait_for_http,
)
from tests.serving_stack import faulty_model_dir

NAME = "species"
REVISION = "species-predictor-00001"
ROWS = multiclass_table(seed=3).drop(columns="species").head(40)
V1_PATH = f"/v1/models/{NAME}:predict"
V2_PATH = f"/v2/models/{NAME}/infer"
CAP = 4096  # bytes: the capped predictor's --max_request_bytes
REQUESTS = "conveyor_inference_requests_total"
PREDICTED = "conveyor_predictions_total"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_species_model(tmp_path_factory.mktemp("serving") / "model")


@pytest.fixture(scope="module")
def server_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serving-log")


@pytest.fixture(scope="module")
def server(model_dir: Path, server_logs: Path) -> Iterator[str]:
    with predictor(model_dir, NAME, REVISION, server_logs / "predictor.log") as url:
        yield url


@pytest.fixture(scope="module")
def odd_servers(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A predictor of a model that always raises, and one of a good model, both with a
    request body cap of CAP bytes and latency buckets of their own."""
    logs = tmp_path_factory.mktemp("odd-servers")
    failing = faulty_model_dir(model_dir, "failing", logs / "failing-model")
    models = {"failing-00001": failing, "capped-00001": model_dir}
    options = ("--max_request_bytes", str(CAP), "--latency_buckets", "0.01,0.1,1")
    with predictors(models, NAME, logs, *options) as urls:
        yield urls


@pytest.fixture(scope="module")
def expected(model_dir: Path) -> list[str]:
    return list(load_model_dir(model_dir).pipeline.predict(ROWS))


def records() -> list[dict]:
    return [
        {k: (None if pd.isna(v) else v) for k, v in row.items()} for row in ROWS.to_dict("records")
    ]


def v1(server: str, instances: list) -> httpx.Response:
    return httpx.post(f"{server}{V1_PATH}", json={"instances": instances})


def v2(server: str, inputs: list[dict], **fields: object) -> httpx.Response:
    return httpx.post(f"{server}{V2_PATH}", json={"inputs": inputs, **fields})


def column_inputs(table: pd.DataFrame) -> list[dict]:
    kinds = {"f": "FP64", "i": "INT64", "O": "BYTES"}
    return [
        {"name": name, "shape": [len(table)], "datatype": kinds[table[name].dtype.kind],
         "data": [None if pd.isna(v) else v for v in table[name]]}
        for name in table.columns
    ]  # fmt: skip


def one_row(**size: object) -> dict:
    """A valid V2 body of one row, its ``size`` input changed by ``size``."""
    inputs = [
        {"name": "size", "shape": [1], "datatype": "FP64", "data": [10.0], **size},
        {"name": "weight", "shape": [1], "datatype": "FP64", "data": [50.0]},
        {"name": "color", "shape": [1], "datatype": "BYTES", "data": ["red"]},
    ]
    return {"inputs": inputs}


def raw(body: dict, old: str, new: str) -> dict:
    """``body`` as JSON text with ``old`` replaced (for literals json.dumps will not write)."""
    text = json.dumps(body)
    assert old in text
    return {"content": text.replace(old, new), "headers": {"content-type": "application/json"}}


def binary(header: dict, data: bytes, length: str = "") -> dict:
    """A body in the V2 binary tensor extension: a JSON header, then the tensors' bytes."""
    head = json.dumps(header).encode()
    headers = {
        "content-type": "application/octet-stream",
        "inference-header-content-length": length or str(len(head)),
    }
    return {"content": head + data, "headers": headers}


def connection(response: httpx.Response) -> tuple:
    """The client's end of the connection a response came on: the same for a reused one."""
    return response.extensions["network_stream"].get_extra_info("client_addr")


def scrape(url: str) -> dict[tuple, float]:
    """Every sample on ``/metrics``, keyed by name and labels."""
    text = httpx.get(f"{url}/metrics").text
    return {
        (sample.name, *sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def key(name: str, **labels: str) -> tuple:
    return (name, *sorted(labels.items()))


def sample(samples: dict, name: str, **labels: str) -> float:
    return samples.get(key(name, **labels), 0.0)


def requests_counted(
    samples: dict, code: int, model: str = NAME, revision: str = REVISION
) -> float:
    return sample(samples, REQUESTS, code=str(code), model=model, revision=revision)


MATRIX = {"name": "x", "shape": [1, 3], "datatype": "BYTES", "data": [1.0, 2.0, "red"]}
NUMERIC_COLOR = {"name": "color", "shape": [1], "datatype": "FP64", "data": [1.0]}
TWO_DOUBLES = {"name": "size", "shape": [2], "datatype": "FP64", "parameters": {}}
# Every way a client can get a request wrong, and the one line naming it.
REFUSALS = [
    ("POST", V2_PATH, {"json": one_row(shape=[2])}, 400,
     "input 'size': shape [2] holds 2 values; its data has 1"),
    ("POST", V2_PATH, {"json": one_row(datatype="INT8", data=[300])}, 400,
     "input 'size': 300 is out of INT8's range [-128, 127]"),
    ("POST", V2_PATH, {"json": one_row(datatype="INT64", data=[2**70])}, 400,
     "input 'size': 1180591620717411303424 is out of INT64's range"),
    ("POST", V2_PATH, {"json": one_row(datatype="FP32", data=[1e39])}, 400,
     "input 'size': 1e+39 is out of FP32's range"),
    ("POST", V2_PATH, {"json": one_row(datatype="INT64", data=[1.5])}, 400,
     "input 'size': 1.5 is not an integer"),
    ("POST", V2_PATH, raw(one_row(), "10.0", "Infinity"), 400,
     "input 'size': inf at position 0; FP64 data must be finite numbers"),
    ("POST", V2_PATH, raw(one_row(), "10.0", "NaN"), 400,
     "input 'size': nan at position 0; FP64 data must be finite numbers"),
    ("POST", V2_PATH, raw(one_row(), "10.0", "1e400"), 400, "input 'size': inf at position 0"),
    ("POST", V2_PATH, {"json": one_row(data=["10.0"])}, 400,
     "input 'size': FP64 data holds text; expected numbers"),
    ("POST", V2_PATH, {"json": one_row(data=[{"value": 1}])}, 400,
     "input 'size': FP64 data holds a JSON object; expected numbers"),
    ("POST", V2_PATH, {"json": one_row(datatype="INT64", data=[None])}, 400,
     "input 'size': INT64 data holds null; only FP16, FP32 and FP64 inputs"),
    ("POST", V2_PATH, {"json": one_row(datatype="FLOAT64")}, 400,
     "input 'size': unknown datatype 'FLOAT64'; expected one of BOOL"),
    ("POST", V2_PATH, {"json": one_row(shape=[2, 2], data=[[1.0, 2.0], [3.0]])}, 400,
     "input 'size': data nests lists of unequal lengths"),
    ("POST", V2_PATH, {"json": one_row(shape=[1, 2], data=[1.0, 2.0])}, 400,
     "input 'size' is one column: its shape must be [rows] or [rows, 1], not [1, 2]"),
    ("POST", V2_PATH, {"json": {"inputs": [*one_row()["inputs"], one_row()["inputs"][0]]}}, 400,
     "inputs given more than once: 'size'"),
    ("POST", V2_PATH, {"json": {"inputs": [dict(MATRIX, shape=[0, 30], data=[])]}}, 400,
     "input 'x': a single input must have shape [rows, 3]"),
    ("POST", V2_PATH, {"json": {"inputs": [dict(MATRIX, shape=[0, 3], data=[])]}}, 400,
     "the request holds no rows"),
    ("POST", V2_PATH, {"json": {"inputs": [dict(i, shape=[0], data=[])
                                           for i in one_row()["inputs"]]}}, 400,
     "the request holds no rows"),
    ("POST", V2_PATH, raw({"inputs": [MATRIX]}, "1.0", "Infinity"), 400,
     "NaN or infinity in columns: size"),
    ("POST", V2_PATH, {"json": {"inputs": [*one_row()["inputs"][:2], NUMERIC_COLOR]}}, 400,
     "mistyped columns: color (expected text)"),
    ("POST", V2_PATH, {"json": dict(one_row(), outputs=[{"name": "predict_proba"}])}, 400,
     "unknown outputs: 'predict_proba'; this model answers predictions, probabilities"),
    ("POST", V2_PATH, {"content": "not json", "headers": {"content-type": "application/json"}},
     400, "the request body is not JSON"),
    ("POST", V2_PATH, {"content": "not json", "headers": {"content-type": "text/plain"}}, 400,
     "the request body is not JSON"),
    ("POST", V2_PATH, {"content": "", "headers": {"content-type": "application/json"}}, 400,
     "the request body is empty"),
    ("POST", V2_PATH, {"json": {"rows": []}}, 400,
     "the request body is not a V2 inference request: inputs: Field required"),
    ("POST", V2_PATH, {"json": {"inputs": [dict(one_row()["inputs"][0], shape=["a"])]}}, 400,
     "inputs.0.shape.0: Input should be a valid integer"),
    ("POST", V2_PATH, binary({"inputs": [TWO_DOUBLES]}, b"\0" * 8, "bad"), 400,
     "the request cannot be read: invalid literal for int()"),
    ("POST", V2_PATH, binary({"rows": []}, b""), 400, "the request has no 'inputs' field"),
    ("POST", V2_PATH, binary({"inputs": [dict(TWO_DOUBLES, parameters={"binary_data_size": 8})]},
                             b"\0" * 8), 400,
     "the request cannot be read: cannot reshape array of size 1 into shape (2,)"),
    ("POST", V1_PATH, {"json": {"instances": []}}, 400,
     "'instances' must be a non-empty list of rows"),
    ("POST", V1_PATH, {"json": {"rows": []}}, 400,
     "a V1 request body is an object with an 'instances' list"),
    ("POST", V1_PATH, {"json": {"instances": 5}}, 400, 'Expected "instances" to be a list'),
    ("POST", V1_PATH, {"content": "not json", "headers": {"content-type": "application/json"}},
     400, "the request body is not JSON: "),
    ("POST", V1_PATH, {"content": "not json", "headers": {"content-type": "text/plain"}}, 400,
     "the request body is not JSON"),
    ("POST", V1_PATH, raw({"instances": [{"size": 1.0, "weight": 2.0, "color": "red"}]},
                          "1.0", "1e400"), 400, "number is infinity"),
    ("POST", V1_PATH, {"json": {"instances": [{"size": [1], "weight": 2.0, "color": "red"}]}},
     400, "mistyped columns: size (expected numbers)"),
    ("POST", V1_PATH, {"json": {"instances": [[1.0, 2.0, "red"]] * 300_000}}, 413,
     "the request body is over the limit of 4194304 bytes"),
    ("POST", "/v1/models/other:predict", {"json": {"instances": [[1.0, 2.0, "red"]]}}, 404,
     "Model with name other does not exist."),
    ("GET", V2_PATH, {}, 405, "Method Not Allowed"),
    ("POST", f"/v2/models/{NAME}/versions/1/infer", {"json": one_row()}, 501,
     "Model versioning not supported yet."),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "request_", "status", "error"), REFUSALS)
def test_a_refused_request_is_told_why_and_its_connection_stays_usable(
    server: str, method: str, path: str, request_: dict, status: int, error: str
) -> None:
    with httpx.Client(base_url=server, timeout=30) as client:
        refused = client.request(method, path, **request_)
        assert refused.status_code == status, refused.text[:500]
        assert error in refused.json()["error"]
        answered = client.post(V2_PATH, json=one_row())
        assert answered.status_code == 200, answered.text
        assert connection(answered) == connection(refused)  # the connection was kept


def test_a_model_that_raises_gets_500_counted_and_the_connection_stays_usable(
    odd_servers: dict[str, str],
) -> None:
    url = odd_servers["failing-00001"]
    before = scrape(url)
    with httpx.Client(base_url=url, timeout=30) as client:
        failed = client.post(V1_PATH, json={"instances": [[1.0, 2.0, "red"]]})
        assert failed.status_code == 500
        assert failed.json() == {"error": "RuntimeError : this model is broken on purpose"}
        ready = client.get(f"/v2/models/{NAME}/ready")
        again = client.post(V2_PATH, json=one_row())
        assert connection(failed) == connection(ready) == connection(again)
    assert (ready.status_code, again.status_code) == (200, 500)
    after = scrape(url)
    counted = [requests_counted(s, 500, revision="failing-00001") for s in (before, after)]
    assert counted[1] - counted[0] == 2
    assert requests_counted(after, 200, revision="failing-00001") == 0


def padded(size: int) -> bytes:
    """A valid V1 body of exactly ``size`` bytes (JSON allows trailing spaces)."""
    body = json.dumps({"instances": [[10.0, 50.0, "red"]]}).encode()
    return body + b" " * (size - len(body))


def chunks(body: bytes, size: int = 1000) -> Iterator[bytes]:
    """``body`` sent chunked: without a Content-Length."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_over_the_cap_gets_413_and_one_at_the_cap_is_answered(
    odd_servers: dict[str, str], chunked: bool
) -> None:
    url = odd_servers["capped-00001"]
    before = scrape(url)
    with httpx.Client(base_url=url, timeout=30) as client:
        answers = []
        for size in (CAP, CAP + 1, CAP):
            body = chunks(padded(size)) if chunked else padded(size)
            answers.append(
                client.post(V1_PATH, content=body, headers={"content-type": "application/json"})
            )
        assert len({connection(answer) for answer in answers}) == 1
    assert [answer.status_code for answer in answers] == [200, 413, 200]
    assert (
        answers[1].json()["error"].startswith(f"the request body is over the limit of {CAP} bytes")
    )
    assert all(("content-length" in a.request.headers) is not chunked for a in answers)
    after = scrape(url)
    counted = [requests_counted(s, 413, revision="capped-00001") for s in (before, after)]
    assert counted[1] - counted[0] == 1


def test_the_caps_and_latency_buckets_come_from_flags_or_the_environment(
    monkeypatch: pytest.MonkeyPatch, model_dir: Path
) -> None:
    required = ["--model_name", NAME, "--model_dir", str(model_dir)]
    defaults = (4 * 1024 * 1024, 256, DEFAULT_LATENCY_BUCKETS)
    assert _check_options(_arguments(required)) == defaults
    flags = ["--max_request_bytes", "1000", "--latency_buckets", "0.1, 1,10"]
    flags += ["--max_batch_rows", "1"]
    assert _check_options(_arguments(required + flags)) == (1000, 1, (0.1, 1.0, 10.0))
    monkeypatch.setenv("CONVEYOR_MAX_REQUEST_BYTES", "2000")
    monkeypatch.setenv("CONVEYOR_LATENCY_BUCKETS", "0.5,5")
    monkeypatch.setenv("CONVEYOR_MAX_BATCH_ROWS", "32")
    assert _check_options(_arguments(required)) == (2000, 32, (0.5, 5.0))


def test_latency_buckets_are_the_defaults_or_the_configured_ones(
    server: str, odd_servers: dict[str, str]
) -> None:
    def bounds(url: str, revision: str) -> list[str]:
        return [
            dict(labels)["le"]
            for name, *labels in scrape(url)
            if name == "conveyor_inference_request_duration_seconds_bucket"
            and dict(labels)["revision"] == revision
            and dict(labels)["model"] == NAME
        ]

    assert bounds(server, REVISION) == [*map(str, DEFAULT_LATENCY_BUCKETS), "+Inf"]
    assert bounds(odd_servers["capped-00001"], "capped-00001") == ["0.01", "0.1", "1.0", "+Inf"]


@pytest.mark.parametrize(
    ("options", "line"),
    [
        (["--enable_grpc", "true"], "serving: --enable_grpc true: the predictor serves REST only"),
        (["--workers", "2"], "serving: --workers 2: the predictor runs one worker; KServe's"),
        (["--latency_buckets", "0.5,0.1"], "serving: --latency_buckets '0.5,0.1' (or $CONVEYOR"),
        (["--latency_buckets", "fast"], "serving: --latency_buckets 'fast' (or $CONVEYOR_LAT"),
        (["--max_request_bytes", "4MB"], "serving: --max_request_bytes '4MB' (or $CONVEYOR_MAX"),
        (["--max_batch_rows", "0"], "serving: --max_batch_rows '0' (or $CONVEYOR_MAX_BATCH_R"),
        (["--model_sha256", "AB12"], "serving: --model_sha256 'AB12' (or $CONVEYOR_MODEL_SHA256)"),
    ],
)
def test_options_the_predictor_cannot_honour_are_refused_in_one_line(
    model_dir: Path, options: list[str], line: str
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--model_name", NAME, "--model_dir", str(model_dir), *options])
    message = str(exit_.value.code)
    assert message.startswith(line)
    assert "\n" not in message


def test_v1_objects_keyed_by_column(server: str, expected: list[str]) -> None:
    response = v1(server, records())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["predictions"] == expected
    assert body["classes"] == ["setosa", "versicolor", "virginica"]
    assert [len(p) for p in body["probabilities"]] == [3] * len(ROWS)
    assert all(abs(sum(p) - 1) < 1e-9 for p in body["probabilities"])


def test_v1_lists_in_training_column_order(server: str, expected: list[str]) -> None:
    rows = [[row["size"], row["weight"], row["color"]] for row in records()]
    assert v1(server, rows).json()["predictions"] == expected


def test_v1_json_under_another_content_type_is_read(server: str, expected: list[str]) -> None:
    body = json.dumps({"instances": records()[:3]})
    for content_type in ("application/json; charset=utf-8", "application/x-www-form-urlencoded"):
        response = httpx.post(
            f"{server}{V1_PATH}", content=body, headers={"content-type": content_type}
        )
        assert response.status_code == 200, response.text
        assert response.json()["predictions"] == expected[:3]


def test_v2_one_input_per_column(server: str, expected: list[str]) -> None:
    response = v2(server, column_inputs(ROWS.dropna()))
    assert response.status_code == 200, response.text
    outputs = {output["name"]: output for output in response.json()["outputs"]}
    assert outputs["predictions"]["data"] == [
        p for p, ok in zip(expected, ROWS.notna().all(axis=1), strict=True) if ok
    ]
    assert outputs["probabilities"]["shape"] == [len(ROWS.dropna()), 3]
    assert response.json()["id"]  # KServe's response model needs one; the request had none


def test_v2_null_in_a_numeric_input_is_a_gap_for_the_imputer(
    server: str, expected: list[str]
) -> None:
    response = v2(server, column_inputs(ROWS))
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == expected


def test_v2_one_matrix_in_training_column_order(server: str) -> None:
    numeric = ROWS.dropna()
    matrix = [[row.size, row.weight, row.color] for row in numeric.itertuples()]
    flat = [value for row in matrix for value in row]
    response = v2(
        server, [{"name": "x", "shape": [len(matrix), 3], "datatype": "BYTES", "data": flat}]
    )
    assert response.status_code == 200, response.text
    by_columns = v2(server, column_inputs(numeric)).json()["outputs"][0]["data"]
    assert response.json()["outputs"][0]["data"] == by_columns


def test_v2_answers_only_the_outputs_asked_for(server: str) -> None:
    inputs = column_inputs(ROWS.dropna().head(5))
    for asked in (["probabilities"], ["predictions"], ["probabilities", "predictions"]):
        response = v2(server, inputs, outputs=[{"name": name} for name in asked])
        assert response.status_code == 200, response.text
        answered = {output["name"]: output for output in response.json()["outputs"]}
        assert sorted(answered) == sorted(asked)
    assert answered["probabilities"]["shape"] == [5, 3]
    assert json.loads(answered["probabilities"]["parameters"]["classes"]) == [
        "setosa",
        "versicolor",
        "virginica",
    ]


def test_v2_model_metadata_lists_inputs_and_outputs(server: str) -> None:
    response = httpx.get(f"{server}/v2/models/{NAME}")
    assert response.status_code == 200, response.text
    metadata = response.json()
    assert metadata["name"] == NAME
    assert metadata["inputs"] == [
        {"name": "size", "datatype": "FP64", "shape": [-1]},
        {"name": "weight", "datatype": "FP64", "shape": [-1]},
        {"name": "color", "datatype": "BYTES", "shape": [-1]},
    ]
    assert metadata["outputs"] == [
        {"name": "predictions", "datatype": "BYTES", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP64", "shape": [-1, 3]},
    ]


def test_missing_columns_are_named_with_400(server: str) -> None:
    response = v1(server, [{"size": 1.0}])
    assert response.status_code == 400
    assert response.json()["error"] == "missing columns: color, weight"
    response = v2(server, column_inputs(ROWS.dropna().drop(columns="weight")))
    assert (response.status_code, response.json()["error"]) == (400, "missing columns: weight")


def test_mistyped_columns_are_named_with_400(server: str) -> None:
    response = v1(server, [{"size": "big", "weight": 3, "color": 7}])
    assert response.status_code == 400
    assert (
        response.json()["error"]
        == "mistyped columns: size (expected numbers), color (expected text)"
    )


def test_wrong_row_length_is_refused(server: str) -> None:
    response = v1(server, [[1.0, 2.0]])
    assert response.status_code == 400
    assert (
        "3 values in training column order (size, weight, color); row 0 holds 2"
        in response.json()["error"]
    )


def test_metrics_count_requests_by_model_revision_and_status(server: str) -> None:
    before = scrape(server)
    v1(server, records())
    v1(server, [{"size": 1.0}])
    v1(server, [{"size": 1.0}])
    httpx.post(f"{server}/v1/models/other:predict", json={"instances": records()})
    httpx.post(f"{server}/v2/models/another/infer", json=one_row())
    after = scrape(server)

    def delta(code: int, model: str = NAME) -> float:
        return requests_counted(after, code, model) - requests_counted(before, code, model)

    assert (delta(200), delta(400), delta(404), delta(404, "_unknown")) == (1, 2, 0, 2)
    models = {dict(labels).get("model") for _, *labels in after}
    assert models == {NAME, "_unknown", None}  # no series for the names clients made up
    counted = "conveyor_inference_request_duration_seconds_count"
    timed = sample(after, counted, model=NAME, revision=REVISION)
    assert timed - sample(before, counted, model=NAME, revision=REVISION) == 3


def test_answered_rows_are_counted_by_class_and_score(server: str) -> None:
    before = scrape(server)
    answer = v1(server, records()).json()
    assert v1(server, [{"size": 1.0}]).status_code == 400  # refused: no predictions counted
    after = scrape(server)
    labels = {"model": NAME, "revision": REVISION}

    def delta(name: str, **more: str) -> float:
        return sample(after, name, **labels, **more) - sample(before, name, **labels, **more)

    for cls in answer["classes"]:
        predicted = answer["predictions"].count(cls)
        assert delta("conveyor_predictions_total", **{"class": cls}) == predicted
    scores = np.max(answer["probabilities"], axis=1)  # three classes: the top probability
    for bound in SCORE_BUCKETS:
        assert delta("conveyor_prediction_score_bucket", le=str(bound)) == (scores <= bound).sum()
    assert delta("conveyor_prediction_score_count") == len(ROWS)
    assert delta("conveyor_prediction_score_sum") == pytest.approx(scores.sum())


@pytest.mark.parametrize(
    ("classes", "positive", "column"),
    [
        # A card written before the positive class was kept: the conventional name...
        (["no", "yes"], None, 1),
        (["Yes", "no"], None, 0),
        ([0, 1], None, 1),
        ([True, False], None, 0),
        (["POS", "neg"], None, 0),
        (["ham", "spam"], None, 1),  # no conventional name: the second class
        (["1", "true"], None, 1),  # two conventional names: the second class
        (["a", "b", "c"], None, None),  # more classes: the top probability
        # ...and the card's positive class, decided at training, whatever the names.
        (["fraud", "legit"], "fraud", 0),
        (["no", "yes"], "no", 0),
        ([False, True], "False", 0),
        ([0, 1], "1", 1),
    ],
)
def test_the_score_of_a_binary_model_is_its_positive_class_probability(
    classes: list, positive: str | None, column: int | None
) -> None:
    assert score_column(classes, positive) == column


def test_a_positive_class_the_model_lacks_is_refused() -> None:
    with pytest.raises(ConveyorError, match=r"positive class 'spam' is not one of the model's"):
        score_column(["fraud", "legit"], "spam")


def test_the_score_histogram_observes_the_card_s_positive_class() -> None:
    fraud = np.array([0.9, 0.2, 0.05])
    probabilities = np.column_stack([fraud, 1 - fraud])  # classes fraud, legit
    registry = CollectorRegistry()
    metrics = ServingMetrics(
        "fraud", "r1", ["fraud", "legit"], positive_class="fraud", registry=registry
    )
    picked = probabilities.argmax(axis=1)
    metrics.observe(probabilities, picked)
    metrics.observe(probabilities[:1], picked[:1])
    (scores,) = [m for m in registry.collect() if m.name == "conveyor_prediction_score"]
    (total,) = [s.value for s in scores.samples if s.name == "conveyor_prediction_score_sum"]
    assert total == pytest.approx(fraud.sum() + fraud[0])  # not legit's 1 - fraud


def test_a_batch_is_observed_as_its_rows_one_by_one() -> None:
    rng = np.random.default_rng(4)
    first = rng.uniform(size=200).round(2)  # many values right on a bucket's bound
    probabilities = np.column_stack([1 - first, first])
    registry = CollectorRegistry()
    metrics = ServingMetrics("fraud", "r1", ["ok", "yes"], registry=registry)
    picked = probabilities.argmax(axis=1)
    metrics.observe(probabilities, picked)
    metrics.observe(probabilities[:1], picked[:1])
    one_by_one = Histogram("reference", "", buckets=SCORE_BUCKETS, registry=CollectorRegistry())
    for score in [*first, first[0]]:
        one_by_one.observe(score)

    def buckets(samples: list) -> list[tuple[str, float]]:
        return [(s.labels["le"], s.value) for s in samples if s.name.endswith("_bucket")]

    (scores,) = [m for m in registry.collect() if m.name == "conveyor_prediction_score"]
    (reference,) = list(one_by_one.collect())
    assert buckets(scores.samples) == buckets(reference.samples)
    total = registry.get_sample_value(
        "conveyor_prediction_score_sum", {"model": "fraud", "revision": "r1"}
    )
    assert total == pytest.approx(first.sum() + first[0])
    counts = {
        cls: registry.get_sample_value(
            "conveyor_predictions_total", {"model": "fraud", "revision": "r1", "class": cls}
        )
        for cls in ("ok", "yes")
    }
    picked = probabilities.argmax(axis=1)
    assert counts == {
        "ok": (picked == 0).sum() + (picked[0] == 0),
        "yes": (picked == 1).sum() + (picked[0] == 1),
    }


def test_conveyor_serve_stands_two_revisions_side_by_side_on_loopback(
    model_dir: Path, tmp_path: Path
) -> None:
    card = json.loads((model_dir / "model.json").read_text())
    published = tmp_path / "store" / NAME / card["sha256"][:16]  # as register publishes
    shutil.copytree(model_dir, published)
    shutil.copytree(model_dir, tmp_path / "canary-model")
    served = {
        "stable-00001": [str(published)],  # named by its store folder
        "canary-00002": [str(tmp_path / "canary-model"), "--name", NAME],
    }
    processes, urls = {}, {}
    try:
        for revision, (folder, *name) in served.items():
            port = free_port()
            command = [
                sys.executable, "-m", "conveyor.pipelines.cli", "serve", "--model-dir", folder, *name,
                "--revision", revision, "--port", str(port),
            ]  # fmt: skip
            log = tmp_path / f"{revision}.log"
            with log.open("w") as output:
                processes[revision] = subprocess.Popen(
                    command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT
                )
            urls[revision] = (f"http://127.0.0.1:{port}", log)
        for revision, (url, log) in urls.items():
            wait_for_http(f"{url}/v2/models/{NAME}/ready", processes[revision], 90, log)
        for revision, (url, log) in urls.items():
            first_line = log.read_text().splitlines()[0]
            assert first_line.startswith(f"Serving {NAME} (model directory, ")
            assert first_line.endswith(
                f"as revision {revision} on {url.removeprefix('http://')}. Try:"
            )
            at_start = scrape(url)
            labels = {"model": NAME, "revision": revision}
            series = [
                *(key(REQUESTS, code=str(code), **labels) for code in ANSWERED_CODES),
                *(key(PREDICTED, **labels, **{"class": c}) for c in ("setosa", "virginica")),
            ]
            assert [at_start.get(name) for name in series] == [0.0] * len(series)  # from 0
            assert v1(url, records()[:2]).status_code == 200
            after = scrape(url)
            assert requests_counted(after, 200, revision=revision) == 1
            assert {dict(labels).get("revision") for _, *labels in after} == {revision, None}
            port = int(url.rpartition(":")[2])
            with pytest.raises(OSError):  # bound to 127.0.0.1, not every address
                socket.create_connection(("127.0.0.2", port), timeout=5).close()
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            process.wait(timeout=30)


@pytest.mark.parametrize(
    ("card_name", "folder", "option", "served_as"),
    [
        ("fraud", "anything", [], "fraud"),  # what train records in model.json
        ("fraud", "anything", ["--name", "other"], "other"),
        ("", "legacy-store/churn/{sha}", [], "churn"),  # a card from before it kept the name
        ("", "plain-folder", [], "plain-folder"),
    ],
)
def test_a_model_directory_is_served_under_its_registered_name(
    model_dir: Path, tmp_path: Path, card_name: str, folder: str, option: list, served_as: str
) -> None:
    from conveyor.pipelines.cli.commands import _parser, _served_model

    card = json.loads((model_dir / "model.json").read_text())
    target = tmp_path / folder.format(sha=card["sha256"][:16])
    shutil.copytree(model_dir, target)
    (target / "model.json").write_text(json.dumps({**card, "name": card_name}))
    args = _parser().parse_args(["serve", "--model-dir", str(target), *option])
    assert _served_model(args)[0] == served_as


def test_conveyor_serve_refuses_more_workers_in_one_line(
    model_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    assert conveyor(["serve", "--model-dir", str(model_dir), "--workers", "2"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("conveyor serve: --workers 2: a server runs one worker; KServe's")
    assert conveyor(["serve", "--model-dir", str(model_dir.parent / "nothing")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.endswith(
        "nothing: no model.json; expected a model directory written by train or register"
    )


def test_a_tampered_model_file_is_refused_at_start(model_dir: Path, tmp_path: Path) -> None:
    tampered = tmp_path / "model"
    tampered.mkdir()
    (tampered / "model.json").write_text((model_dir / "model.json").read_text())
    (tampered / "model.joblib").write_bytes((model_dir / "model.joblib").read_bytes() + b"\0")
    result = subprocess.run(
        [sys.executable, "-m", "conveyor.components.core.serving.server", "--model_name", NAME, "--model_dir", str(tampered)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"serving: {tampered / 'model.joblib'}: sha256 ")
    assert last.endswith("recorded at training; refusing to load")


def test_tables_from_requests_keep_training_order_and_types(model_dir: Path) -> None:
    model = load_model_dir(model_dir)
    features = model.card.features
    table = table_from_columns({"color": ["red"], "weight": [None], "size": [3]}, features)
    assert list(table.columns) == ["size", "weight", "color"]
    assert table["weight"].isna().all()  # a gap is the imputer's to fill, not an error
    assert predict_table(model, table).labels[0] in model.card.classes
    with pytest.raises(ConveyorError, match=r"size \(expected numbers\)"):
        table_from_columns({"color": ["red"], "weight": [1.0], "size": ["3"]}, features)
    with pytest.raises(ConveyorError, match="non-empty list"):
        table_from_instances([], features)
    with pytest.raises(ConveyorError, match="different numbers of rows"):
        table_from_columns({"size": [1, 2], "weight": [1], "color": ["red"]}, features)
    with pytest.raises(ConveyorError, match="holds no rows"):
        table_from_columns({"size": [], "weight": [], "color": []}, features)


@pytest.mark.parametrize(
    ("k_revision", "app_label", "label"),
    [
        ("fraud-predictor-00002", "isvc.x-predictor", "fraud-predictor-00002"),  # Knative wins
        ("", "isvc.fraud-c1a2b3c4-predictor\n", "fraud-c1a2b3c4-predictor"),
        ("", "fraud", "local"),  # not KServe's Standard-mode label
        ("", "isvc.", "local"),
        ("", "", "local"),  # what the downward API writes for a pod without the label
        ("", None, "local"),  # no label file: not in a pod
    ],
)
def test_requests_are_counted_under_the_revision_or_the_deployment(
    tmp_path: Path, k_revision: str, app_label: str | None, label: str
) -> None:
    environment = {"K_REVISION": k_revision} if k_revision else {}
    if app_label is not None:
        (tmp_path / "app").write_text(app_label)
    environment["CONVEYOR_APP_LABEL_FILE"] = str(tmp_path / "app")
    environment["POD_NAME"] = "fraud-predictor-7d9f8c6b5-x2kqp"  # no longer read
    assert revision_label(environment) == label


# Service names of 1, 27 and 28 characters (the pod name parse broke past about 27), up to
# the longest whose canary's label fits Kubernetes' 63 (StandardCanary refuses longer ones)
# and the longest InferenceService name Conveyor renders (its stable Deployment's label).
@pytest.mark.parametrize("length", [1, 27, 28, 39, MAX_NAME_LENGTH])
def test_standard_mode_revision_is_the_deployment_the_analysis_queries(
    tmp_path: Path, length: int
) -> None:
    service = ("fraud-" + "x" * MAX_NAME_LENGTH)[:length]
    canary = StandardCanary(None, service)  # type: ignore[arg-type] - names only
    predictor = {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": "gs://m/2"}}
    stable = {
        "metadata": {"annotations": {"serving.kserve.io/deploymentMode": "Standard"}},
        "spec": {"predictor": {"model": {"storageUri": "gs://m/1"}}},
    }
    names = [canary.stable_revision(stable)]  # <service>-predictor
    if not canary.refusal(stable, predictor, analysed=True):
        entry = standard_canary_name(predictor)  # <service>-<entry>-predictor
        names.append(canary.stable_revision({"spec": {"predictor": {"name": entry}}}))
    assert len(names) == (2 if len(service) <= 39 else 1)
    label_file = tmp_path / "app"
    for deployment in names:
        label = f"isvc.{deployment}"  # what KServe puts on the Deployment's pods
        assert len(label) <= 63
        label_file.write_text(label)
        # What Kubernetes names a pod of that Deployment: the ReplicaSet's name (the
        # Deployment's and a hash) and '-', cut to 58 characters, then 5 random ones.
        pod = f"{deployment}-7d9f8c6b5-"[:58] + "x2kqp"
        environment = {"CONVEYOR_APP_LABEL_FILE": str(label_file), "POD_NAME": pod}
        assert revision_label(environment) == deployment


def test_a_refused_request_is_one_info_line_not_an_error_with_a_traceback(
    server: str, server_logs: Path
) -> None:
    log = server_logs / f"{REVISION}.log"
    marker = "refused POST /v1/models/species:predict: mistyped columns: size (expected numbers)"
    before = log.read_text()
    response = v1(server, [{"size": "refusal-marker", "weight": 1.0, "color": "red"}])
    assert response.status_code == 400
    deadline = time.monotonic() + 10
    while log.read_text().count(marker) == before.count(marker):
        assert time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.05)
    time.sleep(0.2)  # a traceback, if any, is written right after
    added = log.read_text()[len(before) :]
    (line,) = [line for line in added.splitlines() if marker in line]
    assert " INFO " in line
    assert "Traceback" not in added and " ERROR " not in added


def test_every_answer_carries_its_request_id(server: str) -> None:
    row = ROWS.dropna().iloc[0].to_dict()
    plain = httpx.post(f"{server}{V1_PATH}", json={"instances": [row]})
    assert plain.status_code == 200 and len(plain.headers["x-request-id"]) == 32  # generated
    given = httpx.post(
        f"{server}{V1_PATH}", json={"instances": [row]}, headers={"X-Request-Id": "order-7"}
    )
    assert given.headers["x-request-id"] == "order-7"
    inputs = [
        {"name": name, "shape": [1], "datatype": "FP64" if name != "color" else "BYTES",
         "data": [row[name]]}
        for name in ("size", "weight", "color")
    ]  # fmt: skip
    v2 = httpx.post(f"{server}{V2_PATH}", json={"inputs": inputs}, headers={"X-Request-Id": "h-1"})
    assert v2.json()["id"] == v2.headers["x-request-id"] == "h-1"
    v2 = httpx.post(f"{server}{V2_PATH}", json={"id": "body-1", "inputs": inputs})
    assert v2.json()["id"] == v2.headers["x-request-id"] == "body-1"
    fresh = httpx.post(f"{server}{V2_PATH}", json={"inputs": inputs})
    assert fresh.json()["id"] == fresh.headers["x-request-id"] and len(fresh.json()["id"]) == 32
    # An id that cannot go back in a header, or is too long, costs the client nothing: it
    # is answered, under a fresh id it is told.
    for odd in ({"id": "x" * 300}, {"id": "café-42"}, {"id": "tab\there"}):
        answered = httpx.post(f"{server}{V2_PATH}", json={**odd, "inputs": inputs})
        assert answered.status_code == 200, answered.text
        assert answered.json()["id"] == answered.headers["x-request-id"] != odd["id"]
        assert len(answered.json()["id"]) == 32


def test_conveyor_serve_turns_the_payload_log_on(model_dir: Path, tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "payloads"
    command = [
        sys.executable, "-m", "conveyor.pipelines.cli", "serve", "--model-dir", str(model_dir),
        "--name", NAME, "--port", str(port), "--payload-log", str(log),
        "--payload-log-exclude", "weight", "--id-column", "order_id",
        "--payload-log-max-buffer-rows", "1000",
    ]  # fmt: skip
    output = tmp_path / "serve.log"
    with output.open("w") as stream:
        process = subprocess.Popen(command, cwd=ROOT, stdout=stream, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_http(f"{url}/v2/models/{NAME}/ready", process, 90, output)
        row = {**ROWS.dropna().iloc[0].to_dict(), "order_id": "o-42"}
        response = httpx.post(f"{url}{V1_PATH}", json={"instances": [row]})
        assert response.status_code == 200, response.text
    finally:
        process.terminate()
        process.wait(timeout=30)
    logged = read_log(str(log)).table.to_pylist()
    assert [(r["conveyor.id"], r["order_id"], "weight" in r) for r in logged] == [
        ("o-42", "o-42", False)
    ]
    assert logged[0]["conveyor.prediction"] == str(response.json()["predictions"][0])


def test_requests_sent_at_once_each_get_their_own_row_s_answer(
    server: str, model_dir: Path
) -> None:
    """Requests read together are predicted in one call (``serving.batching``): each answer
    must still be its own row's, as the model gives it for that row alone."""
    from concurrent.futures import ThreadPoolExecutor

    model = load_model_dir(model_dir)
    rows = ROWS.dropna().reset_index(drop=True)
    alone = [predict_table(model, rows.iloc[[index]]) for index in range(len(rows))]
    before = scrape(server)

    def ask(index: int) -> httpx.Response:
        body = {"inputs": column_inputs(rows.iloc[[index]]), "id": f"row-{index}"}
        return httpx.post(f"{server}{V2_PATH}", json=body, timeout=60)

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, list(range(len(rows))) * 3))
    for number, answer in enumerate(answers):
        index = number % len(rows)
        assert answer.status_code == 200, answer.text
        assert answer.json()["id"] == f"row-{index}"
        outputs = {output["name"]: output["data"] for output in answer.json()["outputs"]}
        assert outputs["predictions"] == alone[index].labels
        # A batch's matrix products may sum in another order: the last bits, never more.
        assert outputs["probabilities"] == pytest.approx(alone[index].probabilities[0], abs=1e-12)
    after = scrape(server)
    counted = [requests_counted(s, 200) for s in (before, after)]
    assert counted[1] - counted[0] == len(answers)
