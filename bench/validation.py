"""Validation: Conveyor's checks of a Parquet file against its schema, beside a plain pandas
read of the same file.

Run it as ``make bench`` (or ``make bench-validation``) or ``python -m bench.validation
[--rows N] [--rounds N] [--repeats N]``. The tables are the drift bench's seeded pair,
1,000,000 rows by 30 columns (20 numeric, 10 categorical): the schema is inferred from the
reference, with per-segment rules on ``cat0`` (12 segments), and the current table, a third
of its columns shifted, is the file checked, written once as Parquet. Then ``--rounds``
rounds (at least 5, default 5) alternate the engines, pandas then Conveyor, each in a fresh
process of its own: ``pandas`` is ``pd.read_parquet``; ``conveyor`` is ``validate_file``,
which reads the file and applies every rule (types, ranges, categories, null rates,
infinities, row count, duplicate rows, and null rate and range within each segment). A
child imports its engine, runs it once untimed (first-call costs), then times ``--repeats``
runs (default 3): the round's figure is their median; peak memory is the process's. It
prints each side's median, the median of the per-round ratios Conveyor/pandas with their
min–max and interquartile range (``bench.rounds``), the machine's cores and load at start
and end, and where Conveyor's time goes: cProfile of one extra, untimed ``validate_file`` in
its own process. The aim, on the median ratio: validation at most 1.5x the plain read; a
missed aim is reported, not an error. Every round's figures, the medians, spreads, aim,
profile and versions go to ``build/bench/validation.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

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
from bench.drift import tables
from bench.rounds import MIN_ROUNDS, Aim, RoundsError, check_rounds

PACKAGES = ("numpy", "pandas", "pyarrow")
ENGINES = ("pandas", "conveyor")
SEGMENT = "cat0"
AIM = Aim("validation (read included) at most 1.5x a plain pd.read_parquet", "<=", 1.5)


def _run_engine(engine: str, table: Path, schema: Path, repeats: int, profile: bool) -> dict:
    """In this process: one untimed run, then ``repeats`` timed runs of one engine (or one
    profiled run of Conveyor's)."""
    import pandas as pd

    from conveyor.components.core.data.validation import validate_file

    def once() -> object:
        return pd.read_parquet(table) if engine == "pandas" else validate_file(str(table), schema)

    once()
    if profile:
        return profile_call(once, "validate_file")
    seconds, found = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        found = once()
        seconds.append(time.perf_counter() - start)
    checked = engine == "conveyor"
    return {
        "engine": engine,
        "seconds": statistics.median(seconds),
        "runs": seconds,
        "peak_mib": peak_mib(),
        "errors": len(found.errors) if checked else None,  # type: ignore[attr-defined]
        "warnings": len(found.warnings) if checked else None,  # type: ignore[attr-defined]
    }


def _prepare(rows: int) -> tuple[Path, Path]:
    """The Parquet file and its inferred schema, written on the first run only."""
    from conveyor.components.core.data.schema import infer_schema

    table = OUT / f"validation-{rows}.parquet"
    schema = OUT / f"validation-{rows}.schema.json"
    OUT.mkdir(parents=True, exist_ok=True)
    if not (table.exists() and schema.exists()):
        reference, current = tables(rows)
        current.to_parquet(table)
        schema.write_text(infer_schema(reference, segment=SEGMENT).to_json())
    return table, schema


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=MIN_ROUNDS, help="at least 5")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs in each child")
    parser.add_argument("--engine", choices=ENGINES, help=argparse.SUPPRESS)  # a child run
    parser.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)  # a child run
    args = parser.parse_args(argv)
    if args.engine:
        table, schema = _prepare(args.rows)
        found = _run_engine(args.engine, table, schema, args.repeats, args.profile)
        print(json.dumps(found))
        return 0
    try:
        check_rounds(args.rounds)
    except RoundsError as error:
        raise SystemExit(f"bench validation: {error}") from None
    if args.repeats < 1:
        raise SystemExit("bench validation: --repeats must be at least 1")
    started = machine()
    print(machine_line("start", started), flush=True)
    _prepare(args.rows)
    options = ["--rows", str(args.rows), "--repeats", str(args.repeats)]
    print(
        f"validation, {args.rows:,} rows x 30 columns (Parquet), {args.rounds} rounds "
        f"alternating {ENGINES}, each the median of {args.repeats} timed run(s)"
    )
    results = run_rounds(
        "bench.validation", ENGINES, args.rounds, lambda e: ["--engine", e, *options]
    )
    ended = machine()  # before the profile's extra run
    profile = run_child("bench.validation", "--engine", "conveyor", "--profile", *options)
    return _report(results, profile, args, {"start": started, "end": ended})


def _report(results: list[dict], profile: dict, args: argparse.Namespace, machines: dict) -> int:
    seconds, memory = side_by_side("validation", results, ("conveyor", "pandas"))
    ours = next(r for r in results if r["side"] == "conveyor")
    print(f"conveyor found {ours['errors']} error(s), {ours['warnings']} warning(s)")
    for line in (*seconds.lines("s", 3), *memory.lines("MiB", 0)):
        print(line)
    figures = {
        "rows": args.rows,
        "rounds": args.rounds,
        "repeats_per_child": args.repeats,
        "seconds": seconds.as_dict(),
        "peak_mib": memory.as_dict(),
    }
    aims = [AIM.verdict(seconds.median_ratio)]
    write_report("validation", results, figures, aims, profile, machines, PACKAGES)
    return 0


if __name__ == "__main__":
    sys.exit(main())
