"""Container images: names as the pipelines use them, Dockerfile rules, and the recipe proven.

tests/test_wheel.py replays the base Dockerfile's build stage (its COPY lines and its
``pip install``) in a fresh venv and runs components from it, with no container engine;
tests/test_image_builds.py builds the three images with buildah and runs them, where buildah
is installed.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from conveyor.components.images import image
from tests.conftest import ROOT

KINDS = ("base", "gpu", "serving")
DOCKERFILES = {kind: ROOT / "images" / kind / "Dockerfile" for kind in KINDS}
# The package in a pip install line: the build context, with or without extras (`.[gcs,s3]`).
PACKAGE = re.compile(r"\.(\[[\w,-]+\])?")


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` in order, continuation lines joined, comments dropped."""
    lines = [
        line for line in dockerfile.read_text().splitlines() if not line.lstrip().startswith("#")
    ]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    parsed = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, arguments = line.strip().partition(" ")
            parsed.append((keyword.upper(), " ".join(arguments.split())))
    return parsed


def pip_installs(run: str) -> list[list[str]]:
    """The arguments of each ``pip install`` in one RUN line."""
    installs = []
    for command in re.split(r"&&|;", run):
        words = shlex.split(command)
        for at, word in enumerate(words[:-1]):
            if word == "pip" and words[at + 1] == "install":
                installs.append(words[at + 2 :])
    return installs


def installs_the_package(words: list[str]) -> bool:
    return any(PACKAGE.fullmatch(word) for word in words)


def make_dry_run(*arguments: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    """``make -n`` (nothing runs), with ``PATH`` replaced when given."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    environment = {**os.environ, **({"PATH": path} if path is not None else {})}
    environment.pop("DOCKER", None)
    return subprocess.run(
        [make, "-n", *arguments], cwd=ROOT, env=environment, capture_output=True, text=True
    )


def test_make_images_builds_the_names_the_pipelines_pull() -> None:
    registry = "r.example/ml"
    dry_run = make_dry_run("images", f"IMAGE_REGISTRY={registry}", "DOCKER=docker")
    assert dry_run.returncode == 0, dry_run.stderr
    built = dict(
        re.findall(r"build .*-f images/(\w+)/Dockerfile -t (\S+) \.$", dry_run.stdout, re.M)
    )
    assert built == {kind: image(kind, registry) for kind in KINDS}, dry_run.stdout


def fake_engines(directory: Path, working: tuple[str, ...], broken: tuple[str, ...] = ()) -> str:
    """A PATH of stand-in engine commands: ``working`` ones exit 0, ``broken`` ones (a docker
    without its daemon) exit 1."""
    directory.mkdir()
    for name, status in [(name, 0) for name in working] + [(name, 1) for name in broken]:
        (directory / name).write_text(f"#!/bin/sh\nexit {status}\n")
        (directory / name).chmod(0o755)
    return str(directory)


@pytest.mark.parametrize(
    ("working", "broken", "engine"),
    [
        (("docker", "podman", "buildah"), (), "docker"),
        (("podman", "buildah"), ("docker",), "podman"),
        (("buildah",), ("docker",), "buildah"),
        ((), ("docker",), "docker"),  # installed but down: make images says so
    ],
)
def test_make_images_picks_the_engine_that_is_there(
    tmp_path: Path, working: tuple[str, ...], broken: tuple[str, ...], engine: str
) -> None:
    dry_run = make_dry_run("images", path=fake_engines(tmp_path / "bin", working, broken))
    assert dry_run.returncode == 0, dry_run.stderr
    builds = re.findall(r"^(\S+) build (.*)-f images/", dry_run.stdout, re.M)
    assert [command for command, _ in builds] == [engine] * 3, dry_run.stdout
    # buildah caches layers only with --layers: the three builds then share the venv.
    assert all(("--layers" in flags) == (engine == "buildah") for _, flags in builds)


def test_make_images_without_an_engine_says_so_in_one_line(tmp_path: Path) -> None:
    dry_run = make_dry_run("images", path=fake_engines(tmp_path / "bin", ()))
    assert dry_run.returncode != 0
    (line,) = [line for line in dry_run.stderr.splitlines() if "container engine" in line]
    assert "make images: no container engine: install docker, podman or buildah" in line


@pytest.mark.parametrize("kind", KINDS)
def test_each_dockerfile_pins_its_base_and_its_packages_and_drops_root(kind: str) -> None:
    parsed = instructions(DOCKERFILES[kind])
    stages: set[str] = set()
    for keyword, arguments in parsed:
        if keyword == "FROM":
            words = arguments.split()
            base = words[0]
            if base not in stages:  # an earlier stage of this Dockerfile is pinned already
                name, _, tag = base.partition("@")[0].rpartition(":")
                assert "@sha256:" in base or (name and tag and tag != "latest"), (
                    f"{kind}: FROM {base} is not pinned"
                )
            if len(words) == 3 and words[1].upper() == "AS":
                stages.add(words[2])
    users = [arguments for keyword, arguments in parsed if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"{kind}: runs as {users}"

    installs = [words for keyword, run in parsed if keyword == "RUN" for words in pip_installs(run)]
    assert installs, f"{kind}: no pip install"
    for words in installs:
        assert "--no-cache-dir" in words, f"{kind}: pip install {' '.join(words)}"
    package_installs = [words for words in installs if installs_the_package(words)]
    assert package_installs, f"{kind}: does not install the package (pip install ... .)"
    for words in package_installs:
        assert "-c" in words and words[words.index("-c") + 1] == "constraints.txt", (
            f"{kind}: pip install {' '.join(words)} is not pinned by -c constraints.txt"
        )


def test_the_three_dockerfiles_are_the_same_up_to_the_venv() -> None:
    """A builder's layer cache then installs the venv once for the three images."""
    prefixes = {}
    for kind, dockerfile in DOCKERFILES.items():
        parsed = instructions(dockerfile)
        (installed,) = [
            at for at, (keyword, run) in enumerate(parsed)
            if keyword == "RUN" and any(installs_the_package(words) for words in pip_installs(run))
        ]  # fmt: skip
        prefixes[kind] = parsed[: installed + 1]
    assert prefixes["gpu"] == prefixes["base"] == prefixes["serving"], prefixes


def replay_build_stage(dockerfile: Path, context: Path) -> tuple[Path, list[str]]:
    """Copies what the stage that installs the package COPYs, as the build would, under
    ``context``; returns that WORKDIR's copy and the stage's ``pip install`` arguments."""
    workdir, copies, install = Path("/"), [], None
    for keyword, arguments in instructions(dockerfile):
        if keyword == "FROM":
            workdir, copies = Path("/"), []
        elif keyword == "WORKDIR":
            workdir = workdir / arguments
        elif keyword == "COPY" and "--from=" not in arguments:
            *sources, destination = [word for word in arguments.split() if word[:2] != "--"]
            copies.append((sources, workdir / destination))
        elif keyword == "RUN" and install is None:
            found = [words for words in pip_installs(arguments) if installs_the_package(words)]
            if found:
                install, installed_in, copied = found[0], workdir, list(copies)
    assert install is not None, f"{dockerfile}: no pip install of the package"
    for sources, destination in copied:
        target = context / destination.relative_to("/")
        for source in sources:
            origin = ROOT / source
            if origin.is_dir():
                shutil.copytree(
                    origin, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
                )
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, target / origin.name)
    return context / installed_in.relative_to("/"), install
