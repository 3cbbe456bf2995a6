"""Writing artifact files whole or not at all, and reading the YAML files people write."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from conveyor.components.core.errors import ConveyorError

__all__ = ["finite_json", "read_yaml", "write_atomically", "write_text_atomically"]


def finite_json(value: Any) -> Any:
    """``value`` as strict JSON takes it: each NaN or infinite float becomes None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(item) for item in value]
    return value


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


def read_yaml(path: Path) -> Any:
    """What a YAML file holds; one line naming the file (and the line) when it cannot."""
    try:
        return yaml.safe_load(path.read_text())
    except OSError as error:
        raise ConveyorError(f"{path}: cannot read it ({error.strerror})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConveyorError(f"{path}: not valid YAML{where}") from None
