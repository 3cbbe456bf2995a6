"""Standard 5-field cron, checked, and converted to the 6-field form (seconds first) that
Kubeflow Pipelines' scheduler (robfig/cron) reads."""

from __future__ import annotations

import re

from components.core.errors import ConveyorError

__all__ = ["kubeflow_cron", "validate_cron"]

_MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
_DAYS = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]
_FIELDS = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, {month: index + 1 for index, month in enumerate(_MONTHS)}),
    # 7 is Sunday as well as 0 in standard cron; robfig knows 0 only.
    ("day of week", 0, 7, {day: index for index, day in enumerate(_DAYS)}),
)
_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_PART = re.compile(r"^(\*|[A-Z0-9]+(-[A-Z0-9]+)?)(/(\d+))?$")


def validate_cron(expression: str) -> list[str]:
    """The five fields of a standard cron expression (macros such as @daily expanded);
    raises ConveyorError naming the field that is wrong."""
    text = _MACROS.get(expression.strip().lower(), expression.strip())
    fields = text.split()
    if len(fields) != 5:
        raise ConveyorError(
            f"cron {expression!r} has {len(fields)} fields; write the standard 5 "
            "(minute hour day-of-month month day-of-week), such as '0 6 * * 1-5'"
        )
    return [
        _checked_field(expression, value, *spec)
        for value, spec in zip(fields, _FIELDS, strict=True)
    ]


def kubeflow_cron(expression: str) -> str:
    """``0 6 * * 1-5`` as ``0 0 6 * * 1-5``: seconds first, Sunday as 0."""
    minute, hour, day, month, weekday = validate_cron(expression)
    weekday = re.sub(r"(?<![0-9])7(?![0-9])", "0", weekday)
    return " ".join(["0", minute, hour, day, month, weekday])


def _checked_field(
    expression: str, value: str, name: str, low: int, high: int, names: dict[str, int]
) -> str:
    for part in value.upper().split(","):
        match = _PART.match(part)
        if not match:
            raise ConveyorError(
                f"cron {expression!r}: {name} {value!r} is not a number, range, list or step"
            )
        for bound in filter(None, re.split(r"-", match.group(1).replace("*", ""))):
            number = names.get(bound, int(bound) if bound.isdigit() else None)
            if number is None:
                raise ConveyorError(
                    f"cron {expression!r}: {name} {bound!r} is neither a number nor a name "
                    "(L, W, # and ? are not standard cron)"
                )
            if not low <= number <= high:
                raise ConveyorError(
                    f"cron {expression!r}: {name} {bound!r} is outside {low}-{high}"
                )
        if match.group(4) is not None and int(match.group(4)) == 0:
            raise ConveyorError(f"cron {expression!r}: {name} step 0 never advances")
    return value.upper()
