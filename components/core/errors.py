"""The one exception type for bad input, and how a step reports it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

__all__ = ["ConveyorError", "first_line", "plain", "step_errors"]


class ConveyorError(Exception):
    """Bad input or configuration, described in one line.

    The message names what was wrong (file, column, field) and what was
    expected, so it can stand alone in a step's log.
    """


@contextlib.contextmanager
def step_errors(step: str) -> Iterator[None]:
    """Ends the step with ``step: message`` instead of a traceback.

    A ``SystemExit`` carrying a message makes Python print just that line and
    exit non-zero, so KFP marks the task failed and its log ends with the reason.
    """
    try:
        yield
    except ConveyorError as error:
        raise SystemExit(f"{step}: {error}") from None


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (library messages often run to many lines)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def plain(value: Any) -> Any:
    """A NumPy scalar as the Python value it holds (``1`` rather than ``np.int64(1)``)."""
    return value.item() if hasattr(value, "item") and hasattr(value, "dtype") else value
