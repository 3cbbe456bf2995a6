"""The monitoring pipeline: compiled for both targets and parsed back into PipelineSpec, and
run through kfp.local against a champion trained by ``conveyor run``, with a real MLflow
server holding the champion's recorded training split and schema."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2
from mlflow import MlflowClient

from conveyor.components.core.data.schema import load_schema
from conveyor.components.core.monitoring.drift import DriftSettings, compare_tables, load_importance
from conveyor.components.core.training.registry import download_reference, find_champion
from conveyor.pipelines.cli import main
from conveyor.pipelines.definitions.compile import compile_pipeline
from conveyor.pipelines.definitions.targets import Target
from tests.conftest import multiclass_table, predictors


def compiled(tmp_path: Path, target: str) -> list[dict]:
    return list(
        yaml.safe_load_all(compile_pipeline(Target(target), tmp_path, "monitoring").read_text())
    )


@pytest.mark.parametrize("target", ["kubeflow", "vertex"])
def test_monitoring_compiles_with_retraining_nested_under_the_verdict(
    tmp_path: Path, target: str
) -> None:
    documents = compiled(tmp_path, target)
    assert len(documents) == (2 if target == "kubeflow" else 1)  # Vertex loads one document
    spec = json_format.ParseDict(documents[0], pipeline_spec_pb2.PipelineSpec())
    tasks = spec.root.dag.tasks
    assert {task.task_info.name for task in tasks.values()} == {
        "champion-reference", "plan-partitions", "profiles", "check-partitions", "counts",
        "judge-drift", "ingest-inputs", "prediction-drift", "quality", "monitoring-verdict",
        "retrain",
    }  # fmt: skip
    # ingest_inputs deletes old days first, whatever fails after; validation gates drift,
    # prediction drift and quality.
    assert "ingest-inputs" in tasks["plan-partitions"].dependent_tasks
    assert "check-partitions" in tasks["judge-drift"].dependent_tasks
    for finding in ("prediction-drift", "quality"):
        assert {"ingest-inputs", "check-partitions"} <= set(tasks[finding].dependent_tasks)
    assert set(tasks["monitoring-verdict"].dependent_tasks) == {
        "judge-drift", "prediction-drift", "quality",
    }  # fmt: skip
    drift_inputs = tasks["judge-drift"].inputs.artifacts
    assert drift_inputs["importance"].task_output_artifact.producer_task == "champion-reference"
    # Drift fans out over the partitions plan-partitions lists, twice, and gathers each loop.
    loops = {t.task_info.name: key for key, t in tasks.items() if t.HasField("iterator_policy")}
    limits = {name: tasks[key].iterator_policy.parallelism_limit for name, key in loops.items()}
    assert limits == {"profiles": 8, "counts": 8}
    for key in loops.values():
        items = tasks[key].parameter_iterator.items.input_parameter
        assert items == "pipelinechannel--plan-partitions-Output"
    gathered = tasks["check-partitions"].inputs.artifacts["profiles"].task_output_artifact
    assert gathered.producer_task == loops["profiles"]
    assert drift_inputs["counts"].task_output_artifact.producer_task == loops["counts"]
    scores = tasks["prediction-drift"].inputs.artifacts["reference_scores"]
    assert scores.task_output_artifact.output_artifact_key == "reference_scores"
    quality_inputs = tasks["quality"].inputs.artifacts
    assert quality_inputs["log"].task_output_artifact.producer_task == "ingest-inputs"
    assert quality_inputs["reference_scores"].task_output_artifact.producer_task == (
        "champion-reference"
    )
    retrain = next(task for task in tasks.values() if task.task_info.name == "retrain")
    assert retrain.trigger_policy.condition == (
        "inputs.parameter_values['pipelinechannel--monitoring-verdict-Output'] == true"
    )
    (training,) = spec.components[retrain.component_ref.name].dag.tasks.values()
    nested = spec.components[training.component_ref.name].dag.tasks
    assert {"ingest", "validate", "train", "evaluate"} <= set(nested)
    for step in (
        "champion-reference", "plan-partitions", "ingest-inputs", "quality", "monitoring-verdict",
    ):  # fmt: skip
        assert not tasks[step].caching_options.enable_cache  # each reads or writes in place
    for name in ("profiles", "counts"):  # a partition's files are read in place too
        (step,) = spec.components[tasks[loops[name]].component_ref.name].dag.tasks.values()
        assert not step.caching_options.enable_cache
    parameters = spec.root.input_definitions.parameters
    assert not parameters["inputs_uri"].is_optional
    assert parameters["retrain"].default_value.bool_value is True
    assert parameters["labels_uri"].default_value.string_value == ""
    assert parameters["drift_rule"].default_value.string_value == "importance"
    if target == "kubeflow":
        platform = json_format.ParseDict(documents[1], pipeline_spec_pb2.PlatformSpec())
        executors = json_format.MessageToDict(platform.platforms["kubernetes"].deployment_spec)
        secret = executors["executors"]["exec-champion-reference"]["secretAsEnv"][0]
        assert secret["secretName"] == "conveyor-mlflow" and secret["optional"] is True


@pytest.mark.parametrize("target", ["kubeflow", "vertex"])
def test_the_partition_loops_have_the_parallelism_they_were_compiled_with(
    tmp_path: Path, target: str, capsys: pytest.CaptureFixture
) -> None:
    assert main(["compile", "--output-dir", str(tmp_path), "--monitoring-parallelism", "3"]) == 0
    document = yaml.safe_load_all((tmp_path / f"monitoring.{target}.yaml").read_text())
    spec = json_format.ParseDict(next(document), pipeline_spec_pb2.PipelineSpec())
    loops = [task for task in spec.root.dag.tasks.values() if task.HasField("iterator_policy")]
    assert sorted(loop.iterator_policy.parallelism_limit for loop in loops) == [3, 3]
    for loop in loops:  # each partition is a task (a pod) of its own
        (step,) = spec.components[loop.component_ref.name].dag.tasks
        assert step in ("profile-partition", "count-partition")
    assert main(["compile", "--output-dir", str(tmp_path), "--monitoring-parallelism", "0"]) == 2
    assert "monitoring parallelism must be 1 or more, got 0" in capsys.readouterr().err


def test_monitoring_can_be_scheduled_like_the_training_pipeline(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    params = tmp_path / "prod.yaml"
    # A retraining rolls out by default, so its canary needs a Prometheus to be judged by.
    params.write_text(
        "inputs_uri: gs://logs/payloads/latest.parquet\nmodel_store_uri: gs://m\n"
        "prometheus_url: http://prometheus:9090\n"
    )
    schedule = [
        "schedule", "--target", "vertex", "--pipeline", "monitoring", "--cron", "0 6 * * *",
        "--timezone", "Europe/Berlin", "--project", "ml-project", "--region", "europe-west4",
        "--pipeline-root", "gs://bucket/root", "--dry-run",
    ]  # fmt: skip
    assert main(schedule) == 2
    assert "'inputs_uri' is required" in capsys.readouterr().err
    assert main([*schedule, "--params", str(params)]) == 0
    sent = json.loads(capsys.readouterr().out)
    assert sent["display_name"] == "conveyor-monitoring-prod"
    assert sent["parameters"]["inputs_uri"] == "gs://logs/payloads/latest.parquet"
    assert sent["cron"] == "TZ=Europe/Berlin 0 6 * * *"
    assert sent["template"].startswith("monitoring.vertex.yaml (sha256:")


def test_check_reads_monitoring_configs_against_the_monitoring_pipeline(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "monitoring").mkdir()
    (tmp_path / "dev.yaml").write_text("model_store_uri: /tmp/m\nprometheus_url: http://p:9090\n")
    (tmp_path / "monitoring" / "dev.yaml").write_text(
        "inputs_uri: /tmp/in.csv\nmodel_store_uri: /tmp/m\ndrift_share: high\nestimater: x\n"
        "prometheus_url: http://p:9090\n"
    )
    assert main(["check", "--configs", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert f"{tmp_path / 'dev.yaml'}: ok" in captured.out
    assert f"{tmp_path / 'monitoring' / 'dev.yaml'}: 2 problem(s)" in captured.out
    assert "drift_share" in captured.err and "estimater" in captured.err


@pytest.fixture(scope="module")
def champion(
    tmp_path_factory: pytest.TempPathFactory, mlflow_server: str
) -> tuple[Path, str, Path]:
    """A champion trained by ``conveyor run`` on a species table, in the MLflow server."""
    root = tmp_path_factory.mktemp("monitoring")
    multiclass_table(600, seed=3).to_csv(root / "train.csv", index=False)
    name = "monitored-species"
    code = main([
        "run", "--data", str(root / "train.csv"), "--label", "species", "--model", name,
        "--runs-dir", str(root / "runs"), "--param", f"mlflow_tracking_uri={mlflow_server}",
    ])  # fmt: skip
    assert code == 0
    return root, name, root / "train.csv"


def monitor(
    capsys: pytest.CaptureFixture,
    champion,
    server: str,
    inputs: pd.DataFrame | Path,
    *options: str,
) -> tuple[int, dict, str]:
    """``conveyor monitor`` on a table, or on a folder of tables such as a payload log."""
    root, name, train = champion
    if isinstance(inputs, pd.DataFrame):
        inputs.to_csv(root / "inputs.csv", index=False)
        inputs = root / "inputs.csv"
    capsys.readouterr()
    code = main([
        "monitor", "--inputs", str(inputs), "--model", name,
        "--data", str(train), "--label", "species", "--runs-dir", str(root / "runs"),
        "--param", f"mlflow_tracking_uri={server}", *options,
    ])  # fmt: skip
    printed = capsys.readouterr().out
    artifacts = Path(printed.strip().splitlines()[-1].removeprefix("Artifacts: "))
    summary = json.loads((artifacts.parent.parent / "summary.json").read_text())
    return code, summary, printed


def training_runs(server: str, name: str) -> int:
    client = MlflowClient(server)
    experiment = client.get_experiment_by_name(name)
    return len(client.search_runs([experiment.experiment_id]))


@pytest.mark.slow
def test_the_champion_s_training_split_and_schema_are_found_through_the_registry(
    tmp_path: Path, champion, mlflow_server: str
) -> None:
    _, name, _ = champion
    reference, schema = tmp_path / "reference.parquet", tmp_path / "schema.json"
    found = download_reference(mlflow_server, name, reference, schema)
    assert found.version == find_champion(MlflowClient(mlflow_server), name).version
    inputs = pd.read_parquet(reference)
    assert list(inputs.columns) == ["size", "weight", "color"]  # the label is dropped
    assert 400 < len(inputs) < 600 and load_schema(schema).target == "species"


@pytest.mark.slow
def test_inputs_like_the_training_data_do_not_start_training(
    capsys: pytest.CaptureFixture, champion, mlflow_server: str
) -> None:
    before = training_runs(mlflow_server, champion[1])
    inputs = multiclass_table(400, seed=4).drop(columns=["species"])
    code, summary, printed = monitor(capsys, champion, mlflow_server, inputs)
    assert code == 0, printed
    assert summary["drifted"] is False and not summary["retrained"]
    assert summary["reason"].startswith("No dataset drift: 0 of 3 columns drifted")
    assert "train" not in summary["steps"] and training_runs(mlflow_server, champion[1]) == before


@pytest.mark.slow
def test_drifted_inputs_start_the_training_pipeline_and_say_why(
    capsys: pytest.CaptureFixture, champion, mlflow_server: str
) -> None:
    before = training_runs(mlflow_server, champion[1])
    inputs = multiclass_table(400, seed=5).drop(columns=["species"])
    inputs["size"] += 6
    inputs["weight"] -= 15
    code, summary, printed = monitor(capsys, champion, mlflow_server, inputs)
    assert code == 3, printed
    assert summary["drifted"] and summary["drifted_columns"] == ["size", "weight"]
    assert summary["retrained"] and summary["steps"]["evaluate"] == "success"
    assert summary["reason"].startswith("Drift: 2 of 3 columns drifted (67%")
    assert "retrained: " in summary["reason"]
    assert training_runs(mlflow_server, champion[1]) == before + 1
    report = (Path(summary["artifacts"]) / "judge-drift" / "report").read_text()
    assert "size" in report and "weight" in report

    code, summary, printed = monitor(capsys, champion, mlflow_server, inputs, "--no-retrain")
    assert code == 3 and not summary["retrained"], printed
    assert summary["reason"].endswith("; retraining is off")
    assert training_runs(mlflow_server, champion[1]) == before + 1


@pytest.mark.slow
def test_the_payload_log_a_predictor_wrote_is_what_monitoring_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture, champion, mlflow_server: str
) -> None:
    _, name, _ = champion
    model_dir = Path(find_champion(MlflowClient(mlflow_server), name).tags["storage_uri"])
    inputs = multiclass_table(300, seed=9).drop(columns=["species"]).dropna()
    inputs["size"] += 6
    inputs["weight"] -= 15
    log = tmp_path / "payloads"
    with predictors(
        {"monitored-00001": model_dir}, name, tmp_path, "--payload_log", str(log)
    ) as urls:
        for batch in np.array_split(inputs, 6):
            answer = httpx.post(
                f"{urls['monitored-00001']}/v1/models/{name}:predict",
                json={"instances": batch.to_dict("records")},
            )
            assert answer.status_code == 200, answer.text
    # Two days: the run may start just past midnight (UTC) of the day the rows were written.
    code, summary, printed = monitor(
        capsys, champion, mlflow_server, log, "--no-retrain", "--days", "2"
    )
    assert code == 3, printed
    assert summary["drifted_columns"] == ["size", "weight"] and not summary["retrained"]


@pytest.mark.slow
def test_a_partitioned_log_is_fanned_out_and_judged_as_the_whole_table(
    tmp_path: Path, capsys: pytest.CaptureFixture, champion, mlflow_server: str
) -> None:
    """Five files (one empty, one of a row), each profiled and counted in a task of its own,
    two at a time: the judged report is drift's on the whole table ingest_inputs wrote."""
    inputs = multiclass_table(900, seed=11).drop(columns=["species"])
    inputs.loc[inputs["color"] == "red", "size"] += 3  # drift within one segment
    log = tmp_path / "log"
    log.mkdir()
    bounds = [0, 300, 300, 301, 640, 900]
    for index, (start, stop) in enumerate(zip(bounds, bounds[1:], strict=False)):
        inputs.iloc[start:stop].to_parquet(log / f"part-{index}.parquet", index=False)
    code, summary, printed = monitor(
        capsys, champion, mlflow_server, log, "--no-retrain", "--segment", "color",
        "--monitoring-parallelism", "2",
    )  # fmt: skip
    assert code == 3, printed
    artifacts = Path(summary["artifacts"])
    fanned = json.loads((artifacts / "judge-drift" / "summary").read_text())
    reference = artifacts / "champion-reference"
    settings = DriftSettings(importance=load_importance(reference / "importance"))
    whole = compare_tables(
        pd.read_parquet(reference / "reference"), pd.read_parquet(artifacts / "ingest-inputs" / "inputs"),
        settings, "color", (), load_schema(reference / "schema").recorded_roles(),
    )  # fmt: skip
    expected = whole.to_dict()
    assert fanned["drifted_columns"] == expected["drifted_columns"] == {"size": ["all", "red"]}
    assert fanned["reasons"] == expected["reasons"] and fanned["approximations"] == []
    for got, want in zip(fanned["columns"], expected["columns"], strict=True):
        assert got.pop("scores") == pytest.approx(want.pop("scores"), rel=1e-9)
        for key, value in want.items():
            assert got[key] == (pytest.approx(value) if isinstance(value, float) else value), key
    planned = json.loads((artifacts / "plan-partitions" / "executor_output.json").read_text())
    listed = planned["parameterValues"]["Output"]
    assert [(item["offset"], item["rows"]) for item in listed] == [
        (0, 300), (300, 0), (300, 1), (301, 339), (640, 260),
    ]  # fmt: skip
    for step in ("profile-partition", "count-partition"):  # a task per partition
        assert len(list(artifacts.glob(f"for-loop-*-iteration-*/{step}"))) == len(bounds) - 1


@pytest.mark.slow
def test_labels_that_arrived_are_judged_and_a_degradation_retrains_and_alerts(
    tmp_path: Path, capsys: pytest.CaptureFixture, champion, mlflow_server: str, pushgateway: str
) -> None:
    """The real predictor logs ids and predictions; labels arrive for most rows, then the
    pipeline joins them: right labels are no degradation; labels of a world that changed
    (every third row another class) are, and the run says so, retrains (here: is told not
    to) and pushes the finding to a real Pushgateway, where the next healthy run clears it."""
    _, name, _ = champion
    model_dir = Path(find_champion(MlflowClient(mlflow_server), name).tags["storage_uri"])
    table = multiclass_table(600, seed=3).dropna().sample(300, random_state=2)
    inputs, truth = table.drop(columns=["species"]), table["species"].to_numpy()
    log = tmp_path / "payloads"
    with predictors(
        {"monitored-00001": model_dir}, name, tmp_path, "--payload_log", str(log)
    ) as urls:
        for batch, rows in enumerate(np.array_split(np.arange(len(inputs)), 6)):
            answer = httpx.post(
                f"{urls['monitored-00001']}/v1/models/{name}:predict",
                json={"instances": inputs.iloc[rows].to_dict("records")},
                headers={"X-Request-Id": f"batch-{batch}"},
            )
            assert answer.status_code == 200 and answer.headers["x-request-id"] == f"batch-{batch}"
    ids = [f"batch-{b}/{i}" for b, rows in enumerate(np.array_split(truth, 6))
           for i in range(len(rows))]  # fmt: skip
    labels = pd.DataFrame({"id": ids, "label": truth}).iloc[:270]  # 30 still to come
    labels.to_csv(tmp_path / "right.csv", index=False)
    classes = np.unique(truth)
    changed = labels.assign(label=[
        classes[(list(classes).index(label) + 1) % 3] if i % 3 == 0 else label
        for i, label in enumerate(labels["label"])
    ])  # fmt: skip
    changed.to_csv(tmp_path / "changed.csv", index=False)
    options = ("--no-retrain", "--days", "2", "--pushgateway", pushgateway)

    code, summary, printed = monitor(
        capsys, champion, mlflow_server, log, "--labels", str(tmp_path / "changed.csv"), *options
    )
    assert code == 3 and summary["degraded"] is True, printed
    assert summary["triggers"] == ["quality degradation"] and not summary["retrained"]
    assert "270 of 300 logged predictions labelled (90.0%)" in summary["reason"]
    assert summary["reason"].endswith("; retraining is off")
    flags = httpx.get(f"{pushgateway}/api/v1/metrics", timeout=10).json()["data"][0]
    assert flags["conveyor_quality_degraded"]["metrics"][0]["value"] == "1"

    code, summary, printed = monitor(
        capsys, champion, mlflow_server, log, "--labels", str(tmp_path / "right.csv"), *options
    )
    assert code == 0 and summary["degraded"] is False, printed
    flags = httpx.get(f"{pushgateway}/api/v1/metrics", timeout=10).json()["data"][0]
    assert flags["conveyor_quality_degraded"]["metrics"][0]["value"] == "0"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda t: t.assign(weight=t["weight"].where(t.index > 200)), "'weight' [null_rate]"),
        (lambda t: t.assign(color=np.where(t.index % 7 == 0, "purple", t["color"])),
         "'purple'"),
    ],
)  # fmt: skip
def test_a_broken_feed_fails_validation_and_starts_nothing(
    capsys: pytest.CaptureFixture, champion, mlflow_server: str, change, named: str
) -> None:
    _, name, _ = champion
    before = training_runs(mlflow_server, name)
    version = find_champion(MlflowClient(mlflow_server), name).version
    inputs = change(multiclass_table(400, seed=6).drop(columns=["species"]))
    code, summary, printed = monitor(capsys, champion, mlflow_server, inputs)
    assert code == 1, printed
    assert summary["failed_step"] == "check-partitions" and named in summary["reason"]
    assert "count-partition" not in summary["steps"] and not summary["retrained"]
    assert training_runs(mlflow_server, name) == before
    assert find_champion(MlflowClient(mlflow_server), name).version == version


@pytest.mark.slow
def test_a_model_without_a_champion_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, mlflow_server: str, model_name: str
) -> None:
    multiclass_table(100).drop(columns=["species"]).to_csv(tmp_path / "in.csv", index=False)
    code = main([
        "monitor", "--inputs", str(tmp_path / "in.csv"), "--model", model_name,
        "--runs-dir", str(tmp_path / "runs"), "--param", f"mlflow_tracking_uri={mlflow_server}",
    ])  # fmt: skip
    assert code == 1
    failure = capsys.readouterr().out.strip().splitlines()[-2]
    assert failure == (
        f"Failed: champion_reference: model {model_name!r} has no champion in {mlflow_server}: "
        "no training data to compare with; run the training pipeline first"
    )
