"""Barlow Twins loss (Zbontar et al., "Barlow Twins: Self-Supervised Learning via Redundancy Reduction",
2021, arXiv 2103.03230)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from fewlabel.plugins.distributed import is_distributed
from fewlabel.plugins.distributed import gather_with_grad

_BN_EPS = 1e-5  # the paper standardises with a non-affine BatchNorm1d, whose default eps this is


class BarlowTwinsLoss(nn.Module):
    """``sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2`` for the cross-correlation matrix ``C``.

    Each embedding dimension is standardised over the batch (mean 0, biased variance 1, eps
    ``1e-5``, as a non-affine ``BatchNorm1d`` in training mode does) and
    ``C = z_a_norm^T z_b_norm / N``. Standardisation and ``C`` run in float32 with autocast disabled.

    Args:
        lambda_param: Weight ``lambda`` of the redundancy-reduction (off-diagonal) term (5e-3 in the paper).
        gather_distributed: Standardise and correlate over the batches of every rank (gradients
            kept), like the paper's synchronised BatchNorm and all-reduced ``C``; a no-op in a
            single process.

    Raises:
        ValueError: On ``lambda_param < 0`` or ``gather_distributed`` without ``torch.distributed``.

    Example:
        >>> loss = BarlowTwinsLoss()(torch.randn(8, 16), torch.randn(8, 16))
    """

    def __init__(self, lambda_param: float = 5e-3, gather_distributed: bool = False) -> None:
        super().__init__()
        if lambda_param < 0:
            raise ValueError(f"lambda_param must be >= 0, got {lambda_param}")
        if gather_distributed and not dist.is_available():
            raise ValueError("gather_distributed=True needs torch.distributed, which this torch build lacks")
        self.lambda_param = lambda_param
        self.gather_distributed = gather_distributed

    def forward(self, z_a: Tensor, z_b: Tensor) -> Tensor:
        """Compute the loss.

        Args:
            z_a: Projections of the first views ``(N, D)``, ``N > 1``.
            z_b: Projections of the second views ``(N, D)``.

        Returns:
            Scalar float32 loss.

        Raises:
            ValueError: On inputs that are not two ``(N, D)`` tensors of the same shape with ``N > 1``.
        """
        if z_a.dim() != 2 or z_a.shape != z_b.shape or z_a.shape[0] < 2:
            raise ValueError(f"z_a and z_b must both be (N, D) with N > 1, got {tuple(z_a.shape)} and "
                             f"{tuple(z_b.shape)}")
        with torch.autocast(device_type=z_a.device.type, enabled=False):
            z_a, z_b = z_a.float(), z_b.float()
            if self.gather_distributed and is_distributed():
                z_a, z_b = gather_with_grad(z_a), gather_with_grad(z_b)
            c = _standardise(z_a).T @ _standardise(z_b) / z_a.shape[0]
            diagonal = torch.eye(c.shape[0], dtype=torch.bool, device=c.device)
            invariance = (c[diagonal] - 1).pow(2).sum()
            redundancy = c[~diagonal].pow(2).sum()
            return invariance + self.lambda_param * redundancy


def _standardise(z: Tensor) -> Tensor:
    """Each column to mean 0 and biased variance 1 over the batch."""
    centred = z - z.mean(dim=0)
    return centred / torch.sqrt(centred.pow(2).mean(dim=0) + _BN_EPS)
