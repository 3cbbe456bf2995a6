"""Standard 5-field cron, checked, and converted for each scheduler: the 6-field form
(seconds first) that Kubeflow Pipelines' scheduler (robfig/cron) reads, and the 5 fields
behind a ``TZ=`` time zone that Vertex AI schedules read."""

from __future__ import annotations

import re
import zoneinfo

from conveyor.components.core.errors import ConveyorError

__all__ = ["check_timezone", "kubeflow_cron", "validate_cron", "vertex_cron"]

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
_RANGE_TO_SEVEN = re.compile(r"(\d)-7(?:/(\d+))?")
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
    weekday = _sunday_as_zero(weekday)
    return " ".join(["0", minute, hour, day, month, weekday])


def vertex_cron(expression: str, timezone: str) -> str:
    """``0 6 * * mon-fri`` in Europe/Paris as ``TZ=Europe/Paris 0 6 * * 1-5``: names as
    numbers and Sunday as 0, which every cron dialect reads alike."""
    check_timezone(timezone)
    fields = validate_cron(expression)
    numeric = [
        _numbers(value, names) for value, (_, _, _, names) in zip(fields, _FIELDS, strict=True)
    ]
    numeric[4] = _sunday_as_zero(numeric[4])
    return f"TZ={timezone} {' '.join(numeric)}"


def check_timezone(timezone: str) -> None:
    """Raises ConveyorError unless ``timezone`` is an IANA time zone such as Europe/Paris."""
    try:
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConveyorError(
            f"--timezone {timezone!r} is not an IANA time zone, such as UTC or Europe/Paris"
        ) from None


def _sunday_as_zero(weekday: str) -> str:
    """Day of week with Sunday as 0 only: ``7`` is ``0``, a range ``5-7`` is ``5-6,0``."""
    parts = []
    for part in weekday.split(","):
        match = _RANGE_TO_SEVEN.fullmatch(part)
        if part in ("7", "7-7"):
            part = "0"
        elif match:
            start, step = int(match.group(1)), int(match.group(2) or 1)
            part = f"{start}-6" + (f"/{step}" if match.group(2) else "")
            part += ",0" if (7 - start) % step == 0 else ""
        parts.append(part)
    return ",".join(parts)


def _numbers(value: str, names: dict[str, int]) -> str:
    return re.sub(r"[A-Z]+", lambda match: str(names[match.group(0)]), value)


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
