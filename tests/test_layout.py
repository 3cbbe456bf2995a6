"""The layout the README describes is the tree, and the layers import only downwards."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

from conveyor.components import STEP_MODULES
from tests.conftest import ROOT

# Module prefix -> prefixes it must never import (the layers, from DESIGN.md).
FORBIDDEN_IMPORTS = {
    "conveyor.components.core": ("kfp", "conveyor.pipelines", *(
        f"conveyor.components.{step}" for step in STEP_MODULES.values()
    )),
    "conveyor.components": ("conveyor.pipelines",),
    "conveyor.pipelines.definitions": (
        "conveyor.pipelines.cli", "conveyor.pipelines.delivery", "conveyor.pipelines.local",
    ),
    "conveyor.pipelines.delivery": ("conveyor.pipelines.cli", "conveyor.pipelines.local"),
    "conveyor.pipelines.local": ("conveyor.pipelines.cli", "conveyor.pipelines.delivery"),
}  # fmt: skip


def layout_paths() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Layout\n") :]
    return re.findall(r"^\| `([^`]+)` \|", section, re.M)


def package_folders() -> set[str]:
    return {
        f"{path.parent.relative_to(ROOT)}/"
        for top in ("components", "pipelines")
        for path in (ROOT / top).rglob("__init__.py")
    }


def test_the_readme_layout_lists_every_folder_and_package_that_exists() -> None:
    listed = layout_paths()
    missing = [path for path in listed if not (ROOT / path).exists()]
    assert not missing, f"README layout names what is not there: {missing}"
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    folders = {f"{path.split('/')[0]}/" for path in tracked if "/" in path} - {".ci/"}
    unlisted = sorted((folders | package_folders()) - set(listed))
    assert not unlisted, f"README layout does not mention: {unlisted}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["conveyor", *parts])


def imported_names(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return names


def under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(f"{prefix}.")


@pytest.mark.parametrize("layer", list(FORBIDDEN_IMPORTS))
def test_each_layer_imports_only_downwards(layer: str) -> None:
    top = "components" if layer.startswith("conveyor.components") else "pipelines"
    breaches = []
    for path in sorted((ROOT / top).rglob("*.py")):
        module = module_name(path)
        if not under(module, layer):
            continue
        for name in imported_names(path):
            for forbidden in FORBIDDEN_IMPORTS[layer]:
                if under(name, forbidden) and not under(module, forbidden):
                    breaches.append(f"{module} imports {name}")
    assert not breaches, "\n".join(breaches)
