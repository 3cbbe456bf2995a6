"""Whole pipeline runs through kfp.local, driven by the ``conveyor run`` command as a user would."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from sklearn.model_selection import train_test_split

from conveyor.components.core.rollout.manifests import validate_inference_service
from conveyor.components.core.training.trainer import MODEL_SHA256_ENV
from conveyor.pipelines.cli import main
from tests.conftest import artifact, multiclass_table
from tests.doubles.kube_api import KubernetesApiDouble

pytestmark = pytest.mark.slow

SUMMARY_KEYS = {"metrics", "blessed", "reason", "model_name", "model_version", "manifest"}


def conveyor_run(capsys: pytest.CaptureFixture, runs: Path, *options: str) -> tuple[int, dict, str]:
    code = main(["run", "--runs-dir", str(runs), *options])
    printed = capsys.readouterr().out
    summary_path = Path(printed.strip().splitlines()[-1])
    return code, json.loads(summary_path.read_text()), printed


def registered_versions(runs: Path, name: str) -> list:
    if not (runs / "mlflow.db").exists():
        return []
    client = MlflowClient(f"sqlite:///{runs / 'mlflow.db'}")
    return client.search_model_versions(f"name = '{name}'")


def registry(runs: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{runs / 'mlflow.db'}")


def aliases(runs: Path, name: str) -> dict[str, str]:
    model = registry(runs).get_registered_model(name)
    return {alias: str(version) for alias, version in model.aliases.items()}


def test_default_run_then_champion_challenger(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    runs = tmp_path / "runs"
    code, first, printed = conveyor_run(capsys, runs)
    assert code == 0, printed
    assert set(first) >= SUMMARY_KEYS
    assert (
        first["blessed"] and first["model_name"] == "breast-cancer" and first["model_version"] == 1
    )
    assert first["metrics"]["roc_auc"] > 0.95 and "first model for this name" in first["reason"]
    manifest = yaml.safe_load(Path(first["manifest"]).read_text())
    validate_inference_service(manifest)
    assert manifest["spec"]["predictor"]["model"]["storageUri"] == first["storage_uri"]
    assert (Path(first["storage_uri"]) / "model.joblib").is_file()
    assert "InferenceService (validated against KServe's CRD)" in printed and re.search(
        r"ingest +ok", printed
    )
    assert first["deployment"] == "skipped" and "Deployed: not rolled out" in printed
    # No cluster, no rollout: register made the blessed model the champion, as the next
    # run's evaluation needs.
    assert aliases(runs, "breast-cancer") == {"champion": "1"}

    code, second, printed = conveyor_run(capsys, runs)
    assert code == 0, printed
    # Same data and seed: the challenger ties, and a tie keeps the champion.
    assert not second["blessed"] and second["model_version"] is None and second["manifest"] is None
    assert second["reason"].startswith("champion v1 stays: challenger roc_auc")
    assert "(+0.0000, +0.00%)" in second["reason"]
    assert second["steps"]["register"] == "skipped" and second["steps"]["deploy"] == "skipped"
    assert len(registered_versions(runs, "breast-cancer")) == 1


def test_a_local_run_rolls_out_to_the_cluster_in_the_kubeconfig(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    with KubernetesApiDouble(ready_after=0.2, tick=0.02) as cluster:
        kubeconfig = cluster.write_kubeconfig(tmp_path / "kubeconfig", namespace="ml-serving")
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        code, summary, printed = conveyor_run(
            capsys, tmp_path / "runs", "--param", "rollout=true", "--param", "namespace=ml-serving",
            "--param", "canary_policy={analysis: none}",
        )  # fmt: skip
        assert code == 0, printed
        assert summary["deployment"] == "created"
        assert "Deployed: created the InferenceService (first deploy)" in printed
        service = cluster.get("ml-serving", "breast-cancer")
        assert service["spec"]["predictor"]["model"]["storageUri"] == summary["storage_uri"]
        assert service["spec"]["predictor"]["annotations"]["conveyor/model-version"] == "1"
        traffic = service["status"]["components"]["predictor"]["traffic"]
        assert [(e["revisionName"], e["percent"]) for e in traffic] == [
            ("breast-cancer-predictor-00001", 100)
        ]


# A rollout the tests can wait for: no analysis, short looks; any blessed model is deployed.
FAST_ROLLOUT = (
    "--param", "rollout=true", "--param", "namespace=ml-serving",
    "--param", "canary_policy={analysis: none}", "--param", "canary_interval_s=0.2",
    "--param", "min_improvement=-1.0", "--param", "min_relative_improvement=-1.0",
)  # fmt: skip


def test_the_champion_is_the_model_that_serves(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Created, promoted, retried, rolled back: ``champion`` moves only when the model serves."""
    runs = tmp_path / "runs"
    with KubernetesApiDouble(ready_after=0.2, tick=0.02) as cluster:
        kubeconfig = cluster.write_kubeconfig(tmp_path / "kubeconfig", namespace="ml-serving")
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)

        code, first, printed = conveyor_run(capsys, runs, *FAST_ROLLOUT)
        assert code == 0 and first["deployment"] == "created", printed
        assert aliases(runs, "breast-cancer") == {"champion": "1"}
        v1 = registry(runs).get_model_version("breast-cancer", "1")
        assert v1.tags["rollout.decision"] == "created"
        assert v1.tags["rollout.run"] == v1.tags["pipeline_run_id"]  # the same KFP run
        assert predictor_env(cluster)[MODEL_SHA256_ENV] == v1.tags["sha256"]
        assert len(revisions(cluster)) == 1

        code, second, printed = conveyor_run(
            capsys, runs, *FAST_ROLLOUT, "--param", "hyperparameters={C: 0.05}"
        )
        assert code == 0 and second["deployment"] == "promoted_without_analysis", printed
        assert aliases(runs, "breast-cancer") == {"champion": "2"}
        v2 = registry(runs).get_model_version("breast-cancer", "2")
        assert predictor_env(cluster)[MODEL_SHA256_ENV] == v2.tags["sha256"] != v1.tags["sha256"]
        promoted = revisions(cluster)
        assert len(promoted) == 2 and serving(cluster) == {promoted[-1]: 100}

        retried = retry_register_and_deploy(tmp_path, runs, second, v2.tags["pipeline_run_id"])
        assert retried == ("2", "promoted_without_analysis")  # already serving: nothing to do
        assert revisions(cluster) == promoted
        assert aliases(runs, "breast-cancer") == {"champion": "2"}
        assert len(registered_versions(runs, "breast-cancer")) == 2

        # The first model again (as version 3), and this time its revision fails to load.
        cluster.revision_behaviour(first["storage_uri"], fails=True)
        code, third, printed = conveyor_run(capsys, runs, *FAST_ROLLOUT)
        assert code == 1 and third["failed_step"] == "deploy", printed
        assert third["model_version"] == 3 and "deploy: rolled_back: " in third["reason"]
        assert aliases(runs, "breast-cancer") == {"champion": "2"}
        v3 = registry(runs).get_model_version("breast-cancer", "3")
        assert v3.tags["rollout.decision"] == "rolled_back"
        assert v3.tags["rollout.reason"] in third["reason"]
        service = cluster.get("ml-serving", "breast-cancer")
        assert service["spec"]["predictor"]["model"]["storageUri"] == second["storage_uri"]
        restored = revisions(cluster)
        assert len(restored) == len(promoted) + 2  # the canary's, then the restored spec's
        assert serving(cluster) == {restored[-1]: 100}

        # What an operator reads on the service: its Events, through the real client.
        assert [(e.reason, e.type) for e in service_events(cluster)] == [
            ("ModelDeployed", "Normal"), ("CanaryStarted", "Normal"),
            ("CanaryStepPassed", "Normal"), ("CanaryStep", "Normal"),
            ("CanaryStepPassed", "Normal"), ("CanaryPromoted", "Normal"),
            ("CanaryPromoted", "Normal"), ("CanaryRolledBack", "Warning"),
        ]  # fmt: skip
        started = service_events(cluster)[1]
        assert started.message.startswith(f"canary {promoted[-1]} serves {second['storage_uri']}")
        assert started.reporting_component == "conveyor/rollout"
        assert started.reporting_instance == v2.tags["pipeline_run_id"]

    # And what the registry keeps: every decision about each version, in order.
    audit = ["audit", "--model", "breast-cancer", "--mlflow-tracking-uri",
             f"sqlite:///{runs / 'mlflow.db'}"]  # fmt: skip
    assert main([*audit, "--json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    trained = [("validation", "passed", ""), ("blessing", "blessed", ""),
               ("shadow", "not judged", "")]  # fmt: skip
    assert [(e["kind"], e["decision"], e["version"]) for e in events] == [
        *trained, ("registration", "candidate", "1"), ("rollout", "created", "1"),
        *trained, ("registration", "candidate", "2"), ("rollout", "canary 10 %", "2"),
        ("rollout", "canary 50 %", "2"), ("rollout", "promoted", "2"),
        ("rollout", "promoted", "2"),  # the retry: already serving
        *trained, ("registration", "candidate", "3"), ("rollout", "rolled_back", "3"),
    ]  # fmt: skip
    assert events[-1]["reason"] == v3.tags["rollout.reason"]
    assert events[-1]["measurements"]["champion_after"] == "2"
    assert events[9]["parameters"] == {"traffic_percent": 10}
    assert events[9]["pipeline_run"] == v2.tags["pipeline_run_id"]
    assert all(e["data_hash"] == events[0]["data_hash"] != "" for e in events)
    assert main([*audit, "--version", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "breast-cancer version 1: 6 decisions from 1 training runs"
    assert [line.split()[2:5] for line in lines[1:] if not line.startswith(" ")] == [
        ["-", "validation", "passed"], ["-", "blessing", "blessed"],
        ["-", "shadow", "not"], ["v1", "registration", "candidate"],
        ["v1", "rollout", "created"], ["v2", "rollout", "promoted"],  # what replaced it
    ]  # fmt: skip


def service_events(cluster: KubernetesApiDouble) -> list:
    """The Events about the breast-cancer service, in time order."""
    from kubernetes import client

    service = cluster.get("ml-serving", "breast-cancer")
    listed = client.CoreV1Api(client.ApiClient(cluster.configuration())).list_namespaced_event(
        "ml-serving",
        field_selector="involvedObject.kind=InferenceService,involvedObject.name=breast-cancer,"
        f"involvedObject.uid={service['metadata']['uid']}",
    )
    return sorted(listed.items, key=lambda event: event.event_time)


def revisions(cluster: KubernetesApiDouble) -> list[str]:
    return cluster.revisions("ml-serving", "breast-cancer")


def serving(cluster: KubernetesApiDouble) -> dict[str, int]:
    """Revision -> share of traffic, for the revisions that get any."""
    status = cluster.get("ml-serving", "breast-cancer")["status"]
    entries = status["components"]["predictor"]["traffic"]
    return {entry["revisionName"]: entry["percent"] for entry in entries if entry["percent"]}


def predictor_env(cluster: KubernetesApiDouble) -> dict[str, str]:
    model = cluster.get("ml-serving", "breast-cancer")["spec"]["predictor"]["model"]
    return {entry["name"]: entry["value"] for entry in model.get("env", [])}


def retry_register_and_deploy(
    tmp_path: Path, runs: Path, summary: dict, pipeline_run: str
) -> tuple[str, str]:
    """Register and deploy of a finished run, run again on its outputs as a KFP retry would."""
    from kfp.dsl import Artifact, Markdown, Metrics, Model

    from conveyor.components.deploy import deploy
    from conveyor.components.register import register

    outputs = Path(summary["artifacts"])
    trained = json.loads((outputs / "train" / "executor_output.json").read_text())
    model = artifact(
        Model,
        outputs / "train",
        "model",
        **trained["artifacts"]["model"]["artifacts"][0]["metadata"],
    )
    tracking_uri = f"sqlite:///{runs.resolve() / 'mlflow.db'}"
    registered = register.python_func(
        model=model, evaluation=artifact(Artifact, outputs / "evaluate", "evaluation"),
        model_name="breast-cancer", model_store_uri=str(runs.resolve() / "models"),
        mlflow_tracking_uri=tracking_uri, pipeline_run_id=pipeline_run, rollout=True,
    )  # fmt: skip
    retried = tmp_path / "retried"
    decision = deploy.python_func(
        model_name="breast-cancer", model_version=registered.model_version,
        storage_uri=registered.storage_uri, model_sha256=registered.model_sha256,
        run_id=pipeline_run, mlflow_tracking_uri=tracking_uri,
        manifest=artifact(Artifact, retried, "manifest"), report=artifact(Markdown, retried, "report"),
        rollout_metrics=artifact(Metrics, retried, "rollout_metrics"), namespace="ml-serving",
        canary_interval_s=0.2, canary_policy={"analysis": "none"},
    )  # fmt: skip
    return registered.model_version, decision


def test_users_own_multiclass_csv(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    multiclass_table(rows=300).to_csv(tmp_path / "Iris Like.csv", index=False)
    code, summary, printed = conveyor_run(
        capsys, tmp_path / "runs", "--data", str(tmp_path / "Iris Like.csv"), "--label", "species",
        "--estimator", "xgboost", "--param", "hyperparameters={n_estimators: 40}",
    )  # fmt: skip
    assert code == 0, printed
    assert summary["model_name"] == "iris-like" and summary["model_version"] == 1
    assert yaml.safe_load(Path(summary["manifest"]).read_text())["metadata"]["name"] == "iris-like"
    (version,) = registered_versions(tmp_path / "runs", "iris-like")
    run = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}").get_run(version.run_id)
    # KFP's Struct made 40 a float on the way; XGBoost got it back as an integer.
    assert run.data.params["n_estimators"] == "40" and run.data.params["estimator"] == "xgboost"
    assert summary["warnings"] == []  # 60 evaluation rows: enough to judge on


def test_a_table_too_small_to_evaluate_is_warned_about_in_the_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    multiclass_table(rows=90).to_csv(tmp_path / "tiny.csv", index=False)
    code, summary, printed = conveyor_run(
        capsys, tmp_path / "runs", "--data", str(tmp_path / "tiny.csv"), "--label", "species"
    )
    assert code == 0, printed
    (warning,) = summary["warnings"]
    assert warning.startswith("only 18 evaluation rows (under 50)")
    assert f"Warning: {warning}" in printed.splitlines()


def test_users_parquet_with_an_integer_target(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    table = multiclass_table(rows=300)
    table["churned"] = (table.pop("species") == "setosa").astype(int)
    table.to_parquet(tmp_path / "customers.parquet")
    code, summary, printed = conveyor_run(
        capsys, tmp_path / "runs", "--data", str(tmp_path / "customers.parquet"),
        "--label", "churned", "--model", "churn",
    )  # fmt: skip
    assert code == 0, printed
    assert summary["model_name"] == "churn" and summary["blessed"]
    card = json.loads((Path(summary["storage_uri"]) / "model.json").read_text())
    assert card["classes"] == [0, 1] and card["target"] == "churned"


def _unseen_category_in_test_split() -> pd.DataFrame:
    table = multiclass_table(rows=200)
    # The same rows, labels and seed as the pipeline's default split: this row lands in test.
    _, test_rows = train_test_split(
        np.arange(len(table)), test_size=0.2, random_state=42, stratify=table["species"]
    )
    table.loc[test_rows[0], "color"] = "purple"
    return table


BAD_INPUTS = {
    "missing file": (None, "ingest", "file not found"),
    "corrupt file": (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "ingest", "not UTF-8 text"),
    "empty table": (b"size,color,species\n", "ingest", "the table has no rows"),
    "target missing": (multiclass_table(40).drop(columns="species"), "ingest", "target column 'species' not found"),
    "one class": (multiclass_table(40).assign(species="setosa"), "ingest", "has a single class ('setosa')"),
    "one number": (multiclass_table(40).assign(species=2.5), "ingest", "holds one value (2.5) in every row; there is nothing to regress"),
    "all-null column": (multiclass_table(100).assign(notes=np.nan), "validate", "column 'notes' [not_all_null]"),
    "unseen category": (_unseen_category_in_test_split(), "validate", "column 'color' [allowed_categories]"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_fails_its_step_and_leaves_nothing_behind(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    content, step, message = BAD_INPUTS[case]
    data = tmp_path / "input.csv"
    if isinstance(content, bytes):
        data.write_bytes(content)
    elif content is not None:
        content.to_csv(data, index=False)
    runs = tmp_path / "runs"
    code, summary, printed = conveyor_run(capsys, runs, "--data", str(data), "--label", "species")
    assert code == 1
    assert summary["failed_step"] == step and summary["status"] == "failed"
    first_line, *_ = summary["reason"].splitlines()
    assert first_line.startswith(f"{step}: ")
    assert "Traceback" not in (runs / summary["run_id"] / "pipeline.log").read_text()
    assert message in summary["reason"]
    assert f"Failed at step '{step}'" in printed and message in printed
    assert registered_versions(runs, "input") == []
    assert not (runs / "models").exists() and summary["manifest"] is None
    assert not list(runs.rglob("deploy/manifest"))


def test_a_committed_schema_stops_a_run_on_a_null_spike(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    multiclass_table(300).to_csv(tmp_path / "last-month.csv", index=False)
    schema = tmp_path / "schema.json"
    assert main([
        "validate", "--data", str(tmp_path / "last-month.csv"), "--schema", str(schema),
        "--write-schema", "--label", "species",
    ]) == 0  # fmt: skip
    spiked = multiclass_table(300, seed=8)
    spiked.loc[:120, "weight"] = np.nan  # an upstream join lost two fifths of the weights
    spiked.to_csv(tmp_path / "input.csv", index=False)
    runs = tmp_path / "runs"
    code, summary, _ = conveyor_run(
        capsys, runs, "--data", str(tmp_path / "input.csv"), "--label", "species",
        "--schema", str(schema),
    )  # fmt: skip
    assert code == 1 and summary["failed_step"] == "validate"
    assert "training split: column 'weight' [null_rate]: " in summary["reason"]
    assert registered_versions(runs, "input") == [] and not (runs / "models").exists()
    assert summary["steps"]["train"] == "skipped"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--data", "x.csv"), "--label (LABEL=) is required with --data"),
        (("--param", "learning_rate=0.1"), "--param 'learning_rate': no such training pipeline"),
        (("--param", "seed"), "--param 'seed': expected NAME=VALUE"),
        (
            ("--param", "serving_memory=2 GB"),
            "InferenceService spec.predictor.model.resources.limits.memory: '2 GB' is not a Kubernetes quantity",
        ),
    ],
)
def test_run_refuses_bad_options_before_running(
    options: tuple[str, ...], message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["run", "--runs-dir", str(tmp_path), *options]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
