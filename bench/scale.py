"""Scale: the streaming path (drift and validation from partition summaries) at 1M, 10M and
30M rows, beside Evidently's DataDriftPreset on the whole table in memory.

Run it as ``make bench-scale [SCALE_BENCH_ARGS=...]`` or ``python -m bench.scale [--sizes
1000000,10000000,30000000] [--skip-evidently [SIZES]] [--evidently-memory-gib 8]
[--evidently-timeout 600] [--no-keep]``. It is not part of ``make bench``: the default sizes
write about 5 GB of Parquet and take tens of minutes.

**The tables.** The drift bench's recipe (``bench.drift.tables``: 30 columns, 20 numeric and
10 categorical of 12 levels, every third column shifted by 0.3 in the current table),
generated chunk by chunk (``CHUNK_ROWS`` rows, one Parquet row group each) so the generator
never holds more than one chunk; each chunk is seeded by ``(seed, side, chunk index)``, so a
table of N rows is the first N rows of any larger one (the drift bench draws both tables from
one stream, so its rows are not these). The reference is 1,000,000 rows (a training split's
size), written once to ``build/bench/scale/reference.parquet``; the current table of each
size goes to ``build/bench/scale/<rows>/part-NNNNN.parquet``, ``FILE_ROWS`` rows a file (a
payload log's files; ``<rows>.complete.json`` beside the folder once it is whole). A file
another size already wrote is hard-linked, not written again.
Free disk is checked first (about ``BYTES_PER_ROW`` bytes a row); the files are kept for
the next run (``--no-keep`` removes ``build/bench/scale/`` at the end).

**What runs.** Per size, each in a fresh child process: (a) *streaming*: the reference read
into memory, then ``compare_partitions`` on the size's files (drift: two passes, in batches
of ``partitions.BATCH_ROWS`` rows), then validation from summaries as the pipeline does it
(``profile_partition``: each batch of each file summarised with ``summarize_partition`` and
merged into the file's summary; ``check_partitions``: the files' summaries merged, then
``check_summary`` against ``infer_schema(reference)``), each stage timed, with the peak
resident size of the child over all of it (and of each stage, the peak reset between them
on Linux). A small table is run through both first, untimed (imports, first-call costs).
(b) *Evidently*: DataDriftPreset (PSI and Jensen–Shannon, the drift bench's thresholds) on
the reference and the whole current table read with ``pd.read_parquet`` of the folder, under
an address-space cap (``RLIMIT_AS``, ``--evidently-memory-gib``) set in the child and a
timeout on the child (``--evidently-timeout``, then it is killed): past either it is
reported as "did not finish (...)". Its seconds are the read plus the report.

**What it prints.** A table of rows, streaming seconds (drift, validation, total), seconds
per million rows, the streaming child's peak MiB, the validation summary's hash bytes (8 a
row for the duplicate-row check, 8 more for a key's check when the schema has a key: the one
part that grows with the rows), and Evidently's seconds and peak or why it did not finish.
Then, computed and not asserted, whether time grew about linearly (seconds per million rows
at the largest size within ``WITHIN``x of the smallest's) and memory stayed flat (peak at
the largest size within ``WITHIN``x of the smallest's), for the whole streaming path and
for drift alone, and a least-squares line of seconds against rows; the machine's cores and
load at start and end. Everything goes to ``build/bench/scale.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.children import OUT, ROOT, machine, machine_line, peak_mib, reset_peak, versions
from bench.drift import THRESHOLDS, evidently_verdicts

DATA = OUT / "scale"
SIZES = (1_000_000, 10_000_000, 30_000_000)
REFERENCE_ROWS = 1_000_000
FILE_ROWS = 1_000_000
CHUNK_ROWS = 250_000
WARMUP_ROWS = 5_000
SEED = 7
SHIFT = 0.3
SIDES = {"reference": 0, "current": 1}
RECIPE = "drift-30-v1"  # bump when chunk() changes: files written before are then rewritten
BYTES_PER_ROW = 200  # Parquet of one row of chunk(): it measures about 187
WITHIN = 1.5
LEVELS = 12


# The tables: pure, seeded per chunk.


def chunk(side: str, index: int, rows: int, seed: int = SEED) -> Any:
    """Rows of ``bench.drift.tables``' recipe as an Arrow table: the ``index``-th chunk of the
    ``side`` table (``reference`` or ``current``, shifted), seeded by (seed, side, index)."""
    import pyarrow as pa

    shift = SHIFT if side == "current" else 0.0
    rng = np.random.default_rng((seed, SIDES[side], index))
    columns = {}
    for number in range(20):
        moved = shift if number % 3 == 0 else 0.0
        columns[f"num{number:02d}"] = pa.array(rng.normal(moved, 1.0 + moved, rows))
    for number in range(10):
        weights = np.linspace(1.0, 1.0 + (4 * shift if number % 3 == 0 else 0.0), LEVELS)
        labels = pa.array([f"cat{number}_{level}" for level in range(LEVELS)])
        codes = rng.choice(LEVELS, rows, p=weights / weights.sum())
        columns[f"cat{number}"] = labels.take(pa.array(codes))
    return pa.table(columns)


def layout(rows: int, file_rows: int = FILE_ROWS, chunk_rows: int = CHUNK_ROWS):
    """Each file's chunks, as (chunk index in the whole table, rows): ``file_rows`` rows a
    file, ``chunk_rows`` a chunk, the last of each possibly shorter."""
    if rows <= 0 or file_rows <= 0 or chunk_rows <= 0 or file_rows % chunk_rows:
        raise ValueError(
            f"rows {rows}, file rows {file_rows}, chunk rows {chunk_rows}: expected all "
            "positive, file rows a multiple of chunk rows"
        )
    files = []
    for start in range(0, rows, file_rows):
        stop = min(start + file_rows, rows)
        files.append(
            [
                (at // chunk_rows, min(chunk_rows, stop - at))
                for at in range(start, stop, chunk_rows)
            ]
        )
    return files


def parse_sizes(text: str) -> list[int]:
    """``1000000,10M,2.5M``: row counts, in increasing order, each once."""
    sizes = set()
    for item in filter(None, (part.strip() for part in text.split(","))):
        scale = 1_000_000 if item[-1] in "mM" else 1
        try:
            value = float(item[:-1] if scale > 1 else item.replace("_", "")) * scale
        except ValueError:
            raise ValueError(
                f"size {item!r}: expected a row count such as 1000000 or 10M"
            ) from None
        if value < 1 or value != int(value):
            raise ValueError(f"size {item!r}: expected a whole number of rows, at least 1")
        sizes.add(int(value))
    if not sizes:
        raise ValueError(f"sizes {text!r}: expected at least one row count")
    return sorted(sizes)


# What the figures say: pure.


def trend(results: Sequence[dict[str, Any]], within: float = WITHIN) -> dict[str, Any]:
    """Whether the streaming path's time grew about linearly and its memory stayed flat,
    from the smallest size to the largest: each a ratio, compared with ``within``; and a
    least-squares line of seconds against millions of rows (with two sizes or more)."""
    ordered = sorted(results, key=lambda r: r["rows"])
    small, large = ordered[0], ordered[-1]
    found: dict[str, Any] = {"smallest": small["rows"], "largest": large["rows"], "within": within}
    for name, key in (
        ("seconds_per_million", "seconds_per_million"),
        ("peak_mib", "peak_mib"),
        ("drift_peak_mib", "drift_peak_mib"),
    ):
        ratio = large[key] / small[key]
        found[name] = {"smallest": small[key], "largest": large[key], "ratio": ratio,
                       "within": ratio <= within}  # fmt: skip
    found["linear"] = found["seconds_per_million"]["within"]
    found["flat_memory"] = found["peak_mib"]["within"]
    found["flat_memory_drift"] = found["drift_peak_mib"]["within"]
    if len({r["rows"] for r in ordered}) >= 2:
        millions = np.array([r["rows"] / 1e6 for r in ordered])
        seconds = np.array([r["seconds"] for r in ordered])
        slope, fixed = np.polyfit(millions, seconds, 1)
        found["fit"] = {"fixed_seconds": float(fixed), "seconds_per_million": float(slope)}
    return found


def evidently_cell(result: dict[str, Any] | None) -> str:
    """Evidently's column: seconds and peak, or why it has none."""
    if result is None:
        return "skipped"
    status = result["status"]
    if status == "finished":
        return f"{result['seconds']:.1f} s / {result['peak_mib']:,.0f} MiB"
    if status == "memory":
        return f"did not finish (memory cap {result['memory_gib']:g} GiB)"
    if status == "timeout":
        return f"did not finish (timeout {result['timeout_s']:g} s)"
    return f"failed ({result.get('error', 'no output')})"


def yes(flag: bool) -> str:
    return "yes" if flag else "no"


# Writing the tables.


def _marker(rows: int) -> dict[str, Any]:
    return {"recipe": RECIPE, "seed": SEED, "rows": rows, "file_rows": FILE_ROWS,
            "chunk_rows": CHUNK_ROWS}  # fmt: skip


def _done(rows: int) -> Path:
    """The marker of a complete folder, beside it (in it, ``pd.read_parquet`` would read it)."""
    return DATA / f"{rows}.complete.json"


def _complete(folder: Path, wanted: dict[str, Any]) -> bool:
    try:
        return json.loads(_done(int(folder.name)).read_text()) == wanted
    except (OSError, ValueError):
        return False


def _write(path: Path, side: str, chunks: list[tuple[int, int]]) -> None:
    """One file, a row group per chunk, one chunk in memory at a time; renamed when whole."""
    import pyarrow.parquet as pq

    partial = path.with_name(path.name + ".partial")
    writer = None
    try:
        for index, rows in chunks:
            table = chunk(side, index, rows)
            writer = writer or pq.ParquetWriter(partial, table.schema)
            writer.write_table(table, row_group_size=rows)
    finally:
        if writer is not None:
            writer.close()
    partial.replace(path)


def _written_elsewhere(number: int, chunks: list[tuple[int, int]]) -> Path | None:
    """The same file in another size's complete folder, if any."""
    for folder in DATA.iterdir() if DATA.exists() else ():
        if not folder.is_dir() or not folder.name.isdigit():
            continue
        rows = int(folder.name)
        files = layout(rows)
        if (
            _complete(folder, _marker(rows))
            and number < len(files)
            and files[number] == chunks
            and (folder / _part(number)).exists()
        ):
            return folder / _part(number)
    return None


def _part(number: int) -> str:
    return f"part-{number:05d}.parquet"


def ensure_current(rows: int) -> Path:
    """The folder of the current table of ``rows`` rows, written unless already there."""
    folder = DATA / str(rows)
    if _complete(folder, _marker(rows)):
        return folder
    _done(rows).unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    began, linked = time.perf_counter(), 0
    for number, chunks in enumerate(layout(rows)):
        target, source = folder / _part(number), _written_elsewhere(number, chunks)
        if source is not None:
            try:
                os.link(source, target)
            except OSError:
                shutil.copyfile(source, target)
            linked += 1
        else:
            _write(target, "current", chunks)
    _done(rows).write_text(json.dumps(_marker(rows)))
    print(f"  wrote {folder.relative_to(ROOT)}: {rows:,} rows in {len(layout(rows))} files "
          f"({linked} linked from another size) in {time.perf_counter() - began:.1f} s",
          flush=True)  # fmt: skip
    return folder


def ensure_reference() -> Path:
    """The reference (``REFERENCE_ROWS`` rows, one file) and a small warm-up table."""
    path = DATA / "reference.parquet"
    marker = DATA / "reference.json"
    wanted = _marker(REFERENCE_ROWS)
    try:
        ready = json.loads(marker.read_text()) == wanted and path.exists()
    except (OSError, ValueError):
        ready = False
    if not ready:
        DATA.mkdir(parents=True, exist_ok=True)
        _write(path, "reference", [c for f in layout(REFERENCE_ROWS, REFERENCE_ROWS) for c in f])
        warm = DATA / "warmup"
        warm.mkdir(exist_ok=True)
        _write(warm / _part(0), "current", [(0, WARMUP_ROWS)])
        marker.write_text(json.dumps(wanted))
    return path


def _needed_bytes(sizes: Sequence[int]) -> int:
    """Roughly the bytes still to write: the largest size's files not already written."""
    done = [int(f.name) for f in DATA.iterdir() if f.name.isdigit()] if DATA.exists() else []
    done = [rows for rows in done if _complete(DATA / str(rows), _marker(rows))]
    have = max(done, default=0)
    reference = 0 if (DATA / "reference.json").exists() else REFERENCE_ROWS
    return (max(0, max(sizes) - have) + reference) * BYTES_PER_ROW


def disk_line(sizes: Sequence[int]) -> tuple[str, bool]:
    where = next(p for p in (DATA, OUT, ROOT / "build", ROOT) if p.exists())
    free = shutil.disk_usage(where).free
    needed = _needed_bytes(sizes)
    enough = free > needed * 1.2 + 2**30
    line = (
        f"disk: {free / 2**30:.1f} GiB free under {where.relative_to(ROOT)}, about "
        f"{needed / 2**30:.1f} GiB to write ({BYTES_PER_ROW} bytes a row)"
    )
    return line + ("" if enough else ": not enough, stopping"), enough


# The children.


def _settings() -> Any:
    from conveyor.components.core.monitoring.drift import DriftSettings

    return DriftSettings(dict(THRESHOLDS), "psi", "jensenshannon")


def _summarize(partitions: Sequence[Any], schema: Any) -> Any:
    """As the pipeline does it: each file's batches summarised and merged in order
    (``profile_partition``), then the files' summaries merged (``check_partitions``)."""
    from conveyor.components.core.data.partitions import BATCH_ROWS
    from conveyor.components.core.data.validation_summary import (
        merge_summaries,
        summarize_partition,
    )

    summaries = []
    for partition in partitions:
        checked, seen = None, 0
        for batch in partition.batches(None, BATCH_ROWS):
            found = summarize_partition(batch, schema, partition.offset + seen)
            checked = found if checked is None else merge_summaries([checked, found])
            seen += len(batch)
        summaries.append(checked)
    return merge_summaries(summaries)


def _streaming(rows: int) -> dict[str, Any]:
    import pandas as pd

    from conveyor.components.core.data.partitions import list_partitions
    from conveyor.components.core.data.schema import infer_schema
    from conveyor.components.core.data.validation_summary import check_summary
    from conveyor.components.core.monitoring.drift_summary import compare_partitions

    reference = pd.read_parquet(DATA / "reference.parquet")
    schema, settings = infer_schema(reference), _settings()
    # Untimed: imports and first-call costs, on a small table.
    warm = list_partitions([str(DATA / "warmup")])
    compare_partitions(reference.head(WARMUP_ROWS), [f for p in warm for f in p.files], settings)
    check_summary(_summarize(warm, schema), schema)
    loaded_peak = peak_mib()
    partitions = list_partitions([str(DATA / str(rows))])
    files = [file for partition in partitions for file in partition.files]
    stages: dict[str, dict[str, float]] = {}

    def timed(name: str, call):
        resident = reset_peak()
        began = time.perf_counter()
        value = call()
        stages[name] = {"seconds": time.perf_counter() - began, "peak_mib": peak_mib(),
                        "resident_at_start_mib": resident}  # fmt: skip
        return value

    report = timed("drift", lambda: compare_partitions(reference, files, settings))
    summary = timed("summarize", lambda: _summarize(partitions, schema))
    result = timed("check", lambda: check_summary(summary, schema))
    validation = stages["summarize"]["seconds"] + stages["check"]["seconds"]
    return {
        "rows": rows,
        "files": len(files),
        "drift_seconds": stages["drift"]["seconds"],
        "validation_seconds": validation,
        "seconds": stages["drift"]["seconds"] + validation,
        "peak_mib": max(loaded_peak, *(stage["peak_mib"] for stage in stages.values())),
        "drift_peak_mib": max(loaded_peak, stages["drift"]["peak_mib"]),
        "loaded_peak_mib": loaded_peak,
        "stages": stages,
        "row_hash_bytes": len(summary.row_hashes),
        "key_hash_bytes": len(summary.key_hashes),
        "drifted_columns": sorted(r.column for r in report.overall if r.drifted),
        "violations": sorted({f"{v.rule}" for v in result.violations}),
    }


def _evidently_child(rows: int, memory_gib: float) -> dict[str, Any]:
    limit = int(memory_gib * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import pandas as pd

    found: dict[str, Any] = {"rows": rows, "memory_gib": memory_gib}
    try:
        reference = pd.read_parquet(DATA / "reference.parquet")
        evidently_verdicts(reference.head(1000), reference.head(1000))  # untimed: imports
        began = time.perf_counter()
        current = pd.read_parquet(DATA / str(rows))
        loaded = time.perf_counter()
        verdicts = evidently_verdicts(reference, current)
        ended = time.perf_counter()
    except MemoryError:  # numpy's and Arrow's allocation failures among them
        return found | {"status": "memory", "peak_mib": peak_mib()}
    return found | {
        "status": "finished",
        "load_seconds": loaded - began,
        "report_seconds": ended - loaded,
        "seconds": ended - began,
        "peak_mib": peak_mib(),
        "drifted_columns": sorted(name for name, drifted in verdicts.items() if drifted),
    }


_MEMORY_WORDS = ("MemoryError", "bad_alloc", "Cannot allocate memory", "Unable to allocate",
                 "malloc", "out of memory")  # fmt: skip


def run_evidently(rows: int, memory_gib: float, timeout_s: float) -> dict[str, Any]:
    """Evidently's child under the cap and the timeout (killed past it)."""
    command = [sys.executable, "-m", "bench.scale", "--child", "evidently", "--rows", str(rows),
               "--evidently-memory-gib", str(memory_gib)]  # fmt: skip
    base = {"rows": rows, "memory_gib": memory_gib, "timeout_s": timeout_s}
    began = time.perf_counter()
    try:
        finished = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        return base | {"status": "timeout", "wall_seconds": time.perf_counter() - began}
    wall = time.perf_counter() - began
    lines = finished.stdout.strip().splitlines()
    if finished.returncode == 0 and lines:
        return base | json.loads(lines[-1]) | {"wall_seconds": wall}
    said = finished.stderr + finished.stdout
    if any(word in said for word in _MEMORY_WORDS) or finished.returncode in (-6, -9):
        return base | {"status": "memory", "wall_seconds": wall, "returncode": finished.returncode}
    tail = said.strip().splitlines()[-1:] or [f"exit {finished.returncode}, no output"]
    return base | {"status": "failed", "error": tail[0][:200], "wall_seconds": wall}


def run_streaming(rows: int) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.scale", "--child", "streaming", "--rows", str(rows)]
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if finished.returncode != 0:
        tail = (finished.stderr or finished.stdout).strip().splitlines()[-1:] or ["no output"]
        raise SystemExit(f"bench scale: streaming at {rows:,} rows failed: {tail[0]}")
    found = json.loads(finished.stdout.strip().splitlines()[-1])
    return found | {"seconds_per_million": found["seconds"] / (rows / 1e6)}


# The parent.


def _row(result: dict[str, Any], evidently: dict[str, Any] | None) -> str:
    hashes = (result["row_hash_bytes"] + result["key_hash_bytes"]) / 2**20
    return (
        f"{result['rows']:>12,} {result['drift_seconds']:>8.1f}"
        f" {result['validation_seconds']:>8.1f}"
        f" {result['seconds']:>8.1f} {result['seconds_per_million']:>8.2f}"
        f" {result['peak_mib']:>9,.0f} {result['drift_peak_mib']:>9,.0f} {hashes:>8,.1f}"
        f"  {evidently_cell(evidently)}"
    )


HEADER = (
    f"{'rows':>12} {'drift s':>8} {'valid s':>8} {'total s':>8} {'s/M rows':>8}"
    f" {'peak MiB':>9} {'drift MiB':>9} {'hash MiB':>8}  Evidently (read + report s / peak)"
)


def _verdict_lines(found: dict[str, Any], largest: dict[str, Any]) -> list[str]:
    per, peak, drift = found["seconds_per_million"], found["peak_mib"], found["drift_peak_mib"]
    span = f"{found['smallest']:,} to {found['largest']:,} rows"
    lines = [
        f"linear: {yes(found['linear'])} (seconds per million rows {per['smallest']:.2f} -> "
        f"{per['largest']:.2f}, {per['ratio']:.2f}x from {span}; within {found['within']}x)",
        f"flat memory: {yes(found['flat_memory'])} (streaming peak {peak['smallest']:,.0f} -> "
        f"{peak['largest']:,.0f} MiB, {peak['ratio']:.2f}x; within {found['within']}x)",
        f"  drift alone: {yes(found['flat_memory_drift'])} ({drift['smallest']:,.0f} -> "
        f"{drift['largest']:,.0f} MiB, {drift['ratio']:.2f}x)",
    ]
    hashes = (largest["row_hash_bytes"] + largest["key_hash_bytes"]) / 2**20
    stages = largest["stages"]
    lines.append(
        f"  at {largest['rows']:,} rows the validation summary's hashes are {hashes:,.0f} MiB "
        f"(row {largest['row_hash_bytes'] / 2**20:,.0f}, "
        f"key {largest['key_hash_bytes'] / 2**20:,.0f});"
        f" stage peaks: drift {stages['drift']['peak_mib']:,.0f}, summarize "
        f"{stages['summarize']['peak_mib']:,.0f}, check {stages['check']['peak_mib']:,.0f} MiB; "
        f"reference loaded and warmed up {largest['loaded_peak_mib']:,.0f} MiB"
    )
    if "fit" in found:
        fit = found["fit"]
        lines.append(
            f"  least squares: {fit['fixed_seconds']:.1f} s + {fit['seconds_per_million']:.2f} s "
            "per million rows"
        )
    return lines


def _skipped(value: str | None, sizes: Sequence[int]) -> set[int]:
    if value is None:
        return set()
    if value == "all":
        return set(sizes)
    return set(parse_sizes(value))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--sizes", default=",".join(str(s) for s in SIZES),
                        help="row counts, comma-separated (10M is 10000000)")  # fmt: skip
    parser.add_argument("--skip-evidently", nargs="?", const="all", metavar="SIZES",
                        help="no Evidently run: at every size, or at the sizes listed")  # fmt: skip
    parser.add_argument("--evidently-memory-gib", type=float, default=8.0)
    parser.add_argument("--evidently-timeout", type=float, default=600.0, help="seconds")
    parser.add_argument("--keep", action=argparse.BooleanOptionalAction, default=True,
                        help="keep build/bench/scale/ for the next run (default)")  # fmt: skip
    parser.add_argument("--child", choices=("streaming", "evidently"), help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child == "streaming":
        print(json.dumps(_streaming(args.rows)))
        return 0
    if args.child == "evidently":
        print(json.dumps(_evidently_child(args.rows, args.evidently_memory_gib)))
        return 0
    try:
        sizes = parse_sizes(args.sizes)
        skipped = _skipped(args.skip_evidently, sizes)
    except ValueError as error:
        raise SystemExit(f"bench scale: {error}") from None
    started = machine()
    print(machine_line("start", started), flush=True)
    line, enough = disk_line(sizes)
    print(line, flush=True)
    if not enough:
        return 1
    print(f"scale: {', '.join(f'{s:,}' for s in sizes)} rows x 30 columns against a "
          f"{REFERENCE_ROWS:,}-row reference; Evidently capped at {args.evidently_memory_gib:g} "
          f"GiB and {args.evidently_timeout:g} s", flush=True)  # fmt: skip
    ensure_reference()
    runs = []
    for rows in sizes:
        ensure_current(rows)
        streaming = run_streaming(rows)
        print(f"  {rows:>12,} streaming {streaming['seconds']:8.1f} s, peak "
              f"{streaming['peak_mib']:,.0f} MiB", flush=True)  # fmt: skip
        evidently = None
        if rows not in skipped:
            evidently = run_evidently(rows, args.evidently_memory_gib, args.evidently_timeout)
            print(f"  {rows:>12,} Evidently {evidently_cell(evidently)}", flush=True)
        runs.append({"rows": rows, "streaming": streaming, "evidently": evidently})
    ended = machine()
    print(HEADER)
    for run in runs:
        print(_row(run["streaming"], run["evidently"]))
    found = trend([run["streaming"] for run in runs])
    for verdict in _verdict_lines(found, runs[-1]["streaming"]):
        print(verdict)
    compared = [run for run in runs if (run["evidently"] or {}).get("status") == "finished"]
    differ = [
        f"{run['rows']:,}"
        for run in compared
        if run["streaming"]["drifted_columns"] != run["evidently"]["drifted_columns"]
    ]
    if compared:
        print(
            f"verdicts: the streaming path and Evidently drift on the same columns at every "
            f"size both finished: {yes(not differ)}{f' (not at {differ})' if differ else ''}"
        )
    print(machine_line("end", ended))
    summary = {
        "verdicts_differ_at": differ,
        "bench": "scale",
        "sizes": sizes,
        "reference_rows": REFERENCE_ROWS,
        "file_rows": FILE_ROWS,
        "chunk_rows": CHUNK_ROWS,
        "columns": 30,
        "seed": SEED,
        "evidently_memory_gib": args.evidently_memory_gib,
        "evidently_timeout_s": args.evidently_timeout,
        "runs": runs,
        "trend": found,
        "machine": {"start": started, "end": ended},
        "versions": versions("numpy", "pandas", "pyarrow", "scipy", "evidently", "conveyor"),
    }
    (OUT / "scale.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {(OUT / 'scale.json').relative_to(ROOT)}")
    if not args.keep:
        shutil.rmtree(DATA, ignore_errors=True)
        print(f"removed {DATA.relative_to(ROOT)} (--no-keep)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
