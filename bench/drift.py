"""Drift detection: Conveyor's drift statistics beside Evidently's DataDriftPreset.

Run it as ``make bench`` (or ``make bench-drift``) or ``python -m bench.drift [--rows N]
[--rounds N]``. One seeded pair of tables, 1,000,000 rows by 30 columns (20 numeric, 10
categorical, a third of them shifted), is written once as Parquet. Then ``--rounds`` rounds
(at least 5, default 5) alternate the engines, Conveyor then Evidently, each run in a fresh
process of its own that reads the same files, compares their first 1,000 rows untimed
(imports, first-call costs) and then times one comparison of the whole tables, with the same
tests (PSI for numeric columns, Jensen–Shannon for categorical ones) and thresholds. Only
the comparison is timed; its peak memory is the process's peak resident size above what it
held once the tables were loaded (the peak is reset there, on Linux). Both engines must
reach the same per-column verdicts in every round, or the bench fails (exit 1). Per metric
(seconds, peak memory) it prints each side's median and the median of the per-round ratios
Evidently/Conveyor with their min–max and interquartile range (``bench.rounds``), the
machine's cores and load at start and end, and where Conveyor's time goes: cProfile of one
extra, untimed comparison in its own process, its columns tested one after another in one
thread (Conveyor tests them on a thread per core, which cProfile would not see). The aims,
judged on the median ratios: at least 50x faster than Evidently, at most a quarter of its
peak memory. A missed aim is reported, not an error. Every round's figures, the medians,
spreads, aims, profile and versions go to ``build/bench/drift.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.children import (
    OUT,
    machine,
    machine_line,
    peak_mib,
    profile_call,
    reset_peak,
    run_child,
    run_rounds,
    side_by_side,
    write_report,
)
from bench.rounds import MIN_ROUNDS, Aim, RoundsError, check_rounds

PACKAGES = ("numpy", "pandas", "pyarrow", "scipy", "evidently")
ENGINES = ("conveyor", "evidently")
THRESHOLDS = {"psi": 0.1, "jensenshannon": 0.1}
SPEED_AIM = Aim("Conveyor at least 50x faster than Evidently's DataDriftPreset", ">=", 50.0)
MEMORY_AIM = Aim("Conveyor's peak memory at most 1/4 of Evidently's", ">=", 4.0)


def tables(rows: int, seed: int = 7) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Reference and current: every third column shifted in the current table."""
    rng = np.random.default_rng(seed)

    def table(shift: float) -> pd.DataFrame:
        columns = {}
        for index in range(20):
            moved = shift if index % 3 == 0 else 0.0
            columns[f"num{index:02d}"] = rng.normal(moved, 1.0 + moved, rows)
        for index in range(10):
            weights = np.linspace(1.0, 1.0 + (4 * shift if index % 3 == 0 else 0.0), 12)
            values = np.array([f"cat{index}_{level}" for level in range(12)], dtype=object)
            columns[f"cat{index}"] = rng.choice(values, rows, p=weights / weights.sum())
        return pd.DataFrame(columns)

    return table(0.0), table(0.3)


def _run_engine(engine: str, reference_path: Path, current_path: Path, profile: bool) -> dict:
    """In this process: import the engine, load, then one timed (or profiled) comparison."""
    compare_tables = _conveyor if engine == "conveyor" else evidently_verdicts
    compare_tables(None, None)  # imports only, so the timing holds none
    reference, current = pd.read_parquet(reference_path), pd.read_parquet(current_path)
    # Untimed, on the first 1,000 rows: the engine's lazy imports and first-call costs.
    compare_tables(reference.head(1000), current.head(1000))
    if profile:
        return _profile(reference, current)
    loaded = reset_peak()
    start = time.perf_counter()
    verdicts = compare_tables(reference, current)
    seconds = time.perf_counter() - start
    return {
        "engine": engine,
        "seconds": seconds,
        "peak_mib_above_tables": peak_mib() - loaded,
        "verdicts": verdicts,
    }


class _Serial:
    """A stand-in for ``ThreadPoolExecutor`` that maps in the calling thread: cProfile sees
    only the thread it was started in."""

    def __init__(self, workers: int) -> None:
        pass

    def __enter__(self) -> _Serial:
        return self

    def __exit__(self, *exception: object) -> None:
        pass

    map = staticmethod(map)


def _profile(reference: pd.DataFrame, current: pd.DataFrame) -> dict:
    """Conveyor's comparison under cProfile, its columns tested one after another in this
    thread (it runs them on a thread per core, which cProfile would not see)."""
    from conveyor.components.core.monitoring import drift

    threaded, drift.ThreadPoolExecutor = drift.ThreadPoolExecutor, _Serial
    try:
        found = profile_call(lambda: _conveyor(reference, current), "compare_tables")
    finally:
        drift.ThreadPoolExecutor = threaded
    return found | {"profiled": "compare_tables, columns one at a time in one thread"}


def _conveyor(reference: pd.DataFrame | None, current: pd.DataFrame | None) -> dict[str, bool]:
    from conveyor.components.core.monitoring.drift import DriftSettings, compare_tables

    if reference is None or current is None:
        return {}
    settings = DriftSettings(dict(THRESHOLDS), "psi", "jensenshannon")
    return {r.column: r.drifted for r in compare_tables(reference, current, settings).overall}


def evidently_verdicts(
    reference: pd.DataFrame | None, current: pd.DataFrame | None
) -> dict[str, bool]:
    from evidently import Report
    from evidently.presets import DataDriftPreset

    if reference is None or current is None:
        return {}
    preset = DataDriftPreset(
        num_method="psi", cat_method="jensenshannon",
        num_threshold=THRESHOLDS["psi"], cat_threshold=THRESHOLDS["jensenshannon"],
    )  # fmt: skip
    snapshot = Report([preset]).run(current_data=current, reference_data=reference).dict()
    return {
        metric["config"]["column"]: float(metric["value"]) >= metric["config"]["threshold"]
        for metric in snapshot["metrics"]
        if "column" in metric["config"]
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=MIN_ROUNDS, help="at least 5")
    parser.add_argument("--engine", choices=ENGINES, help=argparse.SUPPRESS)  # a child run
    parser.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)  # a child run
    args = parser.parse_args(argv)
    reference_path = OUT / f"drift-reference-{args.rows}.parquet"
    current_path = OUT / f"drift-current-{args.rows}.parquet"
    if args.engine:
        print(json.dumps(_run_engine(args.engine, reference_path, current_path, args.profile)))
        return 0
    try:
        check_rounds(args.rounds)
    except RoundsError as error:
        raise SystemExit(f"bench drift: {error}") from None
    started = machine()
    print(machine_line("start", started), flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    if not (reference_path.exists() and current_path.exists()):
        reference, current = tables(args.rows)
        reference.to_parquet(reference_path)
        current.to_parquet(current_path)
    rows = ("--rows", str(args.rows))
    print(f"drift, {args.rows:,} rows x 30 columns, {args.rounds} rounds alternating {ENGINES}")
    results = run_rounds("bench.drift", ENGINES, args.rounds, lambda e: ["--engine", e, *rows])
    ended = machine()  # before the profile's extra run
    profile = run_child("bench.drift", "--engine", "conveyor", "--profile", *rows)
    return _report(results, profile, args, {"start": started, "end": ended})


def _report(results: list[dict], profile: dict, args: argparse.Namespace, machines: dict) -> int:
    disagree = sorted(
        {
            f"{column} (round {ours['round']})"
            for ours, theirs in zip(results[::2], results[1::2], strict=True)
            for column in set(ours["verdicts"]) | set(theirs["verdicts"])
            if ours["verdicts"].get(column) != theirs["verdicts"].get(column)
        }
    )
    memory = ("peak MiB above the tables", "peak_mib_above_tables")
    seconds, memory_above = side_by_side("drift", results, ("evidently", "conveyor"), memory)
    drifted = sum(results[0]["verdicts"].values())
    print(f"verdicts: {drifted} of {len(results[0]['verdicts'])} columns drifted for Conveyor;")
    print(f"  the engines agree on every column in every round: {not disagree}")
    for line in (*seconds.lines("s", 2, 1), *memory_above.lines("MiB", 0, 1)):
        print(line)
    figures = {
        "rows": args.rows,
        "columns": len(results[0]["verdicts"]),
        "rounds": args.rounds,
        "seconds": seconds.as_dict(),
        "peak_mib_above_tables": memory_above.as_dict(),
        "disagreeing_columns": disagree,
    }
    aims = [
        SPEED_AIM.verdict(seconds.median_ratio) | {"verdicts_agree": not disagree},
        MEMORY_AIM.verdict(memory_above.median_ratio),
    ]
    write_report("drift", results, figures, aims, profile, machines, PACKAGES)
    if disagree:
        print(f"bench drift: the verdicts differ on {disagree}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
