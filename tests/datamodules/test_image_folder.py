"""Tests of ImageFolderDataModule on tiny images written into tmp_path."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fewlabel.datamodules import ImageFileDataset, ImageFolderDataModule


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
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'none' / 'cls'} holds no files")):
        _setup(tmp_path / "none")


@pytest.mark.parametrize("suffix", [".png", ".tif"])
@pytest.mark.parametrize("channels", [1, 3])
def test_16_bit_grayscale_is_scaled_by_its_bit_depth(tmp_path: Path, suffix: str, channels: int) -> None:
    values = np.linspace(0, 65535, 48).round().astype(np.uint16).reshape(6, 8)
    values[0, :4] = [1000, 2000, 4000, 4095]  # dark 12-bit values, clipped to white by an 8-bit decode
    path = tmp_path / f"deep{suffix}"
    image = Image.fromarray(values if suffix == ".png" else values.astype(">u2"))
    assert image.mode == ("I;16" if suffix == ".png" else "I;16B")
    image.save(path)
    dataset = ImageFileDataset([path], np.array([0]), image_size=8, channels=channels)
    resized = np.asarray(Image.fromarray(values.astype(np.float32)).resize((8, 8), Image.Resampling.BILINEAR))
    expected = torch.from_numpy(resized / 65535.0).float().expand(channels, 8, 8)
    for train in (False, True):
        x = dataset.load(0, train=train)
        assert x.dtype == torch.float32 and x.shape == (channels, 8, 8)
        torch.testing.assert_close(x, expected, atol=1 / 255, rtol=0)


def test_every_pil_format_is_accepted(tmp_path: Path) -> None:
    root = tmp_path / "formats"
    for name, v in (("dark", 10), ("light", 240)):
        (root / name).mkdir(parents=True)
        for suffix in (".tif", ".ppm", ".tga", ".png"):
            Image.new("RGB", (6, 6), (v, v, v)).save(root / name / f"x{suffix}")
    dm = _setup(root, image_size=4)
    assert dm.num_unlabeled + len(dm.test_dataloader().dataset) == 8
    assert {".jpg", ".png", ".tif", ".tiff", ".webp"} <= set(ImageFolderDataModule.extensions)
    assert ".pdf" not in ImageFolderDataModule.extensions  # PIL writes PDF but cannot read it


def test_class_folder_of_text_files_is_an_error(image_root: Path) -> None:
    (image_root / "notes").mkdir()
    for i in range(2):
        (image_root / "notes" / f"{i}.txt").write_text("not an image")
    with pytest.raises(ValueError, match=re.escape(f"{image_root / 'notes'} holds 2 .txt files")):
        _setup(image_root)


def test_single_sample_class_names_its_folder(image_root: Path) -> None:
    (image_root / "gray").mkdir()
    Image.new("L", (5, 5), 128).save(image_root / "gray" / "only.png")
    with pytest.raises(ValueError, match=re.escape(f"class '{image_root / 'gray'}' has a single sample")):
        _setup(image_root)


def test_one_class_is_an_error(image_root: Path) -> None:
    for path in (image_root / "white").iterdir():
        path.unlink()
    (image_root / "white").rmdir()
    with pytest.raises(ValueError, match=r"needs at least 2 classes to classify, got 1: \['black'\]"):
        _setup(image_root)


def test_check_label_budget_names_the_class(image_root: Path) -> None:
    dm = _setup(image_root)  # 8 images, 3 for testing: the pool holds 3 of one class and 2 of the other
    counts = np.bincount(dm.pool_targets)
    smallest = dm.class_names[int(counts.argmin())]
    assert sorted(counts.tolist()) == [2, 3]
    dm.check_label_budget([1, 2])
    message = f"labels_per_class=3 is too many: class '{smallest}' has only 2 training samples"
    with pytest.raises(ValueError, match=message):
        dm.check_label_budget([1, 3, 9])
    with pytest.raises(ValueError, match=message):
        dm.draw_labels(3, seed=0)


def test_missing_root_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing"):
        _setup(tmp_path / "missing")


@pytest.mark.parametrize("kwargs", [{"channels": 2}, {"image_size": 0}])
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        ImageFolderDataModule(tmp_path, **kwargs)  # type: ignore[arg-type]
