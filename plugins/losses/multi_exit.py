"""Multi-exit self-distillation loss ("Be Your Own Teacher", Zhang et al., 2019, arXiv 1905.08094).

Used by UnFuSeD (arXiv 2303.05668) stage 3 to train a fresh student on pseudo-labels.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class MultiExitDistillationLoss(nn.Module):
    """``CE(final) + a * sum CE(aux_i) + b * sum KL(p_final || p_aux_i) + c * sum mean(2 - 2 cos(aux_i, final))``.

    The final exit is the teacher of the auxiliary exits. As in the UnFuSeD code, nothing is
    detached by default: the KL and cosine terms send gradients into the final exit too.
    ``detach_teacher=True`` detaches the final exit's probabilities and logits in those terms, so
    the final exit learns from its own cross-entropy only. The KL is ``batchmean``-reduced; all
    terms run in float32 (mixed-precision safe).

    Args:
        aux_ce_weight: Weight ``a`` of the auxiliary cross-entropies (0.7 in the UnFuSeD code).
        kl_weight: Weight ``b`` of the KL terms (0.3).
        feature_weight: Weight ``c`` of the normalised-logit L2 terms (0.003).
        temperature: Softmax temperature of the KL terms (1.0); the KL is scaled by ``T**2``.
        detach_teacher: Stop the KL and cosine gradients from reaching the final exit.

    Returns (forward):
        ``(total_loss, parts)`` where ``parts`` holds the detached ``ce``, ``aux_ce``, ``kl``,
        ``feature`` terms for logging.

    Example:
        >>> import torch
        >>> loss_fn = MultiExitDistillationLoss()
        >>> final, aux = torch.randn(4, 3), [torch.randn(4, 3), torch.randn(4, 3)]
        >>> loss, parts = loss_fn(final, aux, torch.tensor([0, 1, 2, 0]))
        >>> loss.ndim, bool(loss > 0)
        (0, True)
    """

    def __init__(self, aux_ce_weight: float = 0.7, kl_weight: float = 0.3, feature_weight: float = 0.003,
                 temperature: float = 1.0, detach_teacher: bool = False) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.aux_ce_weight, self.kl_weight, self.feature_weight = aux_ce_weight, kl_weight, feature_weight
        self.temperature = temperature
        self.detach_teacher = detach_teacher

    def forward(self, final: Tensor, aux: list[Tensor], target: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Compute the loss.

        Args:
            final: Final-exit logits ``(B, K)``.
            aux: Auxiliary-exit logits, each ``(B, K)``.
            target: Class indices ``(B,)``.

        Returns:
            ``(total_loss, parts)`` as described above.
        """
        final = final.float()
        t = self.temperature
        teacher = final.detach() if self.detach_teacher else final
        teacher_prob = F.softmax(teacher / t, dim=-1)
        teacher_dir = F.normalize(teacher, dim=-1)
        ce = F.cross_entropy(final, target)
        zero = final.new_zeros(())
        aux_ce, kl, feature = zero, zero, zero
        for logits in aux:
            logits = logits.float()
            aux_ce = aux_ce + F.cross_entropy(logits, target)
            kl = kl + F.kl_div(F.log_softmax(logits / t, dim=-1), teacher_prob, reduction="batchmean") * t * t
            feature = feature + (2 - 2 * (F.normalize(logits, dim=-1) * teacher_dir).sum(-1)).mean()
        total = ce + self.aux_ce_weight * aux_ce + self.kl_weight * kl + self.feature_weight * feature
        parts = {"ce": ce.detach(), "aux_ce": aux_ce.detach(), "kl": kl.detach(), "feature": feature.detach()}
        return total, parts
