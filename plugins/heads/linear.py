"""The linear head: one ``nn.Linear`` (linear evaluation, fine-tuning, RotNet's default head)."""

from __future__ import annotations

from torch import nn

__all__ = ["linear_head"]


def linear_head(in_dim: int, out_dim: int, bias: bool = True) -> nn.Linear:
    """A plain ``nn.Linear(in_dim, out_dim, bias=bias)``, under the keyword names the other heads use.

    Args:
        in_dim: Input (embedding) dimension.
        out_dim: Number of outputs (classes).
        bias: Learn an additive bias.

    Returns:
        The head, mapping ``(B, in_dim)`` to ``(B, out_dim)``.

    Example:
        >>> linear_head(32, 10)
        Linear(in_features=32, out_features=10, bias=True)
    """
    return nn.Linear(in_dim, out_dim, bias=bias)
