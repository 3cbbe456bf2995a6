"""The three images, built for real with buildah, and run: components as a KFP pod runs them,
the predictor as KServe starts it, and the GPU image's CUDA runtime.

Every test here carries the ``images`` marker and skips without buildah and debootstrap
(CI installs both and sets CONVEYOR_REQUIRE_SYSTEM_DEPS=1, which turns the skip into a
failure). See tests/buildah.py for the stand-in base image and the flags.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import mlflow
import pandas as pd
import pytest
import yaml

from conveyor.components.core.training.trainer import load_model_dir
from conveyor.components.images import image
from conveyor.pipelines.definitions.compile import compile_components
from conveyor.pipelines.definitions.targets import Target
from tests import buildah
from tests.conftest import ROOT, free_port, wait_for_http
from tests.test_images import DOCKERFILES, KINDS

# A first build installs the venv (minutes); a failure names the build log.
pytestmark = [pytest.mark.images, pytest.mark.timeout(3600)]

USER = "1000:1000"  # the images' USER, and what a pod's runAsUser/runAsGroup would be
# KFP's launcher: artifacts under a minio:// pipeline root are read and written at /minio/...
# in the pod, and the executor's output metadata goes to this file.
ARTIFACTS_MOUNT = "/minio"
OUTPUTS_MOUNT = "/tmp/kfp_outputs"
PIPELINE_ROOT = "minio://mlpipeline/v2/artifacts/image-test/run-1"
MODEL_NAME = "image-test-model"


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("image-builds")


@pytest.fixture(scope="module")
def built(logs: Path) -> Iterator[Callable[[str], str]]:
    """Builds an image kind on first use (on the stand-in base, in the project's store; not
    again if the store has it from the same Dockerfile, sources and base) and returns its
    name; old images' layers are pruned when the module is done."""
    buildah.require_buildah()
    buildah.ensure_stand_in(logs / "stand-in.log")
    context = buildah.build_context(logs / "context")
    names: dict[str, str] = {}
    failed: dict[str, buildah.BuildahError] = {}

    def build(kind: str) -> str:
        if kind in failed:  # once is enough: a build takes minutes
            raise failed[kind]
        if kind not in names:
            try:
                buildah.build_once(DOCKERFILES[kind], image(kind), context, logs / f"{kind}.log")
            except buildah.BuildahError as error:
                failed[kind] = error
                raise
            names[kind] = image(kind)
        return names[kind]

    yield build
    buildah.prune()


def owned_by_user(path: Path) -> Path:
    """``path``, created and owned by the images' user, so a container can write in it."""
    path.mkdir(parents=True, exist_ok=True)
    uid, gid = (int(part) for part in USER.split(":"))
    os.chown(path, uid, gid)
    return path


@pytest.mark.parametrize("kind", KINDS)
def test_each_image_builds_on_the_python_base_to_run_as_its_user(
    built: Callable[[str], str], kind: str
) -> None:
    # Each image also runs below: base the components, serving the predictor, gpu CUDA.
    name = built(kind)
    config = buildah.image_config(name)
    assert config["User"] == USER
    assert "PATH=/opt/venv/bin:" in " ".join(config["Env"])
    (base,) = buildah.diff_ids(buildah.base_image())  # the stand-in is one layer
    assert buildah.diff_ids(name)[0] == base


# --- a compiled component, run as a KFP pod runs it -----------------------------------------


def executor(component_yaml: Path) -> tuple[dict, dict]:
    """The component's container (image, command, args) and its interface (``root``)."""
    spec = next(yaml.safe_load_all(component_yaml.read_text()))
    (container,) = [entry["container"] for entry in spec["deploymentSpec"]["executors"].values()]
    return container, spec["root"]


def executor_input(
    interface: dict, parameters: dict[str, object], inputs: dict[str, dict], step: str
) -> dict:
    """What KFP's driver hands the launcher: the given parameters plus the component's
    defaults, upstream artifacts with their metadata, and output artifacts under the
    pipeline root."""
    declared = interface["inputDefinitions"].get("parameters", {})
    unknown = set(parameters) - set(declared)
    assert not unknown, f"{step}: the component has no parameters {sorted(unknown)}"
    values = {
        name: definition["defaultValue"]
        for name, definition in declared.items()
        if "defaultValue" in definition
    } | parameters
    # The driver's protobuf JSON writes a whole number without a fraction (a seed of 42, not
    # the 42.0 the compiled YAML holds), which an int parameter needs.
    values = {name: proto_json_number(value) for name, value in values.items()}
    outputs = {
        name: {
            "artifacts": [
                {
                    "name": name,
                    "type": definition["artifactType"],
                    "uri": f"{PIPELINE_ROOT}/{step}/{name}",
                    "metadata": {},
                }
            ]
        }
        for name, definition in interface.get("outputDefinitions", {}).get("artifacts", {}).items()
    }
    parameter_outputs = {
        name: {"outputFile": f"{OUTPUTS_MOUNT}/{name}"}
        for name in interface.get("outputDefinitions", {}).get("parameters", {})
    }
    return {
        "inputs": {"parameterValues": values, "artifacts": inputs},
        "outputs": {
            "parameters": parameter_outputs,
            "artifacts": outputs,
            "outputFile": f"{OUTPUTS_MOUNT}/output_metadata.json",
        },
    }


def proto_json_number(value: object) -> object:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def local(uri: str, artifacts: Path) -> Path:
    """Where the pod's artifact ``uri`` is on the host (under the folder mounted at /minio)."""
    assert uri.startswith("minio://"), uri
    return artifacts / uri.removeprefix("minio://")


def run_step(
    name: str, container: dict, executor_input: dict, artifacts: Path, outputs: Path
) -> dict:
    """Runs the step's own command line in image ``name`` as the images' user, ``{{$}}``
    replaced by the executor input as KFP's launcher does; returns the executor output."""
    owned_by_user(outputs)
    text = json.dumps(executor_input)
    arguments = [text if word == "{{$}}" else word for word in container["args"]]
    result = buildah.run_in(
        name, [*container["command"], *arguments],
        volumes={artifacts: ARTIFACTS_MOUNT, outputs: OUTPUTS_MOUNT},
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-5000:])
    return json.loads((outputs / "output_metadata.json").read_text())


@pytest.fixture(scope="module")
def pod_runs(
    built: Callable[[str], str],
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict:
    """Ingest, then train on its splits, each from its compiled YAML in the base image."""
    # Asked for here, not as an argument (session fixtures start first): without buildah the
    # tests skip before an MLflow server starts.
    mlflow_server = request.getfixturevalue("mlflow_server")
    work = tmp_path_factory.mktemp("pod-runs")
    compiled = compile_components(Target("kubeflow"), work / "components")
    assert {path.stem for path in compiled} >= {"ingest", "train"}
    artifacts = owned_by_user(work / "artifacts")
    ingest, ingest_interface = executor(work / "components" / "ingest.yaml")
    train, train_interface = executor(work / "components" / "train.yaml")
    assert ingest["image"] == train["image"] == image("base")
    name = built("base")

    ingest_input = executor_input(
        ingest_interface,
        {"data_uri": "builtin://breast_cancer", "target_column": "diagnosis"},
        {},
        "ingest",
    )
    ingest_output = run_step(name, ingest, ingest_input, artifacts, work / "ingest-outputs")
    # The launcher passes each upstream artifact on with the metadata its step wrote.
    splits = {
        split: {"artifacts": ingest_output["artifacts"][split]["artifacts"]}
        for split in ("train", "test")
    }
    train_input = executor_input(
        train_interface,
        {
            "target_column": "diagnosis",
            "model_name": MODEL_NAME,
            "mlflow_tracking_uri": mlflow_server,  # chroot isolation: the host's loopback
            "pipeline_run_id": "image-test-run-1",
            "estimator": "lightgbm",  # its library links the image's libgomp1
        },
        splits,
        "train",
    )
    train_output = run_step(name, train, train_input, artifacts, work / "train-outputs")
    return {
        "mlflow": mlflow_server,
        "artifacts": artifacts,
        "ingest": (ingest_input, ingest_output),
        "train": (train_input, train_output),
    }


def test_ingest_runs_from_its_compiled_yaml_in_the_base_image(pod_runs: dict) -> None:
    ingest_input, ingest_output = pod_runs["ingest"]
    rows = {}
    for split in ("train", "test"):
        (written,) = ingest_output["artifacts"][split]["artifacts"]
        (wanted,) = ingest_input["outputs"]["artifacts"][split]["artifacts"]
        assert written["uri"] == wanted["uri"]
        table = pd.read_parquet(local(written["uri"], pod_runs["artifacts"]))
        assert written["metadata"]["rows"] == len(table)
        assert "diagnosis" in table.columns
        rows[split] = len(table)
    assert rows == {"train": 455, "test": 114}  # 569 rows, 20 % held out


def test_train_runs_from_its_compiled_yaml_and_logs_to_the_hosts_mlflow(pod_runs: dict) -> None:
    mlflow_server = pod_runs["mlflow"]
    train_input, train_output = pod_runs["train"]
    (model,) = train_output["artifacts"]["model"]["artifacts"]
    directory = local(model["uri"], pod_runs["artifacts"])
    card = json.loads((directory / "model.json").read_text())
    assert card["sha256"] == model["metadata"]["sha256"]
    assert card["estimator"] == "lightgbm" and model["metadata"]["device"] == "cpu"
    assert (directory / "model.joblib").is_file()
    assert os.stat(directory / "model.joblib").st_uid == 1000  # written as the image's user
    run = mlflow.MlflowClient(mlflow_server).get_run(model["metadata"]["mlflow_run_id"])
    assert run.data.tags["pipeline_run_id"] == "image-test-run-1"
    experiment = mlflow.MlflowClient(mlflow_server).get_experiment(run.info.experiment_id)
    assert experiment.name == MODEL_NAME
    assert train_input["inputs"]["artifacts"]["train"]["artifacts"][0]["metadata"]["rows"] == 455


# --- the predictor, as KServe's ServingRuntime starts it ----------------------------------------


def serving_runtime_container() -> dict:
    runtime = yaml.safe_load((ROOT / "kserve" / "serving-runtime.yaml").read_text())
    (container,) = runtime["spec"]["containers"]
    return container


def test_the_serving_image_serves_the_trained_model_over_http(
    built: Callable[[str], str], pod_runs: dict, tmp_path: Path
) -> None:
    runtime = serving_runtime_container()
    assert runtime["image"] == image("serving")
    name = built("serving")
    _, train_output = pod_runs["train"]
    (model,) = train_output["artifacts"]["model"]["artifacts"]
    model_dir = local(model["uri"], pod_runs["artifacts"])
    port = free_port()
    # The runtime's own arguments, with the InferenceService's name and a free port (the
    # container shares the host's network).
    arguments = [
        word.replace("{{.Name}}", MODEL_NAME).replace("--http_port=8080", f"--http_port={port}")
        for word in runtime["args"]
    ]
    assert f"--http_port={port}" in arguments
    environment = {item["name"]: item["value"] for item in runtime.get("env", [])}
    scratch = owned_by_user(tmp_path / "scratch")  # the pod's emptyDir at /tmp
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "predictor.log"
    with buildah.started_in(
        name, [*buildah.entrypoint(name), *arguments], log=log, environment=environment,
        volumes={model_dir: "/mnt/models:ro", scratch: "/tmp"},
    ) as process:  # fmt: skip
        wait_for_http(f"{url}/v2/models/{MODEL_NAME}/ready", process, timeout=180, log=log)
        rows = pd.read_parquet(local(PIPELINE_ROOT + "/ingest/test", pod_runs["artifacts"]))
        instances = rows.drop(columns="diagnosis").head(3).to_dict("records")
        answer = httpx.post(
            f"{url}/v1/models/{MODEL_NAME}:predict", json={"instances": instances}, timeout=60
        )
        assert answer.status_code == 200, (answer.text, log.read_text()[-3000:])
        # What the trained model predicts for these rows, loaded here from the same files.
        expected = load_model_dir(model_dir).pipeline.predict(pd.DataFrame(instances))
        assert answer.json()["predictions"] == list(expected)
        # SIGTERM, as Kubernetes sends it, ends every process of the container.
        assert buildah.stop_group(process), log.read_text()[-3000:]
    with pytest.raises(httpx.ConnectError):  # and nothing listens any more
        httpx.get(f"{url}/v2/health/live", timeout=5)


# --- the GPU image ----------------------------------------------------------------------------

BOOSTERS = """
import json
from importlib import metadata
import lightgbm, xgboost
import conveyor.components
names = sorted(d.metadata["Name"] for d in metadata.distributions() if d.metadata["Name"].startswith("xgboost"))
print(json.dumps({"cuda": xgboost.build_info()["USE_CUDA"], "xgboost": xgboost.__version__, "distributions": names, "lightgbm": lightgbm.__version__}))
"""


@pytest.mark.parametrize("kind", KINDS)
def test_each_image_loads_the_boosters_and_only_the_gpu_image_has_xgboosts_cuda_build(
    built: Callable[[str], str], kind: str
) -> None:
    """The gpu image swaps in XGBoost's CUDA build at the pinned version; asking needs no GPU."""
    import lightgbm
    import xgboost

    result = buildah.run_in(built(kind), ["python", "-c", BOOSTERS], volumes={})
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["cuda"] is (kind == "gpu")
    assert found["distributions"] == ["xgboost" if kind == "gpu" else "xgboost-cpu"]
    assert (found["xgboost"], found["lightgbm"]) == (xgboost.__version__, lightgbm.__version__)


def test_the_three_images_share_one_venv_layer(built: Callable[[str], str]) -> None:
    """The Dockerfiles are the same up to the venv, so the layer cache installed it once:
    serving is those layers alone, base adds git, gpu adds XGBoost's CUDA build to base's."""
    layers = {kind: buildah.diff_ids(built(kind)) for kind in KINDS}
    base, gpu, serving = layers["base"], layers["gpu"], layers["serving"]
    assert base[:-1] == serving and gpu[:-1] == base, layers
