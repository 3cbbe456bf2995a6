"""Conveyor as a dependency: the wheel, installed into a fresh environment, used from a project
that has its own ``components/`` and ``pipelines/`` packages.

The wheel is built from exactly what the base image's Dockerfile copies, and installed with
its ``pip install`` arguments, so this is also the image recipe proven without a container
engine. No editable install and no checkout is on the fresh environment's path.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from conveyor.components.images import BASE_IMAGE, VERSION
from tests.conftest import ROOT
from tests.test_images import DOCKERFILES, PACKAGE, replay_build_stage

README_SECTION = "## Use Conveyor's components in your own pipeline"


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """The base image's build context, as its COPY lines lay it out, and its pip arguments."""
    return replay_build_stage(DOCKERFILES["base"], tmp_path_factory.mktemp("context"))


@pytest.fixture(scope="module")
def wheel(recipe: tuple[Path, list[str]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    source, _ = recipe
    dist = tmp_path_factory.mktemp("dist")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(dist), "."],
        cwd=source, capture_output=True, text=True,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    (path,) = dist.glob("conveyor-*.whl")
    return path


@pytest.fixture(scope="module")
def fresh_python(
    recipe: tuple[Path, list[str]], wheel: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A new venv with the wheel and its pinned dependencies, installed as the image does."""
    source, install = recipe
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    # The image's arguments with the wheel for `.` (its extras kept); the build's pip caches
    # nothing, here a warm cache only saves time.
    arguments = [f"{wheel}{word[1:]}" if PACKAGE.fullmatch(word) else word for word in install]
    arguments = [word for word in arguments if word != "--no-cache-dir"]
    result = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", *arguments],
        cwd=source, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return python


def test_the_wheel_installs_one_top_level_package_with_every_module(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"conveyor", f"conveyor-{VERSION}.dist-info"}
    assert "conveyor/__init__.py" not in names  # a namespace: conveyor has no folder of its own
    tracked = subprocess.run(
        ["git", "ls-files", "components", "pipelines"], cwd=ROOT, capture_output=True, text=True,
        check=True,
    ).stdout.split()  # fmt: skip
    # pyproject lists its packages by hand: a package folder left out would be missing here.
    assert {f"conveyor/{path}" for path in tracked} <= set(names)
    assert "conveyor/components/core/rollout/crds/serving.kserve.io_inferenceservices.yaml" in names
    entry_points = zipfile.ZipFile(wheel).read(f"conveyor-{VERSION}.dist-info/entry_points.txt")
    assert "conveyor = conveyor.pipelines.cli:main" in entry_points.decode()


def readme_example() -> dict[str, str]:
    """The README's own-pipeline example: each Python block, by the file its first line names."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index(README_SECTION) :]
    section = section[: section.index("\n## ", 1)]
    blocks = re.findall(r"```python\n# (\S+)\n(.*?)```", section, re.S)
    return dict(blocks)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A KFP project of someone else's, with its own components/ and pipelines/ packages
    (one module named like Conveyor's), holding the README's example."""
    for package in ("components", "pipelines"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text(f'"""The project\'s own {package}."""\n')
    (tmp_path / "components" / "train.py").write_text("OWNER = 'the project'\n")
    for name, code in readme_example().items():
        (tmp_path / name).write_text(code)
    return tmp_path


def run_in(project: Path, executable: Path, *command: str, **env: str) -> str:
    """Runs ``executable`` of the fresh venv in ``project``, with only that venv on PATH's
    front and no PYTHON* variables of this process; returns its stdout."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    environment |= {"PATH": f"{executable.parent}{os.pathsep}{os.environ['PATH']}", **env}
    done = subprocess.run(
        [str(executable), *command], cwd=project, env=environment, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-4000:])
    return done.stdout


def pipeline_spec(path: Path) -> pipeline_spec_pb2.PipelineSpec:
    document = next(yaml.safe_load_all(path.read_text()))
    return json_format.ParseDict(document, pipeline_spec_pb2.PipelineSpec())


def test_readme_example_has_its_two_files() -> None:
    assert set(readme_example()) == {"components/features.py", "my_pipeline.py"}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_recipe_runs_a_component_from_the_installed_package(
    fresh_python: Path, tmp_path: Path
) -> None:
    run = textwrap.dedent(
        """
        import sys
        from pathlib import Path

        from kfp.dsl import Dataset

        import conveyor.components
        from conveyor.components import IngestOp

        out = Path(sys.argv[1])
        train = Dataset(name="train", uri=str(out / "train"), metadata={})
        test = Dataset(name="test", uri=str(out / "test"), metadata={})
        IngestOp.python_func(
            data_uri="builtin://breast_cancer", target_column="diagnosis", train=train, test=test
        )
        print(Path(conveyor.components.__file__).resolve())
        print(train.metadata["rows"], test.metadata["rows"])
        """
    )
    output = run_in(tmp_path, fresh_python, "-c", run, str(tmp_path))
    location, rows = output.splitlines()[-2:]
    assert Path(location).is_relative_to(fresh_python.parent.parent.resolve()), location
    assert not Path(location).is_relative_to(ROOT), location
    assert rows == "455 114"
    assert len(pd.read_parquet(tmp_path / "train")) == 455
    assert len(pd.read_parquet(tmp_path / "test")) == 114


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_readme_pipeline_compiles_and_runs_from_a_project_with_its_own_components(
    fresh_python: Path, project: Path, mlflow_server: str
) -> None:
    where = run_in(
        project, fresh_python, "-c",
        "import components, conveyor.components; print(components.__file__); "
        "print(conveyor.components.__file__)",
    )  # fmt: skip
    own, installed = where.split()
    assert Path(own).parent == project / "components"
    assert not Path(installed).is_relative_to(ROOT) and "site-packages" in installed

    run_in(project, fresh_python, "my_pipeline.py")
    kubeflow = pipeline_spec(project / "build" / "my-pipeline.kubeflow.yaml")
    assert set(kubeflow.root.dag.tasks) == {
        "ingest", "add-ratio", "add-ratio-2", "train", "evaluate"
    }  # fmt: skip
    documents = list(
        yaml.safe_load_all((project / "build" / "my-pipeline.kubeflow.yaml").read_text())
    )
    executors = documents[0]["deploymentSpec"]["executors"]  # a Struct in the proto
    images = {name: executor["container"]["image"] for name, executor in executors.items()}
    assert set(images.values()) == {BASE_IMAGE}, images
    # apply_step_settings: caching off for ingest and evaluate, train's resources, and on
    # Kubeflow the MLflow Secret for train and evaluate, none of it for the project's step.
    tasks = kubeflow.root.dag.tasks
    assert not tasks["ingest"].caching_options.enable_cache
    assert not tasks["evaluate"].caching_options.enable_cache
    assert tasks["train"].caching_options.enable_cache
    assert executors["exec-train"]["container"]["resources"]["resourceCpuLimit"] == "4"
    assert "resources" not in executors["exec-add-ratio"]["container"]
    secrets = documents[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(secrets) == {"exec-train", "exec-evaluate"}
    vertex_documents = list(
        yaml.safe_load_all((project / "build" / "my-pipeline.vertex.yaml").read_text())
    )
    assert len(vertex_documents) == 1

    output = run_in(
        project, fresh_python, "my_pipeline.py", "--local", MLFLOW_TRACKING_URI=mlflow_server
    )
    assert output.strip().splitlines()[-1] == "blessed: True"
    client = mlflow.MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("my-model")
    (training_run,) = client.search_runs([experiment.experiment_id])
    features = json.loads(
        Path(
            client.download_artifacts(training_run.info.run_id, "model/model.json", str(project))
        ).read_text()
    )["features"]
    assert "mean_area_per_mean_radius" in json.dumps(features)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_component_loaded_from_yaml_runs_beside_the_projects_own_components(
    fresh_python: Path, project: Path
) -> None:
    run_in(project, fresh_python.parent / "conveyor", "compile", "--output-dir", "build")
    script = textwrap.dedent(
        """
        from kfp import components, dsl, local

        ingest = components.load_component_from_file("build/components/ingest.yaml")

        @dsl.pipeline(name="loaded")
        def loaded():
            ingest(data_uri="builtin://breast_cancer", target_column="diagnosis")

        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root="outputs")
        loaded()
        """
    )
    run_in(project, fresh_python, "-c", script)
    (train,) = (project / "outputs").glob("loaded-*/ingest/train")
    assert len(pd.read_parquet(train)) == 455
