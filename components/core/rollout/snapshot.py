"""What a rollback re-applies: the InferenceService's spec before a rollout, kept in a
ConfigMap the service owns (so it is garbage-collected with it).

The ConfigMap (named like the rollout's Lease) is written before the rollout's first
write to the service and names its run; a later run restores from it only when the
Lease's record names the same run, so a finished rollout's snapshot is never re-applied.
Whoever may write ConfigMaps in the namespace could write one, so a snapshot is checked
before it is trusted: its sha256 is the one the run recorded in its Lease (which the
rollout's account, not every ConfigMap writer, may write), it is owned by this very
service (not an earlier one of the same name), well-formed, and it touches only the
predictor fields, environment variables and annotations Conveyor renders.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

import yaml

from conveyor.components.core.errors import ConveyorError
from conveyor.components.core.rollout.kube import Conflict, Objects
from conveyor.components.core.rollout.lease import lease_name, owner_reference
from conveyor.components.core.rollout.manifests import (
    RENDERED_ANNOTATIONS,
    RENDERED_ENV,
    RENDERED_FIELDS,
)

__all__ = ["SNAPSHOT_KEY", "Snapshot", "load_snapshot", "save_snapshot"]

SNAPSHOT_KEY = "snapshot.yaml"


@dataclass(frozen=True)
class Snapshot:
    """The service before a rollout.

    Attributes:
        run: The run that took it.
        stable_revision: The revision serving before the rollout.
        predictor: ``spec.predictor`` as it was.
        applied: What the rollout lays over it (the fields Conveyor owns).
        annotations: The service's annotations the rollout changes, as they were (None: absent).
    """

    run: str
    stable_revision: str
    predictor: dict[str, Any]
    applied: dict[str, Any]
    annotations: dict[str, str | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problem = _problem(self)
        if problem:
            raise ConveyorError(f"snapshot of run {self.run!r}: {problem}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        """As the ConfigMap holds it."""
        return yaml.safe_dump(self.as_dict(), sort_keys=True)

    def digest(self) -> str:
        """The sha256 of ``text()``, which the run records in its Lease."""
        return hashlib.sha256(self.text().encode()).hexdigest()


def _problem(snapshot: Snapshot) -> str:
    if not all(isinstance(v, str) for v in (snapshot.run, snapshot.stable_revision)):
        return "run and stable_revision must be strings"
    if not all(isinstance(v, dict) for v in (snapshot.predictor, snapshot.applied)):
        return "predictor and applied must be mappings"
    annotations = snapshot.annotations
    if not isinstance(annotations, dict) or any(
        not isinstance(v, str | None) for v in annotations.values()
    ):
        return "annotations must map names to strings"
    unknown = set(snapshot.applied) - set(RENDERED_FIELDS)
    model = snapshot.applied.get("model", {})
    if not isinstance(model, dict):
        return "applied.model must be a mapping"
    unknown |= {f"model.{key}" for key in set(model) - RENDERED_FIELDS["model"]}
    env = model.get("env", [])
    if not isinstance(env, list) or any(
        not isinstance(entry, dict) or not isinstance(entry.get("name"), str) for entry in env
    ):
        return "applied.model.env must be a list of named variables"
    unknown |= {f"env {entry['name']}" for entry in env if entry["name"] not in RENDERED_ENV}
    if not isinstance(snapshot.applied.get("annotations", {}), dict):
        return "applied.annotations must be a mapping"
    touched = {*snapshot.applied.get("annotations", {}), *snapshot.annotations}
    unknown |= {f"annotation {key}" for key in touched - set(RENDERED_ANNOTATIONS)}
    if unknown:
        return f"it changes fields Conveyor never renders: {', '.join(sorted(unknown))}"
    return ""


def save_snapshot(config_maps: Objects, service: dict[str, Any], snapshot: Snapshot) -> None:
    """Writes the snapshot ConfigMap (creating it, or replacing an earlier rollout's)."""
    name = lease_name(service["metadata"]["name"])
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": config_maps.namespace,
            "labels": {"app.kubernetes.io/managed-by": "conveyor"},
            "ownerReferences": [owner_reference(service)],
        },
        "data": {"run": snapshot.run, SNAPSHOT_KEY: snapshot.text()},
    }
    current = config_maps.get(name)
    if current is None:
        try:
            config_maps.create(body)
            return
        except Conflict:  # created since it was read: replace it below
            current = config_maps.get(name) or {"metadata": {}}
    body["metadata"]["resourceVersion"] = current["metadata"].get("resourceVersion")
    config_maps.replace(body)


def load_snapshot(
    config_maps: Objects, service: dict[str, Any], run: str, digest: str
) -> Snapshot | None:
    """The snapshot ``run`` took of ``service`` (its sha256 ``digest``), or None when there
    is none of that run's (it stopped before its first write to the service)."""
    name = lease_name(service["metadata"]["name"])
    found = config_maps.get(name) or {"metadata": {}}
    owners = found["metadata"].get("ownerReferences") or []
    data = found.get("data") or {}
    if data.get("run") != run or [o.get("uid") for o in owners] != [service["metadata"]["uid"]]:
        return None
    try:
        text = data[SNAPSHOT_KEY]
        if hashlib.sha256(text.encode()).hexdigest() != digest:
            raise ConveyorError("its sha256 is not the one the run recorded in its Lease")
        return Snapshot(**yaml.safe_load(text))
    except (KeyError, TypeError, AttributeError, yaml.YAMLError, ConveyorError) as error:
        detail = f" ({error})" if isinstance(error, ConveyorError) else ""
        raise ConveyorError(
            f"the snapshot ConfigMap {name} of run {run} is not one Conveyor wrote{detail}: "
            f"check what {service['metadata']['name']} should serve, then delete the Lease {name}"
        ) from None
