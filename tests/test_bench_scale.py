"""bench.scale: its pure helpers (the chunked tables' layout and seeding, the sizes it
reads, and what the figures say), on small constructed inputs; nothing is timed."""

from __future__ import annotations

import pytest

from bench.scale import chunk, evidently_cell, layout, parse_sizes, trend


def test_layout_splits_rows_into_files_of_chunks_numbered_across_the_table() -> None:
    assert layout(10, file_rows=4, chunk_rows=2) == [
        [(0, 2), (1, 2)],
        [(2, 2), (3, 2)],
        [(4, 2)],
    ]
    assert layout(5, file_rows=4, chunk_rows=2)[-1] == [(2, 1)]
    # A smaller table's files are the first files of a larger one.
    assert layout(8, 4, 2) == layout(11, 4, 2)[:2]
    for bad in [(0, 4, 2), (10, 5, 2), (10, 4, 0)]:
        with pytest.raises(ValueError, match="expected all positive"):
            layout(*bad)


def test_chunks_are_seeded_by_side_and_index() -> None:
    first = chunk("current", 3, 50)
    assert first.num_rows == 50
    assert first.column_names == [f"num{i:02d}" for i in range(20)] + [f"cat{i}" for i in range(10)]
    assert first.equals(chunk("current", 3, 50))
    assert not first.equals(chunk("current", 4, 50))
    assert not first.equals(chunk("reference", 3, 50))
    assert set(first.column("cat0").to_pylist()) <= {f"cat0_{level}" for level in range(12)}


def test_sizes_read_as_sorted_distinct_row_counts() -> None:
    assert parse_sizes("10M, 1000000,2.5M,1_000_000") == [1_000_000, 2_500_000, 10_000_000]
    for bad in ["", "ten", "0", "1.5"]:
        with pytest.raises(ValueError):
            parse_sizes(bad)


def _run(rows: int, seconds: float, peak: float, drift_peak: float) -> dict:
    per = seconds / (rows / 1e6)
    return {"rows": rows, "seconds": seconds, "seconds_per_million": per, "peak_mib": peak,
            "drift_peak_mib": drift_peak}  # fmt: skip


def test_trend_compares_the_largest_size_with_the_smallest() -> None:
    found = trend([_run(30_000_000, 300.0, 1_500.0, 1_000.0), _run(1_000_000, 12.0, 900.0, 950.0)])
    assert found["smallest"] == 1_000_000 and found["largest"] == 30_000_000
    assert found["seconds_per_million"]["ratio"] == pytest.approx(10 / 12)
    assert found["linear"] is True
    assert found["flat_memory"] is False  # 1,500 / 900 > 1.5
    assert found["flat_memory_drift"] is True
    assert found["fit"]["seconds_per_million"] == pytest.approx(288 / 29)
    slower = trend([_run(1_000_000, 10.0, 900.0, 900.0), _run(3_000_000, 60.0, 900.0, 900.0)])
    assert slower["linear"] is False and slower["flat_memory"] is True
    assert "fit" not in trend([_run(1_000_000, 10.0, 900.0, 900.0)])


def test_evidently_cell_says_why_it_did_not_finish() -> None:
    assert evidently_cell(None) == "skipped"
    assert evidently_cell({"status": "memory", "memory_gib": 8.0}) == (
        "did not finish (memory cap 8 GiB)"
    )
    assert evidently_cell({"status": "timeout", "timeout_s": 600.0}) == (
        "did not finish (timeout 600 s)"
    )
    finished = {"status": "finished", "seconds": 61.26, "peak_mib": 4321.4}
    assert evidently_cell(finished) == "61.3 s / 4,321 MiB"
