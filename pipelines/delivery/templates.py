"""Pipeline templates in an Artifact Registry Kubeflow Pipelines repository.

``conveyor publish`` uploads the compiled Vertex YAML with a tag (kfp.registry.RegistryClient).
A tag names one version for good: publishing the same file under its tag again changes
nothing, and a tag that already names another version is refused. Submitting or scheduling
a tag first resolves it to its immutable ``sha256:`` version, so a schedule keeps running the
version it was created with even if the tag is later moved by hand.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conveyor.components.core.errors import ConveyorError
from conveyor.pipelines.delivery.gcloud import call

__all__ = ["Published", "Repository", "TemplateRef", "download", "publish", "resolve"]

_SERVICE = "Artifact Registry"
_REPOSITORY = re.compile(
    r"https://(?P<region>[a-z]+-[a-z]+[0-9]+)-kfp\.pkg\.dev/"
    r"(?P<project>[a-z][a-z0-9-]{4,28}[a-z0-9])/(?P<name>[a-z][a-z0-9-]{0,62})"
)
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_VERSION = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class Repository:
    """``https://REGION-kfp.pkg.dev/PROJECT/REPOSITORY``."""

    url: str

    @classmethod
    def parse(cls, url: str, option: str = "--repo") -> Repository:
        if not _REPOSITORY.fullmatch(url.rstrip("/")):
            raise ConveyorError(
                f"{option} {url!r}: expected an Artifact Registry KFP repository, "
                "https://REGION-kfp.pkg.dev/PROJECT/REPOSITORY"
            )
        return cls(url.rstrip("/"))


@dataclass(frozen=True)
class TemplateRef:
    """A template in a repository, by tag or by ``sha256:`` version."""

    repository: Repository
    package: str
    reference: str

    @classmethod
    def parse(cls, url: str) -> TemplateRef:
        """``https://REGION-kfp.pkg.dev/PROJECT/REPOSITORY/PACKAGE/TAG-OR-VERSION``."""
        repository, _, rest = url.rstrip("/").rpartition("/")
        repository, _, package = repository.rpartition("/")
        if not package or not rest or not _REPOSITORY.fullmatch(repository):
            raise ConveyorError(
                f"--template {url!r}: expected https://REGION-kfp.pkg.dev/PROJECT/REPOSITORY/"
                "PIPELINE/TAG (or its sha256: version)"
            )
        ref = cls(Repository(repository), package, rest)
        if not ref.pinned:
            check_tag(rest, "--template")
        return ref

    @property
    def pinned(self) -> bool:
        return bool(_VERSION.fullmatch(self.reference))

    @property
    def url(self) -> str:
        return f"{self.repository.url}/{self.package}/{self.reference}"


@dataclass(frozen=True)
class Published:
    template: TemplateRef  # pinned to its version
    tag: str
    uploaded: bool  # False when this exact file already had the tag


def check_tag(tag: str, option: str = "--tag") -> None:
    if tag.startswith("sha256:") or not _TAG.fullmatch(tag):
        raise ConveyorError(
            f"{option}: tag {tag!r} must be letters, digits, '.', '_' or '-' (not a sha256: "
            "version), such as v1.2.0"
        )


def publish(
    repository: Repository, package_name: str, tag: str, package: Path, auth: Any
) -> Published:
    """Uploads ``package`` and tags it ``tag``, unless the tag already names this very file.

    The upload carries no tag, because an upload with a tag moves it; the tag is created
    afterwards, which the registry refuses when it exists, so a publish racing another
    cannot move a tag either. An upload left untagged by that refusal is deleted again."""
    client = _client(repository, auth)
    version = f"sha256:{hashlib.sha256(package.read_bytes()).hexdigest()}"
    tagged = _tagged_version(client, package_name, tag)
    if tagged == version:
        return Published(TemplateRef(repository, package_name, version), tag, uploaded=False)
    if tagged:
        raise _tag_taken(repository, package_name, tag, tagged)
    existed = _has_version(client, package_name, version)
    name, uploaded = call(
        "upload the template", _SERVICE, lambda: client.upload_pipeline(str(package))
    )
    try:
        call(f"tag {uploaded} as {tag}", _SERVICE, lambda: client.create_tag(name, uploaded, tag))
    except ConveyorError:
        if uploaded == version and not existed:
            call(
                f"delete the untagged {uploaded}",
                _SERVICE,
                lambda: client.delete_version(name, uploaded),
            )
        raise
    return Published(TemplateRef(repository, name, uploaded), tag, uploaded=True)


def _tag_taken(repository: Repository, package: str, tag: str, version: str) -> ConveyorError:
    return ConveyorError(
        f"tag {tag} of {package} in {repository.url} already names {version}, not this build: "
        "schedules find versions by their tags, so publish under a new tag"
    )


def resolve(template: TemplateRef, auth: Any) -> TemplateRef:
    """The same template pinned to its ``sha256:`` version."""
    if template.pinned:
        return template
    client = _client(template.repository, auth)
    version = _tagged_version(client, template.package, template.reference)
    if not version:
        raise ConveyorError(f"--template {template.url}: no such tag in {template.repository.url}")
    return TemplateRef(template.repository, template.package, version)


def download(template: TemplateRef, auth: Any, directory: Path) -> Path:
    """The template's YAML, written to ``directory``."""
    client = _client(template.repository, auth)
    path = directory / f"{template.package}.yaml"
    version = template.reference if template.pinned else None
    tag = None if template.pinned else template.reference
    call(
        f"download {template.url}",
        _SERVICE,
        lambda: client.download_pipeline(
            template.package, version=version, tag=tag, file_name=str(path)
        ),
    )
    return path


def _client(repository: Repository, auth: Any) -> Any:
    from kfp.registry import RegistryClient

    return RegistryClient(host=repository.url, auth=auth)


def _tagged_version(client: Any, package: str, tag: str) -> str:
    """The ``sha256:`` version ``tag`` names, or "" when there is no such tag (or package)."""
    found = _unless_missing(f"read tag {tag} of {package}", lambda: client.get_tag(package, tag))
    return str(found.get("version", "")).rsplit("/", 1)[-1] if found else ""


def _has_version(client: Any, package: str, version: str) -> bool:
    read = f"read version {version} of {package}"
    return _unless_missing(read, lambda: client.get_version(package, version)) is not None


def _unless_missing(what: str, request: Callable[[], Any]) -> Any:
    """``request``'s answer, or None for a 404 (what it asked for does not exist yet)."""
    import requests

    def answer() -> Any:
        try:
            return request()
        except requests.HTTPError as error:
            if error.response is not None and error.response.status_code == 404:
                return None
            raise

    return call(what, _SERVICE, answer)
