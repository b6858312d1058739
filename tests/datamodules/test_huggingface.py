"""HuggingFaceDataModule on real ``datasets`` objects (built here, no download): image and audio columns,
ClassLabel and plain label columns, DatasetDict splits and save_to_disk folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from fewlabel.datamodules import HuggingFaceDataModule
from fewlabel.plugins.recipes.build import make_datamodule

datasets = pytest.importorskip("datasets")


def image_split(count: int, seed: int) -> datasets.Dataset:
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)) for _ in range(count)]
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog", "owl"])})
    return datasets.Dataset.from_dict({"img": images, "label": [i % 3 for i in range(count)]}, features=features)


def test_image_dataset_dict_with_class_labels(tmp_path: Path) -> None:
    source = datasets.DatasetDict({"train": image_split(30, 0), "test": image_split(9, 1)})
    dm = HuggingFaceDataModule(source, image_size=8, labels_per_class=2, val_fraction=0.2)
    dm.setup()
    assert dm.kind == "image" and dm.class_names == ["cat", "dog", "owl"] and dm.input_shape == (3, 8, 8)
    assert dm.num_unlabeled == 24 and len(dm.test_dataloader().dataset) == 9
    batch = next(iter(dm.test_dataloader()))
    cell = source["test"][0]["img"]
    expected = torch.from_numpy(np.array(cell.convert("RGB").resize((8, 8), Image.Resampling.BILINEAR))).permute(2, 0, 1)
    assert torch.equal(batch["input"][0], expected.float() / 255) and batch["label"][0] == 0
    # a save_to_disk folder, by path (what a recipe config can name), gives the same data
    source.save_to_disk(str(tmp_path / "saved"))
    again = make_datamodule({"name": "huggingface", "source": str(tmp_path / "saved"), "image_size": 8,
                             "labels_per_class": 2, "val_fraction": 0.2, "channels": 1})
    again.setup()
    assert again.input_shape == (1, 8, 8) and again.num_unlabeled == 24
    # one Dataset: a stratified test split
    single = HuggingFaceDataModule(source["train"], image_size=8, test_fraction=0.2, val_fraction=0.0)
    single.setup()
    assert len(single.test_dataloader().dataset) == 6 and single.num_unlabeled == 24


def test_audio_columns_from_files_and_arrays(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    paths = []
    for i in range(8):
        paths.append(str(tmp_path / f"{i}.wav"))
        sf.write(paths[-1], (0.1 * rng.standard_normal(8000 + 1000 * i)).astype(np.float32), 8000)
    labels = ["up", "down"] * 4
    files = datasets.Dataset.from_dict({"speech": paths, "word": labels}).cast_column("speech", datasets.Audio())
    validation = datasets.Dataset.from_dict({"speech": paths[:4], "word": labels[:4]}).cast_column("speech",
                                                                                                  datasets.Audio())
    dm = HuggingFaceDataModule(datasets.DatasetDict({"train": files, "validation": validation}), label_column="word",
                               sample_rate=16000, clip_seconds=0.5, test_fraction=0.25, labels_per_class=1)
    dm.setup()
    assert dm.kind == "audio" and dm.class_names == ["down", "up"] and dm.input_shape == (8000,)
    assert len(dm.val_dataloader().dataset) == 4 and dm.num_unlabeled == 6  # the official validation split
    arrays = datasets.Dataset.from_dict({"audio": [{"array": rng.standard_normal(400).tolist(), "sampling_rate": 16000}
                                                   for _ in range(6)], "label": [0, 1, 2] * 2})
    short = HuggingFaceDataModule(arrays, input_column="audio", clip_seconds=0.05, test_fraction=0.5, val_fraction=0.0)
    short.setup()
    first = next(iter(short.test_dataloader()))["input"][0]
    assert first.shape == (800,) and first[400:].abs().sum() == 0  # zero-padded to 0.05 s


def test_bad_sources_and_columns_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no column 'image'; its columns: \['img', 'label'\]"):
        HuggingFaceDataModule(image_split(6, 0), input_column="image").setup()
    with pytest.raises(ValueError, match=r"no column 'y'"):
        HuggingFaceDataModule(image_split(6, 0), label_column="y").setup()
    with pytest.raises(ValueError, match=r"no split 'train'; its splits: \['fit'\]"):
        HuggingFaceDataModule(datasets.DatasetDict({"fit": image_split(6, 0)})).setup()
    numbers = datasets.Dataset.from_dict({"x": [1.0, 2.0] * 4, "label": [0, 1] * 4})
    with pytest.raises(ValueError, match=r"set input_column: the dataset has 0 Image/Audio columns"):
        HuggingFaceDataModule(numbers).setup()
    with pytest.raises(ValueError, match=r"column 'x' holds float cells, not images or audio"):
        HuggingFaceDataModule(numbers, input_column="x").setup()
    with pytest.raises(FileNotFoundError, match="no saved Hugging Face dataset"):
        HuggingFaceDataModule(str(tmp_path / "missing")).setup()
    with pytest.raises(ValueError, match="channels must be one of"):
        HuggingFaceDataModule(numbers, channels=2)
