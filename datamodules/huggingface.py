"""Hugging Face ``datasets`` with an image or an audio column, with the label budget.

``datasets`` is optional (``pip install "fewlabel[hf]"``); it is imported when a datamodule sets up.
Image and audio cells are read without ``datasets``' own decoders: images through PIL, audio through
``soundfile`` (``datasets`` >= 4 decodes audio only with ``torchcodec``, which needs FFmpeg).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from PIL import Image
from torch import Tensor

from fewlabel.datamodules.audio_folder import _clip_samples, crop_or_pad, mono_waveform
from fewlabel.datamodules.base import DatasetSplits, FewLabelDataModule, _check_test_fraction, _split_off_test
from fewlabel.datamodules.budget import _check_int
from fewlabel.datamodules.dataset import FewLabelDataset, InMemoryDataset, _unit_float
from fewlabel.datamodules.image_folder import PIL_MODES, image_to_tensor

__all__ = ["HuggingFaceDataModule", "WaveformDataset"]



class WaveformDataset(FewLabelDataset):
    """Whole mono waveforms held in memory, cut or zero-padded to ``num_samples`` on every load
    (random crops for training loads, centre crops otherwise; see :func:`crop_or_pad`).

    Args:
        waves: One ``(T_i,)`` ``float32`` waveform per sample.
        targets: Class id of each (``-1`` = unknown).
        num_samples: Length of every input.

    Example:
        >>> import numpy as np, torch
        >>> ds = WaveformDataset([torch.ones(3)], np.array([0]), num_samples=5)
        >>> ds.load(0, train=False)  # zero-padded to 5 samples
        tensor([1., 1., 1., 0., 0.])
    """

    def __init__(self, waves: list[Tensor], targets: np.ndarray, num_samples: int) -> None:
        if len(waves) != len(targets):
            raise ValueError(f"{len(waves)} waveforms but {len(targets)} targets")
        self.waves = waves
        self.targets = np.asarray(targets, dtype=np.int64)
        self.num_samples = num_samples

    def load(self, index: int, train: bool) -> Tensor:
        """Sample ``index``, cropped or padded to ``num_samples``."""
        return crop_or_pad(self.waves[index], self.num_samples, train)


def _datasets() -> Any:
    try:
        import datasets
    except ImportError as err:
        raise ImportError('HuggingFaceDataModule needs the datasets package: pip install "fewlabel[hf]"') from err
    return datasets


def _file(cell: dict[str, Any]) -> Any:
    """An undecoded Image or Audio cell's content as something PIL and soundfile open."""
    if cell.get("bytes") is not None:
        return io.BytesIO(cell["bytes"])
    if cell.get("path"):
        return cell["path"]
    raise ValueError(f"cell has neither bytes nor a path: {sorted(cell)}")


class HuggingFaceDataModule(FewLabelDataModule):
    """A Hugging Face ``datasets.Dataset`` (or ``DatasetDict``, or a folder written by its
    ``save_to_disk``) with an image or audio column and a label column.

    The splits are ``source[train_key]`` and, where present, ``source[test_key]`` and
    ``source[val_key]`` (a dataset's official validation split, used when ``val_fraction > 0``); a
    single ``Dataset``, or a ``DatasetDict`` without a test split, gets a stratified ``test_fraction``
    test split (``random_state=0``). Every cell is decoded once at setup and held in memory.

    - **Images** (an ``Image`` feature, PIL images, or ``{"bytes", "path"}`` cells) become
      ``(channels, image_size, image_size)`` ``float32`` inputs in ``[0, 1]``, as
      :class:`~fewlabel.datamodules.ImageFolderDataModule` makes them.
    - **Audio** (an ``Audio`` feature, or ``{"array", "sampling_rate"}`` cells) becomes mono
      ``float32`` waveforms at ``sample_rate``, cut or zero-padded to ``clip_seconds``, as
      :class:`~fewlabel.datamodules.AudioFolderDataModule` makes them.

    Labels: a ``ClassLabel`` column gives the class ids and names; any other column's distinct values,
    sorted, are the classes (named by ``str``).

    Args:
        source: ``datasets.Dataset``, ``datasets.DatasetDict`` or the path of a ``save_to_disk`` folder.
        input_column: The image or audio column; ``None`` = the only ``Image`` or ``Audio`` feature.
        label_column: The class column.
        train_key, val_key, test_key: Split names in a ``DatasetDict``.
        image_size, channels: Image inputs (see :class:`~fewlabel.datamodules.ImageFolderDataModule`).
        sample_rate, clip_seconds: Audio inputs (see :class:`~fewlabel.datamodules.AudioFolderDataModule`).
        test_fraction: Stratified test share when there is no test split.
        **kwargs: Arguments of :class:`~fewlabel.datamodules.FewLabelDataModule`.

    Raises:
        ValueError: On bad sizes; at setup, on a missing split or column (naming the ones there) or a
            column that holds neither images nor audio.

    Example:
        >>> import datasets  # doctest: +SKIP
        >>> dm = HuggingFaceDataModule(datasets.load_from_disk("my_data"), labels_per_class=5)  # doctest: +SKIP
    """

    def __init__(self, source: Any, input_column: str | None = None, label_column: str = "label",
                 train_key: str = "train", val_key: str = "validation", test_key: str = "test",
                 image_size: int = 32, channels: int = 3, sample_rate: int = 16000, clip_seconds: float = 1.0,
                 test_fraction: float = 0.3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _check_int("image_size", image_size, 1)
        num_samples = _clip_samples(sample_rate, clip_seconds)
        if channels not in PIL_MODES:
            raise ValueError(f"channels must be one of {sorted(PIL_MODES)}, got {channels!r}")
        self.source = source
        self.input_column, self.label_column = input_column, label_column
        self.keys = {"train": train_key, "val": val_key, "test": test_key}
        self.image_size, self.channels = image_size, channels
        self.sample_rate, self.num_samples = sample_rate, num_samples
        self.test_fraction = _check_test_fraction(test_fraction)
        self.kind: str | None = None  # "image" or "audio", known after setup

    def _splits(self) -> dict[str, Any]:
        datasets = _datasets()
        source = self.source
        if isinstance(source, (str, Path)):
            if not Path(source).exists():
                raise FileNotFoundError(f"no saved Hugging Face dataset at {source} (a datasets save_to_disk folder)")
            source = datasets.load_from_disk(str(source))
        if isinstance(source, datasets.Dataset):
            return {"train": source}
        if not isinstance(source, datasets.DatasetDict):
            raise ValueError(f"source must be a datasets.Dataset, a DatasetDict or a save_to_disk path, got "
                             f"{type(source).__name__}")
        if self.keys["train"] not in source:
            raise ValueError(f"the DatasetDict has no split {self.keys['train']!r}; its splits: {list(source)}")
        return {part: source[key] for part, key in self.keys.items() if key in source}

    def _input_column(self, train: Any) -> str:
        datasets = _datasets()
        features = train.features
        for column in (self.input_column, self.label_column):
            if column is not None and column not in features:
                raise ValueError(f"the dataset has no column {column!r}; its columns: {list(features)}")
        if self.input_column is not None:
            return self.input_column
        found = [name for name, feature in features.items() if isinstance(feature, (datasets.Image, datasets.Audio))]
        if len(found) != 1:
            raise ValueError(f"set input_column: the dataset has {len(found)} Image/Audio columns {found} among "
                             f"{list(features)}")
        return found[0]

    def _cells(self, split: Any, column: str) -> list[Any]:
        """The column's cells, undecoded where ``datasets`` would decode them itself."""
        datasets = _datasets()
        feature = split.features[column]
        if isinstance(feature, datasets.Image):
            split = split.cast_column(column, datasets.Image(decode=False))
        elif isinstance(feature, datasets.Audio):
            split = split.cast_column(column, datasets.Audio(decode=False))
        return list(split[column])

    def _decode(self, cell: Any, column: str) -> Tensor:
        if isinstance(cell, Image.Image):
            kind, value = "image", image_to_tensor(cell, self.image_size, self.channels)
        elif isinstance(cell, dict) and "array" in cell and "sampling_rate" in cell:
            kind, value = "audio", mono_waveform(np.asarray(cell["array"]), int(cell["sampling_rate"]),
                                                 self.sample_rate)
        elif isinstance(cell, dict) and ("bytes" in cell or "path" in cell):
            try:
                with Image.open(_file(cell)) as image:
                    kind, value = "image", image_to_tensor(image, self.image_size, self.channels)
            except (OSError, ValueError):  # not an image: audio, or nothing readable
                data, rate = sf.read(_file(cell), dtype="float32", always_2d=True)
                kind, value = "audio", mono_waveform(data, int(rate), self.sample_rate)
        else:
            raise ValueError(f"column {column!r} holds {type(cell).__name__} cells, not images or audio")
        if self.kind is not None and kind != self.kind:
            raise ValueError(f"column {column!r} mixes images and audio")
        self.kind = kind
        return value

    def load_splits(self) -> DatasetSplits:
        """Decode every split and name the classes."""
        splits = self._splits()
        column = self._input_column(splits["train"])
        datasets = _datasets()
        label_feature = splits["train"].features[self.label_column]
        labels = {part: list(split[self.label_column]) for part, split in splits.items()}
        if isinstance(label_feature, datasets.ClassLabel):
            class_names, ids = list(label_feature.names), None
        else:
            values = sorted({value for part in labels.values() for value in part})
            class_names, ids = [str(value) for value in values], {value: i for i, value in enumerate(values)}
        decoded = {}
        for part, split in splits.items():
            targets = np.array([label if ids is None else ids[label] for label in labels[part]], dtype=np.int64)
            values = [self._decode(cell, column) for cell in self._cells(split, column)]
            if self.kind == "image":
                dtype = torch.uint8 if all(v.dtype == torch.uint8 for v in values) else torch.float32
                stacked = torch.stack([v if v.dtype == dtype else _unit_float(v) for v in values])
                decoded[part] = InMemoryDataset(stacked, targets)
            else:
                decoded[part] = WaveformDataset(values, targets, self.num_samples)
        train, test = decoded["train"], decoded.get("test")
        if test is None:
            train, test = _split_off_test(train, self.test_fraction, class_names)
        return DatasetSplits(train=train, test=test, class_names=class_names, val=decoded.get("val"))
