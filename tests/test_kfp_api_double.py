"""The KFP API server double, driven through the real ``kfp.Client``.

Submission code is tested against this double, so these tests pin down what it must share
with a KFP 2.17 API server: the multipart uploads, name lookups by filter, runs with their
parameters checked against the pipeline, robfig/cron's reading of schedules, the error
bodies and statuses (401, 403, 409, 400) that kfp_server_api turns into ApiException.
"""

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import kfp
import pytest
import yaml
from kfp import compiler, dsl
from kfp_server_api.exceptions import ApiException

from tests.doubles.kfp_api import API, CronError, KfpApiDouble, parse_cron

TOKEN = "t0ken"
PIPELINE = "hello-pipeline"


# No ``from __future__ import annotations`` here: kfp reads the component's real annotations.
@dsl.component(base_image="python:3.11-slim")
def greet(name: str, times: int) -> str:
    return name * times


@dsl.pipeline(name=PIPELINE, description="says hello")
def hello(name: str = "world", times: int = 2, loud: bool = False) -> None:
    greet(name=name, times=times)


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("kfp") / "hello.yaml"
    compiler.Compiler().compile(hello, str(path))
    return path


@pytest.fixture(autouse=True)
def no_local_context(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """kfp.Client reads ~/.config/kfp/context.json; the tests use their own (absent) one."""
    path = tmp_path / "kfp-context.json"
    monkeypatch.setattr(kfp.Client, "_LOCAL_KFP_CONTEXT", str(path))
    return path


@pytest.fixture
def double() -> Iterator[KfpApiDouble]:
    with KfpApiDouble(token=TOKEN) as server:
        yield server


@pytest.fixture
def client(double: KfpApiDouble) -> kfp.Client:
    return kfp.Client(host=double.url, existing_token=TOKEN)


@pytest.fixture
def uploaded(client: kfp.Client, package: Path) -> tuple[str, str]:
    """The pipeline uploaded once: (pipeline id, its first version's id)."""
    pipeline = client.upload_pipeline(str(package), pipeline_name=PIPELINE, description="first")
    versions = client.list_pipeline_versions(pipeline.pipeline_id).pipeline_versions
    return pipeline.pipeline_id, versions[0].pipeline_version_id


def body(error: ApiException) -> dict[str, Any]:
    return json.loads(error.body)


# -- the happy path ----------------------------------------------------------------------------


def test_upload_version_lookup_experiment_and_run(
    client: kfp.Client, double: KfpApiDouble, package: Path
) -> None:
    pipeline = client.upload_pipeline(str(package), pipeline_name=PIPELINE, description="first")
    assert double.pipelines[pipeline.pipeline_id]["display_name"] == PIPELINE
    assert isinstance(pipeline.created_at, datetime)  # RFC 3339 on the wire
    upload = next(r for r in double.requests if r.path == f"{API}/pipelines/upload")
    assert upload.content_type == "multipart/form-data"
    assert upload.query == {"name": PIPELINE, "description": "first"}
    assert upload.files["uploadfile"] == ("hello.yaml", package.read_bytes())

    version = client.upload_pipeline_version(
        str(package), pipeline_version_name="v2", pipeline_name=PIPELINE
    )
    assert version.pipeline_id == pipeline.pipeline_id
    assert double.versions[version.pipeline_version_id]["name"] == "v2"
    assert client.get_pipeline_id(PIPELINE) == pipeline.pipeline_id
    assert client.get_pipeline_id("no-such-pipeline") is None
    listed = next(r for r in double.requests if r.path == f"{API}/pipelines")
    assert json.loads(listed.query["filter"])["predicates"][0]["key"] == "display_name"

    versions = client.list_pipeline_versions(pipeline.pipeline_id)
    assert [v.display_name for v in versions.pipeline_versions] == [PIPELINE, "v2"]
    by_name = {"predicates": [{"key": "display_name", "operation": "EQUALS", "string_value": "v2"}]}
    found = client.list_pipeline_versions(pipeline.pipeline_id, filter=json.dumps(by_name))
    assert [v.pipeline_version_id for v in found.pipeline_versions] == [version.pipeline_version_id]
    stored = client.get_pipeline_version(pipeline.pipeline_id, version.pipeline_version_id)
    assert stored.pipeline_spec["pipelineInfo"]["name"] == PIPELINE
    assert client.get_pipeline(pipeline.pipeline_id).description == "first"

    experiment = client.create_experiment("nightly", description="every night")
    assert client.create_experiment("nightly").experiment_id == experiment.experiment_id
    assert client.get_experiment(experiment_id=experiment.experiment_id).display_name == "nightly"

    run = client.run_pipeline(
        experiment.experiment_id, "run-1", params={"name": "kfp", "times": 3},
        pipeline_id=pipeline.pipeline_id, version_id=version.pipeline_version_id,
        service_account="pipeline-runner",
    )  # fmt: skip
    recorded = double.runs[run.run_id]
    assert recorded["display_name"] == "run-1"
    assert recorded["experiment_id"] == experiment.experiment_id
    assert recorded["runtime_config"]["parameters"] == {"name": "kfp", "times": 3}
    assert recorded["pipeline_version_reference"] == {
        "pipeline_id": pipeline.pipeline_id,
        "pipeline_version_id": version.pipeline_version_id,
    }
    assert recorded["service_account"] == "pipeline-runner"
    fetched = client.get_run(run.run_id)
    assert (fetched.state, fetched.runtime_config.parameters) == (
        "PENDING",
        {"name": "kfp", "times": 3},
    )
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in double.requests)


def test_run_from_a_package_sends_the_spec_inline(
    client: kfp.Client, double: KfpApiDouble, package: Path
) -> None:
    experiment = client.create_experiment("adhoc")
    run = client.run_pipeline(
        experiment.experiment_id,
        "inline",
        pipeline_package_path=str(package),
        params={"loud": True},
    )
    assert double.runs[run.run_id]["pipeline_spec"]["pipelineInfo"]["name"] == PIPELINE
    assert "pipeline_version_reference" not in double.runs[run.run_id]


@pytest.mark.parametrize(
    ("params", "complaint"),
    [
        ({"times": "3"}, "input parameter times requires type double or integer"),
        ({"loud": 1}, "input parameter loud requires type bool"),
        (
            {"name": "x", "colour": "red"},
            "parameter(s) provided are not required by pipeline: colour",
        ),
    ],
)
def test_run_parameters_are_checked_against_the_pipeline(
    client: kfp.Client, uploaded: tuple[str, str], params: dict[str, Any], complaint: str
) -> None:
    experiment = client.create_experiment("checked")
    with pytest.raises(ApiException) as raised:
        client.run_pipeline(
            experiment.experiment_id, "bad", params=params,
            pipeline_id=uploaded[0], version_id=uploaded[1],
        )  # fmt: skip
    assert raised.value.status == 400
    answer = body(raised.value)
    assert answer["code"] == 3 and complaint in answer["message"]
    assert answer["details"][0]["@type"] == "type.googleapis.com/google.rpc.Status"


# -- recurring runs and robfig/cron --------------------------------------------------------------


def test_recurring_run_on_a_six_field_cron(
    client: kfp.Client, double: KfpApiDouble, uploaded: tuple[str, str]
) -> None:
    experiment = client.create_experiment("scheduled")
    recurring = client.create_recurring_run(
        experiment.experiment_id, "nightly", cron_expression="0 30 2 * * *",
        params={"times": 1}, pipeline_id=uploaded[0], version_id=uploaded[1],
    )  # fmt: skip
    stored = double.recurring_runs[recurring.recurring_run_id]
    assert stored["trigger"] == {"cron_schedule": {"cron": "0 30 2 * * *"}}
    assert stored["runtime_config"]["parameters"] == {"times": 1}
    assert (stored["mode"], stored["status"], stored["max_concurrency"]) == (
        "ENABLE",
        "ENABLED",
        "1",
    )
    listed = client.list_recurring_runs(experiment_id=experiment.experiment_id)
    assert [r.recurring_run_id for r in listed.recurring_runs] == [recurring.recurring_run_id]

    client.disable_recurring_run(recurring.recurring_run_id)
    assert client.get_recurring_run(recurring.recurring_run_id).status == "DISABLED"
    client.delete_recurring_run(recurring.recurring_run_id)
    with pytest.raises(ApiException) as raised:
        client.get_recurring_run(recurring.recurring_run_id)
    assert raised.value.status == 404 and body(raised.value)["code"] == 5


@pytest.mark.parametrize(
    ("cron", "complaint"),
    [
        ("30 2 * * 0", "Beginning of range (0) below minimum (1): 0"),  # weekday read as month
        ("30 2 * * MON", "Failed to parse int from MON"),
        ("30 2 * *", "Expected 5 to 6 fields, found 4: 30 2 * *"),
        ("0 30 2 * * 7", "End of range (7) above maximum (6): 7"),  # robfig knows 0 for Sunday
    ],
)
def test_crons_robfig_refuses_answer_400(
    client: kfp.Client, double: KfpApiDouble, uploaded: tuple[str, str], cron: str, complaint: str
) -> None:
    experiment = client.create_experiment("scheduled")
    with pytest.raises(ApiException) as raised:
        client.create_recurring_run(
            experiment.experiment_id, "nightly", cron_expression=cron,
            pipeline_id=uploaded[0], version_id=uploaded[1],
        )  # fmt: skip
    assert raised.value.status == 400
    assert complaint in body(raised.value)["message"]
    assert double.recurring_runs == {}


def test_a_standard_five_field_cron_is_accepted_and_read_seconds_first(
    client: kfp.Client, double: KfpApiDouble, uploaded: tuple[str, str]
) -> None:
    """robfig/cron v1 makes day of week optional: "30 2 * * *" (02:30 daily in standard
    cron) is taken as second 30, minute 2, every hour; the server does not refuse it."""
    assert parse_cron("30 2 * * *") == ("30", "2", "*", "*", "*", "*")
    experiment = client.create_experiment("scheduled")
    recurring = client.create_recurring_run(
        experiment.experiment_id, "hourly-by-mistake", cron_expression="30 2 * * *",
        pipeline_id=uploaded[0], version_id=uploaded[1],
    )  # fmt: skip
    assert recurring.trigger.cron_schedule.cron == "30 2 * * *"


def test_parse_cron_follows_robfig() -> None:
    assert parse_cron("0 0 9 ? * mon-fri") == ("0", "0", "9", "?", "*", "mon-fri")
    assert parse_cron("*/15 0 0 1 jan,jul *") == ("*/15", "0", "0", "1", "jan,jul", "*")
    assert parse_cron("@every 1h30m") == ("@every 1h30m",)
    for bad, complaint in [
        ("", "Empty spec string"),
        ("@fortnightly", "Unrecognized descriptor: @fortnightly"),
        ("0 0 0 1-2-3 * *", "Too many hyphens: 1-2-3"),
        ("0 */0 * * * *", "Step of range should be a positive number: */0"),
        ("0 0 5-3 * * *", "Beginning of range (5) beyond end of range (3): 5-3"),
        ("0 0 0 0 * * * *", "Expected 5 to 6 fields, found 8"),
    ]:
        with pytest.raises(CronError) as raised:
            parse_cron(bad)
        assert complaint in str(raised.value)


# -- refusals ----------------------------------------------------------------------------------


def test_without_the_token_the_server_answers_401(
    double: KfpApiDouble, no_local_context: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # kfp.Client asks healthz at construction, five times, and gives up.
    monkeypatch.setattr("kfp.client.client.time.sleep", lambda _: None)
    with pytest.raises(TimeoutError):
        kfp.Client(host=double.url)
    assert [r.path for r in double.requests] == [f"{API}/healthz"] * 5

    # With a namespace in its context it skips healthz; the first call is refused.
    no_local_context.write_text(json.dumps({"namespace": "kubeflow"}))
    with pytest.raises(ApiException) as raised:
        kfp.Client(host=double.url, existing_token="wrong").list_pipelines()
    assert raised.value.status == 401
    assert body(raised.value)["code"] == 16
    assert raised.value.headers["WWW-Authenticate"] == "Bearer"


def test_denied_routes_answer_403(
    client: kfp.Client, double: KfpApiDouble, uploaded: tuple[str, str]
) -> None:
    experiment = client.create_experiment("denied")
    double.deny("POST", f"{API}/runs")
    with pytest.raises(ApiException) as raised:
        client.run_pipeline(
            experiment.experiment_id, "no", pipeline_id=uploaded[0], version_id=uploaded[1]
        )
    assert raised.value.status == 403 and body(raised.value)["code"] == 7
    assert double.runs == {}
    assert client.list_runs().runs is None  # other routes still answer


def test_the_api_servers_own_denial_of_an_upload_is_a_400(
    client: kfp.Client, double: KfpApiDouble, package: Path
) -> None:
    double.deny("POST", f"{API}/pipelines/upload", apiserver=True)
    with pytest.raises(ApiException) as raised:
        client.upload_pipeline(str(package), pipeline_name=PIPELINE)
    assert raised.value.status == 400
    assert body(raised.value)["error_message"] == "Failed to create a pipeline"


def test_uploading_an_existing_name_answers_409(
    client: kfp.Client, double: KfpApiDouble, package: Path, uploaded: tuple[str, str]
) -> None:
    with pytest.raises(ApiException) as raised:
        client.upload_pipeline(str(package), pipeline_name=PIPELINE)
    assert raised.value.status == 409
    assert body(raised.value) == {
        "error_message": "Failed to create a pipeline and a pipeline version",
        "error_details": "Failed to create a pipeline and a pipeline version",
    }
    with pytest.raises(ApiException) as raised:
        client.upload_pipeline_version(str(package), PIPELINE, pipeline_id=uploaded[0])
    assert raised.value.status == 409
    assert len(double.pipelines) == 1 and len(double.versions) == 1


@pytest.mark.parametrize(
    ("document", "complaint"),
    [
        ({"components": {}, "deploymentSpec": {}}, "unknown template format"),
        ({"pipelineInfo": {"name": "p"}, "schemaVersion": "2.1.0"}, "unknown template format"),
        (
            {"pipelineInfo": {"name": "p"}, "root": {"dag": {}}, "schemaVersion": "2.0.0"},
            "KFP only supports schema version 2.1.0, but the pipeline spec has version 2.0.0",
        ),
    ],
)
def test_a_package_without_a_pipeline_spec_answers_400(
    client: kfp.Client, double: KfpApiDouble, tmp_path: Path, document: dict, complaint: str
) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(ApiException) as raised:
        client.upload_pipeline(str(path), pipeline_name="broken")
    assert raised.value.status == 400
    assert body(raised.value)["error_message"] == complaint
    assert double.pipelines == {}


def test_transient_failures_and_unimplemented_routes(
    client: kfp.Client, double: KfpApiDouble, uploaded: tuple[str, str]
) -> None:
    double.fail_next("GET", f"{API}/pipelines", status=503)
    with pytest.raises(ApiException) as raised:
        client.get_pipeline_id(PIPELINE)
    assert raised.value.status == 503 and body(raised.value)["code"] == 14
    assert client.get_pipeline_id(PIPELINE) == uploaded[0]

    with pytest.raises(ApiException) as raised:
        client.delete_pipeline(uploaded[0])
    assert raised.value.status == 501
    assert "KfpApiDouble does not implement DELETE" in body(raised.value)["message"]
    with pytest.raises(ApiException) as raised:
        client.get_run("no-such-run")
    assert raised.value.status == 404
    assert body(raised.value)["details"][0]["message"] == "Run no-such-run not found"
