"""The serving and rollout settings, declared once (``rollout.settings``): deploy's signature
and docstring, the training pipeline's (and its wiring into deploy), ``conveyor rollout``'s
flags and the README's table are checked against the declaration, both ways."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from kfp.dsl import Artifact, Markdown, Metrics
from kfp.pipeline_spec import pipeline_spec_pb2

from conveyor.components.core.errors import ConveyorError
from conveyor.components.core.rollout.policy import DEFAULT_POLICY, CanaryPolicy
from conveyor.components.core.rollout.runner import RolloutPlan, RolloutSettings
from conveyor.components.core.rollout.settings import SETTING_NAMES, SETTINGS, Setting, setting
from conveyor.components.deploy import deploy
from conveyor.pipelines.cli import rollout as rollout_cli
from conveyor.pipelines.definitions.monitoring import build_monitoring_pipeline
from conveyor.pipelines.definitions.targets import Target
from conveyor.pipelines.definitions.training import PIPELINE_NAME, build_training_pipeline
from tests.conftest import ROOT, artifact

# deploy's inputs that are no serving or rollout setting: the model, and where it is recorded.
DEPLOY_OWN_INPUTS = {
    "model_name", "model_version", "storage_uri", "run_id", "model_sha256", "mlflow_tracking_uri",
}  # fmt: skip
# The pipeline parameters besides the settings that the training pipeline hands to deploy.
PIPELINE_TO_DEPLOY = {"model_name", "mlflow_tracking_uri"}
# How KFP names each declared type in a component's inputs.
KFP_TYPES = {str: "String", float: "Float", bool: "Boolean", list: "List", dict: "Dict"}


def one_line(text: str | None) -> str:
    """A docstring's Args entry as KFP keeps it (wrapped), on one line."""
    return " ".join((text or "").split())


def check_inputs(inputs: dict[str, Any], where: str) -> None:
    """Each declared setting is an optional input of ``inputs`` with its type and default."""
    missing = [name for name in SETTING_NAMES if name not in inputs]
    assert not missing, f"{where} lacks the declared settings {missing}"
    for each in SETTINGS:
        spec = inputs[each.name]
        assert (each.name, spec.type) == (each.name, KFP_TYPES[each.type]), where
        assert (each.name, spec.default) == (each.name, each.default), where
        assert type(spec.default) is each.type, f"{where}: {each.name}'s default's type"
        assert spec.optional, f"{where}: {each.name} must have a default"


def check_docs(inputs: dict[str, Any], where: str) -> None:
    """Each declared setting's Args line in the docstring (which KFP keeps as the input's
    description) says exactly the declared help."""
    differing = {
        each.name: one_line(inputs[each.name].description)
        for each in SETTINGS
        if one_line(inputs[each.name].description) != each.help
    }
    assert not differing, f"{where}'s docstring differs from rollout.settings' help: {differing}"


@pytest.fixture(scope="module")
def training() -> Any:
    return build_training_pipeline(Target("kubeflow"))


def test_each_declared_default_has_its_declared_type_and_names_are_unique() -> None:
    assert len(set(SETTING_NAMES)) == len(SETTINGS)
    flags = [flag for each in SETTINGS for flag in each.flags]
    assert len(set(flags)) == len(flags)
    assert all(isinstance(each.default, each.type) for each in SETTINGS)
    assert setting("canary_steps").default == "10,50"
    with pytest.raises(KeyError, match="'canary_step' is no serving or rollout setting"):
        setting("canary_step")
    with pytest.raises(TypeError, match="setting x: default '1' is not <class 'float'>"):
        Setting("x", float, "1", "a typo")


def test_deploy_declares_exactly_the_settings_with_their_types_and_defaults() -> None:
    inputs = deploy.component_spec.inputs
    check_inputs(inputs, "deploy")
    extra = set(inputs) - set(SETTING_NAMES) - DEPLOY_OWN_INPUTS
    assert not extra, f"deploy inputs {sorted(extra)}: declare them in rollout.settings"
    assert set(inputs) >= DEPLOY_OWN_INPUTS


def test_deploy_documents_each_setting_as_declared() -> None:
    check_docs(deploy.component_spec.inputs, "deploy")


def test_the_training_pipeline_declares_the_settings_and_documents_them(training: Any) -> None:
    check_inputs(training.component_spec.inputs, "the training pipeline")
    check_docs(training.component_spec.inputs, "the training pipeline")


def test_the_compiled_pipeline_types_the_settings_as_declared(training: Any) -> None:
    # What the compiled YAML holds: the IR's parameter types, which saved runs are checked against.
    ir_types = {
        str: pipeline_spec_pb2.ParameterType.STRING,
        float: pipeline_spec_pb2.ParameterType.NUMBER_DOUBLE,
        bool: pipeline_spec_pb2.ParameterType.BOOLEAN,
        list: pipeline_spec_pb2.ParameterType.LIST,
        dict: pipeline_spec_pb2.ParameterType.STRUCT,
    }
    parameters = training.pipeline_spec.root.input_definitions.parameters
    for each in SETTINGS:
        assert parameters[each.name].parameter_type == ir_types[each.type], each.name
        assert parameters[each.name].is_optional, each.name


def root_source(spec: Any, component: str, parameter: str) -> str | None:
    """The pipeline parameter a component's input comes from, followed up through the DAGs
    (a condition's) that call the component; None when it comes from a task's output, or
    from no binding at all (a nested pipeline's default)."""
    if component == "root":
        return parameter
    callers = [("root", spec.root), *spec.components.items()]
    for name, caller in callers:
        for task in caller.dag.tasks.values():
            if task.component_ref.name == component:
                bindings = task.inputs.parameters  # a proto map: [] would add the key
                if parameter not in bindings:
                    return None
                binding = bindings[parameter]
                if binding.WhichOneof("kind") != "component_input_parameter":
                    return None
                return root_source(spec, name, binding.component_input_parameter)
    raise AssertionError(f"no task calls {component}")


def wiring(spec: Any, called: str) -> dict[str, str | None]:
    """Each input of the one task calling component ``called``: the pipeline parameter it
    is wired to."""
    callers = [("root", spec.root), *spec.components.items()]
    found = [
        (name, task)
        for name, caller in callers
        for task in caller.dag.tasks.values()
        if task.component_ref.name == called
    ]
    assert len(found) == 1, f"{len(found)} tasks call {called}"
    name, task = found[0]
    return {
        parameter: root_source(spec, name, binding.component_input_parameter)
        if binding.WhichOneof("kind") == "component_input_parameter"
        else None
        for parameter, binding in task.inputs.parameters.items()
    }


def test_the_pipeline_passes_each_setting_to_deploy_from_its_parameter_of_that_name(
    training: Any,
) -> None:
    wired = wiring(training.pipeline_spec, "comp-deploy")
    mismatched = {name: wired.get(name) for name in SETTING_NAMES if wired.get(name) != name}
    assert not mismatched, (
        f"deploy's settings not wired from the same-named parameter: {mismatched}"
    )
    from_parameters = {name for name, source in wired.items() if source is not None}
    assert from_parameters == set(SETTING_NAMES) | PIPELINE_TO_DEPLOY


def test_the_monitoring_pipeline_hands_its_settings_on_as_declared() -> None:
    # It takes a few of the settings, for a retraining: the same types and defaults, passed
    # on to the training pipeline under the same names.
    monitoring = build_monitoring_pipeline(Target("kubeflow"))
    inputs = monitoring.component_spec.inputs
    taken = [each for each in SETTINGS if each.name in inputs]
    assert {each.name for each in taken} >= {"namespace", "rollout", "canary_steps"}
    for each in taken:
        assert inputs[each.name].type == KFP_TYPES[each.type], each.name
        assert inputs[each.name].default == each.default, each.name
    wired = wiring(monitoring.pipeline_spec, f"comp-{PIPELINE_NAME}")
    assert {each.name: wired[each.name] for each in taken} == {e.name: e.name for e in taken}


def test_settings_are_read_by_name_and_default_to_the_declaration() -> None:
    settings = RolloutSettings.from_parameters(
        {"canary_steps": "5,20", "prometheus_url": "http://p:9090", "serving_cpu": "2"}
    )
    assert settings.plan.steps == (5, 20) and settings.prometheus_url == "http://p:9090"
    assert settings.plan.interval_s == setting("canary_interval_s").default
    assert settings.policy == DEFAULT_POLICY
    # The declared defaults are the plan's own.
    assert RolloutSettings.from_parameters({}).plan == RolloutPlan()
    unjudged = RolloutSettings.from_parameters({"canary_policy": {"analysis": "none"}})
    assert unjudged.policy == CanaryPolicy(analysis="none")


def test_a_name_that_is_no_setting_is_refused() -> None:
    with pytest.raises(ConveyorError) as raised:
        RolloutSettings.from_parameters({"canary_step": "5,20", "model_name": "m"})
    assert str(raised.value).startswith("canary_step, model_name: no such rollout setting")


def test_deploy_passes_its_settings_on_by_name(tmp_path: Path) -> None:
    manifest = artifact(Artifact, tmp_path, "manifest")
    decision = deploy.python_func(
        model_name="m", model_version="1", storage_uri="gs://b/m", run_id="r",
        manifest=manifest, report=artifact(Markdown, tmp_path, "report"),
        rollout_metrics=artifact(Metrics, tmp_path, "metrics"), rollout=False,
        namespace="ml", serving_cpu="3", canary_steps="5,30", canary_interval_s=10.0,
        rollout_deadline_s=900.0, canary_policy={"analysis": "none"},
    )  # fmt: skip
    assert decision == "skipped"
    rendered = yaml.safe_load(Path(manifest.path).read_text())
    assert rendered["metadata"]["namespace"] == "ml"
    assert rendered["spec"]["predictor"]["canaryTrafficPercent"] == 5
    assert rendered["spec"]["predictor"]["model"]["resources"]["limits"]["cpu"] == "3"
    with pytest.raises(
        SystemExit,
        match=r"deploy: canary_interval_s \(--interval\) must be a positive number of seconds, not -1.0",
    ):
        deploy.python_func(
            model_name="m", model_version="1", storage_uri="gs://b/m", run_id="r",
            manifest=manifest, report=artifact(Markdown, tmp_path, "report"),
            rollout_metrics=artifact(Metrics, tmp_path, "metrics"), rollout=False,
            canary_interval_s=-1.0,
        )  # fmt: skip


def commands() -> dict[str, argparse.ArgumentParser]:
    """``rollout`` and ``judge``, as ``conveyor`` adds them."""
    parser = argparse.ArgumentParser(prog="conveyor")
    subparsers = parser.add_subparsers(dest="command")
    rollout_cli.add_commands(subparsers)
    return dict(subparsers.choices)


def visible(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        action
        for action in parser._actions
        if action.help != argparse.SUPPRESS and not isinstance(action, argparse._HelpAction)
    ]


def test_the_rollout_flags_come_from_the_declaration() -> None:
    actions = {action.dest: action for action in visible(commands()["rollout"])}
    for each in SETTINGS:
        if not each.flags:
            assert each.name not in actions
            continue
        action = actions[each.name]
        assert tuple(action.option_strings) == each.flags
        if each.type is dict:  # a YAML file holding it: the help speaks of the file
            assert action.type is Path and action.default is None
            assert action.help == rollout_cli._FILE_HELP[each.name]
            assert action.help.startswith("YAML file") and "without it" in action.help
        else:
            assert (action.type, action.default, action.help) == (
                each.type, each.default, each.help
            )  # fmt: skip
    judge_policy = next(a for a in visible(commands()["judge"]) if a.dest == "canary_policy")
    assert judge_policy.option_strings == ["--policy"]


def test_the_settings_flags_keep_their_names_and_set_what_they_did() -> None:
    args = commands()["rollout"].parse_args(
        ["--namespace", "ml", "--runtime", "rt", "--cpu", "2", "--memory", "4Gi",
         "--service-account", "sa", "--steps", "5,20", "--interval", "30",
         "--ready-timeout", "90", "--deadline", "1200", "--prometheus", "http://p:9090"]
    )  # fmt: skip
    given = rollout_cli._settings_given(args)
    assert given == {
        "namespace": "ml", "serving_runtime": "rt", "serving_cpu": "2", "serving_memory": "4Gi",
        "service_account": "sa", "canary_steps": "5,20", "canary_interval_s": 30.0,
        "ready_timeout_s": 90.0, "rollout_deadline_s": 1200.0,
        "prometheus_url": "http://p:9090", "canary_policy": {},
    }  # fmt: skip
    settings = RolloutSettings.from_parameters(given)
    assert settings.plan == RolloutPlan((5, 20), 30.0, 90.0, 1200.0)


def test_the_policy_flag_reads_a_yaml_file(tmp_path: Path) -> None:
    (tmp_path / "canary.yaml").write_text("analysis: none\n")
    args = commands()["rollout"].parse_args(["--policy", str(tmp_path / "canary.yaml")])
    assert rollout_cli._settings_given(args)["canary_policy"] == {"analysis": "none"}


def test_every_rollout_and_judge_flag_has_help_without_a_hand_written_default() -> None:
    for name, parser in commands().items():
        for action in visible(parser):
            assert action.help and action.help.strip(), f"{name} {action.option_strings}"
            # The help formatter adds each default; one written by hand would repeat it.
            assert not re.search(r"\(default|default:|default \d", action.help), (
                f"{name} {action.option_strings}: {action.help}"
            )


@pytest.mark.parametrize(("flag", "replaced_by"), [("--window", "analysis_window")])
def test_the_removed_flags_stay_hidden_and_refused(flag: str, replaced_by: str) -> None:
    parser = commands()["rollout"]
    assert flag not in parser.format_help()
    args = parser.parse_args([flag, "5m"])
    with pytest.raises(ConveyorError, match=f"{flag} was removed"):
        rollout_cli._refuse_removed_flags(args)
    assert getattr(args, f"removed_{replaced_by}") == "5m"


def readme_settings_table() -> list[list[str]]:
    """The rows of the README's settings table, cells stripped."""
    lines = (ROOT / "README.md").read_text().splitlines()
    header = "| parameter | default | `conveyor rollout` | what |"
    assert lines.count(header) == 1, "the README has one settings table"
    start = lines.index(header) + 2  # after the header and its rule
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return rows


def test_the_readme_table_lists_exactly_the_declared_settings() -> None:
    rows = readme_settings_table()
    names = [row[0].strip("`") for row in rows]
    assert names == list(SETTING_NAMES), "the README's settings table, in declared order"
    for (_, default, flags, what), each in zip(rows, SETTINGS, strict=True):
        # Defaults as JSON (what a config file or --param writes, and KFP shows).
        value = json.loads(default.strip("`"))
        assert (each.name, value, type(value)) == (each.name, each.default, each.type)
        listed = () if flags == "-" else tuple(flag.strip("`") for flag in flags.split(", "))
        assert (each.name, listed) == (each.name, each.flags)
        assert (each.name, what) == (each.name, each.help)


def test_deploy_setting_problems_read_the_settings_by_name(training: Any) -> None:
    from conveyor.pipelines.definitions.parameters import deploy_setting_problems

    inputs = training.component_spec.inputs

    def problems(values: dict[str, Any]) -> list[str]:
        return deploy_setting_problems(values, inputs)

    assert problems({"rollout": False, "canary_steps": "5,30"}) == []
    assert problems({"rollout": False, "canary_steps": "50,30"}) == [
        "canary steps [50, 30] must increase"
    ]
    assert "rollout_deadline_s 100" in problems({"rollout": False, "rollout_deadline_s": 100.0})[0]
    assert "no Prometheus URL to judge the canary with" in problems({"rollout": True})[0]
    assert problems({"rollout": True, "canary_policy": {"analysis": "none"}}) == []
