"""Building and running Conveyor's images with buildah, for tests/test_image_builds.py.

No registry can be pulled from where the tests run, so the Python base image the Dockerfiles
start from is replaced by a stand-in made from Debian's packages (debootstrap against the
mirror apt already uses, plus Debian's Python 3.11) and stored under the base's own name.
Everything lives in one buildah store inside the project (``.buildah/``, git-ignored), so a
second run reuses the stand-in and every cached layer. buildah runs with the settings that
work without a daemon or privileges beyond root: the vfs storage driver and chroot isolation
(which shares the host's network, so a server on the host's loopback is reachable).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, require_binary
from tests.test_images import DOCKERFILES, instructions

STORE = ROOT / ".buildah"
# Debian's packages that make the stand-in a Python 3.11 image: `python` (python-is-python3)
# and venv as in python:3.11-slim, and CA certificates for pip's HTTPS.
STAND_IN_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
SUITE = "bookworm"
# Where the host pip's CA bundle goes in the stand-in (pip finds it through PIP_CERT).
STAND_IN_CA = "/etc/ssl/certs/pip-ca-bundle.pem"
# Host pip settings the stand-in's pip needs to reach the same registry the same way.
PIP_SETTINGS = ("index-url", "extra-index-url", "trusted-host", "proxy", "timeout", "retries")
# Bump when the stand-in's recipe changes, so a cached stand-in is rebuilt.
RECIPE = "1"
LABEL = "conveyor.stand-in"


class BuildahError(RuntimeError):
    """A buildah, debootstrap or container command failed; the message has its output."""


def require_buildah() -> None:
    """Skip without buildah, debootstrap or root (fails instead under CI's
    CONVEYOR_REQUIRE_SYSTEM_DEPS=1, as ``require_binary`` does)."""
    require_binary("buildah")
    require_binary("debootstrap")
    if os.geteuid() != 0:
        message = "building the stand-in base image needs root (debootstrap, buildah mount)"
        if os.environ.get("CONVEYOR_REQUIRE_SYSTEM_DEPS") == "1":
            pytest.fail(message)
        pytest.skip(message)


def buildah(*arguments: str, timeout: float = 600) -> str:
    """Runs buildah on the project's store; returns its stdout, raises with its output."""
    command = ["buildah", *store_options(), *arguments]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise BuildahError(
            f"{shlex.join(command)} exited {done.returncode}:\n{done.stderr[-4000:]}"
        )
    return done.stdout


def store_options() -> list[str]:
    return [
        "--root", str(STORE / "storage"), "--runroot", str(STORE / "run"),
        "--storage-driver", "vfs",
    ]  # fmt: skip


def base_image() -> str:
    """The one base image the three Dockerfiles start from (``FROM`` that is not a stage)."""
    bases = set()
    for dockerfile in DOCKERFILES.values():
        stages = set()
        for keyword, arguments in instructions(dockerfile):
            if keyword == "FROM":
                words = arguments.split()
                if words[0] not in stages:
                    bases.add(words[0])
                if len(words) == 3:
                    stages.add(words[2])
    assert len(bases) == 1, f"the Dockerfiles start from more than one base: {sorted(bases)}"
    return bases.pop()


def inspect_image(name: str) -> dict | None:
    """``buildah inspect`` of image ``name``; None when the store has no such image."""
    try:
        return json.loads(buildah("inspect", "--type", "image", name))
    except BuildahError:
        return None


def image_config(name: str) -> dict:
    """The OCI config (User, Env, Entrypoint, Labels...) of image ``name``."""
    inspected = inspect_image(name)
    assert inspected is not None, f"no image {name} in the store"
    return inspected["OCIv1"]["config"]


# --- the stand-in base ---------------------------------------------------------------------


def debian_mirror() -> tuple[str, Path | None]:
    """The Debian mirror (and its keyring, if apt names one) that the host's apt configuration
    uses for the suite; ``pytest.skip`` when apt knows none."""
    apt = Path("/etc/apt")
    entries: list[dict[str, str]] = []
    for path in [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*.list"))]:
        if path.is_file():
            entries += one_line_sources(path.read_text())
    for path in sorted((apt / "sources.list.d").glob("*.sources")):
        entries += deb822_sources(path.read_text())
    for entry in entries:
        if "deb" in entry["types"].split() and SUITE in entry["suites"].split():
            keyring = entry.get("signed-by", "")
            return entry["uris"].split()[0], Path(keyring) if keyring.startswith("/") else None
    pytest.skip(f"apt's configuration names no Debian mirror for {SUITE}: no stand-in base")


def one_line_sources(text: str) -> list[dict[str, str]]:
    """``deb [options] URI suite components`` lines as deb822 fields."""
    entries = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        options = dict(re.findall(r"([\w-]+)=(\S+)", m.group(1))) if (
            m := re.search(r"\[([^]]*)\]", line)
        ) else {}  # fmt: skip
        words = re.sub(r"\[[^]]*\]", "", line).split()
        if len(words) >= 3:
            entries.append({"types": words[0], "uris": words[1], "suites": words[2], **options})
    return entries


def deb822_sources(text: str) -> list[dict[str, str]]:
    """The stanzas of a ``.sources`` file, lower-cased field names, disabled ones dropped."""
    entries = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[0].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if {"types", "uris", "suites"} <= set(fields) and fields.get("enabled") != "no":
            entries.append(fields)
    return entries


def host_pip_config() -> tuple[dict[str, str], Path | None]:
    """The host pip's settings the stand-in needs (local indexes and paths dropped: they are
    not there inside) and the CA bundle it trusts, from ``pip config list``."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True
    ).stdout
    files: dict[str, str] = {}
    environment: dict[str, str] = {}
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        scope, _, option = key.rpartition(".")
        (environment if scope == ":env:" else files)[option] = value.strip().strip("'\"")
    settings = files | environment  # PIP_* variables win over configuration files, as in pip
    cert = settings.get("cert")
    carried = {}
    for key in PIP_SETTINGS:
        value = settings.get(key, "")
        if key.endswith("index-url"):
            value = " ".join(url for url in value.split() if url.startswith(("http:", "https:")))
        if value:
            carried[key] = value
    return carried, Path(cert) if cert and Path(cert).is_file() else None


def stand_in_fingerprint(mirror: str, pip_conf: str, ca: bytes) -> str:
    return hashlib.sha256(f"{RECIPE}\n{mirror}\n{pip_conf}\n".encode() + ca).hexdigest()[:16]


def ensure_stand_in(log: Path) -> str:
    """The stand-in for the Dockerfiles' base image, built unless the store has it (built by
    this same recipe, mirror, pip settings and CA bundle); returns its name."""
    name = base_image()
    mirror, keyring = debian_mirror()
    settings, ca = host_pip_config()
    pip_conf = "[global]\n" + "".join(f"{key} = {value}\n" for key, value in settings.items())
    if ca is not None:
        pip_conf += f"cert = {STAND_IN_CA}\n"
    fingerprint = stand_in_fingerprint(mirror, pip_conf, ca.read_bytes() if ca else b"")
    if inspect_image(name) is not None:
        if (image_config(name).get("Labels") or {}).get(LABEL) == fingerprint:
            return name
        buildah("rmi", "--force", name)
    container = buildah("from", "--name", f"conveyor-stand-in-{uuid.uuid4().hex[:8]}", "scratch")
    container = container.strip()
    try:
        rootfs = Path(buildah("mount", container).strip())
        debootstrap = [
            "debootstrap", "--variant=minbase", f"--include={','.join(STAND_IN_PACKAGES)}",
            *([f"--keyring={keyring}"] if keyring and keyring.is_file() else []),
            SUITE, str(rootfs), mirror,
        ]  # fmt: skip
        with log.open("a") as output:
            done = subprocess.run(debootstrap, stdout=output, stderr=subprocess.STDOUT, timeout=900)
        if done.returncode != 0:
            raise BuildahError(
                f"{shlex.join(debootstrap)} failed (log: {log}):\n{log.read_text()[-4000:]}"
            )
        slim(rootfs)
        (rootfs / "etc" / "pip.conf").write_text(pip_conf)
        if ca is not None:
            shutil.copyfile(ca, rootfs / STAND_IN_CA.lstrip("/"))
        buildah("umount", container)
        buildah(
            "config",
            "--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--env", "LANG=C.UTF-8",
            *(["--env", f"PIP_CERT={STAND_IN_CA}"] if ca is not None else []),
            "--cmd", "python3", "--label", f"{LABEL}={fingerprint}", container,
        )  # fmt: skip
        buildah("commit", "--rm", container, name, timeout=900)
    except BaseException:
        with contextlib.suppress(BuildahError):
            buildah("rm", container)
        raise
    return name


def slim(rootfs: Path) -> None:
    """Drops what a slim image does not ship: apt's downloads and lists, and the host's
    name and resolver, which debootstrap copies in (a container runtime provides both)."""
    for folder in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for path in (rootfs / folder).glob("*"):
            if path.is_file():
                path.unlink()
    for name in ("etc/hostname", "etc/resolv.conf"):
        (rootfs / name).unlink(missing_ok=True)


# --- building and running --------------------------------------------------------------------


def build_context(directory: Path) -> Path:
    """What the Dockerfiles COPY from the repository, without bytecode caches, under
    ``directory`` (modification times kept, so buildah's layer cache sees the same content)."""
    sources = set()
    for dockerfile in DOCKERFILES.values():
        for keyword, arguments in instructions(dockerfile):
            if keyword == "COPY" and "--from=" not in arguments:
                words = [word for word in arguments.split() if not word.startswith("--")]
                sources.update(words[:-1])
    for source in sorted(sources):
        origin, target = ROOT / source, directory / source
        if origin.is_dir():
            shutil.copytree(origin, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, target)
    return directory


def build(dockerfile: Path, name: str, context: Path, log: Path) -> None:
    """``buildah build`` with the flags that work here, its output appended to ``log``."""
    command = [
        "buildah", *store_options(), "build", "--isolation", "chroot", "--pull=never",
        "--layers", "-f", str(dockerfile), "-t", name, str(context),
    ]  # fmt: skip
    started = time.monotonic()
    with log.open("a") as output:
        output.write(f"$ {shlex.join(command)}\n")
        # Each line with the seconds since the build started: where a slow build spends them.
        with subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as process:
            assert process.stdout is not None
            for line in process.stdout:
                output.write(f"{time.monotonic() - started:7.1f} {line}")
        output.write(f"{time.monotonic() - started:7.1f} exit {process.returncode}\n")
    if process.returncode != 0:
        raise BuildahError(f"building {name} failed (log: {log}):\n{log.read_text()[-6000:]}")


def image_id(name: str) -> str:
    """The ID of image ``name`` in the store; empty when there is none."""
    inspected = inspect_image(name)
    return inspected["FromImageID"] if inspected is not None else ""


def inputs_digest(dockerfile: Path, context: Path, base: str) -> str:
    """What a build of ``dockerfile`` depends on: the file, every file of the context (by
    path and content) and the base image's ID."""
    digest = hashlib.sha256(dockerfile.read_bytes() + image_id(base).encode())
    for path in sorted(path for path in context.rglob("*") if path.is_file()):
        digest.update(f"\0{path.relative_to(context)}\0".encode() + path.read_bytes())
    return digest.hexdigest()


def build_once(dockerfile: Path, name: str, context: Path, log: Path) -> bool:
    """Builds ``name`` unless the store holds it built from the same inputs; True when it
    built. Even with every layer cached, a buildah build with vfs copies the file system a
    few times (a minute or more per image): a second run with nothing changed skips that."""
    record_path = STORE / "built.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    inputs = inputs_digest(dockerfile, context, base_image())
    earlier = record.get(name, {})
    if earlier.get("inputs") == inputs and earlier.get("id") and image_id(name) == earlier["id"]:
        log.write_text(f"{name}: image {earlier['id']} was built from the same inputs\n")
        return False
    build(dockerfile, name, context, log)
    record[name] = {"inputs": inputs, "id": image_id(name)}
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    return True


def prune() -> None:
    """Removes images no tag leads to any more (an older build's layers), so the store holds
    the tagged images and the layers they are built from, and nothing older. (An untagged
    image is pruned only when no image is built on it, so each pass removes one generation
    of an old chain.)"""
    for _ in range(100):
        if not buildah("rmi", "--prune").strip():
            return


def diff_ids(name: str) -> list[str]:
    """The digests of image ``name``'s layers, bottom first."""
    inspected = inspect_image(name)
    assert inspected is not None, f"no image {name} in the store"
    return inspected["OCIv1"]["rootfs"]["diff_ids"]


def entrypoint(name: str) -> list[str]:
    return image_config(name).get("Entrypoint") or []


@contextlib.contextmanager
def container(name: str) -> Iterator[str]:
    """A working container of image ``name``, removed afterwards."""
    created = buildah(
        "from", "--pull=never", "--name", f"conveyor-test-{uuid.uuid4().hex[:8]}", name
    )
    created = created.strip()
    try:
        yield created
    finally:
        buildah("rm", created)


def run_command(
    working: str,
    command: list[str],
    *,
    volumes: dict[Path, str],
    environment: dict[str, str] | None = None,
) -> list[str]:
    """The ``buildah run`` command line that runs ``command`` in container ``working`` as the
    image's USER (as a pod without runAsUser does), each host folder bind-mounted at its path
    inside (``PATH:ro`` for read-only) and ``environment`` added to the image's."""
    mounts = [option for host, inside in volumes.items() for option in ("-v", f"{host}:{inside}")]
    variables = [
        option for item in (environment or {}).items() for option in ("-e", "=".join(item))
    ]
    return [
        "buildah", *store_options(), "run", "--isolation", "chroot", *mounts, *variables,
        working, "--", *command,
    ]  # fmt: skip


def run_in(
    name: str, command: list[str], *, volumes: dict[Path, str], timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Runs ``command`` in a fresh container of image ``name`` as the image's user."""
    with container(name) as working:
        return subprocess.run(
            run_command(working, command, volumes=volumes),
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip


@contextlib.contextmanager
def started_in(
    name: str,
    command: list[str],
    *,
    volumes: dict[Path, str],
    environment: dict[str, str] | None = None,
    log: Path,
) -> Iterator[subprocess.Popen]:
    """``command`` running in a container of image ``name``, in a process group of its own
    that ``stop_group`` stops when the block ends (if the block has not)."""
    with container(name) as working, log.open("w") as output:
        process = subprocess.Popen(
            run_command(working, command, volumes=volumes, environment=environment),
            stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            yield process
        finally:
            stop_group(process)


def stop_group(process: subprocess.Popen, grace: float = 30) -> bool:
    """Stops the process group ``process`` leads as Kubernetes stops a pod: SIGTERM, then
    SIGKILL for whatever outlives ``grace`` seconds. True when SIGTERM alone emptied it."""
    for sent in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sent)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            process.poll()  # reaps the leader, which would otherwise stay in the group
            if not group_alive(process.pid):
                return sent == signal.SIGTERM
            time.sleep(0.2)
    return False


def group_alive(leader: int) -> bool:
    """Whether any process is left in the process group ``leader`` started."""
    try:
        os.killpg(leader, 0)
    except ProcessLookupError:
        return False
    return True
