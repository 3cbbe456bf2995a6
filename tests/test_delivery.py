"""Delivery: parameter files checked against the pipeline, and cron for Kubeflow's scheduler."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.components.core.errors import ConveyorError
from conveyor.pipelines.cli import main
from conveyor.pipelines.definitions.parameters import load_parameters, parameter_problems
from conveyor.pipelines.definitions.targets import Target
from conveyor.pipelines.definitions.training import build_training_pipeline
from conveyor.pipelines.delivery.cron import kubeflow_cron, vertex_cron
from tests.conftest import ROOT

INPUTS = build_training_pipeline(Target("kubeflow")).component_spec.inputs


@pytest.mark.parametrize(
    ("standard", "kubeflow"),
    [
        ("0 6 * * 1-5", "0 0 6 * * 1-5"),
        ("*/15 * * * *", "0 */15 * * * *"),
        ("30 2 * * 7", "0 30 2 * * 0"),  # Sunday is 7 or 0 in cron; robfig knows 0 only
        ("0 6 * * mon-fri", "0 0 6 * * MON-FRI"),
        ("0 0 1,15 jan,jul *", "0 0 0 1,15 JAN,JUL *"),
        ("@daily", "0 0 0 * * *"),
        ("0 9 * * 5-7", "0 0 9 * * 5-6,0"),  # a range to Sunday-as-7 is not 5-0
    ],
)
def test_standard_cron_becomes_six_fields(standard: str, kubeflow: str) -> None:
    assert kubeflow_cron(standard) == kubeflow


@pytest.mark.parametrize(
    ("standard", "timezone", "vertex"),
    [
        ("0 6 * * mon-fri", "Europe/Paris", "TZ=Europe/Paris 0 6 * * 1-5"),
        ("0 0 1,15 jan,jul 7", "UTC", "TZ=UTC 0 0 1,15 1,7 0"),
        ("*/20 8-18 * * 1-7/2", "America/New_York", "TZ=America/New_York */20 8-18 * * 1-6/2,0"),
        ("@weekly", "Asia/Kolkata", "TZ=Asia/Kolkata 0 0 * * 0"),
    ],
)
def test_standard_cron_gets_a_time_zone_and_numbers_for_vertex(
    standard: str, timezone: str, vertex: str
) -> None:
    assert vertex_cron(standard, timezone) == vertex


def test_a_time_zone_vertex_cannot_read_is_one_line() -> None:
    with pytest.raises(ConveyorError, match=r"^--timezone 'CET\+1' is not an IANA time zone"):
        vertex_cron("0 6 * * *", "CET+1")


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("0 6 * *", "has 4 fields; write the standard 5"),
        ("0 0 6 * * *", "has 6 fields; write the standard 5"),
        ("0 25 * * *", "hour '25' is outside 0-23"),
        ("0 6 L * *", "day of month 'L' is neither a number nor a name"),
        ("0 6 ? * 1#2", r"day of month '\?' is not a number, range, list or step"),
        ("*/0 * * * *", "minute step 0 never advances"),
        ("0 6 * * FUNDAY", "day of week 'FUNDAY' is neither a number nor a name"),
        ("0 6 * * 8", "day of week '8' is outside 0-7"),
    ],
)
def test_cron_that_cannot_be_converted_is_one_clear_line(expression: str, message: str) -> None:
    with pytest.raises(ConveyorError, match=message) as error:
        kubeflow_cron(expression)
    assert str(error.value).startswith(f"cron {expression!r}")


def test_each_problem_of_a_parameter_file_is_named() -> None:
    values = {
        "seed": "42",
        "rollout": 1,
        "test_size": True,
        "learning_rate": 0.1,
        "metric_floors": [],
    }
    problems = parameter_problems(values, INPUTS, "configs/x.yaml")
    assert problems == [
        "configs/x.yaml: 'learning_rate' is not a parameter of the pipeline",
        "configs/x.yaml: 'model_store_uri' is required (text)",
        "configs/x.yaml: 'test_size' must be a number, not True",
        "configs/x.yaml: 'seed' must be a whole number, not '42'",
        "configs/x.yaml: 'metric_floors' must be a mapping, not []",
        "configs/x.yaml: 'rollout' must be true or false, not 1",
    ]
    assert parameter_problems({"model_store_uri": "gs://b/m", "test_size": 1}, INPUTS, "f") == []


def test_a_parameter_file_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    (tmp_path / "broken.yaml").write_text("a: [1,\n")
    with pytest.raises(ConveyorError, match="list.yaml: expected a mapping of parameter names"):
        load_parameters(tmp_path / "list.yaml")
    with pytest.raises(ConveyorError, match=r"broken.yaml: not valid YAML at line \d"):
        load_parameters(tmp_path / "broken.yaml")


def test_check_passes_the_shipped_configs(capsys: pytest.CaptureFixture) -> None:
    assert main(["check", "--configs", str(ROOT / "configs")]) == 0
    printed = capsys.readouterr().out
    assert "training.kubeflow.yaml, training.vertex.yaml" in printed
    assert "configs/dev.yaml: ok" in printed and "configs/prod.yaml: ok" in printed
    assert "configs/monitoring/prod.yaml: ok" in printed


def test_a_removed_setting_given_on_the_command_line_says_what_replaced_it(
    capsys: pytest.CaptureFixture,
) -> None:
    assert main(["run", "--param", "min_canary_requests=50"]) == 2
    assert capsys.readouterr().err.strip() == (
        "conveyor run: --param 'min_canary_requests': was removed: the minimum sample size now "
        "follows from canary_policy's margins and error rates"
    )


def test_check_names_every_problem_and_fails(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    judged = "model_store_uri: gs://b/m\nprometheus_url: http://prometheus:9090\n"
    (tmp_path / "good.yaml").write_text(judged)
    (tmp_path / "typo.yaml").write_text(judged + "estimater: random_forest\n")
    (tmp_path / "steps.yaml").write_text(judged + "canary_steps: '50,10'\n")
    (tmp_path / "old.yaml").write_text(judged + "on_no_data: pass\n")
    (tmp_path / "policy.yaml").write_text(judged + "canary_policy: {metrics: [{name: x}]}\n")
    (tmp_path / "unjudged.yaml").write_text("model_store_uri: gs://b/m\n")
    (tmp_path / "unanalysed.yaml").write_text(
        "model_store_uri: gs://b/m\ncanary_policy: {analysis: none}\n"
    )
    assert main(["check", "--configs", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert f"{tmp_path / 'good.yaml'}: ok" in captured.out
    assert f"{tmp_path / 'unanalysed.yaml'}: ok" in captured.out
    assert captured.err.splitlines() == [
        f"{tmp_path / 'old.yaml'}: 'on_no_data' was removed: too few requests are now an "
        "inconclusive result, which waits another interval up to canary_policy's "
        "inconclusive_limit and then fails, never passes",
        f"{tmp_path / 'policy.yaml'}: canary_policy.metrics[0] (x).kind, queries: a new metric "
        "needs both",
        f"{tmp_path / 'steps.yaml'}: canary steps [50, 10] must increase",
        f"{tmp_path / 'typo.yaml'}: 'estimater' is not a parameter of the pipeline",
        f"{tmp_path / 'unjudged.yaml'}: no Prometheus URL to judge the canary with "
        "(prometheus_url, --prometheus): give one, or set analysis: none in the canary policy "
        "to roll out unjudged",
    ]
