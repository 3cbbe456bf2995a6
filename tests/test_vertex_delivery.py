"""conveyor submit / schedule --target vertex and conveyor publish, with the real
google-auth, google-cloud-aiplatform, google-cloud-storage and kfp.registry clients talking
to the Google Cloud double through its HTTPS proxy."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from conveyor.pipelines.cli import main
from conveyor.pipelines.definitions.compile import compile_pipeline
from conveyor.pipelines.definitions.targets import Target
from tests.conftest import ROOT
from tests.doubles.google_cloud import GoogleCloudDouble

DEV = str(ROOT / "configs" / "dev.yaml")
VERTEX = "europe-west4-aiplatform.googleapis.com"
REPO = "https://europe-west4-kfp.pkg.dev/example-ml/pipelines"
ROOT_URI = "gs://example-ml-pipelines/runs"
COMMON = (
    "--target", "vertex", "--project", "example-ml", "--region", "europe-west4",
    "--pipeline-root", ROOT_URI, "--params", DEV,
)  # fmt: skip


def conveyor(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def compiled_vertex_yaml(tmp_path: Path) -> dict:
    return yaml.safe_load(compile_pipeline(Target("vertex"), tmp_path / "build").read_text())


def paths(google_cloud: GoogleCloudDouble, host: str) -> list[str]:
    return [f"{request.method} {request.path}" for request in google_cloud.sent(host)]


def test_submit_creates_a_job_from_this_checkouts_vertex_yaml(
    google_cloud: GoogleCloudDouble, capsys, tmp_path: Path
) -> None:
    code, out, err = conveyor(
        capsys, "submit", *COMMON, "--job-label", "team=fraud", "--run-name", "nightly",
        "--service-account", "trainer@example-ml.iam.gserviceaccount.com",
    )  # fmt: skip
    assert code == 0, err
    (job,) = google_cloud.vertex.pipeline_jobs.values()
    job_id = job["name"].rsplit("/", 1)[1]
    compiled = compile_pipeline(Target("vertex"), tmp_path / "build")
    digest = hashlib.sha256(compiled.read_bytes()).hexdigest()[:12]
    assert out.strip() == (
        f"pipeline job {job_id} (nightly) of training.vertex.yaml (sha256:{digest}...): "
        f"https://console.cloud.google.com/vertex-ai/locations/europe-west4/pipelines/runs/"
        f"{job_id}?project=example-ml"
    )
    assert job["pipelineSpec"] == yaml.safe_load(compiled.read_text())
    assert job["displayName"] == "nightly" and job["labels"] == {"team": "fraud"}
    assert job["serviceAccount"] == "trainer@example-ml.iam.gserviceaccount.com"
    runtime = job["runtimeConfig"]
    assert runtime["gcsOutputDirectory"] == ROOT_URI
    assert runtime["parameterValues"]["model_store_uri"] == "gs://example-ml-dev/models"
    assert runtime["parameterValues"]["canary_interval_s"] == 30
    # Reads first: the project and the pipeline root's bucket, then the one write.
    hosts = [request.host for request in google_cloud.requests]
    assert hosts.index("cloudresourcemanager.googleapis.com") < hosts.index(VERTEX)
    assert hosts.index("storage.googleapis.com") < hosts.index(VERTEX)
    tokens = {
        request.token
        for request in google_cloud.requests
        if request.host != "oauth2.googleapis.com"
    }
    assert tokens and all(token.startswith("ya29.") for token in tokens)


def test_schedule_sends_tz_cron_and_refuses_a_second_of_the_same_name(
    google_cloud: GoogleCloudDouble, capsys
) -> None:
    code, out, err = conveyor(
        capsys, "schedule", *COMMON, "--cron", "0 6 * * mon-fri", "--timezone", "Europe/Paris",
        "--max-concurrent", "3",
    )  # fmt: skip
    assert code == 0, err
    ((name, schedule),) = google_cloud.vertex.schedules.items()
    assert schedule["cron"] == "TZ=Europe/Paris 0 6 * * 1-5"
    assert int(schedule["maxConcurrentRunCount"]) == 3
    assert schedule["displayName"] == "conveyor-training-dev"  # named for its --params file
    job = schedule["createPipelineJobRequest"]["pipelineJob"]
    assert job["runtimeConfig"]["parameterValues"]["namespace"] == "ml-dev"
    schedule_id = name.rsplit("/", 1)[1]
    assert out.startswith(f"schedule {schedule_id} (conveyor-training-dev, TZ=Europe/Paris")
    assert out.strip().endswith(f"/pipelines/schedules/{schedule_id}?project=example-ml")

    code, _, err = conveyor(capsys, "schedule", *COMMON, "--cron", "0 7 * * *")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert (
        f"a schedule named 'conveyor-training-dev' already exists ({schedule_id}): pass "
        "--replace" in err
    )
    assert list(google_cloud.vertex.schedules) == [name]
    assert (
        paths(google_cloud, VERTEX).count(
            "POST /v1/projects/example-ml/locations/europe-west4/schedules"
        )
        == 1
    )


def test_replace_pauses_the_old_schedule_creates_the_new_then_deletes_the_old(
    google_cloud: GoogleCloudDouble, capsys
) -> None:
    assert conveyor(capsys, "schedule", *COMMON, "--cron", "0 6 * * *")[0] == 0
    (old,) = google_cloud.vertex.schedules
    code, out, err = conveyor(capsys, "schedule", *COMMON, "--cron", "30 6 * * *", "--replace")
    assert code == 0, err
    ((new, schedule),) = google_cloud.vertex.schedules.items()
    assert new != old and schedule["state"] == "ACTIVE" and schedule["cron"] == "TZ=UTC 30 6 * * *"
    old_id = old.rsplit("/", 1)[1]
    assert out.strip().splitlines()[-1] == f"replaced schedule {old_id}: paused, then deleted"
    sent = paths(google_cloud, VERTEX)
    pause, delete = f"POST /v1/{old}:pause", f"DELETE /v1/{old}"
    create = "POST /v1/projects/example-ml/locations/europe-west4/schedules"
    assert sent.index(pause) < len(sent) - 1 - sent[::-1].index(create) < sent.index(delete)


def test_a_replace_that_cannot_create_leaves_the_old_schedule_running(
    google_cloud: GoogleCloudDouble, capsys
) -> None:
    assert conveyor(capsys, "schedule", *COMMON, "--cron", "0 6 * * *")[0] == 0
    google_cloud.deny("POST", VERTEX, "/v1/projects/example-ml/locations/europe-west4/schedules")
    code, _, err = conveyor(capsys, "schedule", *COMMON, "--cron", "30 6 * * *", "--replace")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("conveyor schedule: permission denied (403): cannot create the schedule")
    ((old, schedule),) = google_cloud.vertex.schedules.items()
    assert schedule["state"] == "ACTIVE" and schedule["cron"] == "TZ=UTC 0 6 * * *"
    assert f"POST /v1/{old}:resume" in paths(google_cloud, VERTEX)


def test_publish_uploads_once_per_tag_and_refuses_to_move_a_tag(
    google_cloud: GoogleCloudDouble, capsys, tmp_path: Path
) -> None:
    code, out, err = conveyor(
        capsys, "publish", "--target", "vertex", "--repo", REPO, "--tag", "v1"
    )
    assert code == 0, err
    package = google_cloud.registry.packages[("europe-west4", "pipelines", "conveyor-training")]
    (version,) = package["versions"]
    assert package["tags"] == {"v1": version}
    assert yaml.safe_load(package["versions"][version]) == compiled_vertex_yaml(tmp_path)
    assert out.splitlines()[0] == f"published: {REPO}/conveyor-training/{version} (tag v1)"

    code, out, _ = conveyor(capsys, "publish", "--target", "vertex", "--repo", REPO, "--tag", "v1")
    assert code == 0 and out.startswith("already published:")
    code, _, err = conveyor(
        capsys, "publish", "--target", "vertex", "--repo", REPO, "--tag", "v1",
        "--image-registry", "registry.example/ml",
    )  # fmt: skip
    assert code == 2 and f"tag v1 of conveyor-training in {REPO} already names {version}" in err
    uploads = [r for r in google_cloud.sent("-kfp.pkg.dev") if r.method == "POST"]
    assert len(uploads) == 1 and list(package["versions"]) == [version]


def test_scheduling_a_tag_pins_the_schedule_to_its_version(
    google_cloud: GoogleCloudDouble, capsys
) -> None:
    assert conveyor(capsys, "publish", "--target", "vertex", "--repo", REPO, "--tag", "v1")[0] == 0
    package = google_cloud.registry.packages[("europe-west4", "pipelines", "conveyor-training")]
    (version,) = package["versions"]
    code, out, err = conveyor(
        capsys, "schedule", *COMMON, "--cron", "@daily",
        "--template", f"{REPO}/conveyor-training/v1",
    )  # fmt: skip
    assert code == 0, err
    (schedule,) = google_cloud.vertex.schedules.values()
    job = schedule["createPipelineJobRequest"]["pipelineJob"]
    assert job["templateUri"] == f"{REPO}/conveyor-training/{version}"
    assert job["pipelineSpec"] == yaml.safe_load(package["versions"][version])
    assert f"of {REPO}/conveyor-training/{version}:" in out


@pytest.mark.parametrize("signature", [{"text": {"parameterType": "STRING"}}, {}])
def test_parameters_are_checked_against_the_published_templates_own_signature(
    google_cloud: GoogleCloudDouble, capsys, tmp_path: Path, signature: dict
) -> None:
    older = compiled_vertex_yaml(tmp_path)  # an older release with other parameters, or none
    older["root"]["inputDefinitions"] = {"parameters": signature}
    content = yaml.safe_dump(older).encode()
    google_cloud.registry.packages[("europe-west4", "pipelines", "conveyor-training")] = {
        "versions": {"sha256:" + "0" * 64: content},
        "tags": {"v0": "sha256:" + "0" * 64},
    }
    google_cloud.registry.created["sha256:" + "0" * 64] = "2026-01-01T00:00:00Z"
    code, _, err = conveyor(capsys, "submit", *COMMON, "--template", f"{REPO}/conveyor-training/v0")
    # Each of the file's parameters the older template lacks, named on a line of its own.
    names = yaml.safe_load(Path(DEV).read_text())
    assert code == 2 and err.splitlines()[: len(names)] == [
        f"conveyor submit: {DEV}: {name!r} is not a parameter of the pipeline" for name in names
    ]
    required = [f"conveyor submit: {DEV}: {name!r} is required (text)" for name in signature]
    assert err.splitlines()[len(names) :] == required
    assert google_cloud.vertex.pipeline_jobs == {}


def test_dry_run_prints_what_would_be_sent_without_credentials_or_requests(
    google_cloud: GoogleCloudDouble, capsys, monkeypatch
) -> None:
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS")
    code, out, err = conveyor(
        capsys, "schedule", *COMMON, "--cron", "0 6 * * 1-5", "--timezone", "Europe/Paris",
        "--job-label", "env=dev", "--replace", "--dry-run",
    )  # fmt: skip
    assert code == 0, err
    sent = json.loads(out)
    assert sent["cron"] == "TZ=Europe/Paris 0 6 * * 1-5" and sent["replace"] is True
    assert sent["display_name"] == "conveyor-training-dev" and sent["labels"] == {"env": "dev"}
    assert sent["parameters"]["namespace"] == "ml-dev" and sent["pipeline_root"] == ROOT_URI
    assert sent["template"].startswith("training.vertex.yaml (sha256:")
    code, out, _ = conveyor(
        capsys, "publish", "--target", "vertex", "--repo", REPO, "--tag", "v2", "--dry-run"
    )
    assert code == 0 and json.loads(out)["tag"] == "v2"
    assert google_cloud.requests == []


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (("schedule", *COMMON, "--cron", "0 6 * * *", "--timezone", "Mars/Olympus"),
         "--timezone 'Mars/Olympus' is not an IANA time zone"),
        (("schedule", *COMMON, "--cron", "0 6 * *"), "cron '0 6 * *' has 4 fields"),
        (("submit", *COMMON, "--project", "Example_ML"), "--project 'Example_ML' is not a project id"),
        (("submit", *COMMON, "--region", "europe-west99"), "--region 'europe-west99' is not a Vertex AI region"),
        (("schedule", *COMMON, "--cron", "@daily", "--schedule-name", 'a"b'), "the name 'a\"b' must be 1 to 128 characters, without quotes"),
        (("submit", *COMMON, "--pipeline-root", "s3://bucket/x"), "--pipeline-root 's3://bucket/x': expected gs://BUCKET/PATH"),
        (("submit", *COMMON, "--job-label", "Team=Fraud"), "Team=Fraud: keys and values are lowercase"),
        (("submit", *COMMON, "--service-account", "me@example.com"), "--service-account 'me@example.com' is not a service account email"),
        (("submit", *COMMON, "--host", "http://kfp"), "--host does not apply to --target vertex"),
        (("submit", "--target", "vertex", "--project", "example-ml", "--pipeline-root", ROOT_URI), "--region is required with --target vertex"),
        (("schedule", "--target", "kubeflow", "--host", "http://kfp", "--cron", "0 6 * * *", "--replace"), "--replace does not apply to --target kubeflow"),
        (("submit", *COMMON, "--template", "https://example.com/x.yaml"), "--template 'https://example.com/x.yaml': expected https://REGION-kfp.pkg.dev"),
        (("publish", "--target", "vertex", "--repo", REPO, "--tag", "sha256:abc"), "tag 'sha256:abc' must be letters"),
        (("publish", "--target", "vertex", "--repo", "https://pkg.dev/p", "--tag", "v1"), "--repo 'https://pkg.dev/p': expected an Artifact Registry KFP repository"),
    ],
)  # fmt: skip
def test_bad_settings_stop_before_anything_is_sent(
    google_cloud: GoogleCloudDouble, capsys, command, message
) -> None:
    code, _, err = conveyor(capsys, *command)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert message in err
    assert google_cloud.requests == []


def test_missing_refused_and_denied_credentials_are_each_one_line(
    google_cloud: GoogleCloudDouble, capsys, monkeypatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "absent.json"))
    code, _, err = conveyor(capsys, "submit", *COMMON)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("conveyor submit: GOOGLE_APPLICATION_CREDENTIALS: File ")
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS")
    code, _, err = conveyor(capsys, "submit", *COMMON)
    assert code == 2 and err.startswith("conveyor submit: no Google Cloud credentials found")
    monkeypatch.setenv(
        "GOOGLE_APPLICATION_CREDENTIALS",
        google_cloud.environment()["GOOGLE_APPLICATION_CREDENTIALS"],
    )
    google_cloud.deny("POST", VERTEX, "/v1/projects/example-ml/locations/europe-west4/pipelineJobs")
    code, _, err = conveyor(capsys, "submit", *COMMON)
    assert code == 2 and err.startswith(
        "conveyor submit: permission denied (403): cannot create the pipeline job"
    )
    google_cloud.deny(
        "POST", VERTEX, "/v1/projects/example-ml/locations/europe-west4/schedules", status=401
    )
    code, _, err = conveyor(capsys, "schedule", *COMMON, "--cron", "@daily")
    assert code == 2 and err.startswith(
        "conveyor schedule: Vertex AI refused the credentials (401) when trying to create the schedule"
    )
    google_cloud.deny("GET", "artifactregistry.googleapis.com", status=401)
    code, _, err = conveyor(capsys, "publish", "--target", "vertex", "--repo", REPO, "--tag", "v1")
    assert code == 2 and err.startswith(
        "conveyor publish: Artifact Registry refused the credentials (401) when trying to read tag v1"
    )
    google_cloud.revoke()
    code, _, err = conveyor(capsys, "submit", *COMMON)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith(
        "conveyor submit: Google Cloud refused the credentials (Token has been expired or revoked.)"
    )
    assert google_cloud.vertex.pipeline_jobs == {} and google_cloud.vertex.schedules == {}
    assert google_cloud.registry.packages == {}


def test_a_pipeline_root_bucket_of_another_project_is_refused_before_the_job(
    google_cloud: GoogleCloudDouble, capsys
) -> None:
    google_cloud.buckets["squatted-bucket"] = "999999999999"
    code, _, err = conveyor(capsys, "submit", *COMMON, "--pipeline-root", "gs://squatted-bucket/x")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert (
        "bucket squatted-bucket belongs to another project (number 999999999999), not "
        "example-ml (123456789012)"
    ) in err
    assert google_cloud.sent(VERTEX) == []


def test_a_missing_pipeline_root_bucket_is_refused_before_the_job(
    google_cloud: GoogleCloudDouble, capsys
) -> None:
    code, _, err = conveyor(capsys, "submit", *COMMON, "--pipeline-root", "gs://nowhere-bucket/x")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "bucket nowhere-bucket does not exist; create it in project example-ml" in err
    assert google_cloud.sent(VERTEX) == []


def test_an_unreachable_google_cloud_is_one_line(
    google_cloud: GoogleCloudDouble, capsys, monkeypatch
) -> None:
    for name in ("HTTPS_PROXY", "https_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    code, _, err = conveyor(capsys, "submit", *COMMON)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("conveyor submit: Google Cloud is unreachable (get an access token)")


NO_PROMETHEUS = (
    "no Prometheus URL to judge the canary with (prometheus_url, --prometheus): give one, or "
    "set analysis: none in the canary policy to roll out unjudged"
)


def test_settings_deploy_would_refuse_stop_the_submission(
    google_cloud: GoogleCloudDouble, capsys, tmp_path: Path
) -> None:
    params = tmp_path / "steps.yaml"
    params.write_text("model_store_uri: gs://b/m\ncanary_steps: '50,10'\n")
    code, _, err = conveyor(capsys, "submit", *COMMON, "--params", str(params))
    assert code == 2
    assert err.strip().splitlines() == [
        f"conveyor submit: {params}: canary steps [50, 10] must increase",
        f"conveyor submit: {params}: {NO_PROMETHEUS}",
    ]
    assert google_cloud.requests == []


def two_schedules_of_one_name(google_cloud: GoogleCloudDouble, capsys) -> list[str]:
    """Two active schedules named conveyor-training-dev (made by hand, as Conveyor refuses)."""
    assert conveyor(capsys, "schedule", *COMMON, "--cron", "0 6 * * *")[0] == 0
    ((first, schedule),) = google_cloud.vertex.schedules.items()
    second = first.rsplit("/", 1)[0] + "/999"
    google_cloud.vertex.schedules[second] = dict(schedule, name=second)
    return [first, second]


def test_a_pause_failing_part_way_resumes_what_it_paused(
    google_cloud: GoogleCloudDouble, capsys
) -> None:
    first, second = two_schedules_of_one_name(google_cloud, capsys)
    google_cloud.deny("POST", VERTEX, f"/v1/{second}:pause")
    code, _, err = conveyor(capsys, "schedule", *COMMON, "--cron", "30 6 * * *", "--replace")
    assert code == 2 and err.startswith(
        "conveyor schedule: permission denied (403): cannot pause schedule 999"
    )
    states = {name: s["state"] for name, s in google_cloud.vertex.schedules.items()}
    assert states == {first: "ACTIVE", second: "ACTIVE"}
    assert f"POST /v1/{first}:resume" in paths(google_cloud, VERTEX)


def test_a_resume_that_fails_too_is_named_with_the_first_failure(
    google_cloud: GoogleCloudDouble, capsys
) -> None:
    assert conveyor(capsys, "schedule", *COMMON, "--cron", "0 6 * * *")[0] == 0
    (old,) = google_cloud.vertex.schedules
    google_cloud.deny("POST", VERTEX, "/v1/projects/example-ml/locations/europe-west4/schedules")
    google_cloud.deny("POST", VERTEX, f"/v1/{old}:resume")
    code, _, err = conveyor(capsys, "schedule", *COMMON, "--cron", "30 6 * * *", "--replace")
    assert code == 2 and len(err.strip().splitlines()) == 1
    old_id = old.rsplit("/", 1)[1]
    assert "cannot create the schedule" in err
    assert f"; and schedule {old_id} stays paused (permission denied (403): cannot resume" in err


def test_a_replaced_schedule_that_cannot_be_deleted_is_reported_paused(
    google_cloud: GoogleCloudDouble, capsys
) -> None:
    assert conveyor(capsys, "schedule", *COMMON, "--cron", "0 6 * * *")[0] == 0
    (old,) = google_cloud.vertex.schedules
    google_cloud.deny("DELETE", VERTEX, f"/v1/{old}")
    code, out, err = conveyor(capsys, "schedule", *COMMON, "--cron", "30 6 * * *", "--replace")
    assert code == 1
    (new,) = set(google_cloud.vertex.schedules) - {old}
    assert out.startswith(f"schedule {new.rsplit('/', 1)[1]} (conveyor-training-dev")
    assert f"replaced schedule {old.rsplit('/', 1)[1]} is paused but not deleted" in err
    assert google_cloud.vertex.schedules[old]["state"] == "PAUSED"
    assert google_cloud.vertex.schedules[new]["state"] == "ACTIVE"


def test_a_published_template_is_held_to_deploys_settings_too(
    google_cloud: GoogleCloudDouble, capsys, tmp_path: Path
) -> None:
    assert conveyor(capsys, "publish", "--target", "vertex", "--repo", REPO, "--tag", "v1")[0] == 0
    params = tmp_path / "steps.yaml"
    params.write_text("model_store_uri: gs://b/m\ncanary_steps: '50,10'\n")
    template = ("--template", f"{REPO}/conveyor-training/v1")
    code, _, err = conveyor(capsys, "submit", *COMMON, *template, "--params", str(params))
    assert code == 2
    assert err.strip().splitlines() == [
        f"conveyor submit: {params}: canary steps [50, 10] must increase",
        f"conveyor submit: {params}: {NO_PROMETHEUS}",
    ]
    assert google_cloud.vertex.pipeline_jobs == {}
    before = len(google_cloud.requests)
    code, out, err = conveyor(capsys, "submit", *COMMON, *template, "--dry-run")
    assert code == 0 and json.loads(out)["template"] == f"{REPO}/conveyor-training/v1"
    assert "a dry run does not read" in err and len(google_cloud.requests) == before


def test_an_upload_that_cannot_be_tagged_is_removed_again(
    google_cloud: GoogleCloudDouble, capsys
) -> None:
    tags = "/v1/projects/example-ml/locations/europe-west4/repositories/pipelines/packages"
    google_cloud.deny("POST", "artifactregistry.googleapis.com", tags)
    code, _, err = conveyor(capsys, "publish", "--target", "vertex", "--repo", REPO, "--tag", "v1")
    assert code == 2 and "permission denied (403): cannot tag sha256:" in err
    package = google_cloud.registry.packages[("europe-west4", "pipelines", "conveyor-training")]
    assert package == {"versions": {}, "tags": {}}
