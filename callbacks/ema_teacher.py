"""Drive momentum teachers: an EMA of the student's weights after every optimizer step."""

from __future__ import annotations

from typing import Any

import lightning as L
from torch import nn

from fewlabel.plugins.arguments import is_count
from fewlabel.plugins.optim.ema import ema_update, momentum_schedule

__all__ = ["EMATeacher"]


class EMATeacher(L.Callback):
    """After each optimizer step, ``teacher = m * teacher + (1 - m) * student`` for every momentum pair.

    Contract with the LightningModule: ``momentum_pairs() -> list[(student, teacher)]`` returns the
    modules to average (BYOL's online/target encoder + projector, DINO's student/teacher backbone +
    head, or a user's own); the module owns its teachers and keeps them at ``requires_grad=False``.
    Checked in ``on_fit_start``.

    The momentum follows BYOL's / DINO's cosine schedule from ``base_momentum`` to ``final_momentum``
    over the run's optimizer steps (``trainer.estimated_stepping_batches`` unless ``total_steps``
    is given). Steps are counted with ``trainer.global_step``, which moves once per optimizer step,
    so gradient accumulation does not speed the schedule up. The teachers are part of the module's
    state dict; this callback checkpoints the step it last updated at, so a resumed run continues
    the same schedule.

    Args:
        base_momentum: Momentum at the first step (0.996 in BYOL and DINO).
        final_momentum: Momentum at the last step (1.0).
        total_steps: Schedule length in optimizer steps; ``None`` = the trainer's estimate.

    Raises:
        ValueError: momenta outside ``[0, 1]`` or ``total_steps < 1``.

    Example:
        >>> ema = EMATeacher(base_momentum=0.99, final_momentum=1.0)
        >>> ema.base_momentum, ema.final_momentum
        (0.99, 1.0)
    """

    #: Marker that methods with momentum teachers look for in ``trainer.callbacks``.
    updates_momentum_pairs = True

    def __init__(self, base_momentum: float = 0.996, final_momentum: float = 1.0, total_steps: int | None = None) -> None:
        super().__init__()
        for name, value in (("base_momentum", base_momentum), ("final_momentum", final_momentum)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a float in [0, 1], got {value!r}")
        if total_steps is not None and not is_count(total_steps, 1):
            raise ValueError(f"total_steps must be an int >= 1 or None (the trainer's estimate), got {total_steps!r}")
        self.base_momentum = float(base_momentum)
        self.final_momentum = float(final_momentum)
        self.total_steps = total_steps
        self.last_step = 0
        self.momentum = float(base_momentum)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pairs = pairs_of(pl_module)
        trainable = [type(teacher).__name__ for _, teacher in pairs if any(p.requires_grad for p in teacher.parameters())]
        if trainable:
            raise ValueError(
                f"EMATeacher: {type(pl_module).__name__}.momentum_pairs() returns teachers with trainable parameters "
                f"({', '.join(trainable)}); a momentum teacher must have requires_grad=False"
            )

    def schedule_length(self, trainer: L.Trainer) -> int:
        """Optimizer steps of the whole schedule."""
        return self.total_steps or max(1, int(trainer.estimated_stepping_batches))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step == self.last_step:  # no optimizer step in this batch (gradient accumulation)
            return
        self.momentum = momentum_schedule(step - 1, self.schedule_length(trainer), self.base_momentum,
                                          self.final_momentum)
        for student, teacher in pairs_of(pl_module):
            ema_update(student, teacher, self.momentum)
        self.last_step = step
        # Only on the steps the logger writes (and at an epoch's end): Lightning's log costs ~0.5 ms per call.
        if step % max(1, trainer.log_every_n_steps) == 0 or trainer.is_last_batch:
            pl_module.log("train/ema_momentum", self.momentum, on_step=True, on_epoch=False)

    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self.last_step, "momentum": self.momentum}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_step = int(state_dict.get("last_step", 0))
        self.momentum = float(state_dict.get("momentum", self.base_momentum))


def pairs_of(pl_module: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """``pl_module.momentum_pairs()``, checked.

    Raises:
        AttributeError: the module does not offer ``momentum_pairs()``.
    """
    method = getattr(pl_module, "momentum_pairs", None)
    if not callable(method):
        raise AttributeError(
            f"EMATeacher needs {type(pl_module).__name__} to have momentum_pairs() -> list[(student, teacher)] "
            "(the modules whose teacher is an EMA of the student)"
        )
    return list(method())
