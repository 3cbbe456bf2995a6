"""Artifact Registry's Kubeflow Pipelines repositories for ``tests.doubles.google_cloud``, as
``kfp.registry.RegistryClient`` calls them.

On ``REGION-kfp.pkg.dev``: ``POST /PROJECT/REPO`` uploads a template (multipart ``content``,
optional comma-separated ``tags``) and answers ``package/sha256:<digest>`` as text, the
package named by the template's ``pipelineInfo.name`` and the version by the sha256 of the
file; uploading an existing tag moves it. ``GET /PROJECT/REPO/PACKAGE/TAG-OR-VERSION``
downloads the template. On ``artifactregistry.googleapis.com`` (v1): a package's tags and
versions, each as a resource; ``POST …/tags?tagId=`` creates a tag (409 when it exists) and
``DELETE …/versions/V`` deletes an untagged version (a finished operation; 400 while a tag
names it). Unknown repositories answer 404, other projects 403.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from typing import Any

import yaml

from tests.doubles.google_api import Answer, CloudError, CloudRequest, not_implemented

__all__ = ["ArtifactRegistryDouble"]

_API = re.compile(
    r"/v1/projects/([^/]+)/locations/([^/]+)/repositories/([^/]+)/packages/([^/]+)"
    r"/(tags|versions)(?:/([^/]+))?"
)


class ArtifactRegistryDouble:
    """KFP repositories of one project, kept in memory.

    Attributes:
        repositories: ``(location, repository)`` pairs that exist.
        packages: ``(location, repository, package)`` -> ``{"versions": {version: bytes},
            "tags": {tag: version}}``.
    """

    def __init__(self, project: str) -> None:
        self.project = project
        self.repositories: set[tuple[str, str]] = {("europe-west4", "pipelines")}
        self.packages: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = {}
        self.created: dict[str, str] = {}  # version -> createTime

    def answer(self, request: CloudRequest) -> Answer:
        if request.host == "artifactregistry.googleapis.com":
            return 200, self._api(request), "application/json"
        location = request.host.removesuffix("-kfp.pkg.dev")
        parts = request.path.strip("/").split("/")
        if len(parts) == 2 and request.method == "POST":
            return 200, self._upload(location, *parts, request).encode(), "text/plain"
        if len(parts) == 4 and request.method == "GET":
            package = self._package(location, *parts[:3])
            version = package["tags"].get(parts[3], parts[3])
            if version not in package["versions"]:
                raise CloudError(404, f"{parts[3]} of package {parts[2]} not found")
            return 200, package["versions"][version], "application/x-yaml"
        raise not_implemented(request)

    def _repository(self, location: str, project: str, repository: str) -> None:
        if project != self.project:
            raise CloudError(403, f"Permission denied on project {project}.")
        if (location, repository) not in self.repositories:
            raise CloudError(
                404,
                f"Repository projects/{project}/locations/{location}/repositories/{repository} "
                "not found",
            )

    def _package(
        self, location: str, project: str, repository: str, package: str
    ) -> dict[str, dict[str, Any]]:
        self._repository(location, project, repository)
        key = (location, repository, package)
        if key not in self.packages:
            raise CloudError(404, f"Package {package} not found")
        return self.packages[key]

    def _upload(self, location: str, project: str, repository: str, request: CloudRequest) -> str:
        self._repository(location, project, repository)
        files = request.files or {}
        if "content" not in files:
            raise CloudError(400, "The request has no 'content' file.")
        content = files["content"][1]
        try:
            spec = yaml.safe_load(content)
            name = str(spec["pipelineInfo"]["name"])
        except (yaml.YAMLError, TypeError, KeyError):
            raise CloudError(400, "The file is not a KFP pipeline template.") from None
        version = f"sha256:{hashlib.sha256(content).hexdigest()}"
        package = self.packages.setdefault(
            (location, repository, name), {"versions": {}, "tags": {}}
        )
        package["versions"][version] = content
        self.created.setdefault(version, datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        tags = files.get("tags", ("", b""))[1].decode()
        for tag in filter(None, (tag.strip() for tag in tags.split(","))):
            if tag.startswith("sha256:"):
                raise CloudError(400, f"Tag {tag} must not start with sha256:.")
            package["tags"][tag] = version
        return f"{name}/{version}"

    def _api(self, request: CloudRequest) -> dict[str, Any]:
        match = _API.fullmatch(request.path)
        if not match:
            raise not_implemented(request)
        project, location, repository, name, kind, ident = match.groups()
        package = self._package(location, project, repository, name)
        prefix = (
            f"projects/{project}/locations/{location}/repositories/{repository}/packages/{name}"
        )
        if kind == "tags" and request.method == "POST" and not ident:
            return self._create_tag(package, prefix, request)
        if kind == "versions" and request.method == "DELETE" and ident:
            return self._delete_version(package, prefix, ident)
        if request.method != "GET":
            raise not_implemented(request)
        if kind == "tags":
            return self._tags(package, prefix, ident)
        return self._versions(package, prefix, ident)

    @staticmethod
    def _tag(prefix: str, tag: str, version: str) -> dict[str, str]:
        return {"name": f"{prefix}/tags/{tag}", "version": f"{prefix}/versions/{version}"}

    def _tags(self, package: dict[str, Any], prefix: str, ident: str | None) -> dict[str, Any]:
        if ident and ident not in package["tags"]:
            raise CloudError(404, f"Tag {ident} not found")
        tags = {ident: package["tags"][ident]} if ident else package["tags"]
        found = [self._tag(prefix, tag, version) for tag, version in tags.items()]
        return found[0] if ident else {"tags": found}

    def _versions(self, package: dict[str, Any], prefix: str, ident: str | None) -> dict[str, Any]:
        if ident and ident not in package["versions"]:
            raise CloudError(404, f"Version {ident} not found")
        found = [
            {
                "name": f"{prefix}/versions/{version}",
                "createTime": self.created[version],
                "relatedTags": [
                    self._tag(prefix, tag, tagged)
                    for tag, tagged in package["tags"].items()
                    if tagged == version
                ],
            }
            for version in ([ident] if ident else package["versions"])
        ]
        return found[0] if ident else {"versions": found}

    def _create_tag(
        self, package: dict[str, Any], prefix: str, request: CloudRequest
    ) -> dict[str, Any]:
        tag = request.query.get("tagId", "")
        version = str((request.json or {}).get("version", "")).rsplit("/", 1)[-1]
        if not tag or tag.startswith("sha256:"):
            raise CloudError(400, f"Invalid tag id {tag!r}.")
        if version not in package["versions"]:
            raise CloudError(404, f"Version {version} not found")
        if tag in package["tags"]:
            raise CloudError(409, f"Tag {tag} already exists.")
        package["tags"][tag] = version
        return self._tag(prefix, tag, version)

    @staticmethod
    def _delete_version(package: dict[str, Any], prefix: str, version: str) -> dict[str, Any]:
        if version not in package["versions"]:
            raise CloudError(404, f"Version {version} not found")
        if version in package["tags"].values():
            raise CloudError(400, f"Version {version} is tagged; delete its tags first.")
        del package["versions"][version]
        return {
            "name": f"{prefix.split('/packages/')[0]}/operations/delete-{version[7:19]}",
            "done": True,
        }
