"""Every public class and function of the three packages has a docstring, every public class one with an
example, and every example in every module runs (``doctest``, examples marked ``+SKIP`` excepted: those
need files or a download)."""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil

import pytest

from tests.test_public_api import PACKAGES

MODULES = sorted(name for package in ("fewlabel.plugins", "fewlabel.callbacks", "fewlabel.datamodules")
                 for _, name, _ in pkgutil.walk_packages(importlib.import_module(package).__path__, f"{package}.")
                 if not name.endswith("__main__"))  # importing __main__ would run the command


@pytest.mark.parametrize("name", MODULES)
def test_the_examples_run(name: str, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # an example that writes files writes them here
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, report=True)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed (printed above)"


def test_every_public_name_is_documented() -> None:
    undocumented, without_example = [], []
    for package in PACKAGES:
        module = importlib.import_module(package)
        for attr in module.__all__:
            value = getattr(module, attr)
            if not (inspect.isclass(value) or inspect.isfunction(value)):
                continue
            if not (value.__doc__ or "").strip():
                undocumented.append(f"{package}.{attr}")
            elif inspect.isclass(value) and ">>>" not in value.__doc__:
                without_example.append(f"{package}.{attr}")
    assert not undocumented and not without_example, (undocumented, without_example)
