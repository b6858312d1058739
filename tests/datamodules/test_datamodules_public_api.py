"""The public surface of fewlabel.datamodules is exactly its sorted ``__all__``."""

from __future__ import annotations

import inspect
from pathlib import Path

import fewlabel.datamodules as datamodules


def test_all_lists_exactly_the_public_names() -> None:
    public = {
        name
        for name, value in vars(datamodules).items()
        if not name.startswith("_") and not inspect.ismodule(value) and name != "annotations"
    }
    assert set(datamodules.__all__) == public
    assert list(datamodules.__all__) == sorted(datamodules.__all__)


def test_datamodules_do_not_import_plugins_or_callbacks() -> None:
    files = sorted(Path(datamodules.__file__).parent.glob("*.py"))
    assert len(files) > 5
    for path in files:
        source = path.read_text()
        assert "fewlabel.plugins" not in source and "fewlabel.callbacks" not in source, path.name
