"""Drift detection: Conveyor's drift statistics beside Evidently's DataDriftPreset.

Run it as ``make bench`` (or ``make bench-drift``) or ``python -m bench.drift [--rows N]``.
One seeded pair of tables, 1,000,000 rows by 30 columns (20 numeric, 10 categorical, a
third of them shifted), is written once as Parquet; each engine then runs in a process of
its own, reading the same files, with the same tests (PSI for numeric columns,
Jensen–Shannon for categorical ones) and thresholds. Only the comparison is timed, median
of ``--repeats`` runs; peak memory is the process's peak resident size above what it held
once the tables were loaded. Both engines must reach the same per-column verdicts, or the
bench fails. Results go to ``build/bench/drift.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.children import ROOT, peak_mib, run_child

OUT = ROOT / "build" / "bench"
ENGINES = ("conveyor", "evidently")
THRESHOLDS = {"psi": 0.1, "jensenshannon": 0.1}


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


def _run_engine(engine: str, reference_path: Path, current_path: Path, repeats: int) -> dict:
    """In this process: load, then time ``repeats`` comparisons; the verdicts and timings."""
    reference, current = pd.read_parquet(reference_path), pd.read_parquet(current_path)
    loaded = peak_mib()
    compare = _conveyor if engine == "conveyor" else _evidently
    seconds, verdicts = [], {}
    for _ in range(repeats):
        start = time.perf_counter()
        verdicts = compare(reference, current)
        seconds.append(time.perf_counter() - start)
    peak = peak_mib()
    return {
        "engine": engine,
        "seconds": statistics.median(seconds),
        "runs": seconds,
        "peak_mib_above_tables": peak - loaded,
        "verdicts": verdicts,
    }


def _conveyor(reference: pd.DataFrame, current: pd.DataFrame) -> dict[str, bool]:
    from conveyor.components.core.monitoring.drift import DriftSettings, compare_tables

    settings = DriftSettings(dict(THRESHOLDS), "psi", "jensenshannon")
    return {r.column: r.drifted for r in compare_tables(reference, current, settings).overall}


def _evidently(reference: pd.DataFrame, current: pd.DataFrame) -> dict[str, bool]:
    from evidently import Report
    from evidently.presets import DataDriftPreset

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
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--engine", choices=ENGINES, help=argparse.SUPPRESS)  # a child run
    args = parser.parse_args(argv)
    reference_path = OUT / f"drift-reference-{args.rows}.parquet"
    current_path = OUT / f"drift-current-{args.rows}.parquet"
    if args.engine:
        print(json.dumps(_run_engine(args.engine, reference_path, current_path, args.repeats)))
        return 0
    OUT.mkdir(parents=True, exist_ok=True)
    if not (reference_path.exists() and current_path.exists()):
        reference, current = tables(args.rows)
        reference.to_parquet(reference_path)
        current.to_parquet(current_path)
    results = {engine: _child(engine, args) for engine in ENGINES}
    return _report(results, args.rows)


def _child(engine: str, args: argparse.Namespace) -> dict:
    return run_child(
        "bench.drift", "--engine", engine, "--rows", str(args.rows), "--repeats", str(args.repeats)
    )


def _report(results: dict[str, dict], rows: int) -> int:
    ours, theirs = results["conveyor"], results["evidently"]
    disagree = sorted(
        column
        for column in ours["verdicts"]
        if ours["verdicts"][column] != theirs["verdicts"].get(column)
    )
    ratio = theirs["seconds"] / ours["seconds"]
    print(f"drift, {rows:,} rows x {len(ours['verdicts'])} columns, median of the runs")
    for result in (ours, theirs):
        drifted = sum(result["verdicts"].values())
        print(
            f"  {result['engine']:<10} {result['seconds']:8.2f} s   peak +"
            f"{result['peak_mib_above_tables']:7.0f} MiB   {drifted} columns drifted"
        )
    print(f"  Conveyor is {ratio:.1f}x faster; verdicts agree on every column: {not disagree}")
    summary = {"rows": rows, "speedup": ratio, "disagreeing_columns": disagree, **results}
    (OUT / "drift.json").write_text(json.dumps(summary, indent=2))
    if disagree:
        print(f"bench: the verdicts differ on {disagree}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
