"""Knowledge distillation through softened predictions (the SimCLRv2 distillation loss).

SimCLRv2: Chen, Kornblith, Swersky, Norouzi & Hinton, "Big Self-Supervised Models are Strong
Semi-Supervised Learners", NeurIPS 2020, arXiv 2006.10029, eq. 2. Soft targets: Hinton, Vinyals &
Dean, "Distilling the Knowledge in a Neural Network", 2015, arXiv 1503.02531.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DistillationLoss"]


class DistillationLoss(nn.Module):
    """``T**2 * mean_i [ -sum_y softmax(t_i / T)_y * log_softmax(s_i / T)_y ]``.

    The cross-entropy from the teacher's softened distribution to the student's, averaged over the
    batch: SimCLRv2's eq. 2 (a sum over the unlabeled examples there; a mean here, so the scale does
    not grow with the batch). It equals ``KL(p_teacher || p_student) + H(p_teacher)`` times ``T**2``:
    the entropy term does not depend on the student, so the gradient is the KL's, ``T * (p_student -
    p_teacher)`` per logit, zero when the student's logits equal the teacher's. The ``T**2`` factor
    keeps that gradient's scale independent of the temperature, as in the authors' distillation code
    (``add_kd_loss`` in google-research/simclr's ``tf2/colabs/distillation_self_training.ipynb``) and
    in Hinton et al.; at the paper's ``T = 1`` it is 1.

    The teacher's probabilities are targets: no gradient flows into ``teacher_logits``. Softmax and
    log-softmax run in float32 (mixed-precision safe).

    Args:
        temperature: Softmax temperature ``T`` of both distributions (1.0 in SimCLRv2's experiments).

    Raises:
        ValueError: ``temperature <= 0``; at call time, logits of different shapes or not ``(B, K)``.

    Example:
        >>> import torch
        >>> loss = DistillationLoss()(torch.zeros(1, 2), torch.tensor([[0.0, 0.0]]))
        >>> round(loss.item(), 4)  # ln 2
        0.6931
    """

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature <= 0:
            raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
        self.temperature = float(temperature)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        """The loss of a batch.

        Args:
            student_logits: ``(B, K)`` logits of the student.
            teacher_logits: ``(B, K)`` logits of the teacher (detached here).

        Returns:
            Scalar float32 loss.
        """
        if student_logits.ndim != 2 or student_logits.shape != teacher_logits.shape:
            raise ValueError(f"student and teacher logits must both be (B, K) of the same shape, got "
                             f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}")
        t = self.temperature
        target = F.softmax(teacher_logits.detach().float() / t, dim=-1)
        return F.cross_entropy(student_logits.float() / t, target) * (t * t)
