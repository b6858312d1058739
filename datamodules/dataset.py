"""Datasets with a train/eval mode and known targets, and a view that yields dict samples.

A :class:`FewLabelDataset` is the unit a :class:`~fewlabel.datamodules.FewLabelDataModule`
works with: it knows every sample's target up front (``targets``) and loads an input in
either training mode (random crops and other stochastic waveform-level transforms) or
evaluation mode (deterministic, e.g. centre crop). :class:`SampleView` turns one into the
``{"input", "label", "index"}`` samples of the batch contract, and :func:`collate_dict`
stacks them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["FewLabelDataset", "InMemoryDataset", "SampleView", "SubsetDataset", "collate_dict"]


class FewLabelDataset(ABC):
    """A finite dataset whose targets are known without loading inputs.

    Subclasses set ``targets`` (``int64``, one per sample, ``-1`` = unknown) and implement
    :meth:`load`.

    Example:
        >>> import numpy as np, torch
        >>> class Ramp(FewLabelDataset):
        ...     targets = np.array([0, 1, 1])
        ...     def load(self, index, train):
        ...         return torch.full((2,), float(index))
        >>> len(Ramp()), Ramp().subset(np.array([2])).load(0, train=False)
        (3, tensor([2., 2.]))
    """

    targets: np.ndarray

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    @abstractmethod
    def load(self, index: int, train: bool) -> Tensor:
        """Return the input of sample ``index``.

        Args:
            index: Position of the sample in this dataset.
            train: ``True`` for training-mode loading (random crops), ``False`` for
                deterministic evaluation-mode loading (centre crops).

        Returns:
            The input tensor; every sample has the same shape.
        """

    def subset(self, indices: np.ndarray) -> SubsetDataset:
        """Return the samples at ``indices`` (positions in this dataset) as a dataset."""
        return SubsetDataset(self, indices)


def _unit_float(value: Tensor, copy: bool = False) -> Tensor:
    """``uint8`` (8-bit images) as ``float32`` in ``[0, 1]`` (divided by 255); other dtypes as they are
    (a copy with ``copy=True``)."""
    if value.dtype == torch.uint8:
        return value.to(torch.float32).div_(255.0)
    return value.clone() if copy else value


class InMemoryDataset(FewLabelDataset):
    """Inputs held as one stacked tensor; loading is plain indexing (same in both modes).

    ``uint8`` inputs (8-bit images, a quarter of the memory of ``float32``) are served as
    ``float32`` in ``[0, 1]`` (divided by 255); other dtypes as they are.

    Args:
        inputs: ``(N, ...)`` tensor of inputs.
        targets: ``N`` integer class ids (``-1`` = unknown).

    Raises:
        ValueError: If the lengths differ.

    Example:
        >>> import numpy as np, torch
        >>> ds = InMemoryDataset(torch.tensor([[0, 255]], dtype=torch.uint8), np.array([1]))
        >>> ds.load(0, train=False)  # 8-bit inputs come out in [0, 1]
        tensor([0., 1.])
    """

    def __init__(self, inputs: Tensor, targets: np.ndarray) -> None:
        targets = np.asarray(targets, dtype=np.int64)
        if inputs.shape[0] != targets.shape[0]:
            raise ValueError(f"inputs has {inputs.shape[0]} samples but targets has {targets.shape[0]}")
        self.inputs = inputs
        self.targets = targets

    def load(self, index: int, train: bool) -> Tensor:
        """Return ``inputs[index]`` (``uint8`` as ``float32 / 255``; ``train`` is ignored)."""
        return _unit_float(self.inputs[index])


class SubsetDataset(FewLabelDataset):
    """The samples of ``source`` at ``indices``, renumbered ``0..len(indices) - 1``.

    Args:
        source: The dataset to select from.
        indices: Positions in ``source``.

    Example:
        >>> import numpy as np, torch
        >>> from fewlabel.datamodules import InMemoryDataset
        >>> sub = SubsetDataset(InMemoryDataset(torch.arange(4.0)[:, None], np.array([0, 1, 0, 1])), np.array([3, 0]))
        >>> sub.targets.tolist(), sub.load(0, train=False)
        ([1, 0], tensor([3.]))
    """

    def __init__(self, source: FewLabelDataset, indices: np.ndarray) -> None:
        self.source = source
        self.indices = np.asarray(indices, dtype=np.int64)
        self.targets = source.targets[self.indices]

    def load(self, index: int, train: bool) -> Tensor:
        """Load sample ``indices[index]`` of the source."""
        return self.source.load(int(self.indices[index]), train)


class SampleView(Dataset[dict[str, object]]):
    """A torch ``Dataset`` of dict samples over (part of) a :class:`FewLabelDataset`.

    Item ``i`` is sample ``p = positions[i]`` of ``dataset``, returned as
    ``{"input": Tensor, "label": int, "index": p}``. With ``hide_labels=True`` the
    ``"label"`` is ``-1`` and the true label (or ``-1`` if unknown) moves to ``"target"``,
    for monitoring only.

    Args:
        dataset: The dataset that ``"index"`` refers to.
        positions: Which samples to serve, as positions in ``dataset``; ``None`` = all, in order.
        train: Load inputs in training mode (random crops) or evaluation mode.
        hide_labels: Serve the samples as unlabeled.

    Example:
        >>> import numpy as np, torch
        >>> from fewlabel.datamodules import InMemoryDataset
        >>> data = InMemoryDataset(torch.zeros(3, 2), np.array([0, 1, 1]))
        >>> view = SampleView(data, positions=np.array([2]), hide_labels=True)
        >>> len(view), view[0]["label"], view[0]["target"], view[0]["index"]
        (1, -1, 1, 2)
    """

    def __init__(
        self,
        dataset: FewLabelDataset,
        positions: np.ndarray | None = None,
        train: bool = False,
        hide_labels: bool = False,
    ) -> None:
        self.dataset = dataset
        if positions is None:
            positions = np.arange(len(dataset), dtype=np.int64)
        self.positions = np.asarray(positions, dtype=np.int64)
        self.train = train
        self.hide_labels = hide_labels

    def __len__(self) -> int:
        return int(self.positions.shape[0])

    @property
    def num_positions(self) -> int:
        """The range of ``"index"``: the length of the dataset the positions refer to (not of this view)."""
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, object]:
        position = int(self.positions[i])
        target = int(self.dataset.targets[position])
        inputs = self.dataset.load(position, self.train)
        if self.hide_labels:
            return {"input": inputs, "label": -1, "index": position, "target": target}
        return {"input": inputs, "label": target, "index": position}


def collate_dict(samples: Sequence[dict[str, object]]) -> dict[str, Tensor]:
    """Stack dict samples into a dict batch.

    Tensors are stacked along a new first dimension; Python ints become an ``int64`` tensor.

    Args:
        samples: Samples that all have the same keys.

    Returns:
        A dict with the same keys, e.g. ``{"input": (B, ...), "label": (B,), "index": (B,)}``.
    """
    batch: dict[str, Tensor] = {}
    for key in samples[0]:
        values = [sample[key] for sample in samples]
        if isinstance(values[0], Tensor):
            batch[key] = torch.stack(values)  # type: ignore[arg-type]
        else:
            batch[key] = torch.tensor(values, dtype=torch.long)
    return batch
