"""Conveyor's pipelines, and what a pipeline of your own needs to run Conveyor's components::

    from conveyor.pipelines import Target, apply_step_settings

``definitions`` holds the pipelines (training, monitoring), the compile targets and the step
settings; ``delivery`` sends them to Kubeflow and Vertex AI; ``cli`` is the ``conveyor``
command; ``local`` runs them through ``kfp.local``.

The public names resolve on first use, so the command line starts without compiling
anything.
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> the module that defines it.
_PUBLIC = {
    "Target": "definitions.targets",
    "apply_step_settings": "definitions.steps",
    "build_training_pipeline": "definitions.training",
    "build_monitoring_pipeline": "definitions.monitoring",
}

__all__ = list(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
