"""Environment parameter files (``configs/<env>.yaml``) checked against a pipeline's signature.

A parameter file maps pipeline parameter names to values. Every problem is named:
an unknown key, a value of the wrong type, a required parameter with no value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conveyor.components.core.errors import ConveyorError
from conveyor.components.core.files import read_yaml
from conveyor.components.core.rollout.policy import REMOVED_SETTINGS

__all__ = ["load_parameters", "option_pairs", "parameter_problems", "raise_first"]

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
        value = values[name]
        accepted = _ACCEPTED.get(spec.type, (object,))
        # bool is an int in Python, but `true` is no number of steps.
        if not isinstance(value, accepted) or (spec.type != "Boolean" and isinstance(value, bool)):
            problems.append(
                f"{where}: {name!r} must be {_TYPE_WORDS.get(spec.type, spec.type)}, not {value!r}"
            )
    return problems


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


def raise_first(problems: list[str]) -> None:
    """Raises ConveyorError with the first problem, and how many more there are."""
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ConveyorError(problems[0] + more)
