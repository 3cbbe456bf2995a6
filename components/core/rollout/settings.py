"""The deploy step's serving and rollout settings, declared once.

Each setting is a parameter of the deploy step and of the training pipeline, most are flags
of ``conveyor rollout``, and the README lists them in a table. KFP reads a component's and a
pipeline's parameters from the function's signature, so those stay written out; the tests
check both signatures, their docstrings' Args lines, the pipeline's wiring into deploy and
the README's table against ``SETTINGS``. The command's flags are built from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["SETTINGS", "SETTING_NAMES", "Setting", "setting"]


@dataclass(frozen=True)
class Setting:
    """One serving or rollout setting.

    Attributes:
        name: The parameter's name in the deploy step and the training pipeline; saved
            configs and schedules use it, so it never changes.
        type: Its Python type, as the signatures annotate it (str, float, bool, list, dict).
        default: Its default in the signatures; never mutated (``[]`` and ``{}`` are shared).
        help: What it does, in one sentence or two: each docstring's Args line, the flag's
            help and the README's table say exactly this.
        flags: The ``conveyor rollout`` flags that set it; empty where the command has none.
            A dict setting's flag names a YAML file holding it.
    """

    name: str
    type: type
    default: Any
    help: str
    flags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # A declaration mistake fails at import, not in a cluster.
        if not isinstance(self.default, self.type):
            raise TypeError(f"setting {self.name}: default {self.default!r} is not {self.type}")


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "namespace", str, "default",
        "Kubernetes namespace of the InferenceService.",
        ("--namespace",),
    ),
    Setting(
        "serving_runtime", str, "",
        "A ServingRuntime name; empty lets KServe pick one for sklearn.",
        ("--runtime",),
    ),
    Setting("serving_cpu", str, "1", "CPU request and limit of the predictor.", ("--cpu",)),
    Setting(
        "serving_memory", str, "2Gi", "Memory request and limit of the predictor.", ("--memory",)
    ),
    Setting(
        "service_account", str, "",
        "Service account the predictor pulls the model with.",
        ("--service-account",),
    ),
    Setting(
        "payload_log_uri", str, "",
        "Folder or URI under which the predictor logs the inputs it answers (a folder per "
        "InferenceService and day), for the monitoring pipeline; empty logs nothing.",
    ),
    Setting(
        "payload_log_exclude", list, [],
        "Input columns the predictor never writes to its payload log (personal data, ...).",
    ),
    Setting(
        "rollout", bool, True,
        "False renders and validates the InferenceService only, without a cluster, and "
        "register makes the model the champion; true rolls it out, and it becomes the "
        "champion only if the rollout promotes it.",
    ),
    Setting(
        "canary_steps", str, "10,50",
        "Canary traffic percentages, comma-separated and increasing (1-99).",
        ("--steps",),
    ),
    Setting(
        "canary_interval_s", float, 60.0,
        "Seconds between looks at the canary; the first is warm-up.",
        ("--interval",),
    ),
    Setting(
        "ready_timeout_s", float, 600.0,
        "Seconds a new revision may take to become ready.",
        ("--ready-timeout",),
    ),
    Setting(
        "rollout_deadline_s", float, 3600.0,
        "Seconds the whole rollout may take before it is rolled back.",
        ("--deadline",),
    ),
    Setting(
        "prometheus_url", str, "",
        "Prometheus the canary is judged from; required unless the canary policy says "
        "analysis: none.",
        ("--prometheus",),
    ),
    Setting(
        "canary_policy", dict, {},
        "How the canary is judged (metrics, margins, error rates, limits), merged by name "
        "onto the defaults; empty uses the defaults.",
        ("--policy",),
    ),
)  # fmt: skip

SETTING_NAMES: tuple[str, ...] = tuple(each.name for each in SETTINGS)


def setting(name: str) -> Setting:
    """The declared setting called ``name``; KeyError names the declared ones otherwise."""
    for each in SETTINGS:
        if each.name == name:
            return each
    raise KeyError(f"{name!r} is no serving or rollout setting; they are {list(SETTING_NAMES)}")
