"""The layering of DESIGN.md and the packaging stay true as the code grows."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"fewlabel.plugins": "plugins", "fewlabel.callbacks": "callbacks", "fewlabel.datamodules": "datamodules"}


def _imports(path: Path) -> set[str]:
    """Every module a file imports (absolute names; relative imports are not used in this project)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_plugins_outside_recipes_import_neither_callbacks_nor_datamodules() -> None:
    offenders = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sorted((ROOT / "plugins").rglob("*.py")) if "recipes" not in path.relative_to(ROOT).parts
        for name in sorted(_imports(path)) if name.startswith(("fewlabel.callbacks", "fewlabel.datamodules"))
    ]
    assert not offenders, offenders


def test_datamodules_do_not_import_plugins_or_callbacks() -> None:
    offenders = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sorted((ROOT / "datamodules").rglob("*.py"))
        for name in sorted(_imports(path)) if name.startswith(("fewlabel.callbacks", "fewlabel.plugins"))
    ]
    assert not offenders, offenders


def test_callbacks_do_not_import_recipes_or_datamodules() -> None:
    offenders = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sorted((ROOT / "callbacks").rglob("*.py"))
        for name in sorted(_imports(path)) if name.startswith(("fewlabel.plugins.recipes", "fewlabel.datamodules"))
    ]
    assert not offenders, offenders


def test_pyproject_lists_every_package_folder() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == FOLDERS
    folders = {
        prefix + "".join("." + part for part in init.parent.relative_to(ROOT / folder).parts)
        for prefix, folder in FOLDERS.items() for init in (ROOT / folder).rglob("__init__.py")
    }
    assert set(config["packages"]) == folders
