"""Exponential moving average of a student's weights into a momentum teacher (BYOL, DINO, MoCo)."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["ema_update", "momentum_schedule"]


@torch.no_grad()
def ema_update(student: nn.Module, teacher: nn.Module, momentum: float, *, copy_buffers: bool = False) -> None:
    """``teacher = momentum * teacher + (1 - momentum) * student``, parameter by parameter.

    Only parameters are averaged, as in the BYOL and DINO reference code: the teacher's buffers
    (BatchNorm running statistics) come from its own forward passes. ``copy_buffers=True`` copies
    the student's buffers instead (for a teacher that never runs in train mode). The two modules must
    have the same structure. Runs with ``torch._foreach`` ops: one kernel launch per group, not per tensor.

    Args:
        student: The trained module.
        teacher: Its momentum copy (``requires_grad=False``).
        momentum: In ``[0, 1]``; 1 leaves the teacher unchanged, 0 copies the student.
        copy_buffers: Copy the student's buffers into the teacher.

    Raises:
        ValueError: ``momentum`` outside ``[0, 1]`` or modules of different structure.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    s_params, t_params = list(student.parameters()), list(teacher.parameters())
    s_buffers, t_buffers = list(student.buffers()), list(teacher.buffers())
    if len(s_params) != len(t_params) or len(s_buffers) != len(t_buffers):
        raise ValueError(
            f"student and teacher differ in structure: {len(s_params)} vs {len(t_params)} parameters, "
            f"{len(s_buffers)} vs {len(t_buffers)} buffers"
        )
    if t_params:
        teacher_data = [t.data for t in t_params]
        torch._foreach_mul_(teacher_data, momentum)
        torch._foreach_add_(teacher_data, [s.data for s in s_params], alpha=1.0 - momentum)
    if copy_buffers:
        for s, t in zip(s_buffers, t_buffers):
            t.copy_(s)


def momentum_schedule(step: int, total_steps: int, base: float, final: float = 1.0) -> float:
    """BYOL's / DINO's cosine increase of the EMA momentum from ``base`` (step 0) to ``final`` (last step).

    ``final - (final - base) * (cos(pi * step / total_steps) + 1) / 2``; steps past the end give ``final``.

    Example:
        >>> momentum_schedule(0, 100, 0.996), momentum_schedule(50, 100, 0.996), momentum_schedule(100, 100, 0.996)
        (0.996, 0.998, 1.0)
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    progress = min(max(step, 0), total_steps) / total_steps
    return float(final - (final - base) * (math.cos(math.pi * progress) + 1.0) / 2.0)
