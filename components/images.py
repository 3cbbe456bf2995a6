"""Container images of Conveyor: the one place their names and tags are decided.

Each tag is the package version, so a pipeline compiled by Conveyor X.Y.Z runs
on the images built from X.Y.Z (``images/<kind>/Dockerfile``). ``registry`` is
where they are pulled from; pipelines take it at compile time (``IMAGE_REGISTRY``).
"""

from __future__ import annotations

from importlib import metadata
from typing import Literal

__all__ = [
    "BASE_IMAGE",
    "DEFAULT_REGISTRY",
    "SERVING_IMAGE",
    "VERSION",
    "ImageKind",
    "image",
]

ImageKind = Literal["base", "gpu", "serving"]
DEFAULT_REGISTRY = "conveyor"
VERSION = metadata.version("conveyor")


def image(kind: ImageKind, registry: str = DEFAULT_REGISTRY) -> str:
    """The URI of one of Conveyor's images.

    Kinds: ``base`` (every component step), ``gpu`` (training on a CUDA runtime) and
    ``serving`` (the KServe predictor that ``kserve/serving-runtime.yaml`` names).
    """
    return f"{registry.rstrip('/')}/conveyor-{kind}:{VERSION}"


BASE_IMAGE = image("base")
SERVING_IMAGE = image("serving")
