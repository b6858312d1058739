"""Small helpers for multi-process runs; every collective call is guarded."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler

_T = TypeVar("_T")


def is_distributed() -> bool:
    """``True`` inside an initialised ``torch.distributed`` process group."""
    return dist.is_available() and dist.is_initialized()


class _Failed:
    """What rank 0 broadcasts instead of a result when the function raised."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def on_rank_zero_then_broadcast(strategy: Any, fn: Callable[[], _T], *, what: str) -> _T:
    """Run ``fn()`` on global rank 0 only and hand its result to every rank.

    With ``world_size > 1`` the result goes through ``strategy.broadcast`` (Lightning's, which pickles
    it), so every rank returns the same object and must call this function (it is a collective). If
    ``fn`` raises on rank 0, the error is broadcast instead, so no rank waits forever, and every rank
    raises. In a single process ``fn``'s error propagates unchanged.

    Args:
        strategy: a Lightning strategy (``trainer.strategy``): ``is_global_zero``, ``broadcast`` and,
            for multi-process runs, ``world_size``.
        fn: the work to do once, e.g. k-means on gathered embeddings.
        what: names the work in the error (``"PseudoLabeler: clustering"``).

    Returns:
        ``fn()``'s result, on every rank.

    Raises:
        RuntimeError: ``"<what> failed on rank 0: <error>"`` on every rank of a multi-process run,
            chained to rank 0's error.
    """
    world_size = getattr(strategy, "world_size", 1)
    payload: _T | _Failed | None = None
    if strategy.is_global_zero:
        try:
            payload = fn()
        except Exception as err:  # in a multi-rank run, hand the error to the waiting ranks
            if world_size == 1:
                raise
            payload = _Failed(err)
    if world_size > 1:
        payload = strategy.broadcast(payload, src=0)
    if isinstance(payload, _Failed):
        raise RuntimeError(f"{what} failed on rank 0: {payload.error}") from payload.error
    return payload  # type: ignore[return-value]


def shard_dataloader(loader: Any, world_size: int, rank: int) -> Any:
    """Give each rank a disjoint, ordered shard of an evaluation ``DataLoader``.

    A loader that is not already sharded is rebuilt with a non-shuffling
    :class:`~torch.utils.data.DistributedSampler` (same dataset, batch size, collate function and
    workers). ``DistributedSampler`` pads the last shard with repeats of the first samples; the gather
    primitive drops those duplicates by ``"index"``. Loaders that are not ``DataLoader``s, loaders
    with a custom batch sampler, and single-process runs are returned unchanged.

    Args:
        loader: The loader to shard.
        world_size: Number of processes.
        rank: This process's global rank.

    Returns:
        The sharded loader, or ``loader`` itself when nothing needs to change.
    """
    if world_size <= 1 or not isinstance(loader, DataLoader) or isinstance(loader.sampler, DistributedSampler):
        return loader
    if loader.batch_size is None:  # a custom batch sampler: leave it to its owner
        return loader
    sampler = DistributedSampler(loader.dataset, num_replicas=world_size, rank=rank, shuffle=False)
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=False,
        persistent_workers=loader.persistent_workers if loader.num_workers > 0 else False,
    )


class _AllGather(torch.autograd.Function):
    """``all_gather`` whose backward sums every rank's gradient for this rank's slice."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.stack(parts)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)  # never reduce autograd's buffer in place
        dist.all_reduce(grad)
        return grad[dist.get_rank()]


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every rank along dim 0, keeping the autograd graph.

    The backward pass sums every rank's gradient for this rank's slice, so with DDP's gradient
    averaging the parameters receive the gradient of the mean of the per-rank losses (the same
    gradient as one process computing the loss on the whole batch, when every rank computes it).
    Outside an initialised process group ``x`` is returned unchanged. Every rank must pass the same shape.

    Args:
        x: Local tensor ``(B, ...)``.

    Returns:
        ``(world_size * B, ...)``, rank 0's rows first.
    """
    if not is_distributed() or dist.get_world_size() == 1:
        return x
    return _AllGather.apply(x).flatten(0, 1)
