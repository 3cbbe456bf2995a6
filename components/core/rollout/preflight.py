"""What deploy would refuse, found before a run starts: every problem of the serving and
rollout settings at once, a line each, contacting nothing.

``conveyor check`` reads a config with it, and ``run``, ``submit`` and ``schedule`` refuse
to start a pipeline whose deploy step could only fail, after hours of training.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any, TypeVar

from conveyor.components.core.errors import ConveyorError
from conveyor.components.core.rollout.manifests import (
    ServingSpec,
    inference_service_problems,
    render_inference_service,
)
from conveyor.components.core.rollout.policy import CanaryPolicy
from conveyor.components.core.rollout.prometheus import Prometheus
from conveyor.components.core.rollout.runner import (
    RolloutPlan,
    RolloutSettings,
    parse_steps,
    require_prometheus,
)
from conveyor.components.core.rollout.settings import SETTINGS, Setting

__all__ = ["deploy_problems"]

T = TypeVar("T")
_PLAN = ("canary_steps", "canary_interval_s", "ready_timeout_s", "rollout_deadline_s")
_SERVING = (
    "namespace", "serving_runtime", "serving_cpu", "serving_memory", "service_account",
    "payload_log_uri", "payload_log_exclude",
)  # fmt: skip


def deploy_problems(
    model_name: str, values: Mapping[str, Any], unchecked: Collection[str] = ()
) -> list[str]:
    """Every problem deploy would meet with these settings, a line each.

    Args:
        model_name: The model (and InferenceService) name.
        values: Serving and rollout settings by name (``rollout.settings``); a setting not
            given takes its declared default.
        unchecked: Settings whose values were refused already (a caller that checked the
            types itself): what depends on them is not checked, rather than checked at a
            default the run would not use.

    Returns:
        The problems: first any value of the wrong type, then what deploy would refuse, in
        its order. A check that needs a setting refused before waits for it.
    """
    given = {each.name: values.get(each.name, each.default) for each in SETTINGS}
    mistyped = {each.name: _type_problem(each, given[each.name]) for each in SETTINGS}
    problems = [problem for problem in mistyped.values() if problem]
    refused = set(unchecked) | {name for name, problem in mistyped.items() if problem}

    def ready(*names: str) -> bool:
        return not refused.intersection(names)

    plan = policy = None
    if ready(*_PLAN):
        steps = _collected(problems, lambda: parse_steps(given["canary_steps"]))
        plan = _collected(problems, lambda: _plan(steps, given)) if steps else None
    if ready("canary_policy"):
        policy = _collected(problems, lambda: CanaryPolicy.from_dict(given["canary_policy"]))
    if ready(*_SERVING):
        spec = _collected(problems, lambda: _serving_spec(model_name, given, plan))
        if spec is not None:
            problems += inference_service_problems(render_inference_service(spec))
    if plan is not None and policy is not None:  # whether the plan fits its deadline
        _collected(problems, lambda: RolloutSettings(plan, policy, given["prometheus_url"]))
    if policy is not None and ready("rollout", "prometheus_url") and given["rollout"]:
        _collected(problems, lambda: _prometheus(policy, given["prometheus_url"]))
    return problems


def _type_problem(declared: Setting, value: Any) -> str:
    """What is wrong with ``value``'s type for ``declared``; empty when nothing."""
    accepted: tuple[type, ...] = (int, float) if declared.type is float else (declared.type,)
    # bool is an int in Python, but `true` is no number of seconds.
    typed = isinstance(value, accepted) and (declared.type is bool or not isinstance(value, bool))
    if typed and (declared.type is not list or all(isinstance(item, str) for item in value)):
        return ""
    expected = {str: "text", float: "a number", bool: "true or false", list: "a list of "
                "column names", dict: "a mapping"}[declared.type]  # fmt: skip
    return f"{declared.name}: expected {expected}, not {value!r}"


def _collected(problems: list[str], make: Callable[[], T]) -> T | None:
    """``make()``, or None with its ConveyorError's lines added to ``problems``."""
    try:
        return make()
    except ConveyorError as error:
        problems += str(error).splitlines()
    except OverflowError:  # a number past any float: 1e400 seconds, 10**400 looks
        problems.append("a number in the rollout settings is too large to compute with")
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
        payload_log_exclude=tuple(given["payload_log_exclude"]),
    )


def _prometheus(policy: CanaryPolicy, url: str) -> None:
    """What deploy does with the URL, short of a query: required when the canary is judged,
    and an http(s) URL."""
    require_prometheus(policy, url)
    if policy.analysed:
        Prometheus(url)
