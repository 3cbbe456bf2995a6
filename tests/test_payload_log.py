"""The payload log: a real predictor process writes the inputs it answered; a folder of
tables reads back as one table; the InferenceService passes the log's place to the predictor."""

from __future__ import annotations

import datetime as dt
import pickle
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from kfp.dsl import Dataset

from components.core.data import Source, load_arrow_table, load_table
from components.core.errors import ConveyorError
from components.core.manifests import ServingSpec, render_inference_service
from components.core.manifests import validate_inference_service as validate
from components.core.payload_log import PAYLOAD_LOG_ENV, PayloadLog, recent_days
from components.ingest_inputs import ingest_inputs
from tests.conftest import artifact, multiclass_table, predictors, save_species_model

NAME = "species"


def table_files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*.parquet") if not path.name.startswith("."))


def wait_for_files(folder: Path, count: int, timeout: float = 10) -> list[Path]:
    deadline = time.monotonic() + timeout
    while len(table_files(folder)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return table_files(folder)


def test_a_predictor_logs_the_inputs_it_answered_and_nothing_else(tmp_path: Path) -> None:
    model_dir = save_species_model(tmp_path / "model")
    rows = multiclass_table(seed=8).drop(columns="species").dropna().head(30)
    records = rows.to_dict("records")
    log = tmp_path / "payloads"
    with predictors(
        {"species-00002": model_dir}, NAME, tmp_path, "--payload_log", str(log)
    ) as urls:
        url = urls["species-00002"]
        for batch in (records[:10], records[10:25]):
            answer = httpx.post(f"{url}/v1/models/{NAME}:predict", json={"instances": batch})
            assert answer.status_code == 200, answer.text
        v2 = [
            {"name": "size", "shape": [5], "datatype": "FP64", "data": list(rows["size"][25:])},
            {"name": "weight", "shape": [5], "datatype": "FP64", "data": list(rows["weight"][25:])},
            {"name": "color", "shape": [5], "datatype": "BYTES", "data": list(rows["color"][25:])},
        ]
        assert httpx.post(f"{url}/v2/models/{NAME}/infer", json={"inputs": v2}).status_code == 200
        refused = [{"size": 1.0, "weight": "heavy", "color": "red"}]  # text in a numeric column
        answer = httpx.post(f"{url}/v1/models/{NAME}:predict", json={"instances": refused})
        assert answer.status_code == 400
        assert table_files(log) == []  # 30 rows, fewer than a file's worth: still buffered
    # Stopped with SIGTERM: the buffered rows are written on the way out.
    (written,) = table_files(log)
    assert written.parent.parent == log and written.name.startswith("species-00002-")
    logged = load_table(Source(str(log)))
    pd.testing.assert_frame_equal(logged, rows.reset_index(drop=True), check_dtype=False)


def test_rows_are_written_once_enough_have_gathered_or_time_has_passed(tmp_path: Path) -> None:
    rows = multiclass_table(seed=2).drop(columns="species").head(6)
    by_count = PayloadLog(str(tmp_path / "count"), "r1", max_rows=4, max_seconds=60)
    by_count.append(rows.iloc[:3])
    time.sleep(0.3)
    assert table_files(tmp_path / "count") == []
    by_count.append(rows.iloc[3:5])
    (first,) = wait_for_files(tmp_path / "count", 1)
    assert len(pd.read_parquet(first)) == 5
    by_count.append(rows.iloc[5:])
    by_count.close()
    assert len(load_table(Source(str(tmp_path / "count")))) == 6

    by_time = PayloadLog(str(tmp_path / "time"), "r1", max_rows=1000, max_seconds=0.2)
    by_time.append(rows.iloc[:2])
    (written,) = wait_for_files(tmp_path / "time", 1)
    assert len(pd.read_parquet(written)) == 2
    by_time.close()


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
    log = PayloadLog("memory://payloads-retry/model", "r1")
    moves, real_move = [], log.fs.mv

    def flaky_move(source: str, destination: str, **options: object) -> None:
        moves.append(destination)
        if len(moves) == 1:
            raise OSError("storage unavailable")
        real_move(source, destination, **options)

    monkeypatch.setattr(log.fs, "mv", flaky_move)
    log.append(rows.iloc[:2])
    with pytest.raises(OSError, match="storage unavailable"):
        log.flush()
    log.append(rows.iloc[2:])
    written = log.flush()
    assert len(moves) == 2 and written.endswith(".parquet")
    assert log.fs.find("/payloads-retry") == [written]  # no partial file left behind
    with log.fs.open(written, "rb") as file:
        pd.testing.assert_frame_equal(pd.read_parquet(file), rows.reset_index(drop=True))


def test_each_spawned_worker_gets_a_log_of_its_own(tmp_path: Path) -> None:
    log = PayloadLog(str(tmp_path / "log"), "r1", max_rows=10)
    log.append(multiclass_table(seed=1).drop(columns="species").head(3))
    copy = pickle.loads(pickle.dumps(log))
    assert (copy.uri, copy.revision, copy.max_rows) == (log.uri, "r1", 10)
    assert copy.flush() is None  # the parent's buffered rows stay the parent's
    log.close()
    late = multiclass_table(seed=1).drop(columns="species").head(2)
    log.append(late)  # a request finishing after close is written at once
    assert sum(len(pd.read_parquet(f)) for f in table_files(tmp_path / "log")) == 5


def test_the_ingest_inputs_component_reads_today_s_log(tmp_path: Path) -> None:
    rows = multiclass_table(seed=4).drop(columns="species").head(12)
    log = PayloadLog(str(tmp_path / "log"), "r1")
    log.append(rows.iloc[:5])
    log.flush()
    log.append(rows.iloc[5:])
    log.close()
    inputs = artifact(Dataset, tmp_path, "inputs")
    ingest_inputs.python_func(inputs_uri=str(tmp_path / "log"), inputs=inputs, inputs_days=2)
    read = pd.read_parquet(inputs.path)
    pd.testing.assert_frame_equal(read, rows.reset_index(drop=True), check_dtype=False)
    assert inputs.metadata["rows"] == 12 and inputs.metadata["files"] == 2
    assert inputs.metadata["source"] == str(tmp_path / "log")
