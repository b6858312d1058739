"""Collect ``(embedding, label, index)`` over a dataloader, in dataset order, across ranks.

The one gather primitive of fewlabel: k-means pseudo-labelling (DeepCluster, arXiv 1807.05520;
UnFuSeD stage 2, arXiv 2303.05668), kNN / few-shot evaluation and separability all read an
encoder's embeddings of a whole dataset through :func:`gather_embeddings`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch import Tensor, nn

__all__ = ["Embeddings", "gather_embeddings", "merge_embeddings"]


@dataclass(frozen=True)
class Embeddings:
    """Embeddings of a dataset, sorted by dataset index.

    Attributes:
        embeddings: ``(N, D)`` float32, C-contiguous.
        labels: ``(N,)`` int64 (``-1`` = unknown).
        indices: ``(N,)`` int64 dataset positions, strictly increasing.
    """

    embeddings: np.ndarray
    labels: np.ndarray
    indices: np.ndarray

    def __len__(self) -> int:
        return int(self.indices.shape[0])


def merge_embeddings(parts: Sequence[Embeddings]) -> Embeddings:
    """Merge shards (e.g. one per rank) by dataset index.

    Rows with the same index (the padding ``DistributedSampler`` adds) are kept once; rows with a
    negative index (padding of an all-gather) are dropped. The result is sorted by index.

    Args:
        parts: shards with the same embedding dimension.

    Returns:
        The merged :class:`Embeddings`.

    Raises:
        ValueError: if ``parts`` is empty or the dimensions differ.
    """
    if not parts:
        raise ValueError("merge_embeddings needs at least one shard")
    dims = {p.embeddings.shape[1] for p in parts}
    if len(dims) != 1:
        raise ValueError(f"shards have different embedding dimensions: {sorted(dims)}")
    emb = np.concatenate([p.embeddings for p in parts], axis=0)
    labels = np.concatenate([p.labels for p in parts], axis=0)
    indices = np.concatenate([p.indices for p in parts], axis=0)
    keep = indices >= 0
    emb, labels, indices = emb[keep], labels[keep], indices[keep]
    indices, first = np.unique(indices, return_index=True)  # sorted, one row per index
    return Embeddings(
        embeddings=np.ascontiguousarray(emb[first], dtype=np.float32),
        labels=labels[first].astype(np.int64),
        indices=indices.astype(np.int64),
    )


def gather_embeddings(
    encoder: nn.Module,
    dataloader: Iterable[dict[str, Any]],
    *,
    device: torch.device | str | None = None,
    input_key: str = "input",
    label_key: str = "label",
    index_key: str = "index",
    strategy: Any | None = None,
) -> Embeddings:
    """Run ``encoder`` over ``dataloader`` and return float32 embeddings in dataset order.

    The encoder runs in eval mode without gradients; each submodule's training flag is restored
    afterwards, also on error. Rows are written into a buffer preallocated from
    ``len(dataloader.dataset)`` at their ``batch[index_key]`` positions, so repeated indices
    (``DistributedSampler`` padding) overwrite each other and rows never seen are dropped: a
    sharded loader returns only its shard. Batches without ``label_key`` get label ``-1``.

    With a Lightning ``strategy`` whose ``world_size > 1``, every rank's rows are all-gathered
    (``strategy.all_gather``) and merged by index, so all ranks return the whole dataset. Every
    rank must call this function (it is a collective) and see at least one batch.

    Args:
        encoder: maps ``batch[input_key]`` to a ``(B, D)`` embedding.
        dataloader: yields dict batches with ``input_key`` and ``index_key`` (and maybe ``label_key``).
        device: where to run; defaults to the encoder's parameter device (CPU if it has none).
        input_key: batch key of the encoder input.
        label_key: batch key of the labels returned in ``labels``.
        index_key: batch key of the dataset positions.
        strategy: a Lightning strategy for the multi-process all-gather; ``None`` = this process only.

    Returns:
        :class:`Embeddings` sorted by index.

    Raises:
        ValueError: empty dataloader, bad encoder output, index outside the dataset, or
            non-finite embeddings (the message gives the number of rows).

    Example:
        >>> enc = nn.Flatten()
        >>> data = [{"input": torch.ones(2, 3), "index": torch.tensor([1, 0])}]
        >>> gather_embeddings(enc, data).indices.tolist()
        [0, 1]
    """
    if device is None:
        tensor = next(iter(encoder.parameters()), None)
        tensor = next(iter(encoder.buffers()), None) if tensor is None else tensor
        device = tensor.device if tensor is not None else torch.device("cpu")
    modes = [(module, module.training) for module in encoder.modules()]
    encoder.eval()
    try:
        local = _gather_local(encoder, dataloader, torch.device(device), input_key, label_key, index_key)
    finally:
        for module, training in modes:
            module.training = training
    result = local
    if strategy is not None and getattr(strategy, "world_size", 1) > 1:
        result = merge_embeddings(_all_gather(local, strategy))
    bad = int((~np.isfinite(result.embeddings).all(axis=1)).sum())
    if bad:
        raise ValueError(f"the encoder produced non-finite embeddings (NaN/inf) for {bad} of {len(result)} rows")
    return result


def _gather_local(
    encoder: nn.Module,
    dataloader: Iterable[dict[str, Any]],
    device: torch.device,
    input_key: str,
    label_key: str,
    index_key: str,
) -> Embeddings:
    dataset = getattr(dataloader, "dataset", None)
    size = len(dataset) if dataset is not None and hasattr(dataset, "__len__") else None
    emb: np.ndarray | None = None
    labels = np.empty(0, dtype=np.int64)
    seen = np.zeros(0, dtype=bool)
    with torch.no_grad():
        for batch in dataloader:
            index = torch.as_tensor(batch[index_key]).reshape(-1).cpu().numpy().astype(np.int64)
            out = encoder(move_data_to_device(batch[input_key], device))
            if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != index.shape[0]:
                got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise ValueError(f"the encoder must return a ({index.shape[0]}, D) tensor for this batch, got {got}")
            rows = out.detach().float().cpu().numpy()
            if index.size and (index.min() < 0 or (size is not None and index.max() >= size)):
                raise ValueError(f"batch['{index_key}'] holds positions outside the dataset of {size} samples")
            needed = int(index.max()) + 1 if index.size else 0
            if emb is None or needed > emb.shape[0]:  # first batch, or a dataset without len()
                capacity = max(needed, size or 0, 2 * (0 if emb is None else emb.shape[0]))
                emb, labels, seen = _grow(emb, labels, seen, capacity, rows.shape[1])
            emb[index] = rows
            raw = batch.get(label_key)
            labels[index] = -1 if raw is None else torch.as_tensor(raw).reshape(-1).cpu().numpy()
            seen[index] = True
    if emb is None:
        raise ValueError("the dataloader yielded no batches; cannot gather embeddings from an empty dataset")
    indices = np.flatnonzero(seen).astype(np.int64)
    return Embeddings(embeddings=np.ascontiguousarray(emb[indices]), labels=labels[indices], indices=indices)


def _grow(
    emb: np.ndarray | None, labels: np.ndarray, seen: np.ndarray, capacity: int, dim: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    new_emb = np.zeros((capacity, dim), dtype=np.float32)
    new_labels = np.full(capacity, -1, dtype=np.int64)
    new_seen = np.zeros(capacity, dtype=bool)
    if emb is not None:
        if emb.shape[1] != dim:
            raise ValueError(f"the embedding dimension changed between batches: {emb.shape[1]} -> {dim}")
        new_emb[: emb.shape[0]], new_labels[: labels.shape[0]], new_seen[: seen.shape[0]] = emb, labels, seen
    return new_emb, new_labels, new_seen


def _all_gather(local: Embeddings, strategy: Any) -> list[Embeddings]:
    """All-gather each rank's rows (padded to the largest shard with index ``-1``) into shards."""
    device = strategy.root_device
    counts = strategy.all_gather(torch.tensor(len(local), device=device)).reshape(-1)
    width = int(counts.max())
    pad = width - len(local)
    emb = torch.from_numpy(np.pad(local.embeddings, ((0, pad), (0, 0)))).to(device)
    labels = torch.from_numpy(np.pad(local.labels, (0, pad), constant_values=-1)).to(device)
    indices = torch.from_numpy(np.pad(local.indices, (0, pad), constant_values=-1)).to(device)
    all_emb = strategy.all_gather(emb).reshape(-1, width, emb.shape[1]).cpu().numpy()
    all_labels = strategy.all_gather(labels).reshape(-1, width).cpu().numpy()
    all_indices = strategy.all_gather(indices).reshape(-1, width).cpu().numpy()
    return [Embeddings(e, lab, i) for e, lab, i in zip(all_emb, all_labels, all_indices)]
