"""The serving runtime: Conveyor's real KServe predictor process answering V1 and V2 over HTTP."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pandas as pd
import pytest

from components.core.errors import ConveyorError
from components.core.inference import predict_table, table_from_columns, table_from_instances
from components.core.serving import revision_label
from components.core.training import load_model_dir
from tests.conftest import ROOT, multiclass_table, predictor, save_species_model

NAME = "species"
ROWS = multiclass_table(seed=3).drop(columns="species").head(40)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_species_model(tmp_path_factory.mktemp("serving") / "model")


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    log = tmp_path_factory.mktemp("serving-log") / "predictor.log"
    with predictor(model_dir, NAME, "species-predictor-00001", log) as url:
        yield url


@pytest.fixture(scope="module")
def expected(model_dir: Path) -> list[str]:
    return list(load_model_dir(model_dir).pipeline.predict(ROWS))


def records() -> list[dict]:
    return [
        {k: (None if pd.isna(v) else v) for k, v in row.items()} for row in ROWS.to_dict("records")
    ]


def v1(server: str, instances: list) -> httpx.Response:
    return httpx.post(f"{server}/v1/models/{NAME}:predict", json={"instances": instances})


def v2(server: str, inputs: list[dict]) -> httpx.Response:
    return httpx.post(f"{server}/v2/models/{NAME}/infer", json={"inputs": inputs})


def column_inputs(table: pd.DataFrame) -> list[dict]:
    kinds = {"f": "FP64", "i": "INT64", "O": "BYTES"}
    return [
        {"name": name, "shape": [len(table)], "datatype": kinds[table[name].dtype.kind],
         "data": [None if pd.isna(v) else v for v in table[name]]}
        for name in table.columns
    ]  # fmt: skip


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


def test_v2_one_input_per_column(server: str, expected: list[str]) -> None:
    response = v2(server, column_inputs(ROWS.dropna()))
    assert response.status_code == 200, response.text
    outputs = {output["name"]: output for output in response.json()["outputs"]}
    assert outputs["predictions"]["data"] == [
        p for p, ok in zip(expected, ROWS.notna().all(axis=1), strict=True) if ok
    ]
    assert outputs["probabilities"]["shape"] == [len(ROWS.dropna()), 3]
    assert response.json()["id"]  # KServe's response model needs one; the request had none


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


def test_metrics_count_requests_by_revision_and_status(server: str) -> None:
    def count(code: str) -> float:
        text = httpx.get(f"{server}/metrics").text
        label = f'conveyor_inference_requests_total{{code="{code}",model="{NAME}",revision="species-predictor-00001"}}'
        return next(
            (float(line.split()[-1]) for line in text.splitlines() if line.startswith(label)), 0.0
        )

    before_ok, before_bad = count("200"), count("400")
    v1(server, records())
    v1(server, [{"size": 1.0}])
    v1(server, [{"size": 1.0}])
    assert (count("200") - before_ok, count("400") - before_bad) == (1, 2)
    text = httpx.get(f"{server}/metrics").text
    assert (
        'conveyor_inference_request_duration_seconds_count{model="species",revision="species-predictor-00001"}'
        in text
    )


def test_a_tampered_model_file_is_refused_at_start(model_dir: Path, tmp_path: Path) -> None:
    tampered = tmp_path / "model"
    tampered.mkdir()
    (tampered / "model.json").write_text((model_dir / "model.json").read_text())
    (tampered / "model.joblib").write_bytes((model_dir / "model.joblib").read_bytes() + b"\0")
    result = subprocess.run(
        [sys.executable, "-m", "components.core.serving", "--model_name", NAME, "--model_dir", str(tampered)],
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


@pytest.mark.parametrize(
    ("environment", "label"),
    [
        ({"K_REVISION": "fraud-predictor-00002", "POD_NAME": "x-y-z"}, "fraud-predictor-00002"),
        (
            {"POD_NAME": "fraud-canary-1a2b3c4d-predictor-7d9f8c6b5-x2kqp"},
            "fraud-canary-1a2b3c4d-predictor",
        ),
        ({"POD_NAME": "laptop"}, "local"),
        ({}, "local"),
    ],
)
def test_requests_are_counted_under_the_revision_or_the_deployment(
    environment: dict, label: str
) -> None:
    assert revision_label(environment) == label
