"""DINO self-distillation loss (Caron et al., "Emerging Properties in Self-Supervised Vision Transformers",
2021, arXiv 2104.14294)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from fewlabel.plugins.distributed import is_distributed


class DINOLoss(nn.Module):
    """Cross-entropy from the centred, sharpened teacher to the student, over cross-view pairs.

    For teacher view ``t`` and student view ``s`` with ``s != t``, the term is
    ``mean_b sum_d -softmax((teacher_t - c) / T_t)_bd * log_softmax(student_s / T_s)_bd``; the loss
    is the mean over all such terms. The teacher sees the global views and the student the same
    global views first, in the same order, followed by any local views, so the skipped pairs
    ``s == t`` are those where both networks saw the same crop. Teacher outputs are detached.
    After the loss is computed, the centre ``c`` (a float32 buffer, checkpointed) is updated as
    ``c <- m * c + (1 - m) * mean(teacher outputs)``, all-reduced over ranks when distributed.
    Softmax, log-softmax and centering run in float32 with autocast disabled.

    Args:
        output_dim: Dimension ``D`` of the head outputs.
        warmup_teacher_temp: Teacher temperature at epoch 0.
        teacher_temp: Teacher temperature after the warm-up (0.04; above 0.07 is unstable).
        warmup_teacher_temp_epochs: Epochs of the linear warm-up; epoch ``E - 1`` reaches ``teacher_temp``.
        student_temp: Student temperature ``T_s`` (0.1).
        center_momentum: Momentum ``m`` of the centre (0.9).

    Raises:
        ValueError: On a non-positive dimension or temperature, a negative warm-up length, or a
            momentum outside ``[0, 1]``.

    Example:
        >>> loss_fn = DINOLoss(output_dim=32)
        >>> teacher = [torch.randn(4, 32) for _ in range(2)]
        >>> student = [torch.randn(4, 32) for _ in range(4)]  # 2 global + 2 local views
        >>> loss = loss_fn(teacher, student, teacher_temp=loss_fn.teacher_temperature(epoch=0))
    """

    center: Tensor

    def __init__(self, output_dim: int = 65536, warmup_teacher_temp: float = 0.04, teacher_temp: float = 0.04,
                 warmup_teacher_temp_epochs: int = 30, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__()
        if output_dim < 1:
            raise ValueError(f"output_dim must be >= 1, got {output_dim}")
        temperatures = {"warmup_teacher_temp": warmup_teacher_temp, "teacher_temp": teacher_temp,
                        "student_temp": student_temp}
        bad = {name: value for name, value in temperatures.items() if value <= 0}
        if bad:
            raise ValueError(f"temperatures must be > 0, got {bad}")
        if warmup_teacher_temp_epochs < 0:
            raise ValueError(f"warmup_teacher_temp_epochs must be >= 0, got {warmup_teacher_temp_epochs}")
        if not 0.0 <= center_momentum <= 1.0:
            raise ValueError(f"center_momentum must be in [0, 1], got {center_momentum}")
        self.output_dim = output_dim
        self.warmup_teacher_temp, self.teacher_temp = warmup_teacher_temp, teacher_temp
        self.warmup_teacher_temp_epochs = warmup_teacher_temp_epochs
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, 1, output_dim))

    def teacher_temperature(self, epoch: int) -> float:
        """Teacher temperature at ``epoch`` (a pure function of the epoch).

        Linear from ``warmup_teacher_temp`` at epoch 0 to ``teacher_temp`` at epoch
        ``warmup_teacher_temp_epochs - 1``, constant after (the DINO reference schedule).

        Args:
            epoch: Current epoch, 0-based.

        Returns:
            The temperature as a Python ``float``.
        """
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if epoch >= self.warmup_teacher_temp_epochs:
            return float(self.teacher_temp)
        fraction = epoch / max(self.warmup_teacher_temp_epochs - 1, 1)
        return float(self.warmup_teacher_temp + (self.teacher_temp - self.warmup_teacher_temp) * fraction)

    def forward(self, teacher_out: list[Tensor], student_out: list[Tensor], teacher_temp: float | None = None,
                epoch: int | None = None) -> Tensor:
        """Compute the loss, then update the centre.

        Args:
            teacher_out: Teacher outputs of the global views, each ``(B, D)``.
            student_out: Student outputs, each ``(B, D)``: the same global views first, then local views.
            teacher_temp: Teacher temperature; wins over ``epoch``.
            epoch: Epoch for :meth:`teacher_temperature`; without either, ``teacher_temp`` of the constructor.

        Returns:
            Scalar float32 loss.

        Raises:
            ValueError: On a non-positive temperature, no cross-view pair, or views of different shapes.
        """
        if teacher_temp is None:
            teacher_temp = self.teacher_temp if epoch is None else self.teacher_temperature(epoch)
        if teacher_temp <= 0:
            raise ValueError(f"teacher_temp must be > 0, got {teacher_temp}")
        n_teacher, n_student = len(teacher_out), len(student_out)
        if n_teacher * n_student - min(n_teacher, n_student) < 1:
            raise ValueError(f"need at least one cross-view pair, got {n_teacher} teacher and {n_student} "
                             "student views")
        views = list(teacher_out) + list(student_out)
        if any(v.shape != views[0].shape for v in views) or views[0].shape[-1] != self.output_dim:
            raise ValueError(f"every view must be (B, {self.output_dim}), got {[tuple(v.shape) for v in views]}")
        with torch.autocast(device_type=views[0].device.type, enabled=False):
            teacher = torch.stack([t.detach().float() for t in teacher_out])  # (T, B, D)
            student = torch.stack([s.float() for s in student_out])  # (S, B, D)
            targets = F.softmax((teacher - self.center.float()) / teacher_temp, dim=-1)
            log_probs = F.log_softmax(student / self.student_temp, dim=-1)
            cross_entropy = -torch.einsum("tbd,sbd->ts", targets, log_probs) / teacher.shape[1]  # (T, S)
            same_view = torch.eye(*cross_entropy.shape, dtype=torch.bool, device=cross_entropy.device)
            loss = cross_entropy[~same_view].mean()
        self.update_center(teacher)
        return loss

    @torch.no_grad()
    def update_center(self, teacher_out: Tensor | Sequence[Tensor]) -> None:
        """``center <- m * center + (1 - m) * batch mean``, the mean all-reduced over ranks when distributed.

        Args:
            teacher_out: Teacher outputs ``(..., D)`` (e.g. stacked views ``(T, B, D)``) or a list of ``(B, D)``.
        """
        if not isinstance(teacher_out, Tensor):
            teacher_out = torch.stack(list(teacher_out))
        batch_center = teacher_out.float().reshape(-1, self.output_dim).mean(dim=0)
        if is_distributed():
            dist.all_reduce(batch_center)
            batch_center /= dist.get_world_size()
        self.center.mul_(self.center_momentum).add_(batch_center.to(self.center.dtype), alpha=1 - self.center_momentum)
