"""Online quality: joining labels to the payload log and computing every metric, beside a
plain pyarrow read of the same files.

Run it as ``make bench`` (or ``make bench-quality``) or ``python -m bench.quality [--rows N]
[--rounds N] [--repeats N]``. A seeded payload log of ``--rows`` predictions (10,000,000 by
default) is written once as Parquet in the contract's layout: 7 day folders, 2 revisions, 5
files per day and revision, each row 8 numeric inputs, a 5-value segment and the
``conveyor.`` metadata of a binary model; beside it a labels table for a tenth of the rows
(1,000,000), a few of them for ids never logged. Then ``--rounds`` rounds (at least 5,
default 5) alternate the engines, read then Conveyor, each in a fresh process of its own:
``read`` is ``pyarrow.parquet.read_table`` of the log folder and of the labels file;
``conveyor`` is ``assess_quality`` (read, join, and every metric with its interval per day,
revision and segment, overall). A child imports its engine, runs it once untimed (first-call
costs), then times ``--repeats`` runs (default 1): the round's figure is their median; peak
memory is the process's. It prints each side's median, the median of the per-round ratios
Conveyor/read with their min–max and interquartile range (``bench.rounds``), the machine's
cores and load at start and end, and where Conveyor's time goes: cProfile of one extra,
untimed ``assess_quality`` in its own process. The aim, on the median ratio: ``conveyor``
below 10x ``read``; a missed aim is reported, not an error. Every round's figures, the
medians, spreads, aim, profile and versions go to ``build/bench/quality.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from bench.children import (
    OUT,
    machine,
    machine_line,
    peak_mib,
    profile_call,
    run_child,
    run_rounds,
    side_by_side,
    write_report,
)
from bench.rounds import MIN_ROUNDS, Aim, RoundsError, check_rounds

PACKAGES = ("numpy", "pandas", "pyarrow", "scipy")
ENGINES = ("read", "conveyor")
MODEL = "fraud"
DAYS, REVISIONS, PARTS = 7, ("fraud-predictor-00001", "fraud-predictor-00002"), 5
SEGMENTS = ("retail", "business", "vip", "student", "senior")
AIM = Aim("quality (read included) below 10x a plain pyarrow read", "<", 10.0)


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


def _run_engine(engine: str, log: Path, labels: Path, repeats: int, profile: bool) -> dict:
    """In this process: one untimed run, then ``repeats`` timed runs of one engine over the
    files (or one profiled run of Conveyor's)."""
    import pyarrow.parquet as pq

    from conveyor.components.core.monitoring.quality import QualitySettings, assess_quality

    settings = QualitySettings(segment="segment", days=DAYS)
    offline = {"accuracy": 0.8, "false_positive_rate": 0.05, "roc_auc": 0.6, "log_loss": 0.5}

    def once() -> object:
        if engine == "read":
            return pq.read_table(log).num_rows + pq.read_table(labels).num_rows
        return assess_quality(str(log), str(labels), MODEL, offline, settings)

    once()
    if profile:
        return profile_call(once, "assess_quality")
    seconds, found = [], None
    for _ in range(repeats):
        began = time.perf_counter()
        found = once()
        seconds.append(time.perf_counter() - began)
    result = {"engine": engine, "seconds": statistics.median(seconds), "runs": seconds}
    result["peak_mib"] = peak_mib()
    if engine == "read":
        result["rows"] = found
    else:
        result |= {"groups": len(found.groups), "labelled": found.coverage.labelled_rows}  # type: ignore[attr-defined]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--rounds", type=int, default=MIN_ROUNDS, help="at least 5")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs in each child")
    parser.add_argument("--engine", choices=ENGINES, help=argparse.SUPPRESS)  # a child run
    parser.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)  # a child run
    args = parser.parse_args(argv)
    if args.engine:
        log, labels = _prepare(args.rows)
        print(json.dumps(_run_engine(args.engine, log, labels, args.repeats, args.profile)))
        return 0
    try:
        check_rounds(args.rounds)
    except RoundsError as error:
        raise SystemExit(f"bench quality: {error}") from None
    if args.repeats < 1:
        raise SystemExit("bench quality: --repeats must be at least 1")
    started = machine()
    print(machine_line("start", started), flush=True)
    _prepare(args.rows)
    options = ["--rows", str(args.rows), "--repeats", str(args.repeats)]
    print(
        f"online quality, {args.rows:,} logged predictions, {args.rows // 10:,} labels, "
        f"{args.rounds} rounds alternating {ENGINES}, each the median of {args.repeats} "
        "timed run(s)"
    )
    results = run_rounds("bench.quality", ENGINES, args.rounds, lambda e: ["--engine", e, *options])
    ended = machine()  # before the profile's extra run
    profile = run_child("bench.quality", "--engine", "conveyor", "--profile", *options)
    return _report(results, profile, args, {"start": started, "end": ended})


def _report(results: list[dict], profile: dict, args: argparse.Namespace, machines: dict) -> int:
    seconds, memory = side_by_side("quality", results, ("conveyor", "read"))
    ours = next(r for r in results if r["side"] == "conveyor")
    print(f"conveyor joined {ours['labelled']:,} rows into {ours['groups']} groups")
    for line in (*seconds.lines("s", 2), *memory.lines("MiB", 0)):
        print(line)
    figures = {
        "rows": args.rows,
        "rounds": args.rounds,
        "repeats_per_child": args.repeats,
        "seconds": seconds.as_dict(),
        "peak_mib": memory.as_dict(),
    }
    aims = [AIM.verdict(seconds.median_ratio)]
    write_report("quality", results, figures, aims, profile, machines, PACKAGES)
    return 0


if __name__ == "__main__":
    sys.exit(main())
