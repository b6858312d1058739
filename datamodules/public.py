"""Public benchmarks through their own loaders: CIFAR-10 and STL-10 (torchvision), Speech Commands v2
(torchaudio) and ESC-50 (its metadata CSV), each with the label budget of
:class:`~fewlabel.datamodules.FewLabelDataModule`.

Nothing is downloaded unless ``download=True``. The files are read where each dataset keeps them
(the folder names below); torchvision's MD5 checks of the archives' files run only with
``verify=True`` (reading 170 MB - 2.6 GB to hash them on every setup is slow), otherwise its loaders
check that the files exist and parse them as usual.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchaudio.datasets
import torchvision.datasets

from fewlabel.datamodules.audio_folder import AudioFileDataset, _clip_samples
from fewlabel.datamodules.base import DatasetSplits, FewLabelDataModule
from fewlabel.datamodules.dataset import InMemoryDataset
from fewlabel.datamodules.folder import _warn_skipped

__all__ = ["CIFAR10DataModule", "ESC50DataModule", "STL10DataModule", "SpeechCommandsDataModule"]


def _files_only(cls: type, verify: bool) -> type:
    """``cls`` (a torchvision dataset) or, unless ``verify``, a subclass whose integrity check asks only that
    each file exists (torchvision's ``check_integrity`` with ``md5=None``)."""
    if verify:
        return cls
    unchecked: dict[str, Any] = {name: [[file, None] for file, _ in getattr(cls, name)]
                                 for name in ("train_list", "test_list")}
    if isinstance(getattr(cls, "meta", None), dict):
        unchecked["meta"] = {**cls.meta, "md5": None}
    return type(cls.__name__, (cls,), unchecked)


def _open(make: Any, what: str, folder: Path, files: str) -> Any:
    """``make()``, turning a loader's "not found" into an error that says where the files were looked for."""
    try:
        return make()
    except RuntimeError as err:
        raise FileNotFoundError(f"{what} not found, incomplete or corrupted in {folder} (expected {files}); put the "
                                f"extracted archive there or pass download=True") from err


class _ImageBenchmark(FewLabelDataModule):
    """Shared arguments of the torchvision image benchmarks."""

    channels = 3

    def __init__(self, root: str | Path, download: bool = False, verify: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.root = Path(root).expanduser()
        self.download = bool(download)
        self.verify = bool(verify)


class CIFAR10DataModule(_ImageBenchmark):
    """CIFAR-10 from torchvision's loader: 50,000 training and 10,000 test images, 32 x 32 RGB.

    Reads ``root/cifar-10-batches-py/`` (``data_batch_1`` ... ``data_batch_5``, ``test_batch``,
    ``batches.meta``: the python version of the archive). Inputs are ``(3, 32, 32)`` ``float32``
    in ``[0, 1]``, held in memory as ``uint8``; normalisation belongs to the encoder.

    Args:
        root: The folder holding ``cifar-10-batches-py``.
        download: Fetch and extract the archive first if it is missing.
        verify: Check every file's MD5 sum (torchvision's own check).
        **kwargs: Arguments of :class:`~fewlabel.datamodules.FewLabelDataModule`.

    Raises:
        FileNotFoundError: at setup, if the files are not there (naming the folder).

    Example:
        >>> dm = CIFAR10DataModule("data", labels_per_class=4)  # doctest: +SKIP
    """

    def load_splits(self) -> DatasetSplits:
        """Load both splits with ``torchvision.datasets.CIFAR10``."""
        cls = _files_only(torchvision.datasets.CIFAR10, self.verify)
        folder, files = self.root / cls.base_folder, "data_batch_1..5, test_batch and batches.meta"
        train = _open(lambda: cls(self.root, train=True, download=self.download), "CIFAR-10", folder, files)
        test = _open(lambda: cls(self.root, train=False), "CIFAR-10", folder, files)

        def dataset(split: Any) -> InMemoryDataset:
            images = torch.from_numpy(np.ascontiguousarray(split.data.transpose(0, 3, 1, 2)))  # HWC -> CHW
            return InMemoryDataset(images, np.asarray(split.targets, dtype=np.int64))

        return DatasetSplits(train=dataset(train), test=dataset(test), class_names=list(train.classes))


class STL10DataModule(_ImageBenchmark):
    """STL-10 from torchvision's loader: 5,000 labeled training images, 100,000 unlabeled ones and
    8,000 test images, 96 x 96 RGB.

    The pool is the labeled training split plus (``unlabeled=True``) the unlabeled split, whose labels
    are unknown (``-1``): label draws and the validation split come from the 5,000 labeled images only,
    and the unlabeled loader serves all of the pool. Reads ``root/stl10_binary/`` (``train_X.bin``,
    ``train_y.bin``, ``unlabeled_X.bin``, ``test_X.bin``, ``test_y.bin``, ``class_names.txt``). Inputs
    are ``(3, 96, 96)`` ``float32`` in ``[0, 1]``, held in memory as ``uint8`` (the unlabeled split
    alone is 2.8 GB).

    Args:
        root: The folder holding ``stl10_binary``.
        unlabeled: Add the unlabeled split to the pool.
        download: Fetch and extract the archive first if it is missing.
        verify: Check every file's MD5 sum (torchvision's own check).
        **kwargs: Arguments of :class:`~fewlabel.datamodules.FewLabelDataModule`.

    Raises:
        FileNotFoundError: at setup, if the files are not there (naming the folder).

    Example:
        >>> dm = STL10DataModule("data", labels_per_class=4, download=True)  # doctest: +SKIP
        >>> dm.setup()  # doctest: +SKIP
    """

    def __init__(self, root: str | Path, unlabeled: bool = True, download: bool = False, verify: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(root, download=download, verify=verify, **kwargs)
        self.unlabeled = bool(unlabeled)

    def load_splits(self) -> DatasetSplits:
        """Load the splits with ``torchvision.datasets.STL10``."""
        cls = _files_only(torchvision.datasets.STL10, self.verify)
        folder = self.root / cls.base_folder
        files = "train_X.bin, train_y.bin, unlabeled_X.bin, test_X.bin, test_y.bin and class_names.txt"
        split = "train+unlabeled" if self.unlabeled else "train"
        train = _open(lambda: cls(self.root, split=split, download=self.download), "STL-10", folder, files)
        test = _open(lambda: cls(self.root, split="test"), "STL-10", folder, files)
        if not hasattr(train, "classes"):
            raise FileNotFoundError(f"STL-10: {folder / cls.class_names_file} is missing (one class name per line)")

        def dataset(split: Any) -> InMemoryDataset:
            return InMemoryDataset(torch.from_numpy(np.ascontiguousarray(split.data)), split.labels.astype(np.int64))

        return DatasetSplits(train=dataset(train), test=dataset(test), class_names=list(train.classes))


class _AudioBenchmark(FewLabelDataModule):
    """Shared arguments of the audio benchmarks: fixed-length mono waveforms (see
    :class:`~fewlabel.datamodules.AudioFileDataset`)."""

    def __init__(self, root: str | Path, sample_rate: int, clip_seconds: float, cache: bool,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_samples = _clip_samples(sample_rate, clip_seconds)
        self.root = Path(root).expanduser()
        self.sample_rate = sample_rate
        self.clip_seconds = float(clip_seconds)
        self.cache = bool(cache)

    def _dataset(self, files: list[Path], targets: list[int]) -> AudioFileDataset:
        return AudioFileDataset(files, np.asarray(targets, dtype=np.int64), self.sample_rate, self.num_samples,
                                self.cache)


class SpeechCommandsDataModule(_AudioBenchmark):
    """Speech Commands v2 through torchaudio's ``SPEECHCOMMANDS``, with its official splits.

    The test and validation splits are the archive's ``testing_list.txt`` and ``validation_list.txt``
    (torchaudio's ``subset``), the pool is the rest; ``_background_noise_`` is not a class. Classes are
    the word folders of the training subset (35 in v2), or ``classes``, a subset of them, in that order.
    Reads ``root/SpeechCommands/speech_commands_v0.02/<word>/<speaker>_nohash_<n>.wav``; clips are
    decoded with ``soundfile`` and cut or zero-padded to ``clip_seconds``.

    Args:
        root: The folder holding ``SpeechCommands``.
        classes: Keep only these words (e.g. the ten digits); ``None`` = every word.
        sample_rate: Sample rate of the inputs in Hz (the recordings are 16 kHz).
        clip_seconds: Length of every input.
        cache: Keep decoded clips in memory (105,829 clips are 6.8 GB as ``float32``); ``False``
            decodes on every load.
        download: Fetch and extract the archive first if it is missing.
        **kwargs: Arguments of :class:`~fewlabel.datamodules.FewLabelDataModule`; ``val_fraction > 0``
            (the default) selects the official validation split, 0 drops it.

    Raises:
        FileNotFoundError: at setup, if the folder or a split list is missing.
        ValueError: at setup, for a name in ``classes`` that is not a word folder.

    Example:
        >>> digits = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
        >>> dm = SpeechCommandsDataModule("data", classes=digits, labels_per_class=5)  # doctest: +SKIP
        >>> dm.setup()  # doctest: +SKIP
    """

    folder = Path("SpeechCommands") / "speech_commands_v0.02"

    def __init__(self, root: str | Path, classes: list[str] | None = None, sample_rate: int = 16000,
                 clip_seconds: float = 1.0, cache: bool = False, download: bool = False, **kwargs: Any) -> None:
        super().__init__(root, sample_rate, clip_seconds, cache, **kwargs)
        if classes is not None and (not classes or len(set(classes)) != len(classes)):
            raise ValueError(f"classes must be None or a non-empty list of distinct words, got {classes!r}")
        self.classes = None if classes is None else list(classes)
        self.download = bool(download)

    def load_splits(self) -> DatasetSplits:
        """List the three subsets with torchaudio and decode their clips."""
        folder = self.root / self.folder
        for name in ("validation_list.txt", "testing_list.txt"):
            if not self.download and not (folder / name).is_file():
                raise FileNotFoundError(f"Speech Commands: {folder / name} is missing; put the extracted "
                                        f"speech_commands_v0.02 archive in {folder} or pass download=True")
        subsets = {subset: _open(lambda s=subset: torchaudio.datasets.SPEECHCOMMANDS(
            self.root, download=self.download, subset=s), "Speech Commands", folder, "the word folders")
            for subset in ("training", "validation", "testing")}
        words = {subset: [data.get_metadata(i)[2] for i in range(len(data))] for subset, data in subsets.items()}
        found = sorted(set(words["training"]))
        names = found if self.classes is None else self.classes
        missing = sorted(set(names) - set(found))
        if missing:
            raise ValueError(f"Speech Commands has no word folder {missing} in {folder}; its words: {found}")
        ids = {name: i for i, name in enumerate(names)}
        archive = self.root / "SpeechCommands"  # get_metadata's paths are relative to it
        parts = {}
        for subset, data in subsets.items():
            keep = [i for i, word in enumerate(words[subset]) if word in ids]
            parts[subset] = self._dataset([archive / data.get_metadata(i)[0] for i in keep],
                                          [ids[words[subset][i]] for i in keep])
        _warn_skipped(list(parts.values()), folder)
        return DatasetSplits(train=parts["training"], test=parts["testing"], class_names=list(names),
                             val=parts["validation"])


class ESC50DataModule(_AudioBenchmark):
    """ESC-50 (2,000 five-second environmental recordings, 50 classes) with its five-fold protocol.

    Reads ``root/meta/esc50.csv`` (``filename, fold, target, category, esc10, ...``) and
    ``root/audio/<filename>``, the layout of the ESC-50 repository. Fold ``test_fold`` is the test
    split, the other four the training part; run folds 1-5 and average for the paper protocol.
    ``esc10=True`` keeps the ESC-10 subset (10 classes). Class ids follow the CSV's ``target``
    (renumbered in order for ESC-10), class names its ``category``.

    Args:
        root: The ESC-50 folder (holding ``meta`` and ``audio``).
        test_fold: The held-out fold, 1-5.
        esc10: Only the clips the CSV marks ``esc10``.
        sample_rate: Sample rate of the inputs in Hz (the recordings are 44.1 kHz and get resampled).
        clip_seconds: Length of every input.
        cache: Keep decoded clips in memory.
        **kwargs: Arguments of :class:`~fewlabel.datamodules.FewLabelDataModule`.

    Raises:
        ValueError: On a ``test_fold`` outside 1-5; at setup, on a CSV without the ESC-50 columns.
        FileNotFoundError: at setup, if the CSV is missing.

    Example:
        >>> dm = ESC50DataModule("ESC-50-master", test_fold=1, labels_per_class=5)  # doctest: +SKIP
        >>> dm.setup()  # doctest: +SKIP
    """

    columns = ("filename", "fold", "target", "category", "esc10")

    def __init__(self, root: str | Path, test_fold: int = 1, esc10: bool = False, sample_rate: int = 16000,
                 clip_seconds: float = 5.0, cache: bool = True, **kwargs: Any) -> None:
        super().__init__(root, sample_rate, clip_seconds, cache, **kwargs)
        if isinstance(test_fold, bool) or test_fold not in range(1, 6):
            raise ValueError(f"test_fold must be one of 1-5, got {test_fold!r}")
        self.test_fold = test_fold
        self.esc10 = bool(esc10)

    def load_splits(self) -> DatasetSplits:
        """Read the CSV, keep the clips of the chosen classes and split by fold."""
        table = self.root / "meta" / "esc50.csv"
        if not table.is_file():
            raise FileNotFoundError(f"ESC-50: {table} is missing (expected the repository's meta/esc50.csv)")
        with open(table, newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [column for column in self.columns if column not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"ESC-50: {table} lacks the columns {missing}")
            rows = [row for row in reader if not self.esc10 or row["esc10"].strip().lower() == "true"]
        if not rows:
            raise ValueError(f"ESC-50: {table} lists no clip" + (" marked esc10" if self.esc10 else ""))
        targets = sorted({int(row["target"]) for row in rows})
        ids = {target: i for i, target in enumerate(targets)}
        names = {int(row["target"]): row["category"] for row in rows}
        parts: dict[bool, tuple[list[Path], list[int]]] = {True: ([], []), False: ([], [])}
        for row in rows:
            files, labels = parts[int(row["fold"]) == self.test_fold]
            files.append(self.root / "audio" / row["filename"])
            labels.append(ids[int(row["target"])])
        if not parts[True][0] or not parts[False][0]:
            folds = sorted({int(row["fold"]) for row in rows})
            raise ValueError(f"ESC-50: test_fold={self.test_fold} leaves an empty split; {table} has the folds {folds}")
        train, test = (self._dataset(*parts[held]) for held in (False, True))
        _warn_skipped([train, test], self.root / "audio")
        return DatasetSplits(train=train, test=test, class_names=[names[target] for target in targets])
