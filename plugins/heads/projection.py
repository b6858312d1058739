"""Projection MLPs for self-supervised methods (SimCLR, BYOL, SwAV / DeepCluster-v2, Barlow Twins, VICReg)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["projection_mlp"]


def projection_mlp(dims: Sequence[int], *, batch_norm: bool = True, last_batch_norm: bool = False,
                   last_bias: bool = True) -> nn.Sequential:
    """``Linear -> [BatchNorm] -> ReLU`` for every hidden layer, then a last ``Linear`` (``[BatchNorm]``).

    Args:
        dims: Layer widths, input first: ``[embed_dim, hidden, ..., out_dim]`` (at least two).
        batch_norm: BatchNorm after every hidden linear layer (SimCLR v2, BYOL, SwAV, Barlow Twins).
        last_batch_norm: An affine-free BatchNorm after the last layer (SimCLR v2 style).
        last_bias: Bias of the last linear layer.

    Returns:
        The head ``(B, dims[0]) -> (B, dims[-1])``.

    Raises:
        ValueError: fewer than two widths, or a width below 1.

    Example:
        >>> head = projection_mlp([512, 2048, 128])
        >>> [type(layer).__name__ for layer in head], head[-1].out_features
        (['Linear', 'BatchNorm1d', 'ReLU', 'Linear'], 128)
    """
    dims = [int(d) for d in dims]
    if len(dims) < 2 or min(dims) < 1:
        raise ValueError(f"projection_mlp needs two or more positive widths (input first), got {dims}")
    layers: list[nn.Module] = []
    for d_in, d_out in zip(dims[:-2], dims[1:-1]):
        layers.append(nn.Linear(d_in, d_out))
        if batch_norm:
            layers.append(nn.BatchNorm1d(d_out))
        layers.append(nn.ReLU(inplace=True))
    layers.append(nn.Linear(dims[-2], dims[-1], bias=last_bias))
    if last_batch_norm:
        layers.append(nn.BatchNorm1d(dims[-1], affine=False))
    return nn.Sequential(*layers)
