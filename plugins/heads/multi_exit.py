"""Multi-exit auxiliary heads ("Be Your Own Teacher", Zhang et al., 2019, arXiv 1905.08094), as UnFuSeD builds them."""

from __future__ import annotations

from torch import nn

__all__ = ["aux_head"]


def aux_head(in_dim: int, hidden_dim: int, num_classes: int) -> nn.Sequential:
    """Auxiliary exit: 2 x [Linear (no bias), BatchNorm, ReLU] then Linear (no bias) -> classes.

    The UnFuSeD code builds this head with ``hidden_dim = num_classes``.

    Args:
        in_dim: Size of the block feature the head reads.
        hidden_dim: Width of the two hidden layers.
        num_classes: Number of output logits.

    Returns:
        The head, mapping ``(B, in_dim)`` to ``(B, num_classes)`` logits.
    """
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, num_classes, bias=False),
    )
