"""``conveyor run --replay``: a recorded run trained again gives the same metrics, in a
registry of its own, and refuses with one line when its data has changed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conveyor.pipelines.cli import main
from tests.churn import churn_table

pytestmark = pytest.mark.slow

NAME = "replayed"


def summary_of(printed: str) -> dict:
    (path,) = [line for line in printed.splitlines() if line.endswith("summary.json")]
    return json.loads(Path(path).read_text())


def test_a_replay_reproduces_the_metrics_and_refuses_changed_data(
    tmp_path: Path, capsys: pytest.CaptureFixture, mlflow_server: str
) -> None:
    data = tmp_path / "churn.csv"
    churn_table(400, seed=5).to_csv(data, index=False)
    runs = tmp_path / "runs"
    server = f"mlflow_tracking_uri={mlflow_server}"
    code = main(["run", "--data", str(data), "--label", "churned", "--model", NAME,
                 "--estimator", "random_forest", "--param", "seed=7", "--param", "test_size=0.3",
                 "--runs-dir", str(runs), "--param", server])  # fmt: skip
    original = summary_of(capsys.readouterr().out)
    assert code == 0 and original["model_version"] == 1

    # The run to replay, as the audit trail names it: its pipeline run.
    assert main(["audit", "--model", NAME, "--mlflow-tracking-uri", mlflow_server, "--json"]) == 0
    pipeline_run = json.loads(capsys.readouterr().out.splitlines()[0])["pipeline_run"]
    replay = ["run", "--replay", pipeline_run, "--runs-dir", str(runs), "--param", server]
    assert main(replay) == 0
    printed = capsys.readouterr().out
    again = summary_of(printed)
    assert again["metrics"].keys() == original["metrics"].keys()
    assert all(abs(again["metrics"][k] - v) <= 1e-9 for k, v in original["metrics"].items())
    assert f"all {len(original['metrics'])} evaluation metrics equal the recorded ones" in printed
    # In a registry of its own: the original has its one version still.
    assert [v.version for v in MlflowClient(mlflow_server).search_model_versions(
        f"name = '{NAME}'")] == ["1"]  # fmt: skip
    assert Path(again["storage_uri"]).is_relative_to(runs / "replays")

    # One changed cell, and the data is no longer what the run was trained on.
    table = churn_table(400, seed=5)
    table.loc[3, "monthly_charges"] = 12345.0
    table.to_csv(data, index=False)
    replays_before = sorted((runs / "replays").iterdir())
    assert main(replay) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"conveyor run: replay of run {original_run(mlflow_server)} refused: ")
    assert "has changed since" in error and len(error.splitlines()) == 1
    assert sorted((runs / "replays").iterdir()) == replays_before  # nothing run, nothing left

    # Arguments a later Conveyor no longer takes: one line, not a traceback.
    client = MlflowClient(mlflow_server)
    recorded = json.loads(Path(client.download_artifacts(original_run(mlflow_server),
                                                   "replay/arguments.json", str(tmp_path))).read_text())  # fmt: skip
    client.log_text(original_run(mlflow_server), json.dumps({**recorded, "sample_rate": 0.5}),
                    "replay/arguments.json")  # fmt: skip
    assert main(replay) == 2
    assert "parameters this Conveyor's pipeline no longer takes (sample_rate)" in (
        capsys.readouterr().err
    )

    assert main([*replay[:2], "no-such-run", *replay[3:]]) == 2
    assert "no training run in MLflow" in capsys.readouterr().err
    assert main([*replay, "--estimator", "logistic_regression"]) == 2
    assert "drop --estimator" in capsys.readouterr().err


def original_run(server: str) -> str:
    (version,) = MlflowClient(server).search_model_versions(f"name = '{NAME}'")
    return version.run_id
