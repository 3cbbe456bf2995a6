"""Validation: Conveyor's checks of a Parquet file against its schema, beside a plain pandas
read of the same file.

Run it as ``make bench`` (or ``make bench-validation``) or ``python -m bench.validation
[--rows N]``. The tables are the drift bench's seeded pair, 1,000,000 rows by 30 columns (20
numeric, 10 categorical): the schema is inferred from the reference, with per-segment rules on
``cat0`` (12 segments), and the current table, a third of its columns shifted, is the file
checked, written once as Parquet. Each engine then runs in a process of its own:
``pandas`` is ``pd.read_parquet``; ``conveyor`` is ``validate_file``, which reads the file
and applies every rule (types, ranges, categories, null rates, infinities, row count,
duplicate rows, and null rate and range within each segment). Timings are the median of
``--repeats`` runs; peak memory is the process's. Results go to ``build/bench/validation.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from bench.children import ROOT, peak_mib, run_child
from bench.drift import tables

OUT = ROOT / "build" / "bench"
ENGINES = ("pandas", "conveyor")
SEGMENT = "cat0"


def _run_engine(engine: str, table: Path, schema: Path, repeats: int) -> dict:
    """In this process: ``repeats`` timed runs of one engine over the file."""
    import pandas as pd

    from conveyor.components.core.data.validation import validate_file

    seconds, found = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        if engine == "pandas":
            pd.read_parquet(table)
        else:
            found = validate_file(str(table), schema)
        seconds.append(time.perf_counter() - start)
    return {
        "engine": engine,
        "seconds": statistics.median(seconds),
        "runs": seconds,
        "peak_mib": peak_mib(),
        "errors": len(found.errors) if found else None,
        "warnings": len(found.warnings) if found else None,
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
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--engine", choices=ENGINES, help=argparse.SUPPRESS)  # a child run
    args = parser.parse_args(argv)
    table, schema = _prepare(args.rows)
    if args.engine:
        print(json.dumps(_run_engine(args.engine, table, schema, args.repeats)))
        return 0
    options = ("--rows", str(args.rows), "--repeats", str(args.repeats))
    results = {e: run_child("bench.validation", "--engine", e, *options) for e in ENGINES}
    return _report(results, args.rows)


def _report(results: dict[str, dict], rows: int) -> int:
    read, ours = results["pandas"], results["conveyor"]
    ratio = ours["seconds"] / read["seconds"]
    print(f"validation, {rows:,} rows x 30 columns (Parquet), median of the runs")
    print(f"  pandas read          {read['seconds']:8.2f} s   peak {read['peak_mib']:7.0f} MiB")
    print(
        f"  conveyor validate    {ours['seconds']:8.2f} s   peak {ours['peak_mib']:7.0f} MiB"
        f"   {ours['errors']} error(s), {ours['warnings']} warning(s)"
    )
    print(f"  validation (read included) takes {ratio:.2f}x the time of the plain read")
    summary = {"rows": rows, "ratio_to_read": ratio, **results}
    (OUT / "validation.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
