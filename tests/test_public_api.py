"""Every package's ``__all__`` is sorted and lists exactly its public names."""

from __future__ import annotations

import importlib
import types

import pytest

PACKAGES = [
    "fewlabel.callbacks",
    "fewlabel.callbacks.eval",
    "fewlabel.datamodules",
    "fewlabel.plugins",
    "fewlabel.plugins.augment",
    "fewlabel.plugins.clustering",
    "fewlabel.plugins.encoders",
    "fewlabel.plugins.evaluation",
    "fewlabel.plugins.heads",
    "fewlabel.plugins.losses",
    "fewlabel.plugins.methods",
    "fewlabel.plugins.optim",
    "fewlabel.plugins.tta",
    "fewlabel.plugins.recipes",
]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_sorted_and_exact(name: str) -> None:
    package = importlib.import_module(name)
    public = {
        attr for attr, value in vars(package).items()
        if not attr.startswith("_") and attr != "annotations" and not isinstance(value, types.ModuleType)
    }
    assert list(package.__all__) == sorted(package.__all__)
    assert set(package.__all__) == public


def test_plugins_does_not_import_recipes() -> None:
    import subprocess
    import sys

    code = "import sys, fewlabel.plugins; print('fewlabel.plugins.recipes' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
