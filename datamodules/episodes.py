"""A batch sampler of few-shot episodes: one N-way K-shot Q-query episode per batch."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from fewlabel.datamodules.budget import _check_int

__all__ = ["EpisodeSampler"]


class EpisodeSampler(Sampler[list[int]]):
    """Yield few-shot episodes as index lists: ``N * K`` support indices, then ``N * Q`` query indices.

    The episodic sampler of "Prototypical Networks for Few-shot Learning" (Snell et al., 2017,
    arXiv 1703.05175) and the few-shot benchmarks: pass it as a ``DataLoader``'s ``batch_sampler``
    and every batch is one episode, its first :attr:`support_size` rows the support (``K`` per class,
    class by class) and the rest the query (``Q`` per class, class by class, disjoint from the
    support); :meth:`split` cuts a collated batch in two.

    Each episode draws ``N`` distinct classes among those with at least ``K + Q`` samples (smaller
    classes are left out; labels ``< 0`` are never drawn), then ``K + Q`` distinct samples of each.
    The draws come from ``np.random.default_rng([seed, epoch])``, so an epoch's episodes depend only
    on ``seed`` and the epoch (:meth:`set_epoch`): iterating twice in the same epoch repeats them,
    and a resumed run sees the same episodes. Lightning's loops call ``set_epoch`` on
    ``dataloader.batch_sampler.sampler`` at the start of every epoch; :attr:`sampler` is the sampler
    itself, so under a ``Trainer`` each epoch gets its own episodes (elsewhere call ``set_epoch``). They are exactly the episodes that the few-shot evaluation's
    ``sample_episodes(labels, ..., seed=np.random.default_rng([seed, epoch]))`` draws (the same
    drawing rule; datamodules may not import plugins, so it is written out here too, and a test
    keeps the two identical).

    The sampler serves one process: under multi-process training give each rank its own ``seed``
    (e.g. ``seed + rank``) so that the ranks see different episodes.

    Args:
        labels: ``(M,)`` integer class id of every dataset item (e.g. ``dataset.targets``).
        n_way: classes per episode ``N``.
        k_shot: support samples per class ``K``.
        n_query: query samples per class ``Q``.
        num_episodes: episodes per epoch (the sampler's ``len``).
        seed: seed of the episode draws.

    Raises:
        ValueError: bad counts or labels, or fewer than ``n_way`` classes with ``k_shot + n_query``
            samples (the message lists the classes that are too small).

    Example:
        >>> sampler = EpisodeSampler([0, 0, 0, 1, 1, 1, 2, 2, 2], n_way=2, k_shot=1, n_query=2, num_episodes=4)
        >>> episode = next(iter(sampler))
        >>> len(sampler), len(episode), sampler.support_size
        (4, 6, 2)
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray | torch.Tensor,
        n_way: int,
        k_shot: int,
        n_query: int,
        num_episodes: int,
        seed: int = 0,
    ) -> None:
        for name, value in (("n_way", n_way), ("k_shot", k_shot), ("n_query", n_query),
                            ("num_episodes", num_episodes)):
            _check_int(name, value, 1)
        _check_int("seed", seed, 0)
        y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        if y.ndim != 1:
            raise ValueError(f"labels must be a 1-D array of class ids, got shape {y.shape}")
        if y.size and y.dtype.kind not in "iu":
            raise ValueError(f"labels must hold integer class ids, got dtype {y.dtype}")
        y = y.astype(np.int64, copy=False)
        need = k_shot + n_query
        classes, counts = np.unique(y[y >= 0], return_counts=True)
        keep = classes[counts >= need]
        if keep.size < n_way:
            short = {int(c): int(n) for c, n in zip(classes, counts) if n < need}
            raise ValueError(
                f"{n_way}-way episodes with k_shot + n_query = {need} samples per class need {n_way} classes with "
                f"at least {need} samples, but only {keep.size} of {classes.size} classes have that many "
                f"(too few: {short}); lower n_way, k_shot or n_query"
            )
        self.classes = keep
        self._positions = [np.flatnonzero(y == c) for c in keep]
        self.n_way, self.k_shot, self.n_query = int(n_way), int(k_shot), int(n_query)
        self.num_episodes = int(num_episodes)
        self.seed = int(seed)
        self.epoch = 0

    @property
    def support_size(self) -> int:
        """Rows of support at the start of each episode: ``N * K``."""
        return self.n_way * self.k_shot

    @property
    def query_size(self) -> int:
        """Rows of query after the support: ``N * Q``."""
        return self.n_way * self.n_query

    @property
    def sampler(self) -> EpisodeSampler:
        """The sampler itself: where Lightning looks for ``set_epoch`` on a batch sampler."""
        return self

    def set_epoch(self, epoch: int) -> None:
        """Select the episodes of ``epoch`` (as ``DistributedSampler.set_epoch`` does)."""
        _check_int("epoch", epoch, 0)
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_episodes

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        k, need = self.k_shot, self.k_shot + self.n_query
        for _ in range(self.num_episodes):
            chosen = rng.choice(self.classes.size, self.n_way, replace=False)
            draws = [rng.choice(self._positions[c], need, replace=False) for c in chosen]
            yield np.concatenate([d[:k] for d in draws] + [d[k:] for d in draws]).tolist()

    def split(self, batch: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Cut one collated episode batch into ``(support, query)`` batches (every value sliced on dim 0).

        Raises:
            ValueError: the batch does not hold ``support_size + query_size`` rows.
        """
        size = self.support_size + self.query_size
        rows = {key: len(value) for key, value in batch.items() if hasattr(value, "__len__")}
        wrong = {key: n for key, n in rows.items() if n != size}
        if wrong:
            raise ValueError(f"an episode batch has {size} rows (support {self.support_size} + query "
                             f"{self.query_size}), got {wrong}")
        s = self.support_size
        return {key: value[:s] for key, value in batch.items()}, {key: value[s:] for key, value in batch.items()}
