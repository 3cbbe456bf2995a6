"""Online quality: joining labels to the payload log and computing every metric, beside a
plain pyarrow read of the same files.

Run it as ``make bench`` (or ``make bench-quality``) or ``python -m bench.quality [--rows N]``.
A seeded payload log of ``--rows`` predictions (10,000,000 by default) is written once as
Parquet in the contract's layout: 7 day folders, 2 revisions, 5 files per day and revision,
each row 8 numeric inputs, a 5-value segment and the ``conveyor.`` metadata of a binary
model; beside it a labels table for a tenth of the rows (1,000,000), a few of them for ids
never logged. Each engine runs in a process of its own: ``read`` is ``pyarrow.parquet
.read_table`` of the log folder and of the labels file; ``conveyor`` is ``assess_quality``
(read, join, and every metric with its interval per day, revision and segment, overall).
Timings are the median of ``--repeats`` runs; peak memory is the process's. Results go to
``build/bench/quality.json``. The aim: ``conveyor`` below 10x ``read``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from bench.children import ROOT, peak_mib, run_child

OUT = ROOT / "build" / "bench"
ENGINES = ("read", "conveyor")
MODEL = "fraud"
DAYS, REVISIONS, PARTS = 7, ("fraud-predictor-00001", "fraud-predictor-00002"), 5
SEGMENTS = ("retail", "business", "vip", "student", "senior")


def write_log(folder: Path, rows: int, seed: int = 11) -> Path:
    """A seeded payload log of ``rows`` predictions and its labels (a tenth of the rows);
    returns the labels file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    start = np.datetime64("2026-11-01T00:00:00", "us")
    files = DAYS * len(REVISIONS) * PARTS
    bounds = np.linspace(0, rows, files + 1).astype(int)
    first_id = 10**12
    for index in range(files):
        day, rest = divmod(index, len(REVISIONS) * PARTS)
        revision = REVISIONS[rest // PARTS]
        size = int(bounds[index + 1] - bounds[index])
        seconds = np.sort(rng.uniform(0, 86_400, size))
        times = start + np.timedelta64(day, "D") + (seconds * 1e6).astype("timedelta64[us]")
        score = rng.beta(1, 6, size)
        ids = pa.array(np.arange(bounds[index], bounds[index + 1]) + first_id).cast(pa.string())
        columns = {f"x{k}": rng.normal(size=size) for k in range(8)}
        columns["segment"] = pa.array(rng.choice(SEGMENTS, size))
        columns |= {
            "conveyor.id": ids,
            "conveyor.request_id": ids,
            "conveyor.time": pa.array(times, pa.timestamp("us", tz="UTC")),
            "conveyor.revision": pa.array(np.full(size, revision)),
            "conveyor.model": pa.array(np.full(size, MODEL)),
            "conveyor.model_sha256": pa.array(np.full(size, "0" * 64)),
            "conveyor.prediction": pa.array(np.where(score >= 0.5, "1", "0")),
            "conveyor.score": score,
            "conveyor.probability.0": 1 - score,
            "conveyor.probability.1": score,
        }
        day_folder = folder / "log" / str((start + np.timedelta64(day, "D")).astype("M8[D]"))
        day_folder.mkdir(parents=True, exist_ok=True)
        name = f"{revision}-{index:06d}000000-{index:08x}.parquet"
        pq.write_table(pa.table(columns), day_folder / name)
    labelled = rng.choice(rows, rows // 10, replace=False)
    unknown = max(1, labelled.size // 1000)
    ids = np.r_[labelled[:-unknown] + first_id, np.arange(unknown) + 5 * first_id]
    score = rng.beta(1, 6, ids.size)  # the label depends on a score like the one logged
    labels = pa.table(
        {
            "id": pa.array(ids).cast(pa.string()),
            "label": (rng.uniform(size=ids.size) < score).astype(np.int64),
            "time": pa.array(
                start + np.timedelta64(9, "D") + rng.integers(0, 86_400, ids.size) * 1_000_000,
                pa.timestamp("us", tz="UTC"),
            ),
        }
    )
    pq.write_table(labels, folder / "labels.parquet")
    return folder / "labels.parquet"


def _prepare(rows: int) -> tuple[Path, Path]:
    folder = OUT / f"quality-{rows}"
    labels = folder / "labels.parquet"
    if not labels.exists():
        write_log(folder, rows)
    return folder / "log", labels


def _run_engine(engine: str, log: Path, labels: Path, repeats: int) -> dict:
    """In this process: ``repeats`` timed runs of one engine over the files."""
    import pyarrow.parquet as pq

    from conveyor.components.core.monitoring.quality import QualitySettings, assess_quality

    settings = QualitySettings(segment="segment", days=DAYS)
    offline = {"accuracy": 0.8, "false_positive_rate": 0.05, "roc_auc": 0.6, "log_loss": 0.5}
    seconds, found = [], None
    for _ in range(repeats):
        began = time.perf_counter()
        if engine == "read":
            rows = pq.read_table(log).num_rows + pq.read_table(labels).num_rows
        else:
            found = assess_quality(str(log), str(labels), MODEL, offline, settings)
        seconds.append(time.perf_counter() - began)
    result = {"engine": engine, "seconds": statistics.median(seconds), "runs": seconds}
    result["peak_mib"] = peak_mib()
    if found is not None:
        result |= {"groups": len(found.groups), "labelled": found.coverage.labelled_rows}
    else:
        result["rows"] = rows
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--engine", choices=ENGINES, help=argparse.SUPPRESS)  # a child run
    args = parser.parse_args(argv)
    log, labels = _prepare(args.rows)
    if args.engine:
        print(json.dumps(_run_engine(args.engine, log, labels, args.repeats)))
        return 0
    options = ("--rows", str(args.rows), "--repeats", str(args.repeats))
    results = {e: run_child("bench.quality", "--engine", e, *options) for e in ENGINES}
    return _report(results, args.rows)


def _report(results: dict[str, dict], rows: int) -> int:
    read, ours = results["read"], results["conveyor"]
    ratio = ours["seconds"] / read["seconds"]
    print(f"online quality, {rows:,} logged predictions, {rows // 10:,} labels, median of the runs")
    print(f"  pyarrow read         {read['seconds']:8.2f} s   peak {read['peak_mib']:7.0f} MiB")
    print(
        f"  conveyor quality     {ours['seconds']:8.2f} s   peak {ours['peak_mib']:7.0f} MiB"
        f"   {ours['labelled']:,} rows joined, {ours['groups']} groups"
    )
    print(f"  quality (read included) takes {ratio:.2f}x the time of the plain read (aim: < 10x)")
    summary = {"rows": rows, "ratio_to_read": ratio, **results}
    (OUT / "quality.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
