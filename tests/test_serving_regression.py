"""A regression model served by Conveyor's real KServe predictor: numbers over V1 and V2, no
probabilities, metrics that stay true, and a payload log of the predicted numbers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from conveyor.components.core.errors import ConveyorError
from conveyor.components.core.serving.http_layer import ServingMetrics
from conveyor.components.core.serving.inference import predict_table
from conveyor.components.core.serving.payload_log import (
    ID,
    METADATA_TYPES,
    PREDICTED_VALUE,
    PREDICTION,
    PROBABILITY_PREFIX,
    REGRESSION_METADATA_TYPES,
    SCORE,
    TASK_KEY,
    LoggedModel,
    PayloadLog,
    metadata_columns,
    read_log,
)
from conveyor.components.core.training.trainer import (
    Feature,
    ModelCard,
    TrainedModel,
    load_model_dir,
    save_model_dir,
)
from tests.conftest import predictor, predictors

NAME = "price"
REVISION = "price-predictor-00001"
V1_PATH = f"/v1/models/{NAME}:predict"
V2_PATH = f"/v2/models/{NAME}/infer"
FEATURES = ("size", "age", "rooms")


def houses(rows: int, seed: int) -> pd.DataFrame:
    """Three numeric features and a price made of them, with noise."""
    rng = np.random.default_rng(seed)
    table = pd.DataFrame(
        {
            "size": rng.normal(100, 30, rows),
            "age": rng.uniform(0, 50, rows),
            "rooms": rng.integers(1, 7, rows).astype(float),
        }
    )
    table["price"] = (
        2.5 * table["size"] - 1.2 * table["age"] + 10 * table["rooms"] + rng.normal(0, 5, rows)
    )
    return table


ROWS = houses(12, seed=3).drop(columns="price")


def save_price_model(directory: Path) -> Path:
    """A ridge regression on the houses table, written as a regression model directory."""
    table = houses(200, seed=0)
    preprocess = ColumnTransformer([("numeric", StandardScaler(), list(FEATURES))])
    pipeline = make_pipeline(preprocess, Ridge()).fit(table[list(FEATURES)], table["price"])
    card = ModelCard(
        estimator="ridge",
        hyperparameters={},
        target="price",
        classes=[],
        features=[Feature(name, "numeric", "float64") for name in FEATURES],
        seed=0,
        id_columns=["house_id"],
        task="regression",
    )
    save_model_dir(TrainedModel(pipeline, card), directory)
    return directory


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_price_model(tmp_path_factory.mktemp("regression") / "model")


@pytest.fixture(scope="module")
def expected(model_dir: Path) -> np.ndarray:
    return load_model_dir(model_dir).pipeline.predict(ROWS)


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    logs = tmp_path_factory.mktemp("regression-log")
    with predictor(model_dir, NAME, REVISION, logs / "predictor.log") as url:
        yield url


def column_inputs(table: pd.DataFrame) -> list[dict]:
    return [
        {"name": name, "shape": [len(table)], "datatype": "FP64", "data": table[name].tolist()}
        for name in table.columns
    ]


def scrape(url: str) -> dict[tuple, float]:
    text = httpx.get(f"{url}/metrics").text
    return {
        (sample.name, *sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_v1_answers_the_model_s_numbers_and_nothing_else(server: str, expected: np.ndarray) -> None:
    response = httpx.post(f"{server}{V1_PATH}", json={"instances": ROWS.to_dict("records")})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert list(answer) == ["predictions"]  # no probabilities, no classes
    predictions = answer["predictions"]
    assert all(isinstance(value, float) for value in predictions)
    assert np.allclose(predictions, expected)


def test_v1_lists_in_training_order_answer_alike(server: str, expected: np.ndarray) -> None:
    instances = ROWS[list(FEATURES)].to_numpy().tolist()
    response = httpx.post(f"{server}{V1_PATH}", json={"instances": instances})
    assert response.status_code == 200, response.text
    assert np.allclose(response.json()["predictions"], expected)


def test_v2_answers_fp64_predictions(server: str, expected: np.ndarray) -> None:
    response = httpx.post(f"{server}{V2_PATH}", json={"inputs": column_inputs(ROWS)})
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    assert [(o["name"], o["datatype"], o["shape"]) for o in outputs] == [
        ("predictions", "FP64", [len(ROWS)])
    ]
    assert np.allclose(outputs[0]["data"], expected)
    asked = {"inputs": column_inputs(ROWS), "outputs": [{"name": "predictions"}]}
    named = httpx.post(f"{server}{V2_PATH}", json=asked)
    assert named.status_code == 200, named.text
    assert np.allclose(named.json()["outputs"][0]["data"], expected)


def test_v2_asking_for_probabilities_is_refused_naming_them(server: str) -> None:
    for asked in (["probabilities"], ["predictions", "probabilities"]):
        body = {"inputs": column_inputs(ROWS), "outputs": [{"name": name} for name in asked]}
        response = httpx.post(f"{server}{V2_PATH}", json=body)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert "'probabilities'" in error and "regression" in error
        assert "\n" not in error
    body = {"inputs": column_inputs(ROWS), "outputs": [{"name": "bogus"}]}
    response = httpx.post(f"{server}{V2_PATH}", json=body)
    assert response.status_code == 400
    assert response.json()["error"] == "unknown outputs: 'bogus'; this model answers predictions"


def test_v2_model_metadata_lists_one_fp64_output(server: str) -> None:
    response = httpx.get(f"{server}/v2/models/{NAME}")
    assert response.status_code == 200, response.text
    metadata = response.json()
    assert metadata["inputs"] == [
        {"name": name, "datatype": "FP64", "shape": [-1]} for name in FEATURES
    ]
    assert metadata["outputs"] == [{"name": "predictions", "datatype": "FP64", "shape": [-1]}]


def test_bad_input_is_still_refused_in_one_line(server: str) -> None:
    response = httpx.post(f"{server}{V1_PATH}", json={"instances": [{"size": 1.0}]})
    assert response.status_code == 400
    assert response.json()["error"] == "missing columns: age, rooms"
    text = [{"size": "big", "age": 1.0, "rooms": 2.0}]
    response = httpx.post(f"{server}{V1_PATH}", json={"instances": text})
    assert response.status_code == 400
    assert response.json()["error"] == "mistyped columns: size (expected numbers)"


def test_metrics_count_the_requests_and_no_class_or_score(server: str) -> None:
    before = scrape(server)
    for _ in range(2):
        answered = httpx.post(f"{server}{V1_PATH}", json={"instances": ROWS.to_dict("records")})
        assert answered.status_code == 200, answered.text
    after = scrape(server)
    ok = ("conveyor_inference_requests_total", ("code", "200"), ("model", NAME))
    ok = (*ok, ("revision", REVISION))
    assert after[ok] - before.get(ok, 0.0) == 2
    assert not [key for key in after if key[0] == "conveyor_predictions_total"]
    # A number is no probability: the score histogram has no series for this model.
    assert not [key for key in after if key[0].startswith("conveyor_prediction_score")]


def test_serving_metrics_of_a_model_without_classes_observe_nothing() -> None:
    registry = CollectorRegistry()
    metrics = ServingMetrics(NAME, REVISION, [], registry=registry)
    metrics.observe(np.empty((3, 0)), np.empty(0, np.intp))
    metrics.observe(np.empty((1, 0)), np.empty(0, np.intp))
    labels = {"model": NAME, "revision": REVISION}
    assert registry.get_sample_value("conveyor_prediction_score_count", labels) == 0
    assert registry.get_sample_value("conveyor_predictions_total", labels) is None


def test_predict_table_gives_one_float_per_row(model_dir: Path, expected: np.ndarray) -> None:
    predictions = predict_table(load_model_dir(model_dir), ROWS)
    assert predictions.is_regression
    assert predictions.probabilities.shape == (len(ROWS), 0) and predictions.classes == []
    assert np.allclose(predictions.values, expected)
    assert predictions.labels == predictions.values.tolist()


def test_the_payload_log_holds_the_predicted_numbers(
    model_dir: Path, expected: np.ndarray, tmp_path: Path
) -> None:
    log = tmp_path / "payloads"
    instances = [
        {**row, "house_id": f"h-{index}"} for index, row in enumerate(ROWS.to_dict("records"))
    ]
    with predictors({"r1": model_dir}, NAME, tmp_path, "--payload_log", str(log)) as urls:
        v1 = httpx.post(f"{urls['r1']}{V1_PATH}", json={"instances": instances[:5]})
        assert v1.status_code == 200, v1.text
        inputs = column_inputs(ROWS.iloc[5:])
        v2 = httpx.post(f"{urls['r1']}{V2_PATH}", json={"inputs": inputs, "id": "req-2"})
        assert v2.status_code == 200, v2.text
    # Stopped with SIGTERM: the log's last rows were written then.
    files = sorted(log.glob("*/*.parquet"))
    assert files
    schema = pq.read_schema(files[0])
    assert schema.metadata[TASK_KEY.encode()] == b"regression"
    assert schema.field(PREDICTED_VALUE).type == REGRESSION_METADATA_TYPES[PREDICTED_VALUE]
    assert not {PREDICTION, SCORE} & set(schema.names)
    assert not [name for name in schema.names if name.startswith(PROBABILITY_PREFIX)]

    logged = read_log(str(log), task="regression")
    assert logged.task == "regression"
    assert metadata_columns(logged.table) == list(REGRESSION_METADATA_TYPES)
    table = logged.table.to_pandas().sort_values(ID, key=lambda ids: ids.map(_order))
    assert list(table[ID]) == [f"h-{index}" for index in range(5)] + [
        f"req-2/{index}" for index in range(len(ROWS) - 5)
    ]
    assert np.allclose(table[PREDICTED_VALUE], expected)
    assert np.allclose(table[PREDICTED_VALUE].iloc[:5], v1.json()["predictions"])
    assert np.allclose(table[list(FEATURES)], ROWS)


def _order(row_id: str) -> tuple[int, int]:
    """The rows' order as sent: the V1 request's houses, then the V2 request's rows."""
    if row_id.startswith("h-"):
        return (0, int(row_id[2:]))
    return (1, int(row_id.rsplit("/", 1)[1]))


def test_a_classifier_s_reader_refuses_a_regression_log_in_one_line(tmp_path: Path) -> None:
    model = LoggedModel(NAME, "ab" * 32, (), task="regression")
    log = PayloadLog(str(tmp_path / "log"), "r1", model, registry=CollectorRegistry())
    table = ROWS.head(3)
    log.append(table, [1.5, 2.5, float("nan")], None, "req-1")
    (written,) = log.flush()
    log.close()
    with pytest.raises(ConveyorError) as refused:
        read_log(str(tmp_path / "log"))  # what quality, shadow and importance call
    message = str(refused.value)
    assert written in message and "regression model's payload log" in message
    assert "\n" not in message
    with pytest.raises(ConveyorError, match="regression model's payload log"):
        read_log([written], columns=[ID, PREDICTION, SCORE])
    either = read_log(str(tmp_path / "log"), task=None)  # inputs alike, as drift reads them
    assert either.task == "regression"
    values = either.table.column(PREDICTED_VALUE).to_pylist()
    assert values == [1.5, 2.5, None]  # a NaN answer is a null, as a score's is


def test_a_regression_reader_refuses_a_classifier_s_log(tmp_path: Path) -> None:
    model = LoggedModel(NAME, "ab" * 32, ("a", "b"))
    log = PayloadLog(str(tmp_path / "log"), "r1", model, registry=CollectorRegistry())
    log.append(ROWS.head(1), ["a"], np.array([[0.4, 0.6]]), "req-1")
    log.flush()
    log.close()
    assert metadata_columns(read_log(str(tmp_path / "log")).table) == [
        *METADATA_TYPES,
        f"{PROBABILITY_PREFIX}a",
        f"{PROBABILITY_PREFIX}b",
    ]
    with pytest.raises(ConveyorError, match="a classification model's payload log"):
        read_log(str(tmp_path / "log"), task="regression")


@pytest.mark.parametrize(
    ("classes", "positive", "task", "error"),
    [
        (("a", "b"), None, "regression", "no classes"),
        ((), "a", "regression", "no classes"),
        ((), None, "classification", "at least one class"),
        ((), None, "ranking", "task 'ranking'"),
    ],
)
def test_a_logged_model_s_task_fits_its_classes(
    classes: tuple, positive: str | None, task: str, error: str
) -> None:
    with pytest.raises(ConveyorError, match=error):
        LoggedModel(NAME, "ab" * 32, classes, positive_class=positive, task=task)
