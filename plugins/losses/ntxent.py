"""NT-Xent contrastive loss (Chen et al., "A Simple Framework for Contrastive Learning of Visual
Representations" (SimCLR), 2020, arXiv 2002.05709)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from fewlabel.plugins.distributed import gather_with_grad, is_distributed


class NTXentLoss(nn.Module):
    """Normalised temperature-scaled cross-entropy over the ``2N`` views of a batch.

    For anchor ``i`` with positive ``p(i)`` (the other view of the same sample),
    ``l_i = -log(exp(s_i,p(i) / T) / sum_{k != i} exp(s_i,k / T))`` with cosine similarities ``s``;
    the loss is the mean of ``l_i`` over all ``2N`` anchors. Similarities and the softmax run in
    float32 with autocast disabled.

    Args:
        temperature: Softmax temperature ``T`` (0.5 as in lightly; SimCLR uses 0.1-0.5).
        memory_bank_size: Only ``0`` is supported: negatives come from the batch (SimCLR). A
            memory bank (MoCo-style negatives) is not implemented and raises ``ValueError``.
        gather_distributed: Use the views of every rank as negatives (gradients kept, see
            :func:`gather_with_grad`); a no-op in a single process.

    Raises:
        ValueError: On ``temperature <= 0``, ``memory_bank_size != 0``, or ``gather_distributed``
            without ``torch.distributed``.

    Example:
        >>> loss_fn = NTXentLoss(temperature=0.5)
        >>> loss = loss_fn(torch.randn(8, 16), torch.randn(8, 16))
    """

    def __init__(self, temperature: float = 0.5, memory_bank_size: int = 0, gather_distributed: bool = False) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if memory_bank_size != 0:
            raise ValueError(f"memory banks are not supported: memory_bank_size must be 0, got {memory_bank_size}")
        if gather_distributed and not dist.is_available():
            raise ValueError("gather_distributed=True needs torch.distributed, which this torch build lacks")
        self.temperature = temperature
        self.memory_bank_size = memory_bank_size
        self.gather_distributed = gather_distributed

    def forward(self, out0: Tensor, out1: Tensor) -> Tensor:
        """Compute the loss.

        Args:
            out0: Projections of the first views ``(N, D)``.
            out1: Projections of the second views ``(N, D)``, row ``i`` paired with ``out0[i]``.

        Returns:
            Scalar float32 loss.

        Raises:
            ValueError: On inputs that are not two ``(N, D)`` tensors of the same shape.
        """
        if out0.dim() != 2 or out0.shape != out1.shape:
            raise ValueError(f"out0 and out1 must both be (N, D), got {tuple(out0.shape)} and {tuple(out1.shape)}")
        n = out0.shape[0]
        with torch.autocast(device_type=out0.device.type, enabled=False):
            local = torch.cat([F.normalize(out0.float(), dim=1), F.normalize(out1.float(), dim=1)])  # (2N, D)
            everyone, offset = local, 0
            if self.gather_distributed and is_distributed():
                everyone = torch.cat([gather_with_grad(local[:n]), gather_with_grad(local[n:])])
                offset = dist.get_rank() * n
            m = everyone.shape[0] // 2  # samples over all ranks
            logits = local @ everyone.T / self.temperature  # (2N, 2M): [first views | second views]
            rows = torch.arange(2 * n, device=local.device)
            sample = rows % n + offset  # each anchor's sample index among the M
            own = sample + (rows >= n) * m  # the anchor itself: never a candidate
            positive = sample + (rows < n) * m  # the other view of the same sample
            self_mask = torch.zeros_like(logits, dtype=torch.bool)
            self_mask[rows, own] = True
            return F.cross_entropy(logits.masked_fill(self_mask, float("-inf")), positive)
