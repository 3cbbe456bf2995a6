"""Model origin: the model server loads only the model the registry vouches for, from inside
its model directory, from a card of a format it reads, and refuses anything else before
unpickling it, in one line and with a non-zero exit."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conveyor.components.core.errors import ConveyorError
from conveyor.components.core.training.trainer import (
    _CARD_TYPES,
    MODEL_CARD,
    MODEL_FILE,
    MODEL_FORMAT_VERSION,
    ModelCard,
    fit_model,
    load_model_dir,
    read_model_card,
    save_model_dir,
    sha256_file,
)
from conveyor.pipelines.cli import main as conveyor
from tests.conftest import ROOT, free_port, multiclass_table, save_species_model, wait_for_http

NAME = "species"


class CreatesMarker:
    """A pickle that, when loaded, creates the file ``marker``: code run by unpickling."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


@pytest.fixture(scope="module")
def genuine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory as train writes it and register publishes it."""
    return save_species_model(tmp_path_factory.mktemp("origin") / "model")


@pytest.fixture
def store(genuine: Path, tmp_path: Path) -> Path:
    """A copy of the genuine model directory, as in the model bucket."""
    return Path(shutil.copytree(genuine, tmp_path / "store" / NAME))


def card_of(directory: Path) -> dict:
    return json.loads((directory / MODEL_CARD).read_text())


def rewrite_card(directory: Path, **changes: object) -> None:
    (directory / MODEL_CARD).write_text(json.dumps({**card_of(directory), **changes}))


def replace_with_evil(directory: Path, marker: Path) -> None:
    """What whoever can write the bucket does: a pickle that runs code in place of
    ``model.joblib``, and ``model.json``'s sha256 updated to match it."""
    (directory / MODEL_FILE).write_bytes(pickle.dumps(CreatesMarker(marker)))
    rewrite_card(directory, sha256=sha256_file(directory / MODEL_FILE))


def serve(directory: Path, *options: str) -> list[str]:
    """Conveyor's predictor started on ``directory`` as a pod starts it; ``[command, ...]``."""
    return [
        sys.executable, "-m", "conveyor.components.core.serving.server", "--model_name", NAME,
        "--model_dir", str(directory), "--http_port", str(free_port()),
        "--http_host", "127.0.0.1", *options,
    ]  # fmt: skip


def conveyor_serve(directory: Path, *options: str) -> list[str]:
    return [
        sys.executable, "-m", "conveyor.pipelines.cli", "serve", "--model-dir", str(directory),
        "--port", str(free_port()), *options,
    ]  # fmt: skip


def refused(command: list[str], env: dict[str, str] | None = None) -> str:
    """Runs a server that must refuse to start; returns its one line of complaint (the
    last it writes: KServe's imports may log before it)."""
    inherited = {k: v for k, v in os.environ.items() if k != "CONVEYOR_MODEL_SHA256"}
    environment = {**inherited, "PYTHONPATH": str(ROOT), **(env or {})}
    result = subprocess.run(
        command, capture_output=True, text=True, cwd=ROOT, env=environment, timeout=60
    )
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    """Where the evil pickle leaves its mark once unpickled."""
    return tmp_path / "unpickled-marker"


def test_the_evil_pickle_runs_code_when_nothing_pins_its_hash(store: Path, marker: Path) -> None:
    """The control: the replaced store passes the card's own check, and loading it runs the
    pickle's code. This is what the pinned hash has to stop."""
    replace_with_evil(store, marker)
    load_model_dir(store)
    assert marker.exists()


@pytest.mark.parametrize("started_by", ["env", "conveyor serve --sha256"])
def test_a_replaced_model_and_card_are_refused_before_unpickling(
    store: Path, genuine: Path, marker: Path, started_by: str
) -> None:
    registry_sha256 = card_of(genuine)["sha256"]  # what register tagged the version with
    replace_with_evil(store, marker)
    if started_by == "env":  # as deploy sets it on the predictor
        line = refused(serve(store), env={"CONVEYOR_MODEL_SHA256": registry_sha256})
        assert line.startswith(f"serving: {store / MODEL_FILE}: sha256 ")
    else:
        line = refused(conveyor_serve(store, "--sha256", registry_sha256))
    assert f"is not the registry's {registry_sha256[:12]}... ($CONVEYOR_MODEL_SHA256)" in line
    assert line.endswith("whatever model.json says; refusing to load it")
    assert not marker.exists()


def test_the_genuine_model_serves_under_the_registry_hash(genuine: Path, tmp_path: Path) -> None:
    command = serve(genuine)
    url = f"http://127.0.0.1:{command[command.index('--http_port') + 1]}"
    environment = {**os.environ, "CONVEYOR_MODEL_SHA256": card_of(genuine)["sha256"]}
    log = tmp_path / "predictor.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env=environment, cwd=ROOT
        )
    try:
        wait_for_http(f"{url}/v2/models/{NAME}/ready", process, timeout=90, log=log)
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_malformed_pin_is_refused_by_conveyor_serve(
    genuine: Path, capsys: pytest.CaptureFixture
) -> None:
    assert conveyor(["serve", "--model-dir", str(genuine), "--sha256", "0" * 63]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (
        f"conveyor serve: --sha256 {'0' * 63!r} (or $CONVEYOR_MODEL_SHA256): expected the "
        "registry's sha256 of model.joblib, 64 lower-case hex digits"
    )


@pytest.mark.parametrize("model_file", ["../outside.joblib", "/elsewhere/outside.joblib"])
def test_a_model_file_named_outside_the_directory_is_refused(
    store: Path, marker: Path, model_file: str
) -> None:
    outside = store.parent / "outside.joblib"
    outside.write_bytes(pickle.dumps(CreatesMarker(marker)))
    rewrite_card(store, model_file=model_file, sha256=sha256_file(outside))
    line = refused(serve(store))
    assert line == (
        f"serving: {store / MODEL_CARD}: key 'model_file' holds {model_file!r}: expected a "
        "file name inside the model directory (relative, without '..')"
    )
    assert not marker.exists()


def test_a_symlink_out_of_the_directory_is_refused(store: Path, marker: Path) -> None:
    outside = store.parent / "outside.joblib"
    outside.write_bytes(pickle.dumps(CreatesMarker(marker)))
    (store / "linked.joblib").symlink_to(outside)
    rewrite_card(store, model_file="linked.joblib", sha256=sha256_file(outside))
    line = refused(serve(store))
    assert line == (
        f"serving: {store / MODEL_CARD}: model_file 'linked.joblib' resolves to {outside}, "
        "outside the model directory; refusing to load it"
    )
    assert not marker.exists()


def test_a_symlink_inside_the_directory_is_followed(store: Path) -> None:
    (store / "current.joblib").symlink_to(store / MODEL_FILE)
    rewrite_card(store, model_file="current.joblib")
    assert load_model_dir(store).card.model_file == "current.joblib"


def test_a_newer_model_format_is_refused_by_the_server(store: Path, marker: Path) -> None:
    replace_with_evil(store, marker)  # whatever the file holds, it is never reached
    rewrite_card(store, format_version=MODEL_FORMAT_VERSION + 1, importances={"size": 0.5})
    line = refused(serve(store))
    newer = MODEL_FORMAT_VERSION + 1
    assert line.startswith(
        f"serving: {store / MODEL_CARD}: server too old for model format {newer}: this "
        f"Conveyor reads model formats up to {MODEL_FORMAT_VERSION}"
    )
    assert not marker.exists()


@pytest.mark.parametrize(
    ("changes", "complaint"),
    [
        ({"importances": {"size": 0.5}}, "unknown key 'importances' in a format-1 model card"),
        ({"seed": "0"}, "key 'seed' holds '0': expected an integer"),
        ({"classes": "setosa"}, "key 'classes' holds 'setosa': expected a list"),
        ({"format_version": "1"}, "key 'format_version' holds '1': expected a positive integer"),
        ({"sha256": "abc"}, "key 'sha256' holds 'abc': expected 64 lower-case hex digits"),
        (
            {"features": [{"name": "size", "kind": "numeric", "dtype": "float64", "unit": "cm"}]},
            "unknown key 'features[0].unit' in a format-1 model card",
        ),
        (
            {"features": [{"name": "size", "kind": "number", "dtype": "float64"}]},
            "key 'features[0]': kind 'number': expected one of numeric, categorical",
        ),
    ],
)
def test_unknown_or_mistyped_keys_are_named_in_one_line(
    store: Path, changes: dict, complaint: str
) -> None:
    rewrite_card(store, **changes)
    with pytest.raises(ConveyorError) as raised:
        load_model_dir(store)
    assert str(raised.value).startswith(f"{store / MODEL_CARD}: {complaint}")
    assert "\n" not in str(raised.value)


def test_a_mistyped_key_stops_the_server_in_one_line(store: Path) -> None:
    rewrite_card(store, seed=None)
    line = refused(serve(store))
    assert line == f"serving: {store / MODEL_CARD}: key 'seed' holds None: expected an integer"


def test_conveyor_serve_names_the_key_of_a_bad_card(
    store: Path, capsys: pytest.CaptureFixture
) -> None:
    rewrite_card(store, hyperparameters=[])
    assert conveyor(["serve", "--model-dir", str(store)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (
        f"conveyor serve: {store / MODEL_CARD}: key 'hyperparameters' holds []: expected an object"
    )


def test_a_card_without_format_version_is_format_1(store: Path) -> None:
    card = card_of(store)
    del card["format_version"]  # as train wrote cards before the key existed
    (store / MODEL_CARD).write_text(json.dumps(card))
    assert read_model_card(store).format_version == 1
    assert load_model_dir(store).card.sha256 == card["sha256"]


def test_the_card_is_frozen_checks_itself_and_round_trips(genuine: Path) -> None:
    card = read_model_card(genuine)
    assert card.format_version == 1  # the oldest format holding it: older servers read it
    assert ModelCard.from_json(card.to_json()) == card
    with pytest.raises(dataclasses.FrozenInstanceError):
        card.sha256 = "0" * 64  # type: ignore[misc]
    with pytest.raises(ConveyorError, match="key 'seed' holds 1.5: expected an integer"):
        dataclasses.replace(card, seed=1.5)
    newer = MODEL_FORMAT_VERSION + 1
    with pytest.raises(ConveyorError, match=f"server too old for model format {newer}"):
        dataclasses.replace(card, format_version=newer)
    # Every field is type-checked: a field added without a check fails here.
    assert set(_CARD_TYPES) == {field.name for field in dataclasses.fields(ModelCard)}


def test_a_malformed_pin_is_refused_by_the_loader(genuine: Path) -> None:
    with pytest.raises(ConveyorError, match="the pinned sha256 'ABC' is not 64 lower-case hex"):
        load_model_dir(genuine, "ABC")


def test_a_card_whose_classes_are_not_the_models_is_refused(store: Path) -> None:
    """The model file is pinned; a card rewritten beside it must not relabel its answers."""
    classes = card_of(store)["classes"]
    rewrite_card(store, classes=list(reversed(classes)))
    pinned = card_of(store)["sha256"]  # the file itself is the genuine one
    with pytest.raises(ConveyorError) as raised:
        load_model_dir(store, pinned)
    assert str(raised.value) == (
        f"{store / MODEL_CARD}: classes {list(reversed(classes))} are not the model's "
        f"{classes}; refusing to serve labels the model does not give"
    )


def test_id_columns_are_never_features_and_need_format_2(tmp_path: Path) -> None:
    table = multiclass_table().assign(order_id=lambda t: [f"o{i}" for i in range(len(t))])
    model = fit_model(table, "species", "logistic_regression", {}, 0, ["order_id"])
    assert "order_id" not in [feature.name for feature in model.card.features]
    card = save_model_dir(model, tmp_path / "model")
    saved = json.loads((tmp_path / "model" / MODEL_CARD).read_text())
    assert saved["format_version"] == card.format_version == 2 < MODEL_FORMAT_VERSION
    assert saved["id_columns"] == ["order_id"]
    assert load_model_dir(tmp_path / "model").card.id_columns == ["order_id"]
    saved["format_version"] = 1  # as a format-1 reader sees it: a key it does not know
    (tmp_path / "model" / MODEL_CARD).write_text(json.dumps(saved))
    with pytest.raises(ConveyorError, match="unknown key 'id_columns' in a format-1 model card"):
        read_model_card(tmp_path / "model")
    with pytest.raises(ConveyorError, match="key 'id_columns': 'size' is also a feature"):
        dataclasses.replace(card, id_columns=["size"])
    with pytest.raises(ConveyorError, match="'species' is the target column, not an id column"):
        fit_model(table, "species", "logistic_regression", {}, 0, ["species"])


def test_the_positive_class_needs_format_2_and_a_binary_model_s_class(tmp_path: Path) -> None:
    table = multiclass_table()
    table["species"] = table["species"].where(table["species"] == "setosa", "other")
    model = fit_model(table, "species", "logistic_regression", {}, 0)
    card = save_model_dir(model, tmp_path / "model")
    assert card.classes == ["other", "setosa"] and card.positive_class == "setosa"  # the rarer
    saved = json.loads((tmp_path / "model" / MODEL_CARD).read_text())
    assert saved["format_version"] == 2 and saved["positive_class"] == "setosa"
    saved["format_version"] = 1  # as a format-1 reader sees it: a key it does not know
    (tmp_path / "model" / MODEL_CARD).write_text(json.dumps(saved))
    with pytest.raises(ConveyorError, match="unknown key 'positive_class' in a format-1 model"):
        read_model_card(tmp_path / "model")
    del saved["positive_class"]  # a card written before the key: loads, old serving rule
    (tmp_path / "model" / MODEL_CARD).write_text(json.dumps(saved))
    assert load_model_dir(tmp_path / "model").card.positive_class is None
    with pytest.raises(ConveyorError, match=r"'positive_class' holds 'dog': expected one of"):
        dataclasses.replace(card, positive_class="dog")
    with pytest.raises(ConveyorError, match="'positive_class' holds 1: expected a string or null"):
        dataclasses.replace(card, positive_class=1)
    three = fit_model(multiclass_table(), "species", "logistic_regression", {}, 0).card
    with pytest.raises(ConveyorError, match="the model has 3 classes; only a binary model"):
        dataclasses.replace(three, positive_class="setosa")
