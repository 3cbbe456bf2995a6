"""Golden files: the compiled interface of every pipeline and component, kept in tests/golden/.

Saved configs (configs/*.yaml), published Vertex templates and existing schedules pass
parameters by name and type; a user's pipeline wires a loaded component's inputs and outputs
by name. Renaming or retyping one compiles fine and breaks them at submission, so each
compiled artifact's interface is compared with its golden file, and an intended change is
accepted with ``make golden`` (``UPDATE_GOLDEN=1 pytest tests/test_golden.py``), which is
refused where ``CI`` is set: there it would rewrite the files it checks, and pass.

Only the interface is recorded: embedded source, image tags and descriptions change with
every release and would turn the golden files into noise.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from conveyor.pipelines.definitions.compile import COMPONENTS, PIPELINES, compile_all

GOLDEN = Path(__file__).parent / "golden"
ACCEPT = "if the change is intended, run `make golden` (or `UPDATE_GOLDEN=1 pytest tests/test_golden.py`) and commit tests/golden/"
TARGETS = ("kubeflow", "vertex")

# Golden name (the compiled file's path under the build folder, less ``.yaml``) -> whether
# it is a pipeline; only pipelines record their tasks.
ARTIFACTS = {f"{p}.{t}": True for p in PIPELINES for t in TARGETS} | {
    f"components/{c}": False for c in COMPONENTS
}

Interface = dict[str, Any]
_PARAMETER_TYPE = pipeline_spec_pb2.ParameterType.ParameterTypeEnum


def update_mode() -> bool:
    """Whether this run rewrites the golden files (``UPDATE_GOLDEN=1``).

    Raises:
        RuntimeError: ``UPDATE_GOLDEN=1`` where ``CI`` is set, since a CI job that rewrote
            the golden files would pass whatever the interfaces became.
    """
    if os.environ.get("UPDATE_GOLDEN") != "1":
        return False
    if os.environ.get("CI"):
        raise RuntimeError(
            f"UPDATE_GOLDEN=1 is refused where CI is set (CI={os.environ['CI']}): a CI run "
            "checks tests/golden/, it never rewrites it; run `make golden` on your own machine "
            "and commit tests/golden/"
        )
    return True


def pipeline_spec(path: Path) -> pipeline_spec_pb2.PipelineSpec:
    """The first YAML document of a compiled file (a kubeflow file's second is its platform)."""
    document = next(yaml.safe_load_all(path.read_text()))
    return json_format.ParseDict(document, pipeline_spec_pb2.PipelineSpec())


def _parameters(definitions: Any, inputs: bool) -> dict[str, Any]:
    parameters: dict[str, Any] = {}
    for name, spec in definitions.parameters.items():
        parameter: dict[str, Any] = {"parameterType": _PARAMETER_TYPE.Name(spec.parameter_type)}
        if inputs:
            parameter["isOptional"] = spec.is_optional
            if spec.HasField("default_value"):
                parameter["defaultValue"] = json_format.MessageToDict(spec.default_value)
        parameters[name] = parameter
    return parameters


def _artifacts(definitions: Any, inputs: bool) -> dict[str, Any]:
    artifacts: dict[str, Any] = {}
    for name, spec in definitions.artifacts.items():
        artifact: dict[str, Any] = {"schemaTitle": spec.artifact_type.schema_title}
        if inputs:
            artifact["isOptional"] = spec.is_optional
        artifacts[name] = artifact
    return artifacts


def _tasks(spec: pipeline_spec_pb2.PipelineSpec) -> dict[str, str]:
    """Every task, nested ones (in a condition, a sub-pipeline) as ``outer/inner``."""
    found: dict[str, str] = {}

    def walk(dag: pipeline_spec_pb2.DagSpec, prefix: str) -> None:
        for name, task in dag.tasks.items():
            component = task.component_ref.name
            found[prefix + name] = component
            if spec.components[component].HasField("dag"):
                walk(spec.components[component].dag, f"{prefix}{name}/")

    walk(spec.root.dag, "")
    return found


def interface(spec: pipeline_spec_pb2.PipelineSpec, pipeline: bool) -> Interface:
    """What callers depend on: the name, inputs and outputs, and a pipeline's tasks.

    Args:
        spec: a compiled pipeline or component.
        pipeline: whether to record the tasks (a component's single task is itself).

    Returns:
        Plain JSON values, exactly as they read back from a golden file.
    """
    root = spec.root
    found: Interface = {
        "name": spec.pipeline_info.name,
        "inputs": {
            "parameters": _parameters(root.input_definitions, inputs=True),
            "artifacts": _artifacts(root.input_definitions, inputs=True),
        },
        "outputs": {
            "parameters": _parameters(root.output_definitions, inputs=False),
            "artifacts": _artifacts(root.output_definitions, inputs=False),
        },
    }
    if pipeline:
        found["tasks"] = _tasks(spec)
    # Through JSON, so floats, lists and dicts compare as they will after a round trip.
    return json.loads(json.dumps(found))


def _show(value: Any) -> str:
    """A default as a config would write it (JSON, so strings keep their quotes)."""
    return json.dumps(value, sort_keys=True)


# (side, group, word): input parameters are the "parameter"s configs and schedules name.
_MEMBERS = (
    ("inputs", "parameters", "parameter"),
    ("inputs", "artifacts", "input artifact"),
    ("outputs", "parameters", "output parameter"),
    ("outputs", "artifacts", "output artifact"),
)


def _added(label: str, word: str, name: str, spec: dict[str, Any]) -> str:
    type_ = spec.get("parameterType") or spec.get("schemaTitle")
    if "isOptional" not in spec:  # an output: callers may use it, none must pass it
        return f"{label}: added {word} '{name}' ({type_})"
    default = f", default {_show(spec['defaultValue'])}" if "defaultValue" in spec else ""
    required = "optional" if spec["isOptional"] else "required"
    return f"{label}: added {required} {word} '{name}' ({type_}{default})"


def _changed(label: str, word: str, name: str, old: dict, new: dict) -> list[str]:
    lines = []
    old_type = old.get("parameterType") or old.get("schemaTitle")
    new_type = new.get("parameterType") or new.get("schemaTitle")
    if old_type != new_type:
        lines.append(f"{label}: {word} '{name}' type {old_type} -> {new_type}")
    if old.get("isOptional") != new.get("isOptional"):
        before, after = (
            ("optional", "required") if old.get("isOptional") else ("required", "optional")
        )
        lines.append(f"{label}: {word} '{name}' {before} -> {after}")
    missing = object()
    old_default, new_default = old.get("defaultValue", missing), new.get("defaultValue", missing)
    if old_default != new_default:
        before = "(none)" if old_default is missing else _show(old_default)
        after = "(none)" if new_default is missing else _show(new_default)
        lines.append(f"{label}: {word} '{name}' default {before} -> {after}")
    return lines


def changes(label: str, golden: Interface, current: Interface) -> list[str]:
    """One line per difference between a golden interface and the compiled one.

    Args:
        label: the compiled artifact (``training.kubeflow``, ``components/train``).
        golden: the interface as recorded.
        current: the interface as compiled now.

    Returns:
        Lines such as ``training.kubeflow: parameter 'test_size' type NUMBER_DOUBLE -> STRING``;
        empty when nothing changed.
    """
    lines = []
    if golden.get("name") != current.get("name"):
        lines.append(f"{label}: name {golden.get('name')} -> {current.get('name')}")
    for side, group, word in _MEMBERS:
        old = golden.get(side, {}).get(group, {})
        new = current.get(side, {}).get(group, {})
        lines += [f"{label}: removed {word} '{name}'" for name in sorted(old.keys() - new.keys())]
        lines += [_added(label, word, name, new[name]) for name in sorted(new.keys() - old.keys())]
        for name in sorted(old.keys() & new.keys()):
            lines += _changed(label, word, name, old[name], new[name])
    old_tasks, new_tasks = golden.get("tasks", {}), current.get("tasks", {})
    lines += [
        f"{label}: removed task '{name}'" for name in sorted(old_tasks.keys() - new_tasks.keys())
    ]
    lines += [
        f"{label}: added task '{name}' ({new_tasks[name]})"
        for name in sorted(new_tasks.keys() - old_tasks.keys())
    ]
    lines += [
        f"{label}: task '{name}' component {old_tasks[name]} -> {new_tasks[name]}"
        for name in sorted(old_tasks.keys() & new_tasks.keys())
        if old_tasks[name] != new_tasks[name]
    ]
    return lines


def render(found: Interface) -> str:
    """A golden file's text: sorted keys, indent 2, a final newline (stable diffs)."""
    return json.dumps(found, indent=2, sort_keys=True) + "\n"


def check_golden(label: str, current: Interface, golden_dir: Path, update: bool) -> list[str]:
    """Compares ``current`` with ``<golden_dir>/<label>.json``; with ``update``, rewrites it.

    A missing file is a problem too: a normal run never creates one, or a renamed pipeline
    would pass by writing itself a fresh golden file.
    """
    path = golden_dir / f"{label}.json"
    if update:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != render(current):
            path.write_text(render(current))
        return []
    if not path.exists():
        return [f"{label}: no golden file {path.relative_to(golden_dir.parents[1])}"]
    return changes(label, json.loads(path.read_text()), current)


def failure(lines: list[str]) -> str:
    """The test's message: every change on a line of its own, then how to accept them."""
    return "compiled interface differs from its golden file:\n" + "\n".join(lines) + f"\n{ACCEPT}"


@pytest.fixture(scope="module")
def update() -> bool:
    """``update_mode()``; its refusal fails each test that would write, with its message."""
    try:
        return update_mode()
    except RuntimeError as refused:
        message = str(refused)
    pytest.fail(message, pytrace=False)  # outside the except: one message, not two chained


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every artifact ``compile_all`` writes, by golden name."""
    build = tmp_path_factory.mktemp("golden-build")
    return {str(path.relative_to(build).with_suffix("")): path for path in compile_all(build)}


def test_golden_names_are_what_compile_all_writes(compiled: dict[str, Path]) -> None:
    assert sorted(compiled) == sorted(ARTIFACTS)


@pytest.mark.parametrize("label", sorted(ARTIFACTS))
def test_compiled_interface_matches_its_golden_file(
    compiled: dict[str, Path], label: str, update: bool
) -> None:
    current = interface(pipeline_spec(compiled[label]), pipeline=ARTIFACTS[label])
    problems = check_golden(label, current, GOLDEN, update=update)
    if problems:
        pytest.fail(failure(problems), pytrace=False)


def test_no_golden_file_is_left_without_its_artifact(update: bool) -> None:
    stale = sorted(
        str(path.relative_to(GOLDEN).with_suffix(""))
        for path in GOLDEN.rglob("*.json")
        if str(path.relative_to(GOLDEN).with_suffix("")) not in ARTIFACTS
    )
    if stale and update:
        for label in stale:
            (GOLDEN / f"{label}.json").unlink()
        return
    if stale:
        lines = [f"{label}: removed (no pipeline or component compiles to it)" for label in stale]
        pytest.fail(failure(lines), pytrace=False)


def test_a_renamed_and_a_retyped_parameter_are_reported() -> None:
    golden = json.loads((GOLDEN / "training.kubeflow.json").read_text())
    current = copy.deepcopy(golden)
    parameters = current["inputs"]["parameters"]
    parameters["test_fraction"] = parameters.pop("test_size")
    parameters["seed"]["parameterType"] = "STRING"

    assert changes("training.kubeflow", golden, current) == [
        "training.kubeflow: removed parameter 'test_size'",
        "training.kubeflow: added optional parameter 'test_fraction' (NUMBER_DOUBLE, default 0.2)",
        "training.kubeflow: parameter 'seed' type NUMBER_INTEGER -> STRING",
    ]


def test_a_new_required_parameter_a_dropped_task_and_a_retyped_artifact_are_reported() -> None:
    golden = json.loads((GOLDEN / "components/train.json").read_text())
    golden["tasks"] = {"train": "comp-train", "register": "comp-register"}
    seed = _show(golden["inputs"]["parameters"]["seed"]["defaultValue"])
    current = copy.deepcopy(golden)
    current["inputs"]["parameters"]["owner"] = {"parameterType": "STRING", "isOptional": False}
    current["inputs"]["artifacts"]["test"]["schemaTitle"] = "system.Artifact"
    current["inputs"]["parameters"]["seed"]["defaultValue"] = 7
    del current["tasks"]["register"]

    assert changes("components/train", golden, current) == [
        "components/train: added required parameter 'owner' (STRING)",
        f"components/train: parameter 'seed' default {seed} -> 7",
        "components/train: input artifact 'test' type system.Dataset -> system.Artifact",
        "components/train: removed task 'register'",
    ]


def test_a_missing_golden_file_fails_and_is_not_created(tmp_path: Path) -> None:
    current = {"name": "x", "inputs": {}, "outputs": {}}
    golden_dir = tmp_path / "golden"

    assert check_golden("components/x", current, golden_dir, update=False) == [
        f"components/x: no golden file {tmp_path.name}/golden/components/x.json"
    ]
    assert not (golden_dir / "components/x.json").exists()
    assert check_golden("components/x", current, golden_dir, update=True) == []
    assert (golden_dir / "components/x.json").read_text() == render(current)


@pytest.mark.parametrize("ci", ["true", "1"])
def test_updating_the_golden_files_is_refused_where_ci_is_set(
    monkeypatch: pytest.MonkeyPatch, ci: str
) -> None:
    monkeypatch.setenv("UPDATE_GOLDEN", "1")
    monkeypatch.setenv("CI", ci)
    with pytest.raises(
        RuntimeError, match=f"UPDATE_GOLDEN=1 is refused where CI is set \\(CI={ci}\\)"
    ):
        update_mode()
    monkeypatch.delenv("CI")
    assert update_mode() is True  # on a developer's machine, `make golden` still rewrites
    monkeypatch.setenv("CI", ci)
    monkeypatch.delenv("UPDATE_GOLDEN")
    assert update_mode() is False  # CI itself only checks
