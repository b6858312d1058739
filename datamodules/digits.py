"""scikit-learn's bundled 8x8 handwritten digits (no download), for fast tests and demos."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from fewlabel.datamodules.base import DatasetSplits, FewLabelDataModule
from fewlabel.datamodules.dataset import InMemoryDataset

__all__ = ["DigitsDataModule"]


class DigitsDataModule(FewLabelDataModule):
    """The UCI digits of :func:`sklearn.datasets.load_digits`: 1,797 images of 10 classes.

    Inputs are ``float32`` tensors of shape ``(1, 8, 8)`` in ``[0, 1]`` (pixel / 16), held
    in memory. The test split is a stratified 30% (``random_state=0``): 540 samples, leaving
    a training part of 1,257 from which the validation split is carved.

    Args:
        **kwargs: Arguments of :class:`~fewlabel.datamodules.FewLabelDataModule`.

    Example:
        >>> dm = DigitsDataModule(labels_per_class=5)
        >>> dm.setup()
        >>> len(dm.labeled_indices), dm.input_shape
        (50, (1, 8, 8))
    """

    def load_splits(self) -> DatasetSplits:
        """Load the digits and split off the test set."""
        digits = load_digits()
        images = (digits.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
        targets = digits.target.astype(np.int64)
        x_train, x_test, y_train, y_test = train_test_split(
            images, targets, test_size=0.3, stratify=targets, random_state=0
        )
        return DatasetSplits(
            train=InMemoryDataset(torch.from_numpy(x_train), y_train),
            test=InMemoryDataset(torch.from_numpy(x_test), y_test),
            class_names=[str(name) for name in digits.target_names],
        )
