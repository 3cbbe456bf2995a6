"""The payload log: a real predictor process writes what it answered (inputs, ids,
predictions, scores); storage that fails bounds the buffer and counts what it drops; old and
new days read together; retention prunes day folders; the InferenceService passes the log's
place and never-logged columns to the predictor."""

from __future__ import annotations

import datetime as dt
import pickle
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from kfp.dsl import Dataset
from prometheus_client.parser import text_string_to_metric_families
from sklearn import metrics as skm

from conveyor.components.core.data.tables import Source, load_arrow_table, load_table
from conveyor.components.core.errors import ConveyorError
from conveyor.components.core.monitoring.quality import QualitySettings, assess_quality
from conveyor.components.core.rollout.manifests import (
    RENDERED_ENV,
    ServingSpec,
    render_inference_service,
)
from conveyor.components.core.rollout.manifests import validate_inference_service as validate
from conveyor.components.core.serving.payload_log import (
    ID,
    METADATA_TYPES,
    MODEL,
    MODEL_SHA256,
    PAYLOAD_LOG_ENV,
    PAYLOAD_LOG_EXCLUDE_ENV,
    POSITIVE_CLASS,
    PREDICTION,
    REQUEST_ID,
    REVISION,
    SCORE,
    TIME,
    LoggedModel,
    PayloadLog,
    input_columns,
    metadata_columns,
    parse_exclude,
    probability_column,
    prune_log,
    read_log,
    recent_days,
)
from conveyor.components.core.training.trainer import fit_model, load_model_dir, save_model_dir
from conveyor.components.ingest_inputs import ingest_inputs
from tests.conftest import artifact, multiclass_table, predictors, save_species_model

NAME = "species"
CLASSES = ("setosa", "versicolor", "virginica")
DROPPED = "conveyor_payload_log_dropped_rows_total"


def table_files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*.parquet") if not path.name.startswith("."))


def wait_for_files(folder: Path, count: int, timeout: float = 10) -> list[Path]:
    deadline = time.monotonic() + timeout
    while len(table_files(folder)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return table_files(folder)


def species_log(uri: str, **options: object) -> PayloadLog:
    return PayloadLog(uri, "r1", LoggedModel(NAME, "ab" * 32, CLASSES), **options)


def answer(log: PayloadLog, rows: pd.DataFrame, request_id: str = "", **options: object) -> bool:
    """Appends ``rows`` as one request answered with the first class, certain of it."""
    probabilities = np.tile([1.0, 0.0, 0.0], (len(rows), 1))
    labels = [CLASSES[0]] * len(rows)
    return log.append(rows, labels, probabilities, request_id or uuid.uuid4().hex, **options)


def test_a_predictor_logs_what_it_answered_and_nothing_else(tmp_path: Path) -> None:
    model_dir = save_species_model(tmp_path / "model")
    model = load_model_dir(model_dir)
    rows = multiclass_table(seed=8).drop(columns="species").dropna().head(30)
    records = rows.to_dict("records")
    log = tmp_path / "payloads"
    options = ("--payload_log", str(log), "--payload_log_exclude", "weight")
    with predictors({"species-00002": model_dir}, NAME, tmp_path, *options) as urls:
        url = urls["species-00002"]
        answers = []
        for batch, header in ((records[:10], {"X-Request-Id": "batch-1"}), (records[10:25], {})):
            answers.append(
                httpx.post(
                    f"{url}/v1/models/{NAME}:predict", json={"instances": batch}, headers=header
                )
            )
            assert answers[-1].status_code == 200, answers[-1].text
        v2 = [
            {"name": "size", "shape": [5], "datatype": "FP64", "data": list(rows["size"][25:])},
            {"name": "weight", "shape": [5], "datatype": "FP64", "data": list(rows["weight"][25:])},
            {"name": "color", "shape": [5], "datatype": "BYTES", "data": list(rows["color"][25:])},
        ]
        answers.append(httpx.post(f"{url}/v2/models/{NAME}/infer", json={"id": "v2", "inputs": v2}))
        assert answers[-1].status_code == 200 and answers[-1].json()["id"] == "v2"
        refused = [{"size": 1.0, "weight": "heavy", "color": "red"}]  # text in a numeric column
        answer_ = httpx.post(f"{url}/v1/models/{NAME}:predict", json={"instances": refused})
        assert answer_.status_code == 400
        assert table_files(log) == []  # 30 rows, fewer than a file's worth: still buffered
    # Stopped with SIGTERM: the buffered rows are written on the way out.
    (written,) = table_files(log)
    assert written.parent.parent == log and written.name.startswith("species-00002-")
    request_ids = [response.headers["x-request-id"] for response in answers]
    assert request_ids[0] == "batch-1" and request_ids[2] == "v2" and len(request_ids[1]) == 32
    logged = read_log(str(log))
    inputs = rows.drop(columns="weight").reset_index(drop=True)  # never logged
    pd.testing.assert_frame_equal(logged.inputs(), inputs, check_dtype=False)
    metadata = logged.metadata()
    probability_columns = [probability_column(c) for c in model.card.classes]
    assert list(metadata.columns) == [*METADATA_TYPES, *probability_columns]
    assert metadata[REQUEST_ID].tolist() == (["batch-1"] * 10 + [request_ids[1]] * 15 + ["v2"] * 5)
    expected_ids = [f"batch-1/{i}" for i in range(10)] + [
        f"{request_ids[1]}/{i}" for i in range(15)
    ]
    assert metadata[ID].tolist() == expected_ids + [f"v2/{i}" for i in range(5)]
    predictions = [label for response in answers[:2] for label in response.json()["predictions"]]
    predictions += answers[2].json()["outputs"][0]["data"]
    assert metadata[PREDICTION].tolist() == [str(label) for label in predictions]
    probabilities = model.pipeline.predict_proba(rows)
    np.testing.assert_allclose(metadata[probability_columns].to_numpy(), probabilities)
    np.testing.assert_allclose(metadata[SCORE], probabilities.max(axis=1))  # three classes
    assert metadata[POSITIVE_CLASS].isna().all()  # three classes: no positive class
    assert set(metadata[REVISION]) == {"species-00002"} and set(metadata[MODEL]) == {NAME}
    assert set(metadata[MODEL_SHA256]) == {model.card.sha256}
    assert str(metadata[TIME].dtype) == "datetime64[us, UTC]" and metadata[TIME].notna().all()


def test_rows_are_written_once_enough_have_gathered_or_time_has_passed(tmp_path: Path) -> None:
    rows = multiclass_table(seed=2).drop(columns="species").head(6)
    by_count = species_log(str(tmp_path / "count"), max_rows=4, max_seconds=60)
    answer(by_count, rows.iloc[:3])
    time.sleep(0.3)
    assert table_files(tmp_path / "count") == []
    answer(by_count, rows.iloc[3:5])
    (first,) = wait_for_files(tmp_path / "count", 1)
    assert len(pd.read_parquet(first)) == 5
    answer(by_count, rows.iloc[5:])
    by_count.close()
    assert len(read_log(str(tmp_path / "count"))) == 6

    by_time = species_log(str(tmp_path / "time"), max_rows=1000, max_seconds=0.2)
    answer(by_time, rows.iloc[:2])
    (written,) = wait_for_files(tmp_path / "time", 1)
    assert len(pd.read_parquet(written)) == 2
    by_time.close()


def test_row_ids_come_from_the_id_column_else_the_request(tmp_path: Path) -> None:
    rows = multiclass_table(seed=2).drop(columns="species").head(3)
    model = LoggedModel(NAME, "ab" * 32, CLASSES, id_columns=("order_id", "shop"))
    log = PayloadLog(str(tmp_path / "log"), "r1", model)
    ids = {"order_id": ["o-1", None, 7], "shop": ["s", "t", None]}
    log.append(rows, ["setosa"] * 3, None, "req", ids=ids)
    log.append(rows.iloc[:1], ["setosa"], None, "single")  # no id column sent
    log.close()
    table = read_log(str(tmp_path / "log")).table.to_pandas()
    assert table[ID].tolist() == ["o-1", "req/1", "7", "single"]
    assert table["order_id"].tolist() == ["o-1", None, "7", None]  # passed through, as text
    assert table["shop"].tolist() == ["s", "t", None, None]
    assert input_columns(table) == [*rows.columns, "order_id", "shop"]
    assert table[SCORE].isna().all() and table[probability_column("setosa")].isna().all()

    # An excluded id column is never written, so it is not the row's id either.
    hidden = PayloadLog(str(tmp_path / "hidden"), "r1", model, exclude=["order_id", "color"])
    hidden.append(rows, ["setosa"] * 3, None, "req", ids=ids)
    hidden.close()
    table = read_log(str(tmp_path / "hidden")).table.to_pandas()
    assert table[ID].tolist() == ["s", "t", "req/2"]
    assert input_columns(table) == ["size", "weight", "shop"]
    with pytest.raises(ConveyorError, match="the log's own conveyor.\\* columns are always"):
        parse_exclude("ssn, conveyor.score")
    assert parse_exclude(" ssn,,email ") == ["ssn", "email"]


def test_a_folder_of_tables_reads_as_one(tmp_path: Path) -> None:
    first = pd.DataFrame({"amount": [1, 2], "channel": ["web", "app"]})
    second = pd.DataFrame({"amount": [2.5, np.nan], "channel": ["shop", "web"]})
    (tmp_path / "2026-12-01").mkdir()
    (tmp_path / "2026-12-02").mkdir()
    first.to_parquet(tmp_path / "2026-12-01" / "a.parquet", index=False)
    second.to_csv(tmp_path / "2026-12-02" / "b.csv", index=False)
    (tmp_path / "2026-12-02" / ".c.parquet.partial").write_bytes(b"half a file")
    (tmp_path / "_SUCCESS").write_text("")
    (tmp_path / ".staging").mkdir()  # a hidden folder's tables are not read either
    pd.DataFrame({"other": [1]}).to_parquet(tmp_path / ".staging" / "d.parquet")
    both = pd.concat([first, second], ignore_index=True).astype({"amount": float})
    pd.testing.assert_frame_equal(load_table(Source(str(tmp_path))), both)
    arrow = load_arrow_table(Source(str(tmp_path)))
    assert arrow.to_pandas().astype({"channel": object}).equals(both)

    pd.DataFrame({"amount": [1], "region": ["eu"]}).to_parquet(tmp_path / "z.parquet")
    with pytest.raises(ConveyorError) as raised:
        load_table(Source(str(tmp_path)))
    assert str(raised.value) == (
        f"{tmp_path / 'z.parquet'}: columns amount, region differ from those of "
        f"{tmp_path / '2026-12-01' / 'a.parquet'} (amount, channel); a folder's tables must "
        "share their columns"
    )
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    first.to_parquet(mixed / "a.parquet", index=False)
    first.assign(amount=["1", "heavy"]).to_csv(mixed / "b.csv", index=False)
    read = load_arrow_table(Source(str(mixed)))  # as pandas reads it: text, for the rules
    assert read.column("amount").to_pylist() == ["1", "2", "1", "heavy"]
    with pytest.raises(ConveyorError, match=r"^nosuch://t: cannot be read \(Protocol not known"):
        load_table(Source("nosuch://t"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConveyorError, match="empty: a folder with no CSV or Parquet files in it"):
        load_arrow_table(Source(str(tmp_path / "empty")))


def test_the_inference_service_tells_the_predictor_where_to_log() -> None:
    spec = ServingSpec("Fraud Model", "3", "gs://models/fraud/abc", payload_log_uri="gs://logs/p/")
    manifest = render_inference_service(spec)
    validate(manifest)
    assert manifest["spec"]["predictor"]["model"]["env"] == [
        {"name": PAYLOAD_LOG_ENV, "value": "gs://logs/p/fraud-model"}
    ]
    plain = render_inference_service(ServingSpec("Fraud Model", "3", "gs://models/fraud/abc"))
    assert "env" not in plain["spec"]["predictor"]["model"]
    private = ServingSpec(
        "Fraud Model",
        "3",
        "gs://m",
        payload_log_uri="gs://logs",
        payload_log_exclude=("ssn", "email"),
    )
    manifest = render_inference_service(private)
    validate(manifest)
    assert manifest["spec"]["predictor"]["model"]["env"] == [
        {"name": PAYLOAD_LOG_ENV, "value": "gs://logs/fraud-model"},
        {"name": PAYLOAD_LOG_EXCLUDE_ENV, "value": "ssn,email"},
    ]
    assert PAYLOAD_LOG_EXCLUDE_ENV in RENDERED_ENV  # a rollout owns it, as the log's place
    with pytest.raises(ConveyorError, match="without commas"):
        ServingSpec("m", "1", "gs://m", payload_log_exclude=("a,b",))


def test_a_scheduled_run_reads_the_last_days_of_the_log(tmp_path: Path) -> None:
    log = tmp_path / "payloads"
    for day, rows in [("2026-11-29", 1), ("2026-11-30", 2), ("2026-12-01", 3), ("2026-12-02", 4)]:
        (log / day).mkdir(parents=True)
        pd.DataFrame({"amount": np.arange(rows, dtype=float)}).to_parquet(log / day / "r.parquet")
    (log / "notes").mkdir()  # not a day: never read
    (log / "2026-12-03").mkdir()  # a write that never finished: nothing to read, not an error
    (log / "2026-12-03" / ".r.parquet.partial").write_bytes(b"half")
    today = dt.date(2026, 12, 3)
    assert recent_days(str(log), 3, today) == [
        str(log / "2026-12-01" / "r.parquet"),
        str(log / "2026-12-02" / "r.parquet"),
    ]
    with pytest.raises(ConveyorError) as raised:
        recent_days(str(log), 3, dt.date(2026, 12, 10))
    assert str(raised.value) == (
        f"{log}: no payload log from 2026-12-08 to 2026-12-10 (newest day there: 2026-12-03)"
    )
    with pytest.raises(ConveyorError, match="inputs_days must be 1 or more, not 0"):
        recent_days(str(log), 0, today)
    with pytest.raises(ConveyorError, match="no payload log here"):
        recent_days(str(tmp_path / "absent"), 1, today)


def test_a_partitioned_dataset_is_refused_not_read_without_its_partition_column(
    tmp_path: Path,
) -> None:
    (tmp_path / "region=eu").mkdir()
    pd.DataFrame({"amount": [1.0]}).to_parquet(tmp_path / "region=eu" / "part.parquet")
    with pytest.raises(ConveyorError, match=r"a partitioned dataset \(folder 'region=eu'\)"):
        load_table(Source(str(tmp_path)))


def test_a_failed_write_keeps_its_rows_for_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = multiclass_table(seed=5).drop(columns="species").head(4)
    log = species_log("memory://payloads-retry/model")
    moves, real_move = [], log.fs.mv

    def flaky_move(source: str, destination: str, **options: object) -> None:
        moves.append(destination)
        if len(moves) == 1:
            raise OSError("storage unavailable")
        real_move(source, destination, **options)

    monkeypatch.setattr(log.fs, "mv", flaky_move)
    answer(log, rows.iloc[:2])
    with pytest.raises(OSError, match="storage unavailable"):
        log.flush()
    answer(log, rows.iloc[2:])
    (written,) = log.flush()
    assert len(moves) == 2 and written.endswith(".parquet")
    assert log.fs.find("/payloads-retry") == [written]  # no partial file left behind
    logged = read_log(f"memory://{written}")
    pd.testing.assert_frame_equal(logged.inputs(), rows.reset_index(drop=True))


def dropped(log: PayloadLog) -> float:
    labels = {"model": NAME, "revision": "r1"}
    return log.metrics.registry.get_sample_value(DROPPED, labels) or 0.0


def test_a_client_s_true_in_a_numeric_column_is_logged_as_a_number(tmp_path: Path) -> None:
    # The server answers {"size": true} (the model reads it as 1.0); the log types the column
    # by the card, so a file of such requests and ordinary ones is written, not refused.
    types = (("size", "number"), ("weight", "number"), ("color", "text"))
    model = LoggedModel(NAME, "ab" * 32, CLASSES, input_types=types)
    log = PayloadLog(str(tmp_path / "typed"), "r1", model)
    assert answer(log, pd.DataFrame({"size": [True], "weight": [3.0], "color": ["red"]}))
    assert answer(log, pd.DataFrame({"size": [0.5], "weight": [2.0], "color": [None]}))
    log.flush()
    logged = read_log(str(tmp_path / "typed")).inputs()
    assert logged["size"].tolist() == [1.0, 0.5] and logged["color"].tolist()[0] == "red"


def test_rows_that_cannot_become_a_table_are_dropped_not_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Without the card's types, a boolean and a number clash in one column: those rows are
    # dropped and counted once, and the log goes on (retrying them would hold back every
    # later row until the buffer filled).
    log = species_log(str(tmp_path / "untyped"))
    assert answer(log, pd.DataFrame({"size": [True], "weight": [3.0], "color": ["red"]}))
    assert answer(log, pd.DataFrame({"size": [0.5], "weight": [2.0], "color": ["blue"]}))
    assert log.flush() == [] and log.held_rows == 0 and dropped(log) == 2
    assert any("cannot be written as a table" in r.getMessage() for r in caplog.records)
    assert answer(log, pd.DataFrame({"size": [0.7], "weight": [1.0], "color": ["red"]}))
    assert len(log.flush()) == 1 and dropped(log) == 2


def test_unreachable_storage_bounds_the_buffer_counts_drops_and_keeps_the_rest(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    rows = multiclass_table(seed=6).drop(columns="species").head(25)
    log = species_log(
        "memory://payloads-down/model", max_rows=2, max_seconds=0.2, max_buffer_rows=10,
        retry_seconds=0.02,
    )  # fmt: skip
    down = threading.Event()
    down.set()
    real_open = log.fs.open

    def unreachable(path: str, *args: object, **options: object) -> object:
        if down.is_set():
            raise ConnectionError("storage unreachable")
        return real_open(path, *args, **options)

    monkeypatch.setattr(log.fs, "open", unreachable)
    kept = [answer(log, rows.iloc[[i]], f"r{i}") for i in range(25)]
    assert kept == [True] * 10 + [False] * 15  # the oldest rows are kept, whole requests dropped
    assert log.held_rows == 10 and dropped(log) == 15
    deadline = time.monotonic() + 10
    while log.metrics.failures._value.get() < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert log.metrics.failures._value.get() >= 2  # retried while down, rows still held
    assert log.held_rows == 10 and log.fs.find("/payloads-down") == []
    drops = [r for r in caplog.records if "dropping requests" in r.getMessage()]
    failures = [r for r in caplog.records if "could not write" in r.getMessage()]
    assert len(drops) == 1 and len(failures) == 1  # one line per episode, not per row or retry
    down.clear()  # storage is back: the retained rows are written by the writer thread
    deadline = time.monotonic() + 10
    while log.held_rows and time.monotonic() < deadline:
        time.sleep(0.02)
    assert log.held_rows == 0
    written = read_log("memory://payloads-down/model").metadata()
    assert sorted(written[REQUEST_ID], key=lambda r: int(r[1:])) == [f"r{i}" for i in range(10)]
    assert any("again after" in r.getMessage() for r in caplog.records)
    assert answer(log, rows.iloc[:1], "after")  # room again
    log.close()
    assert dropped(log) == 15


def test_a_server_whose_log_storage_is_unreachable_still_answers_and_counts_drops(
    tmp_path: Path,
) -> None:
    model_dir = save_species_model(tmp_path / "model")
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where the log's folder should be")  # makedirs fails, even as root
    log = blocker / "payloads"
    rows = multiclass_table(seed=9).drop(columns="species").dropna().head(8)
    records = rows.to_dict("records")
    options = ("--payload_log", str(log), "--payload_log_max_buffer_rows", "5")
    with predictors({"r1": model_dir}, NAME, tmp_path, *options) as urls:
        for index, record in enumerate(records):
            response = httpx.post(
                f"{urls['r1']}/v1/models/{NAME}:predict",
                json={"instances": [record]},
                headers={"X-Request-Id": f"q{index}"},
            )
            assert response.status_code == 200 and response.headers["x-request-id"] == f"q{index}"
        metrics = httpx.get(f"{urls['r1']}/metrics").text
        samples = {
            (sample.name, sample.labels.get("model")): sample.value
            for family in text_string_to_metric_families(metrics)
            for sample in family.samples
        }
        assert samples[(DROPPED, NAME)] == 3
        assert samples[("conveyor_payload_log_buffered_rows", NAME)] == 5
        blocker.unlink()  # storage is back before the server stops: the 5 kept rows are written
    logged = read_log(str(log)).metadata()
    assert logged[REQUEST_ID].tolist() == [f"q{i}" for i in range(5)]


def test_each_spawned_worker_gets_a_log_of_its_own(tmp_path: Path) -> None:
    log = species_log(str(tmp_path / "log"), max_rows=10, exclude=["color"])
    answer(log, multiclass_table(seed=1).drop(columns="species").head(3))
    copy = pickle.loads(pickle.dumps(log))
    assert (copy.uri, copy.revision, copy.max_rows, copy.exclude) == (log.uri, "r1", 10, ("color",))
    assert copy.model == log.model
    assert copy.flush() == []  # the parent's buffered rows stay the parent's
    log.close()
    late = multiclass_table(seed=1).drop(columns="species").head(2)
    answer(log, late)  # a request finishing after close is written at once
    assert sum(len(pd.read_parquet(f)) for f in table_files(tmp_path / "log")) == 5


def write_old_and_new_days(log_folder: Path) -> pd.DataFrame:
    """A day written before the metadata existed (inputs only) and one after; the rows."""
    rows = multiclass_table(seed=4).drop(columns="species").head(12)
    (log_folder / "2026-12-01").mkdir(parents=True)
    rows.iloc[:5].to_parquet(log_folder / "2026-12-01" / "r0-old.parquet", index=False)
    log = species_log(str(log_folder))
    answer(log, rows.iloc[5:], "new", answered_at=dt.datetime(2026, 12, 2, 9, tzinfo=dt.UTC))
    log.close()
    return rows.reset_index(drop=True)


def test_days_written_before_the_metadata_read_with_it_null(tmp_path: Path) -> None:
    rows = write_old_and_new_days(tmp_path / "log")
    logged = read_log(str(tmp_path / "log"))
    assert len(logged.files) == 2 and logged.input_names == list(rows.columns)
    pd.testing.assert_frame_equal(logged.inputs(), rows, check_dtype=False)
    metadata = logged.metadata()
    assert metadata[ID].tolist() == [None] * 5 + [f"new/{i}" for i in range(7)]
    assert metadata[SCORE].isna().tolist() == [True] * 5 + [False] * 7
    assert logged.table.schema.field(TIME).type == METADATA_TYPES[TIME]
    assert metadata_columns(logged.table) == [*METADATA_TYPES, *map(probability_column, CLASSES)]
    picked = read_log(logged.files, columns=["size", ID, SCORE])
    assert picked.table.column_names == ["size", ID, SCORE]
    # Only metadata, from a file (written by pandas) that has none: its rows, all null.
    only = read_log(logged.files, columns=[SCORE, ID])
    assert only.table.column_names == [ID, SCORE] and len(only) == 12  # the log's order
    assert only.table.column(ID).to_pylist() == [None] * 5 + [f"new/{i}" for i in range(7)]
    old = read_log(logged.files[:1], columns=[SCORE])
    assert len(old) == 5 and old.table.column(SCORE).null_count == 5
    with pytest.raises(ConveyorError, match="no payload log files here"):
        (tmp_path / "empty").mkdir()
        read_log(str(tmp_path / "empty"))
    rows.iloc[:1].drop(columns="color").to_parquet(tmp_path / "log" / "2026-12-01" / "x.parquet")
    with pytest.raises(ConveyorError, match="a payload log holds one model's inputs"):
        read_log(str(tmp_path / "log"))


def test_the_ingest_inputs_component_reads_old_and_new_days(tmp_path: Path) -> None:
    rows = write_old_and_new_days(tmp_path / "log")
    inputs = artifact(Dataset, tmp_path, "inputs")
    logged = artifact(Dataset, tmp_path, "logged")
    ingest_inputs.python_func(inputs_uri=str(tmp_path / "log"), inputs=inputs, log=logged)
    read = pd.read_parquet(inputs.path)
    pd.testing.assert_frame_equal(read, rows, check_dtype=False)  # no conveyor.* column
    everything = pd.read_parquet(logged.path)
    assert list(everything.columns[:3]) == list(rows.columns)
    assert everything[PREDICTION].tolist() == [None] * 5 + ["setosa"] * 7
    assert inputs.metadata["rows"] == logged.metadata["rows"] == 12
    assert inputs.metadata["columns"] == 3
    assert logged.metadata["columns"] == 3 + len(METADATA_TYPES) + 3


def test_the_ingest_inputs_component_reads_today_s_log(tmp_path: Path) -> None:
    rows = multiclass_table(seed=4).drop(columns="species").head(12)
    log = species_log(str(tmp_path / "log"))
    answer(log, rows.iloc[:5])
    log.flush()
    answer(log, rows.iloc[5:])
    log.close()
    inputs = artifact(Dataset, tmp_path, "inputs")
    logged = artifact(Dataset, tmp_path, "logged")
    ingest_inputs.python_func(
        inputs_uri=str(tmp_path / "log"), inputs=inputs, log=logged, inputs_days=2
    )
    read = pd.read_parquet(inputs.path)
    pd.testing.assert_frame_equal(read, rows.reset_index(drop=True), check_dtype=False)
    assert inputs.metadata["rows"] == 12 and inputs.metadata["files"] == 2
    assert inputs.metadata["source"] == str(tmp_path / "log")
    assert logged.metadata["files"] == 2


def test_the_ingest_inputs_component_applies_the_retention_after_reading(
    tmp_path: Path,
) -> None:
    rows = multiclass_table(seed=4).drop(columns="species").head(6)
    log = species_log(str(tmp_path / "log"))
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=40)
    answer(log, rows.iloc[:3], answered_at=old)
    answer(log, rows.iloc[3:])
    log.close()
    outputs = {"inputs": artifact(Dataset, tmp_path, "in"), "log": artifact(Dataset, tmp_path, "l")}
    with pytest.raises(SystemExit, match="retention_days 1 would delete days the run reads"):
        ingest_inputs.python_func(
            inputs_uri=str(tmp_path / "log"), inputs_days=2, retention_days=1, **outputs
        )
    assert len(list((tmp_path / "log").iterdir())) == 2  # refused: nothing deleted
    ingest_inputs.python_func(inputs_uri=str(tmp_path / "log"), retention_days=30, **outputs)
    assert outputs["inputs"].metadata["rows"] == 6  # read, then the 40-day-old day goes
    assert [day.name for day in (tmp_path / "log").iterdir()] == [
        dt.datetime.now(dt.UTC).date().isoformat()
    ]


def test_retention_deletes_only_day_folders_older_than_it(tmp_path: Path) -> None:
    log = tmp_path / "log"
    for day in ("2026-11-28", "2026-11-29", "2026-11-30", "2026-12-01"):
        (log / day).mkdir(parents=True)
        (log / day / "r.parquet").write_bytes(b"")
    (log / "notes").mkdir()
    (log / "2026-02-30").mkdir()  # named like a day, but no such day: not the log's
    (log / "2026-11-01").write_text("a file, not a day folder")
    deleted = prune_log(str(log), 2, today=dt.date(2026, 12, 1))
    assert deleted == [f"{log}/2026-11-28", f"{log}/2026-11-29"]
    assert sorted(p.name for p in log.iterdir()) == [
        "2026-02-30", "2026-11-01", "2026-11-30", "2026-12-01", "notes",
    ]  # fmt: skip
    assert prune_log(str(log), 2, today=dt.date(2026, 12, 1)) == []
    assert prune_log(str(tmp_path / "absent"), 5) == []
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConveyorError) as raised:
            prune_log(str(log), bad)  # type: ignore[arg-type]
        assert str(raised.value) == (
            f"retention_days must be a whole number of days, 1 or more, not {bad!r}"
        )
    assert (log / "2026-11-30").is_dir()


def test_under_load_every_answered_row_is_logged_once_with_its_answer(tmp_path: Path) -> None:
    table = multiclass_table(rows=400, seed=11)
    table["order_id"] = [f"order-{i}" for i in range(len(table))]
    model_dir = tmp_path / "model"
    save_model_dir(
        fit_model(table, "species", "logistic_regression", {}, 0, ["order_id"]), model_dir
    )
    rows = table.drop(columns="species").dropna().head(300).reset_index(drop=True)
    log = tmp_path / "payloads"
    answered: dict[str, tuple[str, str]] = {}  # order id -> (request id, prediction)
    lock = threading.Lock()

    def send(url: str, start: int, count: int) -> None:
        with httpx.Client(timeout=30) as client:
            for index in range(start, start + count):
                row = rows.iloc[index]
                if index % 2:  # V1 with the id column among the keys
                    body = {"instances": [row.to_dict()]}
                    response = client.post(f"{url}/v1/models/{NAME}:predict", json=body)
                    label = response.json()["predictions"][0]
                else:  # V2 with the id column as an input, and a request id of its own
                    inputs = [
                        {"name": "size", "shape": [1], "datatype": "FP64", "data": [row["size"]]},
                        {"name": "weight", "shape": [1], "datatype": "FP64", "data": [row["weight"]]},
                        {"name": "color", "shape": [1], "datatype": "BYTES", "data": [row["color"]]},
                        {"name": "order_id", "shape": [1], "datatype": "BYTES", "data": [row["order_id"]]},
                    ]  # fmt: skip
                    body = {"id": f"v2-{index}", "inputs": inputs}
                    response = client.post(f"{url}/v2/models/{NAME}/infer", json=body)
                    assert response.json()["id"] == f"v2-{index}"
                    label = response.json()["outputs"][0]["data"][0]
                assert response.status_code == 200, response.text
                with lock:
                    answered[row["order_id"]] = (response.headers["x-request-id"], str(label))

    with predictors({"r1": model_dir}, NAME, tmp_path, "--payload_log", str(log)) as urls:
        threads = [
            threading.Thread(target=send, args=(urls["r1"], start, 30))
            for start in range(0, 300, 30)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        # One request without its id column: answered all the same, keyed by its request id.
        lone = {"instances": [rows.drop(columns="order_id").iloc[0].to_dict()]}
        response = httpx.post(f"{urls['r1']}/v1/models/{NAME}:predict", json=lone)
        assert response.status_code == 200
    assert len(answered) == 300
    logged = read_log(str(log)).table.to_pandas()
    assert len(logged) == 301 and logged[ID].is_unique
    by_id = logged.set_index(ID)
    for order_id, (request_id, label) in answered.items():
        assert by_id.loc[order_id, REQUEST_ID] == request_id
        assert by_id.loc[order_id, PREDICTION] == label
        assert by_id.loc[order_id, "order_id"] == order_id
    lone_id = response.headers["x-request-id"]
    assert by_id.loc[lone_id, PREDICTION] == str(response.json()["predictions"][0])
    assert pd.isna(by_id.loc[lone_id, "order_id"])
    assert input_columns(logged) == ["size", "weight", "color", "order_id"]

    # Labels arrive for two thirds of the orders: the online metrics are scikit-learn's on
    # exactly the rows they join.
    truth = table.set_index("order_id")["species"]
    labelled = list(answered)[::3] + list(answered)[1::3]
    pd.DataFrame({"id": labelled, "label": truth.loc[labelled].to_numpy()}).to_csv(
        tmp_path / "labels.csv", index=False
    )
    report = assess_quality(
        str(log), str(tmp_path / "labels.csv"), NAME, {}, QualitySettings(days=0)
    )
    assert (report.coverage.labelled_rows, report.coverage.logged_rows) == (200, 301)
    joined = by_id.loc[labelled]
    expected, predicted = truth.loc[labelled].to_numpy(), joined[PREDICTION].to_numpy()
    overall = report.overall().metrics
    assert overall["accuracy"].value == pytest.approx(skm.accuracy_score(expected, predicted))
    assert overall["f1"].value == pytest.approx(
        skm.f1_score(expected, predicted, average="macro", zero_division=0)
    )
    classes = sorted(truth.unique())
    probabilities = joined[[f"conveyor.probability.{c}" for c in classes]].to_numpy()
    assert overall["log_loss"].value == pytest.approx(
        skm.log_loss(expected, probabilities, labels=classes)
    )


def test_a_binary_model_logs_the_class_its_score_is_of(tmp_path: Path) -> None:
    """The card's positive class picks the score's column and is logged with each row; a
    card without one (written before it was kept) scores the class serving always did."""
    rows = pd.DataFrame({"amount": [10.0, 900.0]})
    fraud = np.array([0.1, 0.8])
    probabilities = np.column_stack([fraud, 1 - fraud])  # classes fraud, legit
    for positive, expected, score in (("fraud", "fraud", fraud), (None, "legit", 1 - fraud)):
        model = LoggedModel("fraud", "ab" * 32, ("fraud", "legit"), positive_class=positive)
        log = PayloadLog(str(tmp_path / str(positive)), "r1", model)
        log.append(rows, ["legit", "fraud"], probabilities, "req")
        log.close()
        metadata = read_log(str(tmp_path / str(positive))).metadata()
        assert metadata[POSITIVE_CLASS].tolist() == [expected, expected]
        np.testing.assert_allclose(metadata[SCORE], score)
    with pytest.raises(ConveyorError, match="positive class 'dog' is not one of the model's"):
        LoggedModel("fraud", "ab" * 32, ("fraud", "legit"), positive_class="dog")
