"""DeepCluster-v2 loss (Caron et al., "Unsupervised Learning of Visual Features by Contrasting
Cluster Assignments", 2020, arXiv 2006.09882)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def deepcluster_v2_loss(scores: list[Tensor], assignments: list[Tensor], temperature: float = 0.1) -> Tensor:
    """Mean over prototype heads of ``CE(scores_h / T, assignments_h)``, ignoring assignments of ``-1``.

    A ``-1`` marks a sample without a cluster (its memory-bank row was never written); it adds
    nothing to the loss or the count it is averaged over, as SwAV's ``ignore_index`` does. A head
    whose assignments are all ``-1`` contributes ``0`` (with a gradient graph) instead of NaN.

    Args:
        scores: Per head, cosine scores ``(B, K_h)`` between normalised embeddings and prototypes.
        assignments: Per head, the k-means cluster index ``(B,)`` of each sample, or ``-1``.
        temperature: Softmax temperature (0.1 in SwAV's DeepCluster-v2).

    Returns:
        Scalar float32 loss.
    """
    if len(scores) != len(assignments) or not scores:
        raise ValueError(f"need one assignment per head, got {len(scores)} score tensors and {len(assignments)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    losses = [
        F.cross_entropy(s.float() / temperature, a, ignore_index=-1, reduction="sum") / (a >= 0).sum().clamp(min=1)
        for s, a in zip(scores, assignments)
    ]
    return sum(losses) / len(losses)
