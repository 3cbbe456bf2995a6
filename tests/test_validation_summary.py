"""Validation from per-partition summaries: on many seeded messy tables cut into partitions at
random, the merged summaries break exactly the rules ``check_table`` finds on the whole table
(same text, rows and severities); summaries round-trip through a file, merge associatively,
and a corrupt or foreign file fails in one line naming it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from conveyor.components.core.data.schema import Schema, infer_schema
from conveyor.components.core.data.tables import Source, as_arrow, load_arrow_table
from conveyor.components.core.data.validation import check_table
from conveyor.components.core.data.validation_summary import (
    ValidationSummary,
    check_summary,
    load_summary,
    merge_summaries,
    summarize_partition,
    write_summary,
)
from conveyor.components.core.errors import ConveyorError
from tests.conftest import transactions

SEEDS = range(24)


def _clean(rows: int, seed: int) -> pd.DataFrame:
    """Transactions with an id, dates written as text, free text, and vip amounts far above
    everyone else's (so a segment has a range of its own)."""
    rng = np.random.default_rng(seed + 1000)
    table = transactions(rows, seed).assign(id=np.arange(rows) + 10_000)
    table.loc[table["segment"] == "vip", "amount"] += 5000
    days = pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 365, rows), "D")
    words = np.array(["late", "fine", "call back", "refund", "ok"], dtype=object)
    return table.assign(
        opened=days.strftime("%Y-%m-%d").to_numpy(dtype=object),
        note=[f"{w} #{n}" for n, w in enumerate(rng.choice(words, rows))],
    )


@pytest.fixture(scope="module")
def schema() -> Schema:
    reference = _clean(2000, seed=0)
    schema = infer_schema(reference, segment="segment", keys=("id",))
    assert {c.name: c.kind for c in schema.columns}["opened"] == "datetime"
    return schema


def _messy(seed: int) -> pd.DataFrame:
    """A payload log gone wrong in seeded ways: gaps, values out of range, infinities,
    unseen categories, dates in other forms, numbers written as text, a null spike within a
    segment, a repeated and an empty key, copies of rows spread through the table."""
    rng = np.random.default_rng(seed)
    rows = int(rng.integers(250, 700))
    table = _clean(rows, seed=seed + 1)

    def some(share: float) -> np.ndarray:
        return rng.random(rows) < share

    table["amount"] = table["amount"].mask(some(rng.choice([0.0, 0.02, 0.3])))
    if seed % 3:
        table.loc[some(0.01), "amount"] = 1e7 * rng.choice([1, -1])
    if seed % 4 == 0:
        table.loc[some(0.01), "amount"] = np.inf
        table.loc[some(0.005), "amount"] = -np.inf
    retail = table.index[table["segment"] == "retail"]
    table.loc[rng.choice(retail, 2), "amount"] = 5050.0  # a vip-sized amount on retail rows
    business = table["segment"] == "business"
    table.loc[business & some(rng.choice([0.0, 0.7])), "age"] = np.nan
    unseen = np.array(["kiosk", "crypto", "Web", "alpha", "zeta"], dtype=object)
    spots = some(rng.choice([0.0, 0.01, 0.05]))
    table.loc[spots, "channel"] = rng.choice(unseen[: int(rng.integers(1, 6))], spots.sum())
    bad_dates = np.array(
        ["31/12/2024", "n/a", "9999-12-31", "yesterday", "2024/02/03"], dtype=object
    )
    spots = some(rng.choice([0.0, 0.02]))
    table.loc[spots, "opened"] = rng.choice(bad_dates, spots.sum())
    table["opened"] = table["opened"].mask(some(0.05))
    table["note"] = table["note"].mask(some(0.3))
    if seed % 5 == 1:  # numbers read as text, some not numbers at all
        rating = table["rating"].astype(str).astype(object)
        table["rating"] = rating.where(~some(0.02), rng.choice(["?", "n/a", "-", "x"], rows))
    if seed % 5 == 2:  # every value a number, written as text
        table["rating"] = table["rating"].astype(str).astype(object)
    if seed % 6 == 3:
        table = table.rename(columns={"age": "age_years"})
    if seed % 2:
        table.loc[int(rng.integers(rows)), "id"] = table["id"].iloc[int(rng.integers(rows))]
    if seed % 7 == 4:
        table["id"] = table["id"].astype(float).mask(some(0.01))
    copies = table.iloc[rng.integers(0, rows, int(rng.integers(0, 6)))]
    table = pd.concat([table, copies]).sample(frac=1.0, random_state=seed)
    return table.reset_index(drop=True)


def _cuts(rows: int, rng: np.random.Generator) -> list[int]:
    """Cut points into 1 to 7 partitions, often with a 0-row and a 1-row one."""
    parts = int(rng.integers(1, 8))
    inner = sorted(rng.integers(0, rows, parts - 1).tolist())
    if parts >= 3:
        inner[1] = inner[0]  # a 0-row partition
    if parts >= 4:
        inner[2] = inner[1] + 1  # a 1-row partition
    inner = sorted(inner)
    return [0, *inner, rows]


def _summaries(
    table: pa.Table, schema: Schema, cuts: list[int], inputs: bool = True
) -> list[ValidationSummary]:
    return [
        summarize_partition(table.slice(start, stop - start), schema, start, inputs=inputs)
        for start, stop in zip(cuts, cuts[1:], strict=False)
    ]


def _variant(schema: Schema, seed: int) -> Schema:
    """The schema as a person may have edited it: bounds on the rows, severities changed."""
    if seed % 4 == 1:
        return replace(schema, max_rows=400, severity={"range": "error"})
    if seed % 4 == 2:
        return replace(schema, severity={"duplicate_rows": "off", "date_format": "error"})
    return schema


@pytest.mark.parametrize("seed", SEEDS)
def test_merged_summaries_break_the_rules_check_table_finds(schema: Schema, seed: int) -> None:
    schema = _variant(schema, seed)
    table = as_arrow(_messy(seed))
    cuts = _cuts(table.num_rows, np.random.default_rng(seed + 77))
    for inputs in (True, False):
        expected = check_table(table, schema, inputs_only=inputs)
        merged = merge_summaries(_summaries(table, schema, cuts, inputs))
        assert check_summary(merged, schema, inputs=inputs).violations == expected


def test_parquet_row_groups_summarised_one_by_one_match_the_file(
    tmp_path: Path, schema: Schema
) -> None:
    """Text read from Parquet arrives dictionary-encoded, one dictionary per row group."""
    import pyarrow.parquet as pq

    table = pd.concat([_messy(1), _messy(2)], ignore_index=True)
    pq.write_table(as_arrow(table), tmp_path / "t.parquet", row_group_size=97)
    whole = load_arrow_table(Source(str(tmp_path / "t.parquet")))
    expected = check_table(whole, schema, inputs_only=True)
    assert expected
    file = pq.ParquetFile(tmp_path / "t.parquet", read_dictionary=["channel", "opened", "note"])
    summaries, offset = [], 0
    for group in range(file.num_row_groups):
        part = file.read_row_group(group)
        summaries.append(summarize_partition(part, schema, offset))
        offset += part.num_rows
    assert check_summary(merge_summaries(summaries), schema).violations == expected


def test_the_messy_tables_break_every_rule(schema: Schema) -> None:
    """The comparison above is only as good as the rules the tables break."""
    found = set()
    for seed in SEEDS:
        schema_ = _variant(schema, seed)
        table = _messy(seed)
        found |= {(v.rule, bool(v.segment)) for v in check_table(table, schema_, inputs_only=True)}
        found |= {(v.rule, bool(v.segment)) for v in check_table(table, schema_)}
    assert found >= {
        ("presence", False), ("type", False), ("range", False), ("range", True),
        ("allowed_categories", False), ("null_rate", False), ("null_rate", True),
        ("finite", False), ("date_format", False), ("row_count", False),
        ("unique_key", False), ("duplicate_rows", False),
    }  # fmt: skip


def test_a_summary_written_to_a_file_reads_back_equal(tmp_path: Path, schema: Schema) -> None:
    table = as_arrow(_messy(3))
    summary = merge_summaries(_summaries(table, schema, [0, 100, 101, table.num_rows]))
    write_summary(summary, tmp_path / "summary.json")
    assert load_summary(tmp_path / "summary.json") == summary
    assert ValidationSummary.from_json(summary.to_json()) == summary


def test_merging_is_associative(schema: Schema) -> None:
    table = as_arrow(_messy(5))
    parts = _summaries(table, schema, [0, 50, 50, 51, 200, table.num_rows])
    flat = merge_summaries(parts)
    assert merge_summaries([merge_summaries(parts[:2]), merge_summaries(parts[2:])]) == flat
    assert merge_summaries([parts[0], merge_summaries(parts[1:4]), parts[4]]) == flat
    assert flat == summarize_partition(table, schema, 0)


def test_partitions_out_of_order_or_of_another_schema_are_refused(schema: Schema) -> None:
    table = as_arrow(_messy(6))
    first, second = _summaries(table, schema, [0, 100, table.num_rows])
    with pytest.raises(ConveyorError, match="a partition starts at row 0, expected 100"):
        merge_summaries([first, first])
    other = replace(schema, min_rows=10)
    with pytest.raises(ConveyorError, match="made with another schema"):
        check_summary(merge_summaries([first, second]), other)
    text_ids = table.set_column(
        table.column_names.index("amount"), "amount", pa.array(["1"] * table.num_rows)
    )
    later = summarize_partition(text_ids.slice(100), schema, 100)
    with pytest.raises(
        ConveyorError, match="column 'amount' holds float64 values in one partition"
    ):
        merge_summaries([first, later])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not JSON"),
        ('{"format": "something else"}', "not a Conveyor validation summary"),
        ('{"format": "conveyor.validation_summary", "version": 9}', "summary version 9"),
        (None, "summary.columns[0].missing.count: expected a whole number, found 'x'"),
        (None, "summary.row_hashes: not base64"),
        (None, "summary: unknown field(s) ['extra']"),
        (None, "summary.columns[0].missing: 2 example rows for a count of 5"),
    ],
)
def test_a_corrupt_or_foreign_summary_file_fails_in_one_line_naming_it(
    tmp_path: Path, schema: Schema, content: str | None, message: str
) -> None:
    summary = summarize_partition(as_arrow(_messy(8)), schema, 0)
    if content is None:  # a summary edited by hand
        data = json.loads(summary.to_json())
        body = data["summary"]
        if "whole number" in message:
            body["columns"][0]["missing"]["count"] = "x"
        elif "base64" in message:
            body["row_hashes"] = "***"
        elif "unknown" in message:
            body["extra"] = 1
        else:
            body["columns"][0]["missing"] = {"count": 5, "rows": [1, 2], "values": []}
        content = json.dumps(data)
    path = tmp_path / "summary.json"
    path.write_text(content)
    with pytest.raises(ConveyorError) as raised:
        load_summary(path)
    error = str(raised.value)
    assert error.startswith(str(path)) and message in error and "\n" not in error
    with pytest.raises(ConveyorError, match="summary file not found"):
        load_summary(tmp_path / "absent.json")


def test_rows_sharing_a_hash_are_counted_as_a_hash_table_would_block_by_block(monkeypatch) -> None:
    from conveyor.components.core.data import validation_summary

    monkeypatch.setattr(validation_summary, "_BLOCK_ROWS", 37)  # many blocks on small input
    rng = np.random.default_rng(41)
    empty = validation_summary._EMPTY
    for case in range(200):
        pool = rng.integers(0, 2**64, int(rng.integers(1, 300)), dtype=np.uint64)
        hashes = rng.choice(np.append(pool, empty), int(rng.integers(0, 250))).astype("<u8")
        for skip_empty in (True, False):
            shared = pd.Series(hashes).duplicated(keep=False).to_numpy()
            if skip_empty:
                shared &= hashes != empty
            rows = np.flatnonzero(shared)
            expected = (len(rows), tuple(int(row) + 5 for row in rows[:3]))
            found = validation_summary._repeated(hashes.tobytes(), 5, skip_empty)
            assert found == expected, case
