"""Pushing a batch job's results to a Prometheus Pushgateway, one group at a time.

A group is what one job pushes under one grouping key (``job`` plus labels such as
``model``). Each push is an HTTP PUT, which replaces the whole group: a series that a run no
longer pushes is gone from the Pushgateway, so an alert it held up clears. The Pushgateway
adds ``push_time_seconds`` to each group itself, which is how "the job has not run" is seen.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import httpx

from conveyor.components.core.errors import ConveyorError, first_line, plain

__all__ = ["Gauge", "group_path", "exposition", "push_group"]

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# Values made of these characters go into the URL as they are; any other value (a `/`, an
# empty one, spaces, non-ASCII) goes base64-encoded, which the Pushgateway always accepts.
_PLAIN_VALUE = re.compile(r"[A-Za-z0-9._~-]+")
_TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"
# Per group, the Pushgateway writes these over whatever a push says.
_GATEWAY_OWN = frozenset({"push_time_seconds", "push_failure_time_seconds"})


@dataclass(frozen=True)
class Gauge:
    """One sample of a gauge, as the Prometheus text format writes it.

    Attributes:
        name: The metric name (``[a-zA-Z_:][a-zA-Z0-9_:]*``), e.g. ``conveyor_drift_detected``.
        value: The sample's value; NaN and infinities are allowed, as in Prometheus.
        labels: Label name -> value. Names follow ``[a-zA-Z_][a-zA-Z0-9_]*`` and may not start
            with ``__`` (reserved to Prometheus); values are any text.
        help: The metric's help line; samples of one name in one push share it.
    """

    name: str
    value: float
    labels: Mapping[str, str] = field(default_factory=dict)
    help: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _METRIC_NAME.fullmatch(self.name):
            raise ConveyorError(
                f"gauge name {self.name!r}: expected letters, digits, '_' or ':', not starting "
                "with a digit"
            )
        number = plain(self.value)  # a NumPy number as the Python one
        if not isinstance(number, int | float):
            raise ConveyorError(f"gauge {self.name}: value {self.value!r} is not a number")
        for label, value in self.labels.items():
            _check_label_name(label, f"gauge {self.name}")
            if not isinstance(value, str):
                raise ConveyorError(f"gauge {self.name}: label {label}={value!r} must be a string")
        if not isinstance(self.help, str):
            raise ConveyorError(f"gauge {self.name}: help {self.help!r} must be a string")
        # A copy the caller cannot change afterwards, and the value as the float it is sent as.
        object.__setattr__(self, "value", float(number))
        object.__setattr__(self, "labels", dict(self.labels))


def group_path(job: str, grouping: Mapping[str, str]) -> str:
    """The Pushgateway URL path of a group: ``/metrics/job/<job>/<label>/<value>...``.

    The Pushgateway's README (prometheus/pushgateway, "API" > "URL") defines the encoding: a
    job name or label value containing ``/`` cannot be sent plainly (not even URI-encoded),
    and an empty value would vanish from the path, so both are sent as ``<name>@base64/<v>``
    with ``<v>`` in RFC 4648's URL- and filename-safe base64 alphabet (``=`` alone for an
    empty value). Any value that is not plain ASCII text is sent that way here too.

    Args:
        job: The ``job`` label of the group; not empty.
        grouping: The group's other labels, e.g. ``{"model": "fraud"}``.

    Returns:
        The path, to be appended to the Pushgateway's URL.

    Raises:
        ConveyorError: An empty job, a grouping label named ``job`` or not a label name, or a
            value that is not a string.
    """
    if not isinstance(job, str) or not job:
        raise ConveyorError(f"Pushgateway job {job!r}: must be a non-empty string")
    parts = ["/metrics", *_path_pair("job", job)]
    for label, value in grouping.items():
        _check_label_name(label, "Pushgateway grouping key")
        if label == "job":
            raise ConveyorError("Pushgateway grouping key: 'job' is given as the job, not a label")
        if not isinstance(value, str):
            raise ConveyorError(f"Pushgateway grouping key {label}={value!r}: must be a string")
        parts.extend(_path_pair(label, value))
    return "/".join(parts)


def exposition(samples: Sequence[Gauge]) -> str:
    """The text exposition format (version 0.0.4) of ``samples``, one family per name.

    Args:
        samples: The gauges; one name's samples may come in any order.

    Returns:
        The text: per metric name a ``# HELP`` (when given) and ``# TYPE ... gauge`` line,
        then its samples.

    Raises:
        ConveyorError: Two samples with the same name and labels, or one name with two
            different help texts.
    """
    families: dict[str, list[Gauge]] = {}
    for sample in samples:
        families.setdefault(sample.name, []).append(sample)
    lines: list[str] = []
    for name, family in families.items():
        helps = sorted({sample.help for sample in family if sample.help})
        if len(helps) > 1:
            raise ConveyorError(f"gauge {name}: samples give different help texts {helps}")
        seen: set[tuple[tuple[str, str], ...]] = set()
        if helps:
            lines.append(f"# HELP {name} {_escape_help(helps[0])}")
        lines.append(f"# TYPE {name} gauge")
        for sample in family:
            key = tuple(sorted(sample.labels.items()))
            if key in seen:
                raise ConveyorError(f"gauge {name}{_label_text(sample.labels)}: given twice")
            seen.add(key)
            lines.append(f"{name}{_label_text(sample.labels)} {_number(sample.value)}")
    return "".join(f"{line}\n" for line in lines)


def push_group(
    url: str,
    job: str,
    grouping: Mapping[str, str],
    samples: Sequence[Gauge],
    timeout_s: float = 10.0,
) -> None:
    """Replaces a group on a Pushgateway with ``samples`` (HTTP PUT).

    Every series the group held before and ``samples`` lacks is deleted, so a run that no
    longer reports a problem clears the alert on it. The grouping labels are attached to every
    sample by the Pushgateway; a sample may carry one of them only with the same value.

    Args:
        url: The Pushgateway's base URL (``http://`` or ``https://``, with any path prefix).
        job: The group's ``job`` label, e.g. ``conveyor_monitoring``.
        grouping: The group's other labels, e.g. ``{"model": "fraud"}``.
        samples: The group's new content; empty leaves the group with no metrics.
        timeout_s: Seconds to wait for the Pushgateway to connect and answer.

    Raises:
        ConveyorError: A bad URL, name or label; the Pushgateway unreachable or refusing the
            push (its message is included).
    """
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ConveyorError(f"Pushgateway URL {url!r} must start with http:// or https://")
    path = group_path(job, grouping)
    key = {"job": job, **grouping}
    for sample in samples:
        if sample.name in _GATEWAY_OWN:
            raise ConveyorError(
                f"gauge {sample.name}: the Pushgateway sets it itself and would replace it"
            )
        for label, value in sample.labels.items():
            if label in key and value != key[label]:
                raise ConveyorError(
                    f"gauge {sample.name}: label {label}={value!r} differs from the group's "
                    f"{label}={key[label]!r}"
                )
    body = exposition(samples).encode()
    target = f"{url.rstrip('/')}{path}"
    group = ",".join(f"{label}={value!r}" for label, value in key.items())
    try:
        response = httpx.put(
            target, content=body, headers={"Content-Type": _TEXT_FORMAT}, timeout=timeout_s
        )
    except httpx.HTTPError as error:
        raise ConveyorError(
            f"Pushgateway at {url} is unreachable: {first_line(error)} (group {group})"
        ) from None
    if not response.is_success:
        detail = first_line(response.text)[:300] if response.text.strip() else ""
        raise ConveyorError(
            f"Pushgateway at {url} refused the push of group {group}: HTTP "
            f"{response.status_code} {detail or response.reason_phrase}"
        )


def _check_label_name(label: object, where: str) -> None:
    if not isinstance(label, str) or not _LABEL_NAME.fullmatch(label):
        raise ConveyorError(
            f"{where}: label name {label!r} must be letters, digits or '_', not starting with "
            "a digit"
        )
    if label.startswith("__"):
        raise ConveyorError(f"{where}: label name {label!r} starts with '__' (reserved)")


def _path_pair(label: str, value: str) -> tuple[str, str]:
    if _PLAIN_VALUE.fullmatch(value):
        return label, value
    if not value:
        return f"{label}@base64", "="
    encoded = base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")
    return f"{label}@base64", encoded


def _label_text(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    pairs = ",".join(f'{label}="{_escape_value(value)}"' for label, value in labels.items())
    return f"{{{pairs}}}"


def _escape_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)
