"""Tests of ImageFolderDataModule on tiny images written into tmp_path."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fewlabel.datamodules import ImageFolderDataModule


@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    """2 classes x 4 images in mixed modes, sizes and formats; 'white' images are all 255."""
    root = tmp_path / "images"
    for name in ("black", "white"):
        (root / name).mkdir(parents=True)
    value = {"black": 0, "white": 255}
    for name, v in value.items():
        Image.new("RGB", (10, 12), (v, v, v)).save(root / name / "rgb.png")
        Image.new("L", (5, 5), v).save(root / name / "gray.png")
        Image.new("RGBA", (40, 20), (v, v, v, 255)).save(root / name / "rgba.png")
        Image.new("RGB", (16, 16), (v, v, v)).save(root / name / "photo.JPG")
    return root


def _setup(root: Path, **kwargs: object) -> ImageFolderDataModule:
    dm = ImageFolderDataModule(root, val_fraction=0.0, batch_size=2, **kwargs)  # type: ignore[arg-type]
    dm.setup()
    return dm


@pytest.mark.parametrize("channels, size", [(3, 32), (1, 8)])
def test_shapes_and_values(image_root: Path, channels: int, size: int) -> None:
    dm = _setup(image_root, image_size=size, channels=channels, labels_per_class=2)
    assert dm.class_names == ["black", "white"]
    assert dm.input_shape == (channels, size, size)
    assert dm.num_unlabeled + len(dm.test_dataloader().dataset) == 8
    for loader in (dm.labeled_dataloader(), dm.unlabeled_dataloader(train=False), dm.test_dataloader()):
        for batch in loader:
            x = batch["input"]
            assert x.dtype == torch.float32 and x.shape[1:] == (channels, size, size)
            target = batch["target"] if "target" in batch else batch["label"]
            expected = target.float().view(-1, 1, 1, 1).expand_as(x)  # black = 0.0, white = 1.0
            torch.testing.assert_close(x, expected, atol=2 / 255, rtol=0)


def test_palette_image_is_converted(tmp_path: Path) -> None:
    root = tmp_path / "pal"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.new("P", (7, 9), i).save(root / name / f"{i}.gif")
    dm = _setup(root, image_size=4)
    assert next(iter(dm.test_dataloader()))["input"].shape[1:] == (3, 4, 4)


def test_corrupt_image_is_skipped_with_one_warning(image_root: Path) -> None:
    (image_root / "white" / "bad.png").write_bytes(np.random.default_rng(0).bytes(512))
    (image_root / "black" / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm = _setup(image_root)
    ours = [w for w in caught if "unreadable" in str(w.message)]
    assert len(ours) == 1
    assert "bad.png" in str(ours[0].message) and "truncated.jpg" in str(ours[0].message)
    assert dm.num_unlabeled + len(dm.test_dataloader().dataset) == 8


def test_empty_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "none").mkdir()
    with pytest.raises(ValueError, match="none has no class folders"):
        _setup(tmp_path / "none")
    (tmp_path / "none" / "cls").mkdir()
    with pytest.raises(ValueError, match="none has no class folders"):
        _setup(tmp_path / "none")


def test_missing_root_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing"):
        _setup(tmp_path / "missing")


@pytest.mark.parametrize("kwargs", [{"channels": 2}, {"image_size": 0}])
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        ImageFolderDataModule(tmp_path, **kwargs)  # type: ignore[arg-type]
