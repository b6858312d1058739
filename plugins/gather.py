"""Collect ``(embedding, label, index)`` over a dataloader, in dataset order, across ranks.

The one gather primitive of fewlabel: k-means pseudo-labelling (DeepCluster, arXiv 1807.05520;
UnFuSeD stage 2, arXiv 2303.05668), kNN / few-shot evaluation and separability all read an
encoder's embeddings of a whole dataset through :func:`gather_embeddings`.

Embeddings stream into one preallocated buffer (float32 or float16, in RAM or, beyond a RAM budget,
a memory-mapped temporary file); no list of batches is concatenated and no full-size copy is made.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch import Tensor, nn

from fewlabel.plugins.arrays import chunk_rows

__all__ = ["Embeddings", "dataset_positions", "gather_embeddings", "merge_embeddings"]

# Row blocks (compaction, finiteness check, all-gather) hold about this many bytes.
_CHUNK_BYTES = 32 << 20
_DTYPES = {"float32": np.float32, "float16": np.float16}
_TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16}


@dataclass(frozen=True)
class Embeddings:
    """Embeddings of a dataset, sorted by dataset index.

    Attributes:
        embeddings: ``(N, D)`` C-contiguous; float32 by default, float16 when gathered with
            ``buffer_dtype="float16"``, and an ``np.memmap`` on a deleted temporary file when the
            buffer exceeded ``max_ram_bytes``. faiss needs float32: :mod:`fewlabel.plugins.clustering`
            converts chunk by chunk; other consumers can use ``np.asarray(x[a:b], np.float32)``.
        labels: ``(N,)`` int64 (``-1`` = unknown).
        indices: ``(N,)`` int64 dataset positions, strictly increasing.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> batches = [{"input": torch.ones(2, 3), "label": torch.tensor([4, 5]), "index": torch.tensor([1, 0])}]
        >>> found = gather_embeddings(nn.Flatten(), batches)
        >>> found.embeddings.shape, found.labels.tolist(), found.indices.tolist()
        ((2, 3), [5, 4], [0, 1])
    """

    embeddings: np.ndarray
    labels: np.ndarray
    indices: np.ndarray

    def __len__(self) -> int:
        return int(self.indices.shape[0])


def dataset_positions(dataloader: Any) -> int | None:
    """How far the ``"index"`` of a loader's batches may reach: its dataset's ``num_positions`` (a view of part
    of a larger dataset says so), else ``len(dataset)``; ``None`` when the loader has no sized dataset.

    Example:
        >>> from torch.utils.data import DataLoader
        >>> dataset_positions(DataLoader(list(range(5)))), dataset_positions([{"index": 0}])
        (5, None)
    """
    dataset = getattr(dataloader, "dataset", None)
    positions = getattr(dataset, "num_positions", None)
    if positions is None and dataset is not None and hasattr(dataset, "__len__"):
        positions = len(dataset)
    return positions


def _resolve_dtype(buffer_dtype: Any) -> np.dtype:
    key = np.dtype(buffer_dtype).name if not isinstance(buffer_dtype, str) else buffer_dtype
    if key not in _DTYPES:
        raise ValueError(f"buffer_dtype must be one of {sorted(_DTYPES)}, got {buffer_dtype!r}")
    return np.dtype(_DTYPES[key])


def _allocate(rows: int, dim: int, dtype: np.dtype, max_ram_bytes: int | None, tmp_dir: str | None) -> np.ndarray:
    """An uninitialised ``(rows, dim)`` buffer: in RAM, or a memmap when larger than ``max_ram_bytes``.

    The memmap's file is anonymous (``tempfile.TemporaryFile``): it disappears with the last reference.
    """
    nbytes = rows * dim * dtype.itemsize
    if max_ram_bytes is None or nbytes <= max_ram_bytes or rows == 0:
        return np.empty((rows, dim), dtype=dtype)
    with tempfile.TemporaryFile(dir=tmp_dir, prefix="fewlabel-embeddings-") as f:
        return np.memmap(f, dtype=dtype, mode="w+", shape=(rows, dim))  # the mapping outlives the handle


def _block_rows(dim: int) -> int:
    """Rows per block of the copies and all-gathers: about ``_CHUNK_BYTES`` of float32, at least one row."""
    return chunk_rows(dim, chunk_bytes=_CHUNK_BYTES, min_rows=1)


def merge_embeddings(
    parts: Sequence[Embeddings],
    *,
    buffer_dtype: str = "float32",
    max_ram_bytes: int | None = None,
    tmp_dir: str | None = None,
) -> Embeddings:
    """Merge shards (e.g. one per rank) by dataset index.

    Rows with the same index (the padding ``DistributedSampler`` adds) are kept once; rows with a
    negative index (padding of an all-gather) are dropped. The result is sorted by index. The
    embeddings are copied once, block by block, into one output buffer.

    Args:
        parts: shards with the same embedding dimension.
        buffer_dtype: ``"float32"`` or ``"float16"``, the dtype of the merged embeddings.
        max_ram_bytes: beyond this size the output is a memmap (see :func:`gather_embeddings`).
        tmp_dir: directory of that memmap's temporary file (``None`` = the system default).

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
    dtype = _resolve_dtype(buffer_dtype)
    plan = _MergePlan([p.indices for p in parts], [p.labels for p in parts])
    out = _allocate(len(plan.indices), dims.pop(), dtype, max_ram_bytes, tmp_dir)
    for part, p in enumerate(parts):
        plan.scatter(out, part, 0, p.embeddings)
    return Embeddings(embeddings=out, labels=plan.labels, indices=plan.indices)


class _MergePlan:
    """Where each kept row comes from: for every part, the output rows and that part's source rows."""

    def __init__(self, indices: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> None:
        all_indices = np.concatenate([np.asarray(i, dtype=np.int64).reshape(-1) for i in indices])
        part = np.concatenate([np.full(len(i), p, dtype=np.int64) for p, i in enumerate(indices)])
        row = np.concatenate([np.arange(len(i), dtype=np.int64) for i in indices])
        keep = np.flatnonzero(all_indices >= 0)
        self.indices, first = np.unique(all_indices[keep], return_index=True)  # sorted, one row per index
        source = keep[first]
        self.labels = np.concatenate([np.asarray(lab).reshape(-1) for lab in labels])[source].astype(np.int64)
        self._dest: list[np.ndarray] = []
        self._rows: list[np.ndarray] = []
        for p in range(len(indices)):
            dest = np.flatnonzero(part[source] == p)
            order = np.argsort(row[source][dest], kind="stable")
            self._dest.append(dest[order])
            self._rows.append(row[source][dest][order])

    def scatter(self, out: np.ndarray, part: int, start: int, block: np.ndarray) -> None:
        """Copy the rows ``start : start + len(block)`` of ``part`` that are kept into ``out``."""
        rows = self._rows[part]
        lo, hi = np.searchsorted(rows, [start, start + block.shape[0]])
        step = _block_rows(out.shape[1])
        for a in range(lo, hi, step):
            b = min(a + step, hi)
            out[self._dest[part][a:b]] = block[rows[a:b] - start]


def gather_embeddings(
    encoder: nn.Module,
    dataloader: Iterable[dict[str, Any]],
    *,
    device: torch.device | str | None = None,
    input_key: str = "input",
    label_key: str = "label",
    index_key: str = "index",
    strategy: Any | None = None,
    buffer_dtype: str = "float32",
    max_ram_bytes: int | None = None,
    tmp_dir: str | None = None,
    progress: Callable[[int], Any] | None = None,
) -> Embeddings:
    """Run ``encoder`` over ``dataloader`` and return its embeddings in dataset order.

    The encoder runs in eval mode without gradients; each submodule's training flag is restored
    afterwards, also on error. Rows are written into a buffer preallocated from
    ``dataloader.dataset.num_positions`` (a view of part of a dataset, such as a labeled draw, says
    how far its ``"index"`` reaches) or else ``len(dataloader.dataset)`` (a size hint: positions beyond it
    grow the buffer), at their ``batch[index_key]`` positions, so repeated indices
    (``DistributedSampler`` padding) overwrite each other and rows never seen are dropped: a
    sharded loader returns only its shard. Batches without ``label_key`` get label ``-1``.

    Memory: the buffer is the only full-size allocation. When every row is seen it is returned as
    is; otherwise the seen rows are moved to its front in place and the tail is released. Only a
    loader whose dataset has no ``len()``, or whose positions exceed it, grows the buffer (by doubling,
    copying once per growth).
    With ``max_ram_bytes`` set, a buffer larger than that is a memmap on an anonymous temporary
    file (removed when the array is garbage-collected), so ``embeddings`` is then an ``np.memmap``.
    A ``"float16"`` buffer halves the memory; values beyond float16's range (65504) become inf and
    are reported as non-finite. The default (float32, no budget) returns a float32 in-RAM array.

    With a Lightning ``strategy`` whose ``world_size > 1``, every rank's rows are all-gathered
    (``strategy.all_gather``, in row blocks of about 32 MiB per rank) and merged by index straight
    into one buffer, so all ranks return the whole dataset. Every rank must call this function
    (it is a collective) and see at least one batch.

    Args:
        encoder: maps ``batch[input_key]`` to a ``(B, D)`` embedding.
        dataloader: yields dict batches with ``input_key`` and ``index_key`` (and maybe ``label_key``).
        device: where to run; defaults to the encoder's parameter device (CPU if it has none).
        input_key: batch key of the encoder input.
        label_key: batch key of the labels returned in ``labels``.
        index_key: batch key of the dataset positions.
        strategy: a Lightning strategy for the multi-process all-gather; ``None`` = this process only.
        buffer_dtype: ``"float32"`` (default) or ``"float16"``, the dtype of the returned embeddings.
        max_ram_bytes: RAM budget of the buffer; larger buffers are memory-mapped temporary files.
            ``None`` = always in RAM.
        tmp_dir: directory of the memmap's temporary file (``None`` = the system default).
        progress: called with 1 after each batch of this rank (e.g. a tqdm bar's ``update``).

    Returns:
        :class:`Embeddings` sorted by index.

    Raises:
        ValueError: empty dataloader, bad encoder output, a negative index, bad
            ``buffer_dtype``, or non-finite embeddings (the message gives the number of rows).

    Example:
        >>> enc = nn.Flatten()
        >>> data = [{"input": torch.ones(2, 3), "index": torch.tensor([1, 0])}]
        >>> gather_embeddings(enc, data).indices.tolist()
        [0, 1]
    """
    dtype = _resolve_dtype(buffer_dtype)
    if device is None:
        tensor = next(iter(encoder.parameters()), None)
        tensor = next(iter(encoder.buffers()), None) if tensor is None else tensor
        device = tensor.device if tensor is not None else torch.device("cpu")
    modes = [(module, module.training) for module in encoder.modules()]
    encoder.eval()
    buffer = _Buffer(dtype, max_ram_bytes, tmp_dir)
    try:
        local = _gather_local(encoder, dataloader, torch.device(device), input_key, label_key, index_key, buffer,
                              progress)
    finally:
        for module, training in modes:
            module.training = training
    result = local
    if strategy is not None and getattr(strategy, "world_size", 1) > 1:
        result = _all_gather(local, strategy, buffer)
        del local
    bad = _count_nonfinite_rows(result.embeddings)
    if bad:
        raise ValueError(f"the encoder produced non-finite embeddings (NaN/inf) for {bad} of {len(result)} rows")
    return result


@dataclass(frozen=True)
class _Buffer:
    dtype: np.dtype
    max_ram_bytes: int | None
    tmp_dir: str | None

    def allocate(self, rows: int, dim: int) -> np.ndarray:
        return _allocate(rows, dim, self.dtype, self.max_ram_bytes, self.tmp_dir)


def _count_nonfinite_rows(emb: np.ndarray) -> int:
    step, bad = _block_rows(emb.shape[1]), 0
    for a in range(0, emb.shape[0], step):
        bad += int(np.count_nonzero(~np.isfinite(emb[a : a + step]).all(axis=1)))
    return bad


def _gather_local(
    encoder: nn.Module,
    dataloader: Iterable[dict[str, Any]],
    device: torch.device,
    input_key: str,
    label_key: str,
    index_key: str,
    buffer: _Buffer,
    progress: Callable[[int], Any] | None = None,
) -> Embeddings:
    size = dataset_positions(dataloader)
    emb: np.ndarray | None = None
    labels = np.empty(0, dtype=np.int64)
    seen = np.zeros(0, dtype=bool)
    torch_dtype = _TORCH_DTYPES[buffer.dtype]
    with torch.no_grad():
        for batch in dataloader:
            index = torch.as_tensor(batch[index_key]).reshape(-1).cpu().numpy().astype(np.int64)
            out = encoder(move_data_to_device(batch[input_key], device))
            if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != index.shape[0]:
                got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise ValueError(f"the encoder must return a ({index.shape[0]}, D) tensor for this batch, got {got}")
            if index.size and index.min() < 0:
                raise ValueError(f"batch['{index_key}'] holds negative positions ({int(index.min())})")
            rows = out.detach().to(dtype=torch_dtype).cpu().numpy()
            needed = int(index.max()) + 1 if index.size else 0
            if emb is None or needed > emb.shape[0]:  # first batch, or positions beyond the size hint
                capacity = max(needed, size or 0, 2 * (0 if emb is None else emb.shape[0]))
                emb, labels, seen = _grow(emb, labels, seen, capacity, rows.shape[1], buffer)
            emb[index] = rows
            raw = batch.get(label_key)
            labels[index] = -1 if raw is None else torch.as_tensor(raw).reshape(-1).cpu().numpy()
            seen[index] = True
            if progress is not None:
                progress(1)
    if emb is None:
        raise ValueError("the dataloader yielded no batches; cannot gather embeddings from an empty dataset")
    indices = np.flatnonzero(seen).astype(np.int64)
    return Embeddings(embeddings=_compact(emb, indices), labels=labels[indices], indices=indices)


def _compact(emb: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Move rows ``indices`` (strictly increasing) to the front of ``emb`` in place; drop the rest.

    Safe in place: the row written at position ``i`` comes from ``indices[i] >= i``, and every later
    source lies beyond the rows already written.
    """
    n = indices.shape[0]
    if n == emb.shape[0]:
        return emb  # every row seen: the buffer is the result
    step = _block_rows(emb.shape[1])
    for a in range(0, n, step):
        b = min(a + step, n)
        emb[a:b] = emb[indices[a:b]]
    if type(emb) is np.ndarray and emb.flags.owndata:
        emb.resize((n, emb.shape[1]), refcheck=False)  # realloc: frees the tail without a copy
        return emb
    return emb[:n]


def _grow(
    emb: np.ndarray | None, labels: np.ndarray, seen: np.ndarray, capacity: int, dim: int, buffer: _Buffer
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    new_emb = buffer.allocate(capacity, dim)
    new_labels = np.full(capacity, -1, dtype=np.int64)
    new_seen = np.zeros(capacity, dtype=bool)
    if emb is not None:
        if emb.shape[1] != dim:
            raise ValueError(f"the embedding dimension changed between batches: {emb.shape[1]} -> {dim}")
        step = _block_rows(dim)
        for a in range(0, emb.shape[0], step):
            b = min(a + step, emb.shape[0])
            new_emb[a:b] = emb[a:b]
        new_labels[: labels.shape[0]], new_seen[: seen.shape[0]] = labels, seen
    return new_emb, new_labels, new_seen


def _all_gather(local: Embeddings, strategy: Any, buffer: _Buffer) -> Embeddings:
    """All-gather every rank's rows and merge them by index into one buffer.

    Counts, labels and indices are gathered whole (padded to the largest shard with index ``-1``);
    the embeddings in row blocks, each scattered into the output at once, so the extra memory is
    one ``world_size x block`` tensor.
    """
    device = strategy.root_device
    counts = strategy.all_gather(torch.tensor(len(local), device=device)).reshape(-1)
    width = int(counts.max())
    pad = width - len(local)
    labels = torch.from_numpy(np.pad(local.labels, (0, pad), constant_values=-1)).to(device)
    indices = torch.from_numpy(np.pad(local.indices, (0, pad), constant_values=-1)).to(device)
    all_labels = strategy.all_gather(labels).reshape(-1, width).cpu().numpy()
    all_indices = strategy.all_gather(indices).reshape(-1, width).cpu().numpy()
    plan = _MergePlan(list(all_indices), list(all_labels))
    dim = local.embeddings.shape[1]
    out = buffer.allocate(len(plan.indices), dim)
    step = _block_rows(dim)
    for a in range(0, width, step):  # every rank runs the same number of collectives
        b = min(a + step, width)
        block = np.zeros((b - a, dim), dtype=local.embeddings.dtype)
        mine = local.embeddings[a:b]
        block[: mine.shape[0]] = mine
        gathered = strategy.all_gather(torch.from_numpy(block).to(device)).reshape(-1, b - a, dim).cpu().numpy()
        for rank in range(gathered.shape[0]):
            plan.scatter(out, rank, a, gathered[rank])
    return Embeddings(embeddings=out, labels=plan.labels, indices=plan.indices)
