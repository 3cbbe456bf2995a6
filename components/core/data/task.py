"""Whether a target is a class or a number: the rule ingest applies, stated with its reason.

``auto`` (the default) decides from the target column alone:

- a target of text or booleans is a class label: **classification**;
- a numeric target holding a number that is not whole (2.5) is **regression**;
- a numeric target of whole numbers is **regression** when it holds more than
  ``MAX_NUMERIC_CLASSES`` distinct values (a count, a price in cents), **classification**
  otherwise (codes 0/1, ratings 1 to 5).

``classification`` or ``regression`` overrides the rule: a rating of 1 to 5 can be
regressed, and a code with 80 values classified. Regression needs numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

from conveyor.components.core.errors import ConveyorError, plain

__all__ = [
    "AUTO",
    "CLASSIFICATION",
    "MAX_NUMERIC_CLASSES",
    "REGRESSION",
    "TASKS",
    "TaskChoice",
    "check_task",
    "decide_task",
]

CLASSIFICATION = "classification"
REGRESSION = "regression"
AUTO = "auto"
TASKS = (CLASSIFICATION, REGRESSION)
# A numeric target with more distinct whole values than this is taken for a number.
MAX_NUMERIC_CLASSES = 50


@dataclass(frozen=True)
class TaskChoice:
    """The task a target was given and why, in words a summary can show.

    Attributes:
        task: ``classification`` or ``regression``.
        rule: Why: the rule's finding about the target, or the override.
    """

    task: str
    rule: str

    def __post_init__(self) -> None:
        check_task(self.task, allow_auto=False)


def check_task(task: str, allow_auto: bool = True) -> str:
    """``task`` itself, or ConveyorError naming what it may be."""
    allowed = (AUTO, *TASKS) if allow_auto else TASKS
    if task not in allowed:
        raise ConveyorError(f"task {task!r} is not one of {', '.join(allowed)}")
    return task


def decide_task(labels: pd.Series, requested: str, target: str) -> TaskChoice:
    """The task for a target column of non-empty ``labels``: ``requested``, unless
    ``auto``, when the module's rule decides; ConveyorError when the column cannot be
    the target of the task requested."""
    check_task(requested)
    numeric = ptypes.is_numeric_dtype(labels) and not ptypes.is_bool_dtype(labels)
    fraction = _first_fraction(labels) if numeric else None
    distinct = int(labels.nunique())
    if requested == REGRESSION:
        if not numeric:
            raise ConveyorError(
                f"target column {target!r} holds {_kind(labels)} (e.g. "
                f"{plain(labels.iloc[0])!r}); task=regression needs numbers (a date or a "
                "duration cast to seconds, say)"
            )
        return TaskChoice(REGRESSION, "task=regression was requested")
    if requested == CLASSIFICATION:
        if fraction is not None:
            raise ConveyorError(
                f"target column {target!r} holds numbers that are not whole (e.g. {fraction:g}), "
                "which are no class labels; use task=regression (or auto)"
            )
        return TaskChoice(CLASSIFICATION, "task=classification was requested")
    if fraction is not None:
        return TaskChoice(
            REGRESSION, f"{target!r} holds numbers that are not whole (e.g. {fraction:g})"
        )
    if numeric and distinct > MAX_NUMERIC_CLASSES:
        return TaskChoice(
            REGRESSION,
            f"{target!r} holds {distinct} distinct whole numbers, more than "
            f"{MAX_NUMERIC_CLASSES} (fewer would be classes)",
        )
    what = f"{distinct} distinct whole numbers, at most {MAX_NUMERIC_CLASSES}"
    return TaskChoice(
        CLASSIFICATION, f"{target!r} holds {what if numeric else _kind(labels)}: class labels"
    )


def _first_fraction(labels: pd.Series) -> float | None:
    """The first value that is not a whole number; None when all are."""
    if not ptypes.is_float_dtype(labels):
        return None
    values = labels.to_numpy(dtype=float)
    with np.errstate(invalid="ignore"):  # NaN and infinity count as not whole
        odd = np.flatnonzero(np.mod(values, 1) != 0)
    return float(values[odd[0]]) if odd.size else None


def _kind(labels: pd.Series) -> str:
    """What a non-numeric target holds, in words (a cast is the user's to make)."""
    if ptypes.is_bool_dtype(labels):
        return "booleans"
    if ptypes.is_datetime64_any_dtype(labels):
        return "dates"
    if ptypes.is_timedelta64_dtype(labels):
        return "durations"
    return "text"
