"""The base LightningDataModule with an explicit label budget."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from fewlabel.datamodules.budget import _check_budget, _check_int, label_budget_split, stratified_split
from fewlabel.datamodules.dataset import FewLabelDataset, SampleView, SubsetDataset, collate_dict

__all__ = ["DatasetSplits", "FewLabelDataModule"]

TRAIN_SPLITS = ("labeled", "unlabeled")
VAL_SEED = 0
TEST_SEED = 0


def _check_test_fraction(test_fraction: object) -> float:
    """``test_fraction`` as a float; ValueError unless it is a number in ``(0, 1)``."""
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be a float in (0, 1), got {test_fraction!r}")
    return float(test_fraction)


def _split_off_test(data: FewLabelDataset, test_fraction: float,
                    class_names: Sequence[str]) -> tuple[FewLabelDataset, FewLabelDataset]:
    """``(train, test)``: a stratified ``test_fraction`` of ``data`` held out as the test split, with a
    fixed seed (the same test split for every run and label draw), for data that come without one."""
    keep, held = stratified_split(data.targets, test_fraction, TEST_SEED, class_names)
    return data.subset(keep), data.subset(held)


class DatasetSplits(NamedTuple):
    """What :meth:`FewLabelDataModule.load_splits` returns.

    Attributes:
        train: The training part (the pool plus, unless ``val`` is given, the validation split
            carved from it).
        test: The test split.
        class_names: Name of each class; targets index into it.
        val: A dataset's official validation split (e.g. Speech Commands' ``validation_list.txt``),
            used instead of carving one off ``train`` when ``val_fraction > 0``; ``None`` = carve.

    Example:
        >>> import numpy as np, torch
        >>> from fewlabel.datamodules import InMemoryDataset
        >>> data = InMemoryDataset(torch.zeros(4, 2), np.array([0, 1, 0, 1]))
        >>> DatasetSplits(train=data, test=data, class_names=["a", "b"]).val is None  # carve a validation split
        True
    """

    train: FewLabelDataset
    test: FewLabelDataset
    class_names: list[str]
    val: FewLabelDataset | None = None


class FewLabelDataModule(L.LightningDataModule):
    """A datamodule that serves a small labeled draw and a large unlabeled pool.

    ``setup()`` calls :meth:`load_splits` once, then carves a stratified validation split
    (``val_fraction`` of the training part, always with seed 0, so it is the same for
    every label draw) off the training part, or takes the dataset's official validation split
    (:attr:`DatasetSplits.val`). What is left is the *pool*. The labeled set
    is ``labels_per_class`` samples of every class of the pool, drawn with ``seed``; the
    unlabeled set is the whole pool with labels hidden. All loaders yield dict batches
    ``{"input": Tensor, "label": LongTensor, "index": LongTensor}``; ``"index"`` is a
    position in the pool for the labeled and unlabeled loaders (so both index the same
    pool), and a position in the validation or test split for those loaders.

    Subclasses implement one hook, :meth:`load_splits`.

    Args:
        labels_per_class: Labeled samples per class; ``None`` labels the whole pool.
        seed: Seed of the label draw.
        val_fraction: Stratified share of the training part held out for validation, in
            ``[0, 1)``; 0 = no validation split. A dataset with an official validation split
            (:attr:`DatasetSplits.val`) uses that one whenever this is above 0.
        batch_size: Batch size of the labeled and unlabeled training loaders.
        eval_batch_size: Batch size of the validation, test, predict and sequential
            unlabeled loaders.
        num_workers: ``DataLoader`` workers.
        train_split: Which loader ``train_dataloader()`` returns: ``"labeled"`` or
            ``"unlabeled"``; may be reassigned later.
        labeled_samples_per_epoch: If set and the labeled draw is smaller, the labeled loader
            repeats the draw (every labeled sample equally often, shuffled) to at least this many
            samples per epoch, so that a tiny labeled set still gives full batches and an epoch
            means a useful number of optimizer steps; ``None`` = every labeled sample once.

    Raises:
        ValueError: On an invalid argument, naming it and the valid values.

    Example:
        >>> import numpy as np, torch
        >>> from fewlabel.datamodules import InMemoryDataset
        >>> class Toy(FewLabelDataModule):
        ...     def load_splits(self):
        ...         data = InMemoryDataset(torch.rand(40, 3), np.arange(40) % 2)
        ...         return DatasetSplits(train=data, test=data, class_names=["even", "odd"])
        >>> dm = Toy(labels_per_class=3, val_fraction=0.25)
        >>> dm.setup()
        >>> len(dm.labeled_indices), dm.num_unlabeled, sorted(next(iter(dm.labeled_dataloader())))
        (6, 30, ['index', 'input', 'label'])
    """

    def __init__(
        self,
        labels_per_class: int | None = None,
        seed: int = 0,
        val_fraction: float = 0.1,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        train_split: str = "labeled",
        labeled_samples_per_epoch: int | None = None,
    ) -> None:
        super().__init__()
        _check_int("labels_per_class", labels_per_class, 1, "None (label the whole pool)")
        _check_int("seed", seed, 0)
        if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be a float in [0, 1), got {val_fraction!r}")
        _check_int("batch_size", batch_size, 1)
        _check_int("eval_batch_size", eval_batch_size, 1)
        _check_int("num_workers", num_workers, 0)
        _check_int("labeled_samples_per_epoch", labeled_samples_per_epoch, 1, "None (each labeled sample once)")
        self.save_hyperparameters()
        self.labels_per_class = labels_per_class
        self.seed = seed
        self.val_fraction = float(val_fraction)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.train_split = train_split
        self.labeled_samples_per_epoch = labeled_samples_per_epoch
        self._class_names: list[str] | None = None
        self._pool: SubsetDataset | None = None
        self._val: SubsetDataset | None = None
        self._test: FewLabelDataset | None = None
        self._labeled_indices: np.ndarray | None = None

    def load_splits(self) -> DatasetSplits:
        """Load the data; called once, by the first ``setup()``.

        Returns:
            The training part, the test split and the class names. Both datasets are
            :class:`~fewlabel.datamodules.FewLabelDataset`s: they expose ``targets`` and
            ``load(index, train)``, where ``train=True`` asks for training-mode inputs
            (e.g. random crops) and ``train=False`` for deterministic ones (centre crops).

        Raises:
            NotImplementedError: Unless a subclass overrides it.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement load_splits()")

    @property
    def train_split(self) -> str:
        """Which loader ``train_dataloader()`` returns: ``"labeled"`` or ``"unlabeled"``."""
        return self._train_split

    @train_split.setter
    def train_split(self, value: str) -> None:
        if value not in TRAIN_SPLITS:
            raise ValueError(f"train_split must be one of {TRAIN_SPLITS}, got {value!r}")
        self._train_split = value

    def setup(self, stage: str | None = None) -> None:
        """Load the splits and draw the labels; later calls do nothing.

        Raises:
            ValueError: If the data has fewer than 2 classes, if a class cannot be split
                (a single sample), or if a class has fewer than ``labels_per_class``
                training samples; the message names the class.
        """
        if self._pool is not None:
            return
        train, test, class_names, val = self.load_splits()
        if len(class_names) < 2:
            found = f"got {len(class_names)}: {list(class_names)}"
            raise ValueError(f"{type(self).__name__} needs at least 2 classes to classify, {found}")
        if val is not None:  # the dataset's own validation split (none with val_fraction=0)
            keep, held = np.arange(len(train)), np.arange(len(val) if self.val_fraction > 0 else 0)
        else:
            keep, held = stratified_split(train.targets, self.val_fraction, VAL_SEED, class_names)
            val = train
        self._class_names = list(class_names)
        self._val = val.subset(held)
        self._test = test
        self._pool = train.subset(keep)
        self.draw_labels(self.labels_per_class, self.seed)

    def draw_labels(self, labels_per_class: int | None, seed: int) -> None:
        """Replace this datamodule's labeled set by a new draw from the already loaded pool.

        This changes the datamodule in place (``labels_per_class``, ``seed`` and the labeled
        loaders); ``hparams`` keeps the constructor's values. To train on another draw while
        other code holds this datamodule, take a view with :meth:`with_labels` instead.

        Args:
            labels_per_class: Labeled samples per class; ``None`` labels the whole pool.
            seed: Seed of the draw.

        Raises:
            RuntimeError: If ``setup()`` has not been called.
            ValueError: ``labels_per_class`` is below 1 or larger than a class of the pool
                (the message names the class), or ``seed`` is not an int >= 0.
        """
        labeled = self._draw(labels_per_class, seed)
        self.labels_per_class, self.seed = labels_per_class, seed
        self._labeled_indices = labeled

    def with_labels(self, labels_per_class: int | None, seed: int) -> FewLabelDataModule:
        """A view of this datamodule with another label draw; this datamodule is left as it is.

        The view is an object of the same class that shares everything already loaded (the pool,
        validation and test datasets, the class names; no data is reloaded or copied) and owns
        its labeled draw, its ``labels_per_class`` and ``seed``, and its ``hparams`` (which show
        them). Its labeled draw equals ``draw_labels(labels_per_class, seed)`` on this datamodule.
        The view is not attached to a trainer.

        Args:
            labels_per_class: Labeled samples per class; ``None`` labels the whole pool.
            seed: Seed of the draw.

        Returns:
            The view, ready to serve loaders (no ``setup()`` needed).

        Raises:
            RuntimeError: If ``setup()`` has not been called.
            ValueError: ``labels_per_class`` is below 1 or larger than a class of the pool
                (the message names the class), or ``seed`` is not an int >= 0.

        Example:
            >>> from fewlabel.datamodules import DigitsDataModule
            >>> dm = DigitsDataModule(labels_per_class=5)
            >>> dm.setup("fit")
            >>> view = dm.with_labels(1, seed=3)
            >>> len(view.labeled_indices), view.hparams["labels_per_class"], len(dm.labeled_indices)
            (10, 1, 50)
        """
        labeled = self._draw(labels_per_class, seed)
        view = copy.copy(self)
        view.trainer = None
        for name in ("_hparams", "_hparams_initial"):
            if name in vars(self):
                hparams = copy.copy(vars(self)[name])
                hparams["labels_per_class"], hparams["seed"] = labels_per_class, seed
                setattr(view, name, hparams)
        view.labels_per_class, view.seed = labels_per_class, seed
        view._labeled_indices = labeled
        return view

    def _draw(self, labels_per_class: int | None, seed: int) -> np.ndarray:
        """Sorted pool positions of the labeled draw ``(labels_per_class, seed)``."""
        pool = self._ready()
        _check_int("seed", seed, 0)
        if labels_per_class is None:
            return np.flatnonzero(pool.targets >= 0).astype(np.int64)
        return label_budget_split(pool.targets, labels_per_class, seed, self._class_names)

    def check_label_budget(self, labels_per_class: Sequence[int]) -> None:
        """Check that every class of the pool can supply each of several label budgets.

        Call it after ``setup("fit")`` and before training, so that an impossible budget
        fails in seconds; :meth:`draw_labels` runs the same check.

        Args:
            labels_per_class: The budgets (labeled samples per class) to check.

        Raises:
            RuntimeError: If ``setup()`` has not been called.
            ValueError: For the first budget that is not an integer >= 1 or that a class
                cannot supply, e.g. ``labels_per_class=5 is too many: class 'dog' has only
                3 training samples; ...``.

        Example:
            >>> from fewlabel.datamodules import DigitsDataModule
            >>> dm = DigitsDataModule(labels_per_class=5)
            >>> dm.setup("fit")
            >>> dm.check_label_budget([1, 5, 10])
        """
        pool = self._ready()
        for budget in labels_per_class:
            _check_budget(pool.targets, budget, self._class_names)

    def _ready(self) -> SubsetDataset:
        if self._pool is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must be called first")
        return self._pool

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        self._ready()
        return len(self._class_names)  # type: ignore[arg-type]

    @property
    def class_names(self) -> list[str]:
        """Class names; a target ``t`` names ``class_names[t]``."""
        self._ready()
        return list(self._class_names)  # type: ignore[arg-type]

    @property
    def num_unlabeled(self) -> int:
        """Size of the pool (training part minus the validation split)."""
        return len(self._ready())

    @property
    def pool_targets(self) -> np.ndarray:
        """True labels of the pool (``int64``; ``-1`` = unknown), for monitoring."""
        return self._ready().targets.copy()

    @property
    def labeled_indices(self) -> np.ndarray:
        """Sorted pool positions of the labeled draw (``int64``)."""
        self._ready()
        return self._labeled_indices.copy()  # type: ignore[union-attr]

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input (without the batch dimension)."""
        return tuple(self._ready().load(0, train=False).shape)

    def _loader(self, view: SampleView, batch_size: int, shuffle: bool, drop_last: bool = False,
                seed: int | None = None) -> DataLoader:
        """``seed``: shuffle with a :class:`SeededShuffle` of that seed (and seed the workers from it)
        instead of torch's global generator. A sequential loader has a generator of its own too (it
        seeds only the workers), so an evaluation pass never draws from the global one: adding or
        removing one (a kNN monitor, a validation split) leaves a training run's random stream as it was."""
        own = seed is not None and shuffle
        if own:
            generator: torch.Generator | None = torch.Generator().manual_seed(_stream_seed(seed, 2))
        else:
            generator = None if shuffle else torch.Generator()
        return DataLoader(
            view,
            batch_size=batch_size,
            shuffle=shuffle and not own,
            sampler=SeededShuffle(len(view), seed) if own else None,
            drop_last=drop_last,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate_dict,
            generator=generator,
        )

    def labeled_dataloader(self, train: bool = True) -> DataLoader:
        """The labeled draw.

        Args:
            train: ``True``: shuffled, training-mode inputs, ``batch_size``, last partial batch kept;
                with ``labeled_samples_per_epoch`` larger than the draw, the draw is repeated
                ``ceil(labeled_samples_per_epoch / len(draw))`` times per epoch (then shuffled).
                The order of epoch ``e`` depends on the draw's ``seed`` and ``e`` alone
                (:class:`SeededShuffle`), not on torch's global generator: a draw is served in the
                same order whatever else draws random numbers and after a resume, so fine-tunes of
                several draws can train together (the recipe's ``ClassifierEnsemble``) and equal
                separate runs.
                ``False``: every labeled sample once, sequential, deterministic inputs,
                ``eval_batch_size`` (a kNN bank, a few-shot support set).
        """
        if not train:
            view = SampleView(self._ready(), self._labeled_indices, train=False)
            return self._loader(view, self.eval_batch_size, shuffle=False)
        positions = self._labeled_indices
        wanted = self.labeled_samples_per_epoch
        if wanted is not None and 0 < len(positions) < wanted:  # type: ignore[arg-type]
            positions = np.tile(positions, -(-wanted // len(positions)))  # type: ignore[arg-type]
        view = SampleView(self._ready(), positions, train=True)
        return self._loader(view, self.batch_size, shuffle=True, seed=self.seed)

    def unlabeled_dataloader(self, train: bool = True) -> DataLoader:
        """The whole pool with ``"label"`` = -1 and the true label under ``"target"``.

        Args:
            train: ``True``: shuffled, training-mode inputs, ``batch_size``, and the last
                partial batch dropped when the pool is bigger than a batch. ``False``:
                sequential, deterministic inputs, ``eval_batch_size``, nothing dropped.
        """
        pool = self._ready()
        view = SampleView(pool, train=train, hide_labels=True)
        if train:
            return self._loader(view, self.batch_size, shuffle=True, drop_last=len(pool) > self.batch_size)
        return self._loader(view, self.eval_batch_size, shuffle=False)

    def train_dataloader(self) -> DataLoader:
        """``labeled_dataloader()`` or ``unlabeled_dataloader(train=True)``, per ``train_split``."""
        if self.train_split == "labeled":
            return self.labeled_dataloader()
        return self.unlabeled_dataloader(train=True)

    def val_dataloader(self) -> DataLoader:
        """The labeled validation split (empty when ``val_fraction == 0``), sequential."""
        self._ready()
        return self._loader(SampleView(self._val), self.eval_batch_size, shuffle=False)  # type: ignore[arg-type]

    def test_dataloader(self) -> DataLoader:
        """The labeled test split, sequential."""
        self._ready()
        return self._loader(SampleView(self._test), self.eval_batch_size, shuffle=False)  # type: ignore[arg-type]

    def predict_dataloader(self) -> DataLoader:
        """Same as ``unlabeled_dataloader(train=False)``."""
        return self.unlabeled_dataloader(train=False)


def _stream_seed(*key: int) -> int:
    """A 64-bit seed for the stream ``key`` (apart from the stream ``torch.manual_seed(key[0])`` gives)."""
    return int(np.random.SeedSequence(list(key)).generate_state(1, np.uint64)[0])


class SeededShuffle(Sampler[int]):
    """A permutation of ``range(num_samples)`` per epoch that depends on ``(seed, epoch)`` alone.

    Lightning calls :meth:`set_epoch` before every epoch (also after resuming from a checkpoint), so
    epoch ``e`` of a fit is served in the same order in a fresh, a resumed and a separate run, and no
    random number is drawn from torch's global generator. Iterated without ``set_epoch``, the epochs
    count up from 0 by themselves.

    Example:
        >>> order = SeededShuffle(5, seed=0)
        >>> first = list(order)  # epoch 0; the next iteration is epoch 1
        >>> sorted(first) == [0, 1, 2, 3, 4] and first == list(SeededShuffle(5, seed=0))
        True
        >>> order.set_epoch(0)
        >>> list(order) == first
        True
    """

    def __init__(self, num_samples: int, seed: int) -> None:
        self.num_samples, self.seed = num_samples, seed
        self._epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self._epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(_stream_seed(self.seed, 1, self._epoch))
        self._epoch += 1
        return iter(torch.randperm(self.num_samples, generator=generator).tolist())

    def __len__(self) -> int:
        return self.num_samples
