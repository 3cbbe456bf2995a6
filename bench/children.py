"""Each engine of a benchmark runs in a child process of its own, so one's memory and
warm caches never flatter the other; the child prints one JSON line, the parent reads it."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

__all__ = ["peak_mib", "run_child"]

ROOT = Path(__file__).resolve().parent.parent


def run_child(module: str, *arguments: str) -> dict:
    """Runs ``python -m module arguments`` from the project root; its last line, parsed."""
    command = [sys.executable, "-m", module, *arguments]
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(finished.stdout.strip().splitlines()[-1])


def peak_mib() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
