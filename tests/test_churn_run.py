"""A realistic export, end to end: a churn table with an id, dates, free text, a boolean and
missing values trains, registers, serves and is monitored with no schema written by hand."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pandas as pd
import pytest
from mlflow import MlflowClient

from conveyor.components.core.serving.payload_log import read_log
from conveyor.components.core.training.registry import find_champion
from conveyor.components.core.training.trainer import read_model_card
from conveyor.pipelines.cli import main
from tests.churn import churn_table
from tests.conftest import predictors

pytestmark = pytest.mark.slow

NAME = "churn"


def run(capsys: pytest.CaptureFixture, *arguments: str) -> tuple[int, dict, str]:
    capsys.readouterr()
    code = main(list(arguments))
    printed = capsys.readouterr().out
    last = Path(printed.strip().splitlines()[-1].removeprefix("Artifacts: "))
    # run prints the summary's path last; monitor, its artifacts' folder in the run's folder
    summary = last if last.suffix == ".json" else last.parent.parent / "summary.json"
    return code, json.loads(summary.read_text()), printed


def test_a_churn_export_trains_serves_and_is_monitored_without_a_hand_written_schema(
    tmp_path: Path, capsys: pytest.CaptureFixture, mlflow_server: str
) -> None:
    churn_table(600, seed=11).to_csv(tmp_path / "churn.csv", index=False)
    runs = str(tmp_path / "runs")
    code, summary, printed = run(
        capsys, "run", "--data", str(tmp_path / "churn.csv"), "--label", "churned",
        "--model", NAME, "--runs-dir", runs, "--param", f"mlflow_tracking_uri={mlflow_server}",
    )  # fmt: skip
    assert code == 0 and summary["blessed"] and summary["model_version"] == 1, printed
    assert summary["metrics"]["roc_auc"] > 0.7
    assert [note.split(":")[0] for note in summary["notes"]] == ["customer_id", "support_notes"]
    assert "Note: support_notes: free text: left out" in printed
    card = read_model_card(Path(summary["storage_uri"]))
    assert {f.name: f.kind for f in card.features} == {
        "signup_date": "datetime", "last_contact": "datetime", "plan": "categorical",
        "tenure_months": "numeric", "monthly_charges": "numeric",
        "paperless_billing": "numeric",
    }  # fmt: skip
    assert card.id_columns == ["customer_id"] and card.format_version == 3

    # The champion answers requests that lack the columns it does not learn from, and its
    # payload log keeps the id for labels to join on.
    model_dir = Path(find_champion(MlflowClient(mlflow_server), NAME).tags["storage_uri"])
    requests = churn_table(300, seed=12).drop(columns=["churned", "support_notes"])
    log = tmp_path / "payloads"
    with predictors({"churn-00001": model_dir}, NAME, tmp_path, "--payload_log", str(log)) as urls:
        for start in range(0, len(requests), 50):
            batch = json.loads(requests.iloc[start : start + 50].to_json(orient="records"))
            answer = httpx.post(
                f"{urls['churn-00001']}/v1/models/{NAME}:predict", json={"instances": batch}
            )
            assert answer.status_code == 200, answer.text
    logged = read_log(str(log)).inputs()
    assert "customer_id" in logged.columns and "support_notes" not in logged.columns
    assert sorted(logged["customer_id"]) == sorted(requests["customer_id"])

    # Monitoring reads the champion's schema: the log passes validation without the free
    # text, and drift tests the numbers and categories only, listing the rest.
    code, summary, printed = run(
        capsys, "monitor", "--inputs", str(log), "--days", "2", "--model", NAME,
        "--no-retrain", "--runs-dir", runs, "--param", f"mlflow_tracking_uri={mlflow_server}",
    )  # fmt: skip
    assert code == 0 and summary["drifted"] is False, printed
    drift = json.loads((Path(summary["artifacts"]) / "judge-drift" / "summary").read_text())
    tested = {column["column"] for column in drift["columns"] if column["segment"] is None}
    assert tested == {"plan", "tenure_months", "monthly_charges", "paperless_billing"}
    assert [line.split(":")[0] for line in drift["skipped"]] == [
        "customer_id", "signup_date", "last_contact", "support_notes",
    ]  # fmt: skip

    # Each finding, and the decision not to retrain, is on the champion's audit trail.
    capsys.readouterr()
    assert main(["audit", "--model", NAME, "--version", "1", "--json",
                 "--mlflow-tracking-uri", mlflow_server]) == 0  # fmt: skip
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(e["kind"], e["decision"]) for e in events] == [
        ("validation", "passed"), ("blessing", "blessed"), ("shadow", "not judged"),
        ("registration", "champion"), ("drift", "not found"), ("drift", "not found"),
        ("quality", "not measured"), ("retraining", "not started"),
    ]  # fmt: skip
    assert {e["version"] for e in events[3:]} == {"1"}
    assert events[-1]["reason"].startswith("nothing to retrain: feature drift not found")


def test_a_table_too_small_to_judge_is_warned_about(
    tmp_path: Path, capsys: pytest.CaptureFixture, mlflow_server: str
) -> None:
    churn_table(60, seed=13).to_csv(tmp_path / "small.csv", index=False)
    code, summary, printed = run(
        capsys, "run", "--data", str(tmp_path / "small.csv"), "--label", "churned",
        "--model", "small-churn", "--runs-dir", str(tmp_path / "runs"),
        "--param", f"mlflow_tracking_uri={mlflow_server}",
    )  # fmt: skip
    assert code == 0, printed
    (warning,) = summary["warnings"]
    assert "12 evaluation rows" in warning and f"Warning: {warning}" in printed
    report = (Path(summary["artifacts"]) / "evaluate" / "report").read_text()
    assert "12 evaluation rows" in report
    assert pd.read_csv(tmp_path / "small.csv")["customer_id"].is_unique
