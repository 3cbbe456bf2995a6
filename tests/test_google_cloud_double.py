"""The Google Cloud double refuses what Vertex AI, Artifact Registry and Google's front end
refuse, through the real client libraries."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conveyor.pipelines.definitions.compile import compile_pipeline
from conveyor.pipelines.definitions.targets import Target
from conveyor.pipelines.delivery.gcloud import CLOUD_PLATFORM
from tests.doubles.google_cloud import GoogleCloudDouble

VERTEX = (
    "https://europe-west4-aiplatform.googleapis.com/v1/projects/example-ml/locations/europe-west4"
)
ROOT_URI = "gs://example-ml-pipelines/runs"


@pytest.fixture
def session(google_cloud: GoogleCloudDouble):
    import google.auth
    from google.auth.transport.requests import AuthorizedSession

    credentials, _ = google.auth.default(scopes=[CLOUD_PLATFORM])
    return AuthorizedSession(credentials)


def job_body(tmp_path: Path, target: Target, **runtime: object) -> dict:
    spec = next(yaml.safe_load_all(compile_pipeline(target, tmp_path).read_text()))
    parameters = {"model_store_uri": "gs://b/models", **runtime}
    return {
        "displayName": "job",
        "pipelineSpec": spec,
        "runtimeConfig": {"gcsOutputDirectory": ROOT_URI, "parameterValues": parameters},
    }


def test_vertex_refuses_a_kubeflow_gpu_package_and_mistyped_parameters(
    session, tmp_path: Path
) -> None:
    kubeflow_gpu = job_body(tmp_path / "k", Target("kubeflow", gpus=1))
    answer = session.post(f"{VERTEX}/pipelineJobs", json=kubeflow_gpu)
    assert answer.status_code == 400
    assert (
        "accelerator type 'nvidia.com/gpu', which is not a Vertex AI accelerator"
        in (answer.json()["error"]["message"])
    )
    vertex_gpu = job_body(tmp_path / "v", Target("vertex", gpus=1))
    assert session.post(f"{VERTEX}/pipelineJobs", json=vertex_gpu).status_code == 200
    mistyped = job_body(tmp_path / "v", Target("vertex"), seed="42")
    answer = session.post(f"{VERTEX}/pipelineJobs", json=mistyped)
    assert answer.status_code == 400 and "seed must be of type NUMBER_INTEGER" in answer.text
    missing = job_body(tmp_path / "v", Target("vertex"))
    del missing["runtimeConfig"]["parameterValues"]["model_store_uri"]
    answer = session.post(f"{VERTEX}/pipelineJobs", json=missing)
    assert (
        answer.status_code == 400 and "required input model_store_uri has no value" in answer.text
    )


def test_vertex_schedules_check_cron_and_move_between_states(
    google_cloud: GoogleCloudDouble, session, tmp_path: Path
) -> None:
    job = job_body(tmp_path, Target("vertex"))
    parent = "projects/example-ml/locations/europe-west4"

    def create(cron: str, name: str = "nightly"):
        body = {
            "displayName": name,
            "cron": cron,
            "maxConcurrentRunCount": "1",
            "createPipelineJobRequest": {"parent": parent, "pipelineJob": job},
        }
        return session.post(f"{VERTEX}/schedules", json=body)

    assert "unknown time zone Mars/Olympus" in create("TZ=Mars/Olympus 0 6 * * *").text
    assert "must have 5 fields" in create("0 0 6 * * *").text
    assert "out of range" in create("TZ=UTC 0 24 * * *").text
    created = [create(f"TZ=Europe/Paris {minute} 6 * * 1-5").json() for minute in (0, 30)]
    create("0 7 * * *", name="other")
    listed = session.get(
        f"{VERTEX}/schedules", params={"filter": 'display_name="nightly"', "pageSize": 1}
    )
    page = listed.json()
    assert [s["name"] for s in page["schedules"]] == [created[0]["name"]]
    rest = session.get(
        f"{VERTEX}/schedules",
        params={"filter": 'display_name="nightly"', "pageToken": page["nextPageToken"]},
    ).json()
    assert [s["name"] for s in rest["schedules"]] == [created[1]["name"]]
    name = created[0]["name"]
    url = f"https://europe-west4-aiplatform.googleapis.com/v1/{name}"
    assert session.post(f"{url}:pause").status_code == 200
    assert session.post(f"{url}:pause").status_code == 400  # already paused
    assert google_cloud.vertex.schedules[name]["state"] == "PAUSED"
    operation = session.delete(url).json()
    assert operation["done"] is False and name not in google_cloud.vertex.schedules
    polled = session.get(f"https://europe-west4-aiplatform.googleapis.com/ui/{operation['name']}")
    assert polled.json()["done"] is True


def test_requests_need_an_issued_token_and_the_right_region(
    google_cloud: GoogleCloudDouble, session
) -> None:
    import requests

    anonymous = requests.get(f"{VERTEX}/schedules")
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["status"] == "UNAUTHENTICATED"
    wrong_region = session.get(
        "https://us-central1-aiplatform.googleapis.com/v1/projects/example-ml/locations/"
        "europe-west4/schedules"
    )
    assert wrong_region.status_code == 400
    other_project = session.get(
        "https://europe-west4-aiplatform.googleapis.com/v1/projects/someone-else/locations/"
        "europe-west4/schedules"
    )
    assert other_project.status_code == 403


def test_artifact_registry_moves_tags_on_upload_and_serves_versions(
    google_cloud: GoogleCloudDouble, tmp_path: Path
) -> None:
    import google.auth
    import requests
    from kfp.registry import RegistryClient

    credentials, _ = google.auth.default(scopes=[CLOUD_PLATFORM])
    client = RegistryClient(
        host="https://europe-west4-kfp.pkg.dev/example-ml/pipelines", auth=credentials
    )
    first = compile_pipeline(Target("vertex"), tmp_path / "a")
    second = compile_pipeline(
        Target("vertex", image_registry="registry.example/ml"), tmp_path / "b"
    )
    name, version_a = client.upload_pipeline(str(first), tags=["stable"])
    _, version_b = client.upload_pipeline(str(second), tags=["stable", "v2"])
    assert name == "conveyor-training" and version_a != version_b
    assert client.get_tag(name, "stable")["version"].endswith(f"/versions/{version_b}")
    fetched = client.download_pipeline(name, version=version_a, file_name=str(tmp_path / "x.yaml"))
    assert Path(fetched).read_bytes() == first.read_bytes()
    with pytest.raises(requests.HTTPError) as missing:
        client.get_tag(name, "v9")
    assert missing.value.response.status_code == 404
    unknown = RegistryClient(
        host="https://europe-west4-kfp.pkg.dev/example-ml/nowhere", auth=credentials
    )
    with pytest.raises(requests.HTTPError) as absent:
        unknown.upload_pipeline(str(first))
    assert absent.value.response.status_code == 404
