"""The KFP components: ``python_func`` with artifacts on tmp_path, chained like the pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Markdown, Metrics, Model
from mlflow import MlflowClient

from conveyor.components.deploy import deploy
from conveyor.components.evaluate import evaluate
from conveyor.components.ingest import ingest
from conveyor.components.register import register
from conveyor.components.train import train
from conveyor.components.validate import validate
from tests.conftest import artifact


def test_the_six_components_take_a_model_from_csv_to_manifest(
    tmp_path: Path, species: pd.DataFrame, mlflow_server: str, model_name: str
) -> None:
    species.to_csv(tmp_path / "species.csv", index=False)
    train_set, test_set = artifact(Dataset, tmp_path, "train"), artifact(Dataset, tmp_path, "test")
    ingest.python_func(
        data_uri=str(tmp_path / "species.csv"), target_column="species",
        train=train_set, test=test_set, test_size=0.25, seed=1,
    )  # fmt: skip
    assert train_set.metadata["rows"] == 270 and test_set.metadata["rows"] == 90

    schema, checks = artifact(Artifact, tmp_path, "schema"), artifact(Markdown, tmp_path, "checks")
    validate.python_func(
        train=train_set, test=test_set, target_column="species", schema=schema, report=checks
    )
    assert schema.metadata["columns"] == 4 and "**Passed**" in Path(checks.path).read_text()

    model = artifact(Model, tmp_path, "model")
    train.python_func(
        train=train_set, test=test_set, target_column="species", model_name=model_name,
        model=model, estimator="random_forest", hyperparameters={"n_estimators": 50}, seed=1,
        mlflow_tracking_uri=mlflow_server, pipeline_run_id="run-1",
    )  # fmt: skip
    assert model.metadata["data_hash"] == train_set.metadata["content_hash"]
    assert model.metadata["device"] == "cpu" and "gpu" not in model.metadata
    assert (Path(model.path) / "model.joblib").is_file()
    importance = json.loads((Path(model.path) / "importance.json").read_text())
    assert set(importance["importances"]) == {"size", "weight", "color"}  # measured on test
    assert len(pd.read_parquet(Path(model.path) / "scores.parquet")) == 90

    metrics, curves = (
        artifact(Metrics, tmp_path, "metrics"),
        artifact(ClassificationMetrics, tmp_path, "curves"),
    )
    report, verdict = (
        artifact(Markdown, tmp_path, "report"),
        artifact(Artifact, tmp_path, "verdict"),
    )
    blessed = evaluate.python_func(
        model=model, test=test_set, target_column="species", model_name=model_name,
        metrics=metrics, classification_metrics=curves, report=report, evaluation=verdict,
        reliability=artifact(HTML, tmp_path, "reliability"),
        residuals=artifact(HTML, tmp_path, "residuals"),
        mlflow_tracking_uri=mlflow_server, metric_floors={"accuracy": 0.5},
    )  # fmt: skip
    assert blessed is True and verdict.metadata["blessed"] is True
    assert "positive_class" not in verdict.metadata  # multi-class
    assert set(metrics.metadata) == {
        "accuracy", "precision", "recall", "f1", "roc_auc", "log_loss", "brier_score",
        "expected_calibration_error",
    }  # fmt: skip
    assert "Probability of the predicted class" in (tmp_path / "reliability").read_text()
    matrix = curves.metadata["confusionMatrix"]
    assert [c["displayName"] for c in matrix["annotationSpecs"]] == [
        "setosa",
        "versicolor",
        "virginica",
    ]
    assert sum(map(sum, (row["row"] for row in matrix["rows"]))) == 90
    run = MlflowClient(mlflow_server).get_run(model.metadata["mlflow_run_id"])
    assert run.data.metrics["test_accuracy"] == metrics.metadata["accuracy"]

    registered = register.python_func(
        model=model, evaluation=verdict, model_name=model_name,
        model_store_uri=str(tmp_path / "store"), mlflow_tracking_uri=mlflow_server,
        pipeline_run_id="run-1",
    )  # fmt: skip
    assert registered.model_version == "1"

    manifest = artifact(Artifact, tmp_path, "manifest")
    report = artifact(Markdown, tmp_path, "report")
    decision = deploy.python_func(
        model_name=model_name, model_version=registered.model_version,
        storage_uri=registered.storage_uri, run_id="run-1", manifest=manifest, report=report,
        rollout_metrics=artifact(Metrics, tmp_path, "rollout_metrics"), rollout=False,
        canary_steps="20,60",
    )  # fmt: skip
    assert decision == "skipped"
    rendered = yaml.safe_load(Path(manifest.path).read_text())
    assert rendered["spec"]["predictor"]["model"]["storageUri"] == registered.storage_uri
    assert rendered["spec"]["predictor"]["canaryTrafficPercent"] == 20
    assert manifest.metadata["name"] == model_name
    assert "not rolled out" in Path(report.path).read_text()


def test_binary_evaluation_logs_a_roc_curve(
    tmp_path: Path, breast_cancer: pd.DataFrame, mlflow_server: str, model_name: str
) -> None:
    breast_cancer.to_parquet(tmp_path / "bc.parquet")
    train_set, test_set = artifact(Dataset, tmp_path, "train"), artifact(Dataset, tmp_path, "test")
    ingest.python_func(
        data_uri=str(tmp_path / "bc.parquet"),
        target_column="diagnosis",
        train=train_set,
        test=test_set,
    )
    model = artifact(Model, tmp_path, "model")
    train.python_func(
        train=train_set, test=test_set, target_column="diagnosis", model_name=model_name,
        model=model, mlflow_tracking_uri=mlflow_server,
    )  # fmt: skip
    curves = artifact(ClassificationMetrics, tmp_path, "curves")
    verdict = artifact(Artifact, tmp_path, "e")
    evaluate.python_func(
        model=model, test=test_set, target_column="diagnosis", model_name=model_name,
        metrics=artifact(Metrics, tmp_path, "m"), classification_metrics=curves,
        report=artifact(Markdown, tmp_path, "r"), evaluation=verdict,
        reliability=artifact(HTML, tmp_path, "h"), residuals=artifact(HTML, tmp_path, "r"), mlflow_tracking_uri=mlflow_server,
    )  # fmt: skip
    assert verdict.metadata["positive_class"] == "malignant"
    roc = curves.metadata["confidenceMetrics"]
    assert roc[0]["falsePositiveRate"] == 0.0 and roc[-1]["recall"] == 1.0
    assert all(0.0 <= point["confidenceThreshold"] <= 1.0 for point in roc)


def test_a_failing_step_ends_with_its_reason_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("a,label\n1,x\n2,x\n3,x\n")
    with pytest.raises(SystemExit) as raised:
        ingest.python_func(
            data_uri=str(tmp_path / "t.csv"), target_column="label",
            train=artifact(Dataset, tmp_path, "train"), test=artifact(Dataset, tmp_path, "test"),
        )  # fmt: skip
    assert (
        str(raised.value)
        == f"ingest: {tmp_path / 't.csv'}: target column 'label' has a single class ('x'); classification needs at least two"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv"]


def test_register_refuses_what_evaluate_did_not_bless(
    tmp_path: Path, mlflow_server: str, model_name: str
) -> None:
    verdict = artifact(Artifact, tmp_path, "verdict")
    Path(verdict.path).write_text(json.dumps({"blessed": False, "reason": "floors", "metrics": {}}))
    with pytest.raises(
        SystemExit, match="^register: refusing to register a model the evaluation did not bless"
    ):
        register.python_func(
            model=artifact(Model, tmp_path, "model", mlflow_run_id="r"), evaluation=verdict,
            model_name=model_name, model_store_uri=str(tmp_path / "store"),
            mlflow_tracking_uri=mlflow_server,
        )  # fmt: skip
    assert MlflowClient(mlflow_server).search_registered_models(f"name = '{model_name}'") == []


def test_a_model_artifact_without_its_run_is_named(tmp_path: Path, mlflow_server: str) -> None:
    with pytest.raises(
        SystemExit, match="^evaluate: the model artifact's metadata has no mlflow_run_id"
    ):
        evaluate.python_func(
            model=artifact(Model, tmp_path, "model"), test=artifact(Dataset, tmp_path, "test"),
            target_column="y", model_name="m", metrics=artifact(Metrics, tmp_path, "m"),
            classification_metrics=artifact(ClassificationMetrics, tmp_path, "c"),
            report=artifact(Markdown, tmp_path, "r"), evaluation=artifact(Artifact, tmp_path, "e"),
            reliability=artifact(HTML, tmp_path, "h"), residuals=artifact(HTML, tmp_path, "r"), mlflow_tracking_uri=mlflow_server,
        )  # fmt: skip
