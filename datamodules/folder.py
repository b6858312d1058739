"""Folder-per-class datasets: scanning, decode checks and the shared datamodule.

A root is laid out as ``root/CLASS/<files>``, or as ``root/train/CLASS/<files>`` plus
``root/test/CLASS/<files>`` when both ``train`` and ``test`` exist. Every file is decoded
once at setup; unreadable or empty files are skipped and reported in one warning, so a
bad file never stops an epoch halfway. No class is ever dropped silently: a class folder
without a usable file is an error that names it.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import groupby
from pathlib import Path

import numpy as np
from torch import Tensor

from fewlabel.datamodules.base import DatasetSplits, FewLabelDataModule, _check_test_fraction, _split_off_test
from fewlabel.datamodules.dataset import FewLabelDataset

__all__ = ["FileDataset", "FolderDataModule", "scan_class_folders"]


def _describe(files: Sequence[Path]) -> str:
    """Count files by extension, e.g. ``"3 .mp3 files, 1 .txt file"`` (``"no files"``)."""
    counts = Counter(path.suffix.lower() or "extension-less" for path in files)
    return ", ".join(f"{n} {suffix} file{'s' * (n != 1)}" for suffix, n in sorted(counts.items())) or "no files"


def scan_class_folders(
    root: Path, extensions: Sequence[str], class_names: Sequence[str] | None = None
) -> tuple[list[str], list[Path], np.ndarray, list[Path]]:
    """List the files of a folder-per-class tree.

    Every non-hidden sub-folder of ``root`` is a class; class names are sorted. Its
    non-hidden files (searched recursively) with one of ``extensions``
    (case-insensitive) are the samples; its other files are returned as ignored.

    Args:
        root: The folder holding one sub-folder per class.
        extensions: Accepted suffixes, lower case with the dot, e.g. ``(".wav",)``.
        class_names: Fixed classes (e.g. those of the training split); a folder that is
            not among them is an error. ``None`` = take the classes from ``root``.

    Returns:
        ``(class_names, files, targets, ignored)``: files sorted by class then path,
        their ``int64`` class ids, and the files of the class folders whose extension is
        not accepted (sorted by class folder).

    Raises:
        FileNotFoundError: If ``root`` is not a directory.
        ValueError: If ``root`` has no class folder, if a class folder has no file with an
            accepted extension (the message names each such folder and what it holds), or
            if ``root`` has a class that ``class_names`` lacks.
    """
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist or is not a directory")
    accepted = {extension.lower() for extension in extensions}
    found: dict[str, list[Path]] = {}
    ignored: list[Path] = []
    unusable: list[str] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
        usable = [p for p in files if p.suffix.lower() in accepted]
        if usable:
            found[folder.name] = usable
            ignored += [p for p in files if p.suffix.lower() not in accepted]
        else:
            unusable.append(f"{folder} holds {_describe(files)}")
    if not found and not unusable:
        raise ValueError(f"{root} has no class folders; expected the layout root/CLASS/file")
    if unusable:
        raise ValueError(
            f"class folders without a file of an accepted type ({' '.join(sorted(accepted))}): "
            + "; ".join(unusable)
            + ". Put readable files in them or move them out of the data root"
        )
    if class_names is None:
        class_names = sorted(found)
    unknown = sorted(set(found) - set(class_names))
    if unknown:
        raise ValueError(f"{root} has class folders {unknown} that are not among the classes {list(class_names)}")
    index = {name: i for i, name in enumerate(class_names)}
    names = sorted(found, key=index.__getitem__)
    files = [path for name in names for path in found[name]]
    targets = np.array([index[name] for name in names for _ in found[name]], dtype=np.int64)
    return list(class_names), files, targets, ignored


def _warn_skipped(datasets: Iterable[FileDataset], where: Path) -> None:
    """One warning listing every file the ``datasets`` skipped (``FileDataset.skipped``), if any."""
    skipped = [entry for dataset in datasets for entry in dataset.skipped]
    if skipped:
        warnings.warn(f"skipped {len(skipped)} unreadable or empty files under {where}:\n  " + "\n  ".join(skipped),
                      UserWarning, stacklevel=3)


class FileDataset(FewLabelDataset):
    """A dataset of files that are all decoded once when it is built.

    Subclasses implement :meth:`decode` (file -> tensor, deterministic, raising on a bad
    file) and may override :meth:`finish` (per-load transform such as a crop). They must
    set the attributes that ``decode`` needs *before* calling ``super().__init__``.

    Args:
        files: Paths of the samples.
        targets: Class id of each file.
        cache: Keep the decoded tensors in memory (``False`` decodes again on every load,
            which saves memory; files are still checked once here).

    Attributes:
        files: The usable files.
        targets: Their class ids.
        skipped: ``"path (reason)"`` for every file that could not be decoded.

    Example:
        >>> import numpy as np, torch
        >>> from pathlib import Path
        >>> class Lengths(FileDataset):
        ...     def decode(self, path):
        ...         return torch.tensor([float(len(path.read_text()))])
        >>> _ = Path("a.txt").write_text("abc")
        >>> ds = Lengths(["a.txt", "missing.txt"], np.array([0, 1]))
        >>> ds.load(0, train=False), len(ds), len(ds.skipped)  # the unreadable file is skipped and reported
        (tensor([3.]), 1, 1)
    """

    def __init__(self, files: Sequence[Path], targets: np.ndarray, cache: bool = True) -> None:
        kept: list[Path] = []
        kept_targets: list[int] = []
        decoded: list[Tensor] = []
        self.skipped: list[str] = []
        for path, target in zip(files, np.asarray(targets, dtype=np.int64)):
            try:
                value = self.decode(Path(path))
            except Exception as exc:  # noqa: BLE001 - any decoder failure marks the file unusable
                self.skipped.append(f"{path} ({type(exc).__name__}: {exc})")
                continue
            kept.append(Path(path))
            kept_targets.append(int(target))
            if cache:
                decoded.append(value)
        self.files = kept
        self.targets = np.array(kept_targets, dtype=np.int64)
        self._cache: list[Tensor] | None = decoded if cache else None

    def decode(self, path: Path) -> Tensor:
        """Decode one file; raise on an unreadable or empty one.

        Raises:
            NotImplementedError: Unless a subclass overrides it.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement decode()")

    def finish(self, value: Tensor, train: bool) -> Tensor:
        """Turn a decoded tensor into the model input (identity by default)."""
        return value

    def load(self, index: int, train: bool) -> Tensor:
        """Return ``finish(decode(files[index]), train)``, decoded from the cache if kept."""
        value = self._cache[index] if self._cache is not None else self.decode(self.files[index])
        return self.finish(value, train)


class FolderDataModule(FewLabelDataModule):
    """A :class:`~fewlabel.datamodules.FewLabelDataModule` over a folder-per-class tree.

    If ``root/train`` and ``root/test`` both exist they are the splits (classes come from
    ``train``); otherwise all of ``root`` is split with a stratified ``test_fraction``
    (``random_state=0``). Subclasses set ``extensions`` and implement :meth:`make_dataset`.

    Args:
        root: The data folder.
        test_fraction: Stratified share of ``root`` used as test set, in ``(0, 1)``; ignored
            with a ``train``/``test`` layout.
        cache: Keep decoded samples in memory.
        **kwargs: Arguments of :class:`~fewlabel.datamodules.FewLabelDataModule`.

    Raises:
        ValueError: If ``test_fraction`` is outside ``(0, 1)``.

    Example:
        >>> from fewlabel.datamodules import AudioFolderDataModule, ImageFolderDataModule
        >>> issubclass(ImageFolderDataModule, FolderDataModule) and issubclass(AudioFolderDataModule, FolderDataModule)
        True
    """

    extensions: tuple[str, ...] = ()

    def __init__(self, root: str | Path, test_fraction: float = 0.3, cache: bool = True, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.test_fraction = _check_test_fraction(test_fraction)
        self.root = Path(root)
        self.cache = bool(cache)

    def make_dataset(self, files: list[Path], targets: np.ndarray) -> FileDataset:
        """Build the dataset of ``files``; unreadable ones end up in its ``skipped``.

        Raises:
            NotImplementedError: Unless a subclass overrides it.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement make_dataset()")

    def load_splits(self) -> DatasetSplits:
        """Scan and decode the folder, report what is left out, and split off the test set.

        Files whose extension is not in ``extensions`` are ignored with one warning
        (counted per class folder); unreadable files are skipped with one warning.

        Raises:
            FileNotFoundError: If ``root`` does not exist.
            ValueError: If a class folder has no usable file (none accepted, or none
                decodes), or a class has a single sample to split; the message names the
                class folder.
        """
        if not self.root.is_dir():
            raise FileNotFoundError(f"data root {self.root} does not exist or is not a directory")
        roots = [self.root / "train", self.root / "test"]
        if not all(root.is_dir() for root in roots):
            roots = [self.root]
        class_names, files, targets, ignored = scan_class_folders(roots[0], self.extensions)
        scans = {roots[0]: (files, targets, ignored)}
        for root in roots[1:]:
            scans[root] = scan_class_folders(root, self.extensions, class_names)[1:]
        self._warn_ignored(scans)
        parts = {root: self.make_dataset(files, targets) for root, (files, targets, _) in scans.items()}
        _warn_skipped(parts.values(), self.root)
        for root, (files, targets, _) in scans.items():
            for target in np.setdiff1d(targets, parts[root].targets):
                failed = [path for path, t in zip(files, targets) if t == target]
                raise ValueError(
                    f"class folder {root / class_names[target]} has no usable file: all its {_describe(failed)} "
                    "failed to decode (listed in the warning above)"
                )
        if len(parts) == 2:
            train, test = parts.values()
        else:
            (full,) = parts.values()
            train, test = _split_off_test(full, self.test_fraction, [str(self.root / name) for name in class_names])
        return DatasetSplits(train=train, test=test, class_names=class_names)

    def _warn_ignored(self, scans: dict[Path, tuple[list[Path], np.ndarray, list[Path]]]) -> None:
        """Warn once about the files of every split whose extension is not accepted."""
        per_folder = [
            f"{root / folder}: {_describe(list(paths))}"
            for root, (_, _, ignored) in scans.items()
            for folder, paths in groupby(ignored, key=lambda path: path.relative_to(root).parts[0])
        ]
        if per_folder:
            total = sum(len(ignored) for _, _, ignored in scans.values())
            warnings.warn(
                f"ignored {total} file(s) whose extension {type(self).__name__} does not read:\n  "
                + "\n  ".join(per_folder),
                UserWarning,
                stacklevel=3,
            )
