"""The example configs load and build, and the shapes generator writes a tree the image datamodule reads."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

from fewlabel.datamodules import ImageFolderDataModule
from fewlabel.plugins.augment import create_augment
from fewlabel.plugins.encoders import create_encoder
from fewlabel.plugins.recipes import load_config
from fewlabel.plugins.recipes.build import make_datamodule

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("name", ["unfused_digits.yaml", "unfused_audio.yaml", "unfused_image.yaml"])
def test_example_configs_build(name: str) -> None:
    config = load_config("unfused", EXAMPLES / name)
    for stage in ("teacher", "student"):
        spec = dict(config[stage]["encoder"])
        encoder = create_encoder(spec.pop("name"), **spec)
        assert encoder.embed_dim > 0
        augment = dict(config[stage].get("augment") or {})
        create_augment(augment.pop("name", None), **augment)
    assert set(config["finetune"]["methods"]) == {"supervised", "ssl+finetune", "unfused"}


def test_shapes_generator_feeds_the_image_datamodule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["make_shapes.py", "--root", str(tmp_path), "--per-class", "4"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(EXAMPLES / "make_shapes.py"), run_name="__main__")
    assert exit_info.value.code in (0, None)
    dm = ImageFolderDataModule(root=tmp_path, image_size=16, channels=3, val_fraction=0.0, labels_per_class=1)
    dm.setup("fit")
    assert dm.num_classes == 6 and dm.input_shape == (3, 16, 16)
    image_cfg = load_config("unfused", EXAMPLES / "unfused_image.yaml", [f"data.root={tmp_path}"])
    assert isinstance(make_datamodule(image_cfg["data"]), ImageFolderDataModule)
