"""Environment parameter files (``configs/<env>.yaml``) and ``--param NAME=VALUE`` options
checked against a pipeline's signature.

A parameter file maps pipeline parameter names to values. Every problem is named, each on a
line of its own: an unknown key, a value of the wrong type, a required parameter with no value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from conveyor.components.core.errors import ConveyorError
from conveyor.components.core.files import read_yaml
from conveyor.components.core.rollout.policy import REMOVED_SETTINGS

__all__ = [
    "deploy_setting_problems",
    "load_parameters",
    "option_pairs",
    "parameter_problems",
    "parse_param_options",
    "raise_problems",
    "well_typed",
]

# KFP parameter types -> the Python values a YAML file may give for them.
_ACCEPTED: dict[str, tuple[type, ...]] = {
    "String": (str,),
    "Integer": (int,),
    "Float": (int, float),
    "Boolean": (bool,),
    "Dict": (dict,),
    "List": (list,),
}
_TYPE_WORDS = {
    "String": "text",
    "Integer": "a whole number",
    "Float": "a number",
    "Boolean": "true or false",
    "Dict": "a mapping",
    "List": "a list",
}


def load_parameters(path: Path) -> dict[str, Any]:
    """The mapping in a YAML parameter file; one line naming the file when it is not one."""
    loaded = read_yaml(path) or {}
    if not isinstance(loaded, dict):
        raise ConveyorError(f"{path}: expected a mapping of parameter names to values")
    return loaded


def parameter_problems(values: dict[str, Any], inputs: dict[str, Any], where: str) -> list[str]:
    """Every problem of ``values`` against a pipeline's inputs (``component_spec.inputs``),
    each a line starting with ``where``."""
    problems = [_unknown(name, where) for name in values if name not in inputs]
    for name, spec in inputs.items():
        if name not in values:
            if not spec.optional:
                problems.append(f"{where}: {name!r} is required ({_TYPE_WORDS[spec.type]})")
            continue
        wrong = _type_problem(values[name], spec)
        if wrong:
            problems.append(f"{where}: {name!r} {wrong}")
    return problems


def well_typed(values: dict[str, Any], inputs: dict[str, Any]) -> dict[str, Any]:
    """The values that name a parameter and have its type: what a later check (such as
    deploy's settings) can read while ``parameter_problems`` reports the others."""
    return {
        name: value
        for name, value in values.items()
        if name in inputs and not _type_problem(value, inputs[name])
    }


def _type_problem(value: Any, spec: Any) -> str:
    """What is wrong with ``value`` for a parameter of ``spec``'s type; empty when nothing."""
    accepted = _ACCEPTED.get(spec.type, (object,))
    # bool is an int in Python, but `true` is no number of steps.
    if isinstance(value, accepted) and (spec.type == "Boolean" or not isinstance(value, bool)):
        return ""
    return f"must be {_TYPE_WORDS.get(spec.type, spec.type)}, not {value!r}"


def _unknown(name: str, where: str) -> str:
    if name in REMOVED_SETTINGS:
        return f"{where}: {name!r} was removed: {REMOVED_SETTINGS[name]}"
    return f"{where}: {name!r} is not a parameter of the pipeline"


def option_pairs(
    pairs: list[str], option: str, form: str, *, empty_values: bool = False
) -> dict[str, str]:
    """A repeated ``NAME=VALUE`` command-line option as a mapping; one line naming the
    option and the ``form`` expected for a pair that is not one."""
    parsed = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name or not (value or empty_values):
            raise ConveyorError(f"{option} {pair!r}: expected {form}")
        parsed[name] = value
    return parsed


def parse_param_options(pairs: list[str], inputs: dict[str, Any], pipeline: str) -> dict[str, Any]:
    """``--param NAME=VALUE`` options as pipeline arguments, each checked against ``pipeline``'s
    inputs; raises ConveyorError naming every bad one, a line each.

    A text parameter takes VALUE as written (``serving_cpu=1`` is ``"1"``); any other reads it
    as YAML (numbers, true/false, ``{a: 1}``, ``[1, 2]``)."""
    parsed: dict[str, Any] = {}
    problems = []
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep:
            problems.append(f"--param {pair!r}: expected NAME=VALUE")
        elif name in parsed:  # the last would silently win
            problems.append(f"--param {name!r}: given more than once")
        elif name in REMOVED_SETTINGS:
            problems.append(f"--param {name!r}: was removed: {REMOVED_SETTINGS[name]}")
        elif name not in inputs:
            problems.append(
                f"--param {name!r}: no such {pipeline} pipeline parameter; known: "
                f"{', '.join(inputs)}"
            )
        else:
            parsed[name], wrong = _param_value(text, inputs[name])
            problems += [f"--param {name!r}: {wrong}"] if wrong else []
    raise_problems(problems)
    return parsed


def _param_value(text: str, spec: Any) -> tuple[Any, str]:
    """``--param``'s VALUE for a parameter of ``spec``'s type, and what is wrong with it
    (empty when nothing)."""
    if spec.type == "String":
        return text, ""
    try:
        value = yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        return None, f"{text!r} is not valid YAML"
    if spec.type == "Float" and isinstance(value, str):
        value = _float(text)  # YAML 1.1 reads 1e-3 as text
    if spec.type == "Float" and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)  # KFP refuses an int for a float input: -1 is -1.0
    return value, _type_problem(value, spec)


def _float(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def raise_problems(problems: list[str]) -> None:
    """Raises ConveyorError naming every problem, each on a line of its own."""
    if problems:
        raise ConveyorError("\n".join(problems))


def deploy_setting_problems(values: dict[str, Any], inputs: dict[str, Any]) -> list[str]:
    """What the deploy step would refuse in a run of the pipeline whose inputs are ``inputs``
    (``component_spec.inputs``) given ``values``, a line each, before anything runs.

    A setting the pipeline does not take as a parameter (the monitoring pipeline takes some)
    is checked at its declared default, which is what its deploy step gets. A value that
    ``parameter_problems`` refuses is left to it, and what depends on it is not checked. A
    pipeline without ``model_name``, or a monitoring run that never retrains, deploys
    nothing to check."""
    from conveyor.components.core.rollout.preflight import deploy_problems
    from conveyor.components.core.rollout.settings import SETTING_NAMES

    typed = well_typed(values, inputs)

    def value(name: str) -> Any:
        return typed[name] if name in typed else inputs[name].default

    if "model_name" not in inputs or ("retrain" in inputs and value("retrain") is False):
        return []
    settings = {name: value(name) for name in SETTING_NAMES if name in inputs}
    refused = {name for name in values if name in SETTING_NAMES and name not in typed}
    return deploy_problems(value("model_name"), settings, unchecked=refused)
