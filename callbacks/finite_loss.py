"""Stop training at the first non-finite loss, before it reaches the weights."""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor

from fewlabel.plugins.arguments import is_count

__all__ = ["FiniteLossGuard"]


class FiniteLossGuard(L.Callback):
    """Raise ``FloatingPointError`` when the training loss is NaN or infinite, before its backward pass.

    Lightning's ``detect_anomaly`` finds where a NaN comes from (slowly); this guard only refuses to
    apply a non-finite loss, so a diverging run stops with a message naming the module and the step
    instead of silently turning every weight into NaN. Checking needs one host synchronisation per
    checked step; ``every_n_steps`` thins the checks.

    Args:
        every_n_steps: Check the loss of every n-th optimizer step (1 = every step).

    Raises:
        ValueError: ``every_n_steps`` is not an integer >= 1.

    Example:
        >>> guard = FiniteLossGuard(every_n_steps=10)
        >>> guard.should_check(20), guard.should_check(21)
        (True, False)
    """

    def __init__(self, every_n_steps: int = 1) -> None:
        super().__init__()
        if not is_count(every_n_steps, 1):
            raise ValueError(f"every_n_steps must be an int >= 1, got {every_n_steps!r}")
        self.every_n_steps = every_n_steps

    def should_check(self, step: int) -> bool:
        """Whether the loss of global step ``step`` is checked."""
        return step % self.every_n_steps == 0

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor) -> None:
        if self.should_check(trainer.global_step) and not bool(torch.isfinite(loss.detach()).all()):
            raise FloatingPointError(
                f"{type(pl_module).__name__}: non-finite loss ({loss.detach().float().item()}) at global step "
                f"{trainer.global_step}; lower the learning rate or check the input data"
            )
