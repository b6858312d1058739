"""Schedules: pure functions of the step that return a Python float."""

from __future__ import annotations

import math


def cosine_schedule(step: int, total_steps: int, start: float, end: float, warmup_steps: int = 0,
                    warmup_start: float = 0.0) -> float:
    """Linear warm-up from ``warmup_start`` to ``start``, then cosine decay from ``start`` to ``end``.

    Args:
        step: Current step (0-based). Steps past ``total_steps`` return ``end``.
        total_steps: Length of the whole schedule, warm-up included.
        start: Value at the end of the warm-up.
        end: Value at ``total_steps``.
        warmup_steps: Length of the linear warm-up.
        warmup_start: Value at step 0 when there is a warm-up.

    Returns:
        The scheduled value.

    Example:
        >>> cosine_schedule(0, 10, 1.0, 0.0), cosine_schedule(5, 10, 1.0, 0.0), cosine_schedule(10, 10, 1.0, 0.0)
        (1.0, 0.5, 0.0)
    """
    if total_steps < 1 or warmup_steps < 0:
        raise ValueError(f"need total_steps >= 1 and warmup_steps >= 0, got {total_steps}, {warmup_steps}")
    if step < warmup_steps:
        return warmup_start + (start - warmup_start) * step / warmup_steps
    if step >= total_steps:
        return float(end)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return float(end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress)))
