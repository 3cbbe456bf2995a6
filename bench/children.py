"""What the benches share besides their arithmetic (``bench.rounds``): each engine runs in a
child process of its own, so one's memory and warm caches never flatter the other (the child
prints one JSON line, the parent reads it); the machine's cores and load; library versions;
peak memory; and a cProfile summary of one call, for the "where the time goes" line."""

from __future__ import annotations

import cProfile
import json
import os
import platform
import pstats
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.rounds import Comparison, RoundsError, compare, order

__all__ = [
    "ROOT",
    "machine",
    "peak_mib",
    "profile_call",
    "profile_line",
    "reset_peak",
    "run_child",
    "side_by_side",
    "versions",
    "write_report",
]

ROOT = Path(__file__).resolve().parent.parent
COMPONENTS = str(ROOT / "components")
OUT = ROOT / "build" / "bench"


def run_child(module: str, *arguments: str) -> dict:
    """Runs ``python -m module arguments`` from the project root; its last line, parsed."""
    command = [sys.executable, "-m", module, *arguments]
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if finished.returncode != 0:
        tail = (finished.stderr or finished.stdout).strip().splitlines()[-1:] or ["no output"]
        raise SystemExit(f"bench: {' '.join(command[2:])} failed: {tail[0]}")
    return json.loads(finished.stdout.strip().splitlines()[-1])


def peak_mib() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports KiB); since
    ``reset_peak`` where Linux allows it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def resident_mib() -> float:
    """This process's resident memory now, in MiB (0 where /proc is not there)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def reset_peak() -> float:
    """Lowers the peak resident size to what is resident now (Linux's ``clear_refs``), so a
    later ``peak_mib`` counts only what came after; returns the resident MiB it starts from.
    Where that is refused the peak so far stands, and the figure above it may be low."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return peak_mib()
    return resident_mib()


def machine() -> dict[str, Any]:
    """Cores (all, and those this process may run on) and the 1, 5 and 15 minute load."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        affinity = os.cpu_count()
    load = os.getloadavg()
    return {"cpu_count": os.cpu_count(), "affinity": affinity, "loadavg": list(load)}


def machine_line(when: str, found: dict[str, Any]) -> str:
    load = ", ".join(f"{value:.2f}" for value in found["loadavg"])
    return (
        f"machine at {when}: {found['cpu_count']} cores, {found['affinity']} usable by this "
        f"process, load average {load} (1, 5, 15 min)"
    )


def versions(*names: str) -> dict[str, str]:
    """Python's version and each installed distribution's (``-`` when absent)."""
    found = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "-"
    return found


def _name(function: tuple[str, int, str]) -> str:
    filename, _, name = function
    if filename == "~":  # a built-in: "<method 'sort' of 'numpy.ndarray' objects>"
        if name == "<method 'acquire' of '_thread.lock' objects>":
            return "waiting on other threads (unprofiled)"
        return name.strip("<>")
    module = Path(filename).stem
    return f"{module}.{name}"


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {key: row[key] for key in ("function", "self_s", "cumulative_s")}


def profile_call(call: Callable[[], Any], entry: str, top: int = 3) -> dict[str, Any]:
    """``call()`` once under cProfile: the ``top`` of Conveyor's functions by cumulative time
    (``entry`` itself left out, and any that only hands on to one listed), and the ``top``
    of all functions by time spent in themselves."""
    profiler = cProfile.Profile()
    began = time.perf_counter()
    profiler.runcall(call)
    seconds = time.perf_counter() - began
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    rows = {
        function: {"function": _name(function), "ours": function[0].startswith(COMPONENTS),
                   "self_s": tt, "cumulative_s": ct, "callers": set(callers)}
        for function, (_, _, tt, ct, callers) in stats.items()
    }  # fmt: skip
    # Conveyor's functions but the entry and lambdas, less any that only hands on to one
    # already listed (its caller or callee, within 10 % of its time): which stage costs what.
    ours = {
        f: row
        for f, row in rows.items()
        if row["ours"] and f[2] not in ("<lambda>", entry.rsplit(".", 1)[-1])
    }
    covered: dict[tuple, float] = {}
    cumulative = []
    for function, row in sorted(ours.items(), key=lambda item: -item[1]["cumulative_s"]):
        linked = [
            covered[other]
            for other in covered
            if other in row["callers"] or function in rows[other]["callers"]
        ]
        if len(cumulative) < top and not any(row["cumulative_s"] >= 0.9 * t for t in linked):
            cumulative.append(row)
        covered[function] = row["cumulative_s"]
    cumulative = [_public(row) for row in cumulative]
    own = [_public(row) for row in sorted(rows.values(), key=lambda r: -r["self_s"])[:top]]
    return {
        "profiled": entry,
        "seconds_under_profiler": seconds,
        "top_cumulative_in_conveyor": cumulative,
        "top_self": own,
    }


def profile_line(profile: dict[str, Any]) -> str:
    """One line: the profiled call, then its top functions by cumulative and by own time."""
    total = profile["seconds_under_profiler"]

    def listed(rows: list[dict[str, Any]], key: str) -> str:
        return ", ".join(
            f"{row['function']} {row[key]:.2f}s ({row[key] / total:.0%})" for row in rows
        )

    return (
        f"where the time goes (cProfile, one extra untimed run of {profile['profiled']}, "
        f"{total:.2f} s under the profiler): cumulative "
        f"{listed(profile['top_cumulative_in_conveyor'], 'cumulative_s')}; "
        f"own time {listed(profile['top_self'], 'self_s')}"
    )


def run_rounds(
    module: str, sides: tuple[str, ...], rounds: int, arguments: Callable[[str], list[str]]
) -> list[dict[str, Any]]:
    """Every side once per round, in turn (A, B, A, B, …), each in a fresh child process
    ``python -m module *arguments(side)``; the children's results, each with its round."""
    results = []
    for number, side in order(sides, rounds):
        result = run_child(module, *arguments(side))
        results.append({"round": number, "side": side, **result})
        print(f"  round {number} {side:<10} {result['seconds']:9.3f} s", flush=True)
    return results


def per_round(results: list[dict[str, Any]], side: str, key: str) -> list[Any]:
    """One side's ``key`` figure, round by round (``None`` where a round lacks it)."""
    return [result.get(key) for result in results if result["side"] == side]


def side_by_side(
    bench: str,
    results: list[dict[str, Any]],
    sides: tuple[str, str],
    memory: tuple[str, str] = ("peak MiB", "peak_mib"),
) -> tuple[Comparison, Comparison]:
    """Seconds, then memory (``memory``: its name and the children's key), first side over
    second, round by round; a round that lacks a figure ends the bench in one line."""
    first, second = sides
    try:
        return tuple(  # type: ignore[return-value]
            compare(
                metric,
                (first, per_round(results, first, key)),
                (second, per_round(results, second, key)),
            )
            for metric, key in (("seconds", "seconds"), memory)
        )
    except RoundsError as error:
        raise SystemExit(f"bench {bench}: {error}") from None


def write_report(
    bench: str,
    results: list[dict[str, Any]],
    figures: dict[str, Any],
    aims: list[dict[str, Any]],
    profile: dict[str, Any],
    machines: dict[str, Any],
    packages: tuple[str, ...],
) -> None:
    """Prints each aim's line, where the time goes and the machine at the end, then writes
    ``build/bench/<bench>.json``: ``figures`` with every round, the aims, the profile, the
    machine at start and end, and the versions of ``packages`` and Conveyor."""
    line = profile_line(profile)
    for aim in aims:
        print(aim["line"])
    print(line)
    print(machine_line("end", machines["end"]))
    report = {
        "bench": bench,
        **figures,
        "order": [f"{result['round']}:{result['side']}" for result in results],
        "runs": results,
        "aims": aims,
        "profile": {**profile, "line": line},
        "machine": machines,
        "versions": versions(*packages, "conveyor"),
    }
    path = OUT / f"{bench}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")
