"""Writing artifact files whole or not at all."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["write_atomically", "write_text_atomically"]


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Calls ``write`` on a temporary sibling of ``path``, then renames it into place.

    A step that fails half way thus never leaves a truncated artifact behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_text_atomically(path: Path, text: str) -> None:
    write_atomically(path, lambda partial: partial.write_text(text, encoding="utf-8"))
