"""conveyor submit / schedule --target kubeflow, against the KFP v2beta1 API double."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.components.images import VERSION
from conveyor.pipelines.cli import main
from tests.conftest import ROOT
from tests.doubles.kfp_api import KfpApiDouble

DEV = str(ROOT / "configs" / "dev.yaml")


@pytest.fixture
def kfp_api() -> Iterator[KfpApiDouble]:
    with KfpApiDouble() as double:
        yield double


def conveyor(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_submit_uploads_once_then_starts_runs(kfp_api: KfpApiDouble, capsys) -> None:
    code, out, err = conveyor(
        capsys, "submit", "--target", "kubeflow", "--host", kfp_api.url, "--params", DEV,
        "--experiment", "fraud-dev", "--run-name", "first",
    )  # fmt: skip
    assert code == 0, err
    (run,) = kfp_api.runs.values()
    last = out.strip().splitlines()[-1]  # kfp.Client prints its own links before
    assert last.startswith(f"run {run['run_id']} of conveyor-training version conveyor-training-")
    assert last.endswith(f"/#/runs/details/{run['run_id']}")
    assert run["display_name"] == "first"
    assert run["runtime_config"]["parameters"]["model_store_uri"] == "gs://example-ml-dev/models"
    assert run["runtime_config"]["parameters"]["canary_interval_s"] == 30
    (pipeline,) = kfp_api.pipelines.values()
    assert pipeline["display_name"] == "conveyor-training"
    (experiment,) = kfp_api.experiments.values()
    assert experiment["display_name"] == "fraud-dev"
    versions = len(kfp_api.versions)
    code, _, err = conveyor(
        capsys, "submit", "--target", "kubeflow", "--host", kfp_api.url, "--params", DEV
    )
    assert code == 0, err
    assert (
        len(kfp_api.runs) == 2 and len(kfp_api.versions) == versions
    )  # same package, same version


def test_schedule_sends_six_field_cron(kfp_api: KfpApiDouble, capsys) -> None:
    code, out, err = conveyor(
        capsys, "schedule", "--target", "kubeflow", "--host", kfp_api.url, "--params", DEV,
        "--cron", "0 6 * * 1-5", "--max-concurrent", "2",
    )  # fmt: skip
    assert code == 0, err
    (recurring,) = kfp_api.recurring_runs.values()
    assert recurring["trigger"]["cron_schedule"]["cron"] == "0 0 6 * * 1-5"
    assert int(recurring["max_concurrency"]) == 2
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"recurring run {recurring['recurring_run_id']} of conveyor-training")


def test_dry_run_prints_what_would_be_sent_and_contacts_nothing(
    kfp_api: KfpApiDouble, capsys
) -> None:
    import json

    code, out, _ = conveyor(
        capsys, "schedule", "--target", "kubeflow", "--host", kfp_api.url, "--params", DEV,
        "--cron", "@daily", "--dry-run",
    )  # fmt: skip
    assert code == 0
    sent = json.loads(out)
    assert sent["cron"] == "0 0 0 * * *" and sent["timezone"] == "UTC"
    assert sent["parameters"]["namespace"] == "ml-dev"
    assert sent["version_name"].startswith(f"conveyor-training-{VERSION}-")
    assert kfp_api.requests == []


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--cron", "0 6 * *"), "conveyor schedule: cron '0 6 * *' has 4 fields"),
        (
            ("--cron", "0 6 * * *", "--timezone", "Europe/Paris"),
            "Kubeflow's scheduler runs cron in UTC",
        ),
    ],
)
def test_bad_knobs_stop_before_anything_is_sent(
    kfp_api: KfpApiDouble, capsys, extra, message
) -> None:
    code, _, err = conveyor(
        capsys, "schedule", "--target", "kubeflow", "--host", kfp_api.url, "--params", DEV, *extra
    )
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert kfp_api.requests == []


def test_a_bad_parameter_file_stops_before_anything_is_sent(
    kfp_api: KfpApiDouble, capsys, tmp_path: Path
) -> None:
    (tmp_path / "p.yaml").write_text("model_store_uri: gs://b/m\nseed: many\nestimater: x\n")
    code, _, err = conveyor(
        capsys,
        "submit",
        "--target",
        "kubeflow",
        "--host",
        kfp_api.url,
        "--params",
        str(tmp_path / "p.yaml"),
    )
    assert code == 2
    assert err.splitlines() == [
        f"conveyor submit: {tmp_path / 'p.yaml'}: 'estimater' is not a parameter of the pipeline",
        f"conveyor submit: {tmp_path / 'p.yaml'}: 'seed' must be a whole number, not 'many'",
        # Deploy's settings are checked in the same pass, not once the parameters are fixed.
        f"conveyor submit: {tmp_path / 'p.yaml'}: no Prometheus URL to judge the canary with "
        "(prometheus_url, --prometheus): give one, or set analysis: none in the canary policy "
        "to roll out unjudged",
    ]
    assert kfp_api.requests == []


def test_refused_credentials_and_permissions_are_one_line(capsys, monkeypatch) -> None:
    with KfpApiDouble(token="right") as guarded:
        monkeypatch.setenv("KFP_TOKEN", "wrong")
        code, _, err = conveyor(
            capsys, "submit", "--target", "kubeflow", "--host", guarded.url, "--params", DEV
        )
        assert code == 2 and len(err.strip().splitlines()) == 1
        assert "refused the credentials (401)" in err and "set KFP_TOKEN to a valid token" in err
        monkeypatch.setenv("KFP_TOKEN", "right")
        guarded.deny("POST", "/apis/v2beta1/runs")
        code, _, err = conveyor(
            capsys, "submit", "--target", "kubeflow", "--host", guarded.url, "--params", DEV
        )
        assert code == 2 and err.startswith(
            "conveyor submit: permission denied (403): cannot start the run"
        )
        assert guarded.runs == {}


def test_an_unreachable_host_is_one_line(capsys) -> None:
    code, _, err = conveyor(
        capsys, "submit", "--target", "kubeflow", "--host", "http://127.0.0.1:9", "--params", DEV
    )
    assert code == 2
    assert err.startswith("conveyor submit: the KFP API at http://127.0.0.1:9 is unreachable")
    assert len(err.strip().splitlines()) == 1


def test_settings_deploy_would_refuse_stop_the_submission(
    kfp_api: KfpApiDouble, capsys, tmp_path: Path
) -> None:
    params = tmp_path / "memory.yaml"
    params.write_text("model_store_uri: gs://b/m\nserving_memory: 2 GB\n")
    code, _, err = conveyor(
        capsys, "submit", "--target", "kubeflow", "--host", kfp_api.url, "--params", str(params)
    )
    assert code == 2 and err.startswith(f"conveyor submit: {params}: ")
    assert "limits.memory: '2 GB' is not a Kubernetes quantity" in err
    assert kfp_api.requests == []
