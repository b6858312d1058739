"""VICReg loss (Bardes, Ponce & LeCun, "VICReg: Variance-Invariance-Covariance Regularization for
Self-Supervised Learning", 2021, arXiv 2105.04906)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from fewlabel.plugins.distributed import is_distributed
from fewlabel.plugins.distributed import gather_with_grad


class VICRegLoss(nn.Module):
    """``lambda * invariance + mu * variance + nu * covariance`` over two batches of projections.

    - invariance: mean squared error between ``z_a`` and ``z_b``;
    - variance: per view, the mean over dimensions of ``relu(1 - sqrt(Var(z_d) + eps))`` (unbiased
      variance over the batch), averaged over the two views;
    - covariance: per view, the sum of squared off-diagonal entries of the (unbiased) covariance
      matrix divided by ``D``, summed over the two views.

    Inputs may carry extra dimensions between batch and features ``(N, ..., D)``; statistics are
    taken over the batch and averaged over the extra positions. Everything runs in float32 with
    autocast disabled.

    Args:
        lambda_param: Weight of the invariance term (25 in the paper).
        mu_param: Weight of the variance term (25).
        nu_param: Weight of the covariance term (1).
        gather_distributed: Compute all three terms on the batches of every rank (gradients
            kept), as the reference code does; a no-op in a single process.
        eps: Added to the variance before the square root.

    Raises:
        ValueError: On a negative weight, ``eps <= 0``, or ``gather_distributed`` without
            ``torch.distributed``.

    Example:
        >>> loss = VICRegLoss()(torch.randn(8, 16), torch.randn(8, 16))
    """

    def __init__(self, lambda_param: float = 25.0, mu_param: float = 25.0, nu_param: float = 1.0,
                 gather_distributed: bool = False, eps: float = 1e-4) -> None:
        super().__init__()
        weights = {"lambda_param": lambda_param, "mu_param": mu_param, "nu_param": nu_param}
        negative = {name: value for name, value in weights.items() if value < 0}
        if negative:
            raise ValueError(f"loss weights must be >= 0, got {negative}")
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if gather_distributed and not dist.is_available():
            raise ValueError("gather_distributed=True needs torch.distributed, which this torch build lacks")
        self.lambda_param, self.mu_param, self.nu_param = lambda_param, mu_param, nu_param
        self.gather_distributed = gather_distributed
        self.eps = eps

    def forward(self, z_a: Tensor, z_b: Tensor) -> Tensor:
        """Compute the loss.

        Args:
            z_a: Projections of the first views ``(N, ..., D)``, ``N > 1``.
            z_b: Projections of the second views, same shape.

        Returns:
            Scalar float32 loss.

        Raises:
            ValueError: On inputs of different shapes, fewer than 2 dimensions, or ``N < 2``.
        """
        if z_a.shape != z_b.shape or z_a.dim() < 2 or z_a.shape[0] < 2:
            raise ValueError(f"z_a and z_b must both be (N, ..., D) with N > 1, got {tuple(z_a.shape)} and "
                             f"{tuple(z_b.shape)}")
        with torch.autocast(device_type=z_a.device.type, enabled=False):
            z_a, z_b = z_a.float(), z_b.float()
            if self.gather_distributed and is_distributed():
                z_a, z_b = gather_with_grad(z_a), gather_with_grad(z_b)
            invariance = F.mse_loss(z_a, z_b)
            variance = 0.5 * (self._variance(z_a) + self._variance(z_b))
            covariance = _covariance(z_a) + _covariance(z_b)
            return self.lambda_param * invariance + self.mu_param * variance + self.nu_param * covariance

    def _variance(self, z: Tensor) -> Tensor:
        std = torch.sqrt(z.var(dim=0) + self.eps)
        return F.relu(1.0 - std).mean()


def _covariance(z: Tensor) -> Tensor:
    """Sum of squared off-diagonal covariances over ``D``, averaged over any extra positions."""
    n, d = z.shape[0], z.shape[-1]
    centred = z - z.mean(dim=0)
    cov = torch.einsum("n...i,n...j->...ij", centred, centred) / (n - 1)  # (..., D, D)
    off_diagonal = ~torch.eye(d, dtype=torch.bool, device=z.device)
    return (cov[..., off_diagonal].pow(2).sum(dim=-1) / d).mean()
