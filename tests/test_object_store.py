"""An ``s3://`` model store on a real S3-protocol server (moto's server mode, its own process):
register publishes the model there, KServe's storage initializer's download brings it back,
Conveyor's predictor serves it, and a wrong key or a missing bucket stops register in one line
with nothing registered.

The server checks signatures (moto's IAM authentication, switched on once the bucket and a
user's key exist), so a wrong key is refused as a real store refuses it. Every client reaches
the server as a user of MinIO or another S3-compatible store configures it: ``AWS_ENDPOINT_URL``
and the ``AWS_*`` key variables, which botocore (under s3fs and boto3) and KServe's storage
initializer read.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
from mlflow import MlflowClient

from conveyor.components.core.errors import ConveyorError
from conveyor.components.core.training.registry import (
    CHAMPION_ALIAS,
    Registration,
    register_model,
)
from conveyor.components.core.training.trainer import MODEL_CARD, load_model_dir
from tests.conftest import (
    free_port,
    multiclass_table,
    predictor,
    train_species_model,
    wait_for_http,
)

pytest.importorskip("moto.server", reason="moto[server] (in the dev extra) is not installed")

BUCKET = "conveyor-models"
REGION = "us-east-1"
STORE = f"s3://{BUCKET}/models"
ROWS = multiclass_table(seed=5).drop(columns="species").dropna().head(20)


@dataclass(frozen=True)
class S3Server:
    url: str
    key_id: str
    secret: str

    def environment(self, **overrides: str) -> dict[str, str]:
        """What a register step or a storage initializer using this store is given."""
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": self.key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_DEFAULT_REGION": REGION,
            **overrides,
        }

    def client(self):
        """A boto3 S3 client with the good key, for looking at what landed."""
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.url, region_name=REGION,
            aws_access_key_id=self.key_id, aws_secret_access_key=self.secret,
        )  # fmt: skip


@dataclass(frozen=True)
class Published:
    name: str
    model_dir: Path
    sha256: str
    model_file: str
    run_id: str
    registration: Registration


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server with one bucket and one IAM user's key allowed ``s3:*``; every
    request is authenticated from then on."""
    import boto3

    root = tmp_path_factory.mktemp("s3-server")
    port = free_port()
    log = root / "moto.log"
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with log.open("w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, cwd=root)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/moto-api/", process, timeout=60, log=log)
        # Until authentication is on, any key is accepted: set the store up with one.
        setup = {"endpoint_url": url, "region_name": REGION,
                 "aws_access_key_id": "setup", "aws_secret_access_key": "setup"}  # fmt: skip
        iam = boto3.client("iam", **setup)
        iam.create_user(UserName="conveyor")
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
        iam.put_user_policy(UserName="conveyor", PolicyName="s3", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="conveyor")["AccessKey"]
        boto3.client("s3", **setup).create_bucket(Bucket=BUCKET)
        # moto's switch for IAM authentication: how many more requests go unchecked.
        switch = httpx.post(
            f"{url}/moto-api/reset-auth", content=b"0", headers={"content-type": "text/plain"}
        )
        switch.raise_for_status()
        yield S3Server(url, key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        process.terminate()
        process.wait(timeout=30)


def use_store(monkeypatch: pytest.MonkeyPatch, server: S3Server, **overrides: str) -> None:
    """This process's environment as a pod's using ``server``, and nothing of the machine's
    own AWS configuration."""
    import s3fs

    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CA_BUNDLE", "S3_VERIFY_SSL"):
        monkeypatch.delenv(name, raising=False)
    missing = Path(os.devnull) / "none"
    monkeypatch.setenv("AWS_CONFIG_FILE", str(missing))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(missing))
    for name, value in server.environment(**overrides).items():
        monkeypatch.setenv(name, value)
    # fsspec keeps one S3FileSystem per set of arguments, with the credentials it read when
    # made: a changed environment needs a new one.
    s3fs.S3FileSystem.clear_instance_cache()


def register(directory: Path, server: str, name: str, run_id: str, store: str) -> Registration:
    """Register's core for a model ``train_species_model`` trained into ``directory/a``, as if
    evaluate had blessed it with no champion."""
    verdict = {"blessed": True, "reason": "test", "metrics": {"accuracy": 0.9}}
    (directory / "a" / "evaluation.json").write_text(json.dumps(verdict))
    return register_model(
        directory / "a" / "model", directory / "a" / "evaluation.json", name, server, run_id,
        store, "pipeline-a", "hash-1",
    )  # fmt: skip


@pytest.fixture(scope="module")
def published(
    s3_server: S3Server, mlflow_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Published]:
    """A model trained, and registered with the s3:// store, once for the module."""
    directory = tmp_path_factory.mktemp("s3-published")
    name = f"s3-model-{uuid.uuid4().hex[:8]}"
    with pytest.MonkeyPatch.context() as monkeypatch:
        use_store(monkeypatch, s3_server)
        trained = train_species_model(directory, mlflow_server, name, multiclass_table(), "a")
        registration = register(directory, mlflow_server, name, trained.run_id, STORE)
        card = trained.card
        yield Published(
            name, directory / "a" / "model", card.sha256, card.model_file, trained.run_id,
            registration,
        )  # fmt: skip


def storage_initializer_download(uri: str, out_dir: Path) -> Path:
    """Downloads an s3:// model directory as KServe's storage initializer does
    (``kserve_storage.Storage._download_s3`` in kserve-storage 0.21).

    kserve-storage itself cannot be installed beside Conveyor (every release requires
    google-cloud-storage<3; in a cluster it runs in its own image), so this follows its
    steps: a boto3 resource on ``AWS_ENDPOINT_URL`` with the ``AWS_*`` credentials, the
    bucket checked, and every object under the URI's prefix that is not a folder marker or
    empty saved under its key relative to the prefix.
    """
    import boto3

    parsed = urlparse(uri)
    bucket_name, prefix = parsed.netloc, parsed.path.lstrip("/")
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    s3 = boto3.resource("s3", **({"endpoint_url": endpoint} if endpoint else {}))
    s3.meta.client.head_bucket(Bucket=bucket_name)
    bucket = s3.Bucket(bucket_name)
    for entry in bucket.objects.filter(Prefix=prefix):
        if entry.key.endswith("/") or entry.size == 0:
            continue
        target = out_dir / entry.key.removeprefix(prefix).lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        bucket.download_file(entry.key, str(target))
    return out_dir


def test_register_publishes_the_model_into_the_s3_store(
    published: Published, s3_server: S3Server, mlflow_server: str
) -> None:
    prefix = f"models/{published.name}/{published.sha256[:16]}"
    assert published.registration.storage_uri == f"s3://{BUCKET}/{prefix}"
    client = s3_server.client()
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=f"models/{published.name}/")
    keys = {entry["Key"] for entry in listed.get("Contents", [])}
    assert keys == {f"{prefix}/{MODEL_CARD}", f"{prefix}/{published.model_file}"}
    card = client.get_object(Bucket=BUCKET, Key=f"{prefix}/{MODEL_CARD}")["Body"].read()
    assert card == (published.model_dir / MODEL_CARD).read_bytes()
    assert json.loads(card)["sha256"] == published.sha256
    model = client.get_object(Bucket=BUCKET, Key=f"{prefix}/{published.model_file}")["Body"]
    assert hashlib.sha256(model.read()).hexdigest() == published.sha256
    version = MlflowClient(mlflow_server).get_model_version_by_alias(published.name, CHAMPION_ALIAS)
    assert version.tags["storage_uri"] == f"s3://{BUCKET}/{prefix}"
    assert version.tags["sha256"] == published.sha256
    assert version.source == f"runs:/{published.run_id}/model"


def test_the_store_copy_downloaded_as_kserve_does_serves_the_model_s_own_predictions(
    published: Published, s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_store(monkeypatch, s3_server)
    local = storage_initializer_download(published.registration.storage_uri, tmp_path / "models")
    assert {path.name for path in local.iterdir()} == {MODEL_CARD, published.model_file}
    expected = list(load_model_dir(published.model_dir).pipeline.predict(ROWS))
    with predictor(local, published.name, "s3-model-00001", tmp_path / "predictor.log") as url:
        v1 = httpx.post(
            f"{url}/v1/models/{published.name}:predict",
            json={"instances": ROWS.to_dict("records")},
        )
        assert v1.status_code == 200, v1.text
        assert v1.json()["predictions"] == expected
        kinds = {"f": "FP64", "O": "BYTES"}
        inputs = [
            {"name": column, "shape": [len(ROWS)], "datatype": kinds[ROWS[column].dtype.kind],
             "data": ROWS[column].tolist()}
            for column in ROWS.columns
        ]  # fmt: skip
        v2 = httpx.post(f"{url}/v2/models/{published.name}/infer", json={"inputs": inputs})
        assert v2.status_code == 200, v2.text
        outputs = {output["name"]: output["data"] for output in v2.json()["outputs"]}
        assert outputs["predictions"] == expected


@pytest.mark.parametrize(
    ("store", "overrides", "reason"),
    [
        (STORE, {"AWS_ACCESS_KEY_ID": "AKIAWRONGWRONGWRONG0", "AWS_SECRET_ACCESS_KEY": "wrong"},
         "PermissionError: "),
        ("s3://conveyor-no-such-bucket/models", {},
         "FileNotFoundError: The specified bucket does not exist"),
    ],
    ids=["wrong-key", "missing-bucket"],
)  # fmt: skip
def test_a_store_that_refuses_the_model_fails_register_in_one_line_with_nothing_registered(
    store: str,
    overrides: dict[str, str],
    reason: str,
    s3_server: S3Server,
    mlflow_server: str,
    model_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    use_store(monkeypatch, s3_server)
    trained = train_species_model(tmp_path, mlflow_server, model_name, multiclass_table(), "a")
    use_store(monkeypatch, s3_server, **overrides)
    destination = f"{store}/{model_name}/{trained.card.sha256[:16]}"
    with pytest.raises(ConveyorError) as failure:
        register(tmp_path, mlflow_server, model_name, trained.run_id, store)
    message = str(failure.value)
    assert message.startswith(f"cannot publish the model to {destination}: {reason}")
    assert "\n" not in message
    client = MlflowClient(mlflow_server)
    assert client.search_registered_models(f"name = '{model_name}'") == []
    assert client.search_model_versions(f"name = '{model_name}'") == []
    # A mistyped bucket is not quietly created (s3fs's makedirs would create it).
    buckets = {bucket["Name"] for bucket in s3_server.client().list_buckets()["Buckets"]}
    assert buckets == {BUCKET}


def test_a_store_without_its_file_system_installed_fails_register_in_one_line(
    mlflow_server: str, model_name: str, tmp_path: Path
) -> None:
    """abfs:// (adlfs, which no Conveyor extra installs) stands for s3:// without the s3 extra."""
    trained = train_species_model(tmp_path, mlflow_server, model_name, multiclass_table(), "a")
    with pytest.raises(ConveyorError) as failure:
        register(tmp_path, mlflow_server, model_name, trained.run_id, "abfs://models/store")
    message = str(failure.value)
    assert message.startswith("cannot publish the model to abfs://models/store/")
    assert "Install adlfs" in message and "extras install gcsfs and s3fs" in message
    assert "\n" not in message
    assert MlflowClient(mlflow_server).search_registered_models(f"name = '{model_name}'") == []
