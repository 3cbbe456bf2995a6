"""Container images of Conveyor: the one place their names and tags are decided.

Each tag is the package version, so a pipeline compiled by Conveyor X.Y.Z runs
on the images built from X.Y.Z (``images/<kind>/Dockerfile``). ``registry`` is
where they are pulled from; pipelines take it at compile time (``IMAGE_REGISTRY``).
"""

from __future__ import annotations

from importlib import metadata
from typing import Literal

__all__ = ["BASE_IMAGE", "DEFAULT_REGISTRY", "VERSION", "ImageKind", "image"]

ImageKind = Literal["base", "gpu"]
DEFAULT_REGISTRY = "conveyor"
VERSION = metadata.version("conveyor")


def image(kind: ImageKind, registry: str = DEFAULT_REGISTRY) -> str:
    """The URI of one of Conveyor's images (components ``base``, ``gpu`` training)."""
    return f"{registry.rstrip('/')}/conveyor-{kind}:{VERSION}"


BASE_IMAGE = image("base")
