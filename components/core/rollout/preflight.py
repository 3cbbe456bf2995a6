"""What deploy would refuse, found before a run starts: every problem of the serving and
rollout settings at once, a line each, contacting nothing.

``conveyor check`` reads a config with it, and ``run``, ``submit`` and ``schedule`` refuse
to start a pipeline whose deploy step could only fail, after hours of training.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from conveyor.components.core.errors import ConveyorError
from conveyor.components.core.rollout.manifests import (
    ServingSpec,
    inference_service_problems,
    render_inference_service,
)
from conveyor.components.core.rollout.policy import CanaryPolicy
from conveyor.components.core.rollout.runner import (
    RolloutPlan,
    RolloutSettings,
    parse_steps,
    require_prometheus,
)
from conveyor.components.core.rollout.settings import SETTINGS

__all__ = ["deploy_problems"]

T = TypeVar("T")


def deploy_problems(model_name: str, values: Mapping[str, Any]) -> list[str]:
    """Every problem deploy would meet with these settings, a line each.

    Args:
        model_name: The model (and InferenceService) name.
        values: Serving and rollout settings by name (``rollout.settings``); a setting not
            given takes its declared default.

    Returns:
        The problems, in the order deploy would meet them; empty when there are none.
        A check that needs a part refused before (the plan's deadline needs the plan and
        the policy) waits for it.
    """
    given = {each.name: values.get(each.name, each.default) for each in SETTINGS}
    problems: list[str] = []
    steps = _collected(problems, lambda: parse_steps(given["canary_steps"]))
    plan = _collected(problems, lambda: _plan(steps, given)) if steps else None
    policy = _collected(problems, lambda: CanaryPolicy.from_dict(given["canary_policy"]))
    spec = _collected(problems, lambda: _serving_spec(model_name, given, plan))
    if spec is not None:
        problems += inference_service_problems(render_inference_service(spec))
    if plan is not None and policy is not None:  # whether the plan fits its deadline
        _collected(problems, lambda: RolloutSettings(plan, policy, given["prometheus_url"]))
    if policy is not None and given["rollout"]:  # a rollout that would judge nothing
        _collected(problems, lambda: require_prometheus(policy, given["prometheus_url"]))
    return problems


def _collected(problems: list[str], make: Callable[[], T]) -> T | None:
    """``make()``, or None with its ConveyorError's lines added to ``problems``."""
    try:
        return make()
    except ConveyorError as error:
        problems += str(error).splitlines()
        return None


def _plan(steps: tuple[int, ...], given: Mapping[str, Any]) -> RolloutPlan:
    return RolloutPlan(
        steps=steps,
        interval_s=given["canary_interval_s"],
        ready_timeout_s=given["ready_timeout_s"],
        deadline_s=given["rollout_deadline_s"],
    )


def _serving_spec(
    model_name: str, given: Mapping[str, Any], plan: RolloutPlan | None
) -> ServingSpec:
    return ServingSpec(
        model_name=model_name,
        model_version="1",
        storage_uri="gs://placeholder/model",
        namespace=given["namespace"],
        canary_traffic_percent=plan.steps[0] if plan else 10,
        runtime=given["serving_runtime"],
        cpu=given["serving_cpu"],
        memory=given["serving_memory"],
        service_account=given["service_account"],
        payload_log_uri=given["payload_log_uri"],
        payload_log_exclude=tuple(str(column) for column in given["payload_log_exclude"]),
    )
