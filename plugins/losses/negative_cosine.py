"""Negative cosine similarity, the regression loss of BYOL (Grill et al., "Bootstrap Your Own Latent: A New
Approach to Self-Supervised Learning", 2020, arXiv 2006.07733) and SimSiam (Chen & He, "Exploring Simple
Siamese Representation Learning", 2020, arXiv 2011.10566)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class NegativeCosineSimilarity(nn.Module):
    """Mean of ``-cos(x0, x1)`` along ``dim``.

    BYOL writes its loss as ``2 - 2 cos``, which has the same gradient; this form is ``-1`` for
    aligned vectors and ``+1`` for opposite ones. The target is not detached here: the caller
    passes a detached (or momentum-teacher) tensor. Computed in float32 with autocast disabled.

    Args:
        dim: Dimension along which the cosine similarity is computed.
        eps: Small value that keeps the norms away from zero (as ``torch.nn.CosineSimilarity``).

    Raises:
        ValueError: On ``eps <= 0``.

    Example:
        >>> loss = NegativeCosineSimilarity()(torch.randn(4, 8), torch.randn(4, 8))
    """

    def __init__(self, dim: int = 1, eps: float = 1e-8) -> None:
        super().__init__()
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.dim = dim
        self.eps = eps

    def forward(self, x0: Tensor, x1: Tensor) -> Tensor:
        """Compute the loss.

        Args:
            x0: First tensor, e.g. the online predictions ``(B, D)``.
            x1: Second tensor of the same (or a broadcastable) shape, e.g. the target projections.

        Returns:
            Scalar float32 loss, the mean over all positions other than ``dim``.
        """
        with torch.autocast(device_type=x0.device.type, enabled=False):
            return -F.cosine_similarity(x0.float(), x1.float(), dim=self.dim, eps=self.eps).mean()
