"""The fan-out's steps, as pods run them (files in, files out), without kfp: a payload log
in partitions gives validation's findings and drift's report on the whole log."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conveyor.components.core.data.partitions import list_partitions
from conveyor.components.core.data.schema import infer_schema
from conveyor.components.core.data.validation import check_table
from conveyor.components.core.data.validation_summary import (
    check_summary,
    merge_summaries,
    summarize_partition,
)
from conveyor.components.core.errors import ConveyorError
from conveyor.components.core.monitoring import partitioned
from conveyor.components.core.monitoring.drift import DriftSettings, compare_tables
from conveyor.components.core.monitoring.drift_report import DriftOutputs
from tests.test_drift_summary import EXCLUDE, messy_table


def payload_log(table: pd.DataFrame, folder: Path, cuts: list[int]) -> None:
    """``table`` as a payload log's files: its inputs and a ``conveyor.*`` column."""
    folder.mkdir(parents=True)
    logged = table.assign(**{"conveyor.id": [f"r{n}" for n in range(len(table))]})
    bounds = [0, *cuts, len(table)]
    for index, (start, stop) in enumerate(zip(bounds, bounds[1:], strict=False)):
        logged.iloc[start:stop].to_parquet(folder / f"part-{index:02d}.parquet", index=False)


def run_steps(tmp_path: Path, reference: pd.DataFrame, log: Path, segment: str | None):
    """Every step of the fan-out in turn; the profiles gathered out of order."""
    reference.to_parquet(tmp_path / "reference.parquet", index=False)
    schema = infer_schema(reference)
    (tmp_path / "schema.json").write_text(schema.to_json())
    items = partitioned.plan_partitions(
        str(log), 0, tmp_path / "reference.parquet", tmp_path / "tested.json", segment, EXCLUDE
    )
    profiles = []
    for index, item in enumerate(items):
        item = json.loads(json.dumps(item))  # a loop item, as KFP passes it
        out = tmp_path / f"profile-{index}"
        partitioned.profile_partition(item, tmp_path / "tested.json", tmp_path / "schema.json", out)
        profiles.append(out)
    outputs = tmp_path / "validation.md", tmp_path / "plan.npz", tmp_path / "merged.json"
    result = partitioned.check_partitions(
        profiles[::-1], tmp_path / "reference.parquet", tmp_path / "schema.json",
        tmp_path / "tested.json", outputs,
    )  # fmt: skip
    counts = []
    for index, item in enumerate(items):
        out = tmp_path / f"counts-{index}"
        partitioned.count_partition(item, outputs[1], outputs[2], out, 200)
        counts.append(out)
    report = partitioned.judge_drift(
        counts, outputs[1], outputs[2], tmp_path / "reference.parquet", DriftSettings(),
        DriftOutputs(tmp_path / "drift.html", tmp_path / "drift.md", tmp_path / "drift.json", 200),
    )  # fmt: skip
    return schema, result, report


def test_the_steps_give_the_whole_logs_findings(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    reference, current = messy_table(rng, 1500, 0.0), messy_table(rng, 1800, 0.5)
    payload_log(current, tmp_path / "log", [400, 400, 401, 1300])
    schema, result, report = run_steps(tmp_path, reference, tmp_path / "log", "region")
    assert result.violations == check_table(current, schema, inputs_only=True)
    whole = compare_tables(reference, current, DriftSettings(), "region", EXCLUDE)
    assert report.drifted_in("price") == whole.drifted_in("price") != []
    assert report.reasons == whole.reasons and report.skipped == whole.skipped
    written = json.loads((tmp_path / "drift.json").read_text())
    assert written["dataset_drifted"] == whole.dataset_drifted and written["approximations"] == []
    assert "price" in (tmp_path / "drift.md").read_text()
    page = (tmp_path / "drift.html").read_text()
    assert "seeded sample of 200 rows" in page  # Evidently's page, on the partitions' samples


def test_a_broken_feed_stops_at_the_check_with_the_rules_findings(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    reference, current = messy_table(rng, 800, 0.0), messy_table(rng, 900, 0.0)
    current.loc[700:, "rooms"] = np.nan  # a null spike in the last partition only
    payload_log(current, tmp_path / "log", [300, 600])
    with pytest.raises(ConveyorError, match=r"rule\(s\) violated:\n.*'rooms' \[null_rate\]"):
        run_steps(tmp_path, reference, tmp_path / "log", None)
    assert "rooms" in (tmp_path / "validation.md").read_text()  # the report, before failing
    assert not (tmp_path / "plan.npz").exists()  # and drift was not planned


def test_no_file_in_the_days_asked_for_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "log" / "2020-01-01").mkdir(parents=True)
    messy_table(np.random.default_rng(1), 50, 0.0).to_parquet(tmp_path / "ref.parquet")
    with pytest.raises(
        ConveyorError, match=r"log: no payload log from .* \(newest day there: 2020-01-01\)"
    ):
        partitioned.plan_partitions(
            str(tmp_path / "log"), 2, tmp_path / "ref.parquet", tmp_path / "t.json"
        )


def test_a_key_written_as_integers_in_one_file_and_floats_in_another_is_still_one_key() -> None:
    """A gap turns a file's integer column to floats: 2 and 2.0 are one key value."""
    reference = pd.DataFrame({"id": np.arange(300), "x": np.linspace(0, 1, 300)})
    schema = infer_schema(reference, keys=("id",))
    first = pd.DataFrame({"id": [1, 2], "x": [0.1, 0.2]})
    later = pd.DataFrame({"id": [2.0, 3.0], "x": [0.3, 0.4]})
    merged = merge_summaries(
        [summarize_partition(first, schema, 0), summarize_partition(later, schema, 2)]
    )
    whole = check_table(pd.concat([first, later], ignore_index=True), schema, inputs_only=True)
    found = check_summary(merged, schema).violations
    assert [(v.rule, v.observed) for v in found] == [(v.rule, v.observed) for v in whole]
    assert [v.rule for v in found] == ["unique_key"]


def test_a_file_that_grew_between_the_passes_fails_the_count(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    reference, current = messy_table(rng, 600, 0.0), messy_table(rng, 500, 0.0)
    payload_log(current, tmp_path / "log", [])
    reference.to_parquet(tmp_path / "reference.parquet", index=False)
    (tmp_path / "schema.json").write_text(infer_schema(reference).to_json())
    (item,) = partitioned.plan_partitions(
        str(tmp_path / "log"), 0, tmp_path / "reference.parquet", tmp_path / "tested.json"
    )
    partitioned.profile_partition(
        item, tmp_path / "tested.json", tmp_path / "schema.json", tmp_path / "p"
    )
    outputs = tmp_path / "v.md", tmp_path / "plan.npz", tmp_path / "merged.json"
    partitioned.check_partitions(
        [tmp_path / "p"], tmp_path / "reference.parquet", tmp_path / "schema.json",
        tmp_path / "tested.json", outputs,
    )  # fmt: skip
    grown = pd.concat([current, current]).assign(**{"conveyor.id": "r"})
    grown.to_parquet(tmp_path / "log" / "part-00.parquet", index=False)
    with pytest.raises(ConveyorError, match=r"part-00\.parquet: 1,000 rows, 500 when listed"):
        partitioned.count_partition(item, outputs[1], outputs[2], tmp_path / "c", 100)


@pytest.mark.parametrize("name", ["t.csv.gz", "t.tsv", "t.pq", "bom.csv", "empty.csv"])
def test_a_partition_is_read_as_a_whole_table_read_reads_it(name: str, tmp_path: Path) -> None:
    table = pd.DataFrame({"x": [1.5, 2.5, 3.5], "c": ["a", "b", "c"]})
    path = tmp_path / name
    if name == "t.pq":
        table.to_parquet(path)
    elif name == "bom.csv":
        path.write_text(table.to_csv(index=False), encoding="utf-8-sig")
    elif name == "empty.csv":
        path.write_text("x,c\n")
    else:
        table.to_csv(path, sep="\t" if name.endswith("tsv") else ",", index=False)
    (partition,) = list_partitions([str(path)])
    batches = list(partition.batches(None, 2))
    expected = table.iloc[:0] if name == "empty.csv" else table
    assert partition.rows == len(expected) == sum(len(batch) for batch in batches)
    assert all(list(batch.columns) == ["x", "c"] for batch in batches)
    assert pd.concat(batches)["c"].tolist() == expected["c"].tolist()
