"""Conveyor's KFP components, each importable by name::

    from conveyor.components import EvaluateOp, IngestOp, TrainOp

Training: ``IngestOp``, ``ValidateOp``, ``PlanTrialsOp``, ``TuneTrialOp``,
``SelectTrialOp``, ``TrainOp``, ``EvaluateOp``, ``ShadowOp``, ``RegisterOp``, ``DeployOp``.
Monitoring: ``IngestInputsOp``, ``ChampionReferenceOp``, ``ValidateInputsOp``, ``DriftOp``,
``PredictionDriftOp``, ``QualityOp``, ``MonitoringVerdictOp``; drift over a partitioned
log, fanned out: ``PlanPartitionsOp``, ``ProfilePartitionOp``, ``CheckPartitionsOp``,
``CountPartitionOp``, ``JudgeDriftOp``. Each is the
component of the module of the same step (``conveyor.components.train.train`` is
``TrainOp``), whose docstring documents every input and output.

The names resolve on first use: this package imports nothing itself, because inside a
running step KFP hides ``dsl.component`` and the step's imports of ``conveyor.components.core``
pass through here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kfp.dsl.python_component import PythonComponent

# Public name -> the step module whose component (of the module's name) it is.
STEP_MODULES = {
    "IngestOp": "ingest",
    "ValidateOp": "validate",
    "PlanTrialsOp": "plan_trials",
    "TuneTrialOp": "tune_trial",
    "SelectTrialOp": "select_trial",
    "TrainOp": "train",
    "EvaluateOp": "evaluate",
    "ShadowOp": "shadow",
    "RegisterOp": "register",
    "DeployOp": "deploy",
    "IngestInputsOp": "ingest_inputs",
    "ChampionReferenceOp": "champion_reference",
    "ValidateInputsOp": "validate_inputs",
    "DriftOp": "drift",
    "PlanPartitionsOp": "plan_partitions",
    "ProfilePartitionOp": "profile_partition",
    "CheckPartitionsOp": "check_partitions",
    "CountPartitionOp": "count_partition",
    "JudgeDriftOp": "judge_drift",
    "PredictionDriftOp": "prediction_drift",
    "QualityOp": "quality",
    "MonitoringVerdictOp": "monitoring_verdict",
}

__all__ = list(STEP_MODULES)


def __getattr__(name: str) -> PythonComponent:
    if name not in STEP_MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    step = STEP_MODULES[name]
    return getattr(importlib.import_module(f"{__name__}.{step}"), step)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
