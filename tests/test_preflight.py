"""What deploy would refuse, found before a run: every problem at once, for both pipelines."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.components.core.errors import ConveyorError
from conveyor.components.core.rollout.preflight import deploy_problems
from conveyor.components.core.rollout.runner import RolloutPlan
from conveyor.pipelines.cli import main


def test_every_problem_of_the_settings_is_named_at_once() -> None:
    problems = deploy_problems(
        "fraud",
        {
            "canary_interval_s": -1.0,
            "ready_timeout_s": float("nan"),
            "namespace": "Bad_NS",
            "canary_policy": {"bogus": 1},
            "serving_memory": "lots",
            "payload_log_exclude": ["conveyor.id"],
        },
    )
    assert problems[:3] == [
        "canary_interval_s (--interval) must be a positive number of seconds, not -1.0",
        "ready_timeout_s (--ready-timeout) must be a positive number of seconds, not nan",
        "canary_policy: unknown setting 'bogus'; known: analysis, consecutive_error_limit, "
        "false_promotion_rate, false_rollback_rate, inconclusive_limit, metrics",
    ]
    assert "conveyor.id" in problems[3]  # the log's own column cannot be excluded
    assert len(problems) == 4  # the manifest is not rendered from a spec that was refused
    fixed = deploy_problems("fraud", {"namespace": "Bad_NS", "serving_memory": "lots"})
    assert fixed == [
        "InferenceService metadata.namespace: 'Bad_NS' is not a valid namespace name",
        "InferenceService spec.predictor.model.resources.limits.memory: 'lots' is not a "
        "Kubernetes quantity (such as 500m, 1, 2Gi, 512Mi)",
        "InferenceService spec.predictor.model.resources.requests.memory: 'lots' is not a "
        "Kubernetes quantity (such as 500m, 1, 2Gi, 512Mi)",
        "no Prometheus URL to judge the canary with (prometheus_url, --prometheus): give one, "
        "or set analysis: none in the canary policy to roll out unjudged",
    ]


def test_a_bad_plan_and_no_prometheus_are_named_together() -> None:
    assert deploy_problems("fraud", {"canary_steps": "50,10", "rollout": True}) == [
        "canary steps [50, 10] must increase",
        "no Prometheus URL to judge the canary with (prometheus_url, --prometheus): give one, "
        "or set analysis: none in the canary policy to roll out unjudged",
    ]
    assert deploy_problems("fraud", {"canary_steps": "50,10", "rollout": False}) == [
        "canary steps [50, 10] must increase"
    ]


@pytest.mark.parametrize("seconds", [float("nan"), float("inf"), 0.0, -5.0])
def test_a_plan_refuses_seconds_that_are_not_a_positive_number(seconds: float) -> None:
    with pytest.raises(ConveyorError, match="rollout_deadline_s .* must be a positive number"):
        RolloutPlan(deadline_s=seconds)


def test_check_reads_a_monitoring_configs_deploy_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # The monitoring pipeline takes some of deploy's settings: a retraining's deploy reads them.
    (tmp_path / "monitoring").mkdir()
    (tmp_path / "prod.yaml").write_text(
        "model_store_uri: gs://b/m\nprometheus_url: http://p:9090\n"
    )
    (tmp_path / "monitoring" / "prod.yaml").write_text(
        "inputs_uri: gs://b/log\nmodel_store_uri: gs://b/m\nprometheus_url: http://p:9090\n"
        "canary_steps: '90,10'\nnamespace: Bad_NS\ncanary_policy: {bogus: 1}\n"
    )
    assert main(["check", "--configs", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    where = tmp_path / "monitoring" / "prod.yaml"
    assert f"{where}: 3 problem(s)" in out.splitlines()
    assert err.splitlines() == [
        f"{where}: canary steps [90, 10] must increase",
        f"{where}: canary_policy: unknown setting 'bogus'; known: analysis, "
        "consecutive_error_limit, false_promotion_rate, false_rollback_rate, "
        "inconclusive_limit, metrics",
        f"{where}: InferenceService metadata.namespace: 'Bad_NS' is not a valid namespace name",
    ]


def test_a_local_run_with_bad_settings_leaves_no_run_folder(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    assert main(["run", "--runs-dir", str(runs), "--param", "serving_memory=lots"]) == 2
    assert not runs.exists() or list(runs.iterdir()) == []


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"canary_steps": 5}, "canary_steps: expected text, not 5"),
        ({"namespace": None}, "namespace: expected text, not None"),
        ({"canary_interval_s": "60"}, "canary_interval_s: expected a number, not '60'"),
        (
            {"payload_log_exclude": "a,b"},
            "payload_log_exclude: expected a list of column names, not 'a,b'",
        ),
        ({"serving_cpu": 2}, "serving_cpu: expected text, not 2"),
        ({"rollout": "yes"}, "rollout: expected true or false, not 'yes'"),
        ({"canary_policy": [1]}, "canary_policy: expected a mapping, not [1]"),
    ],
)
def test_a_value_of_the_wrong_type_is_one_line_and_nothing_is_judged_from_it(
    values: dict, expected: str
) -> None:
    # With a Prometheus, so that only the wrong value itself can be a problem.
    assert deploy_problems("fraud", {"prometheus_url": "http://p:9090", **values}) == [expected]


def test_numbers_past_any_float_are_problems_not_tracebacks() -> None:
    huge = 10**400
    assert deploy_problems("fraud", {"canary_interval_s": huge, "prometheus_url": "http://p"}) == [
        f"canary_interval_s (--interval) must be a positive number of seconds, not {huge}"
    ]
    (problem,) = deploy_problems(
        "fraud", {"canary_policy": {"inconclusive_limit": huge}, "prometheus_url": "http://p"}
    )
    assert problem.startswith("canary_policy.inconclusive_limit: must be 0 to 10000 looks")


def test_a_prometheus_url_deploy_would_refuse_is_named() -> None:
    assert deploy_problems("fraud", {"prometheus_url": "prometheus:9090"}) == [
        "Prometheus URL 'prometheus:9090' must start with http:// or https://"
    ]


def test_check_leaves_a_mistyped_setting_to_the_type_problem_and_spares_a_report_only_config(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "monitoring").mkdir()
    # rollout: "false" is text: named once, and no Prometheus demanded of a rollout it may not be.
    (tmp_path / "prod.yaml").write_text("model_store_uri: gs://b/m\nrollout: 'false'\n")
    # A monitoring run that never retrains deploys nothing: no Prometheus needed.
    (tmp_path / "monitoring" / "report.yaml").write_text(
        "inputs_uri: gs://b/log\nmodel_store_uri: gs://b/m\nretrain: false\n"
    )
    assert main(["check", "--configs", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert f"{tmp_path / 'monitoring' / 'report.yaml'}: ok" in out.splitlines()
    assert err.splitlines() == [
        f"{tmp_path / 'prod.yaml'}: 'rollout' must be true or false, not 'false'"
    ]
