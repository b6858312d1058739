"""Per-sample random parameters of the batch-wise augmentations, drawn from torch's global RNG."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["uniform"]


def uniform(n: int, lo: float, hi: float, device: torch.device) -> Tensor:
    """``n`` float32 draws from ``U(lo, hi)`` on ``device`` (one ``torch.rand`` call, so seeding is reproducible).

    Example:
        >>> x = uniform(1000, -2.0, 3.0, torch.device("cpu"))
        >>> bool(x.min() >= -2.0 and x.max() < 3.0)
        True
    """
    return torch.rand(n, device=device) * (hi - lo) + lo
