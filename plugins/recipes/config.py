"""Recipe configuration: YAML files merged onto packaged defaults, plus ``--a.b VALUE`` overrides."""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from fewlabel.plugins.recipes.validate import RecipeError


def default_config(recipe: str) -> dict[str, Any]:
    """The packaged default configuration of ``recipe`` (the embedded digits data)."""
    name = f"{recipe}_digits.yaml"
    path = resources.files("fewlabel.plugins.recipes").joinpath("configs", name)
    if not path.is_file():
        raise RecipeError(f"no packaged default config for recipe {recipe!r}")
    return yaml.safe_load(path.read_text())


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``update`` into a copy of ``base``.

    Mappings merge key by key, except that a mapping naming a different component (another
    ``name``, e.g. a new encoder or augmentation) replaces the old one whole, so that the old
    component's keyword arguments do not leak into the new one. Everything else replaces.
    """
    out = copy.deepcopy(base)
    for key, value in update.items():
        old = out.get(key)
        if isinstance(value, dict) and isinstance(old, dict) and value.get("name", old.get("name")) == old.get("name"):
            out[key] = merge(old, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


#: ``(section, selector, kwargs)``: when a config picks another component for ``section.selector`` than the
#: packaged defaults, the defaults' ``section.kwargs`` (arguments of the default component) are dropped and
#: only the user's own are kept (e.g. ``--teacher.method byol`` does not inherit DeepCluster-v2's settings).
COMPONENT_KWARGS = (("teacher", "method", "module"),)


def _set(config: dict[str, Any], item: str) -> None:
    """Apply one ``section.key=value`` override to ``config`` in place."""
    key, sep, raw = item.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise RecipeError(f"override {item!r} must look like 'section.key=value'")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise RecipeError(f"override {item!r}: value is not valid YAML ({err})") from None
    node = config
    *parents, leaf = key.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise RecipeError(f"override {item!r}: {part!r} is not a section")
        node = child
    if isinstance(value, dict) and isinstance(node.get(leaf), dict):
        node[leaf] = merge({leaf: node[leaf]}, {leaf: value})[leaf]  # like a YAML file: merge mappings
    else:
        node[leaf] = value


def _read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise RecipeError(f"config file {path} is not valid YAML{at}: {problem}") from None
    if not isinstance(loaded, dict):
        raise RecipeError(f"config file {path} must hold a mapping, got {type(loaded).__name__}")
    return loaded


def load_config(recipe: str, path: str | Path | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Defaults, then the YAML file at ``path``, then ``overrides`` (``["data.root=PATH", ...]``).

    Override values are parsed as YAML (``1`` is an int, ``[1, 5]`` a list, ``null`` None). A config
    that picks another teacher method than the defaults keeps only its own ``teacher.module`` keys
    (see :data:`COMPONENT_KWARGS`).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        RecipeError: The file is not valid YAML, an override is malformed or its value is not valid YAML.
    """
    defaults = default_config(recipe)
    config = copy.deepcopy(defaults)
    user: dict[str, Any] = {}
    if path is not None:
        loaded = _read_yaml(path)
        config, user = merge(config, loaded), merge(user, loaded)
    for item in overrides or []:
        _set(config, item)
        _set(user, item)
    for section, selector, kwargs in COMPONENT_KWARGS:
        chosen, default = config.get(section), defaults.get(section)
        if isinstance(chosen, dict) and isinstance(default, dict) and chosen.get(selector) != default.get(selector):
            own = user.get(section, {}).get(kwargs) if isinstance(user.get(section), dict) else None
            chosen[kwargs] = copy.deepcopy(own) if own is not None else {}
    return config
