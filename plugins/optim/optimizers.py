"""The optimizer registry and the optimiser + per-step cosine schedule shared by the fewlabel modules."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from fewlabel.plugins.optim.schedules import cosine_schedule
from fewlabel.plugins.registry import Registry

__all__ = [
    "OPTIMIZERS", "build_optimizer", "check_optimizer", "create_optimizer", "list_optimizers", "register_optimizer",
]

#: ``name -> (params, lr, weight_decay, momentum) -> torch.optim.Optimizer``.
OPTIMIZERS: Registry[torch.optim.Optimizer] = Registry("optimizer")

#: Decorator that registers an optimizer constructor taking ``(params, lr, weight_decay, momentum)``.
register_optimizer = OPTIMIZERS.register


@OPTIMIZERS.register("sgd")
def _sgd(params: Any, lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


@OPTIMIZERS.register("adam")
def _adam(params: Any, lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


@OPTIMIZERS.register("adamw")
def _adamw(params: Any, lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def create_optimizer(name: str, **kwargs: Any) -> torch.optim.Optimizer:
    """Build the optimizer registered under ``name``.

    Args:
        name: ``"sgd"``, ``"adam"``, ``"adamw"`` or a name added with :func:`register_optimizer`.
        **kwargs: ``params``, ``lr``, ``weight_decay`` and ``momentum`` (unused by Adam and AdamW).

    Raises:
        ValueError: ``name`` is not registered; the message gives the closest name and every valid one.

    Example:
        >>> opt = create_optimizer("sgd", params=[torch.zeros(2, requires_grad=True)], lr=0.1, weight_decay=0.0,
        ...                        momentum=0.9)
        >>> type(opt).__name__
        'SGD'
    """
    return OPTIMIZERS.create(name, **kwargs)


def list_optimizers() -> list[str]:
    """Sorted names of the registered optimizers."""
    return OPTIMIZERS.names()


def check_optimizer(name: str, lr: float = 1.0, weight_decay: float = 0.0, warmup_fraction: float = 0.0) -> None:
    """Fail at construction, not at the first step, on an unknown optimizer or an impossible value.

    Raises:
        ValueError: naming the argument and the valid values.
    """
    OPTIMIZERS.get(name)
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    if not 0 <= warmup_fraction < 1:
        raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction!r}")


def build_optimizer(module: L.LightningModule, params: Any, *, name: str, lr: float, weight_decay: float,
                    momentum: float = 0.9, warmup_fraction: float = 0.0, final_lr_fraction: float = 0.0
                    ) -> dict[str, Any]:
    """Return Lightning's optimiser dict: ``name`` optimiser, warm-up + cosine decay stepped per optimizer step.

    The schedule length is ``trainer.estimated_stepping_batches``, so it follows ``max_epochs``,
    ``max_steps`` and gradient accumulation.
    """
    check_optimizer(name, lr, weight_decay, warmup_fraction)
    opt = create_optimizer(name, params=params, lr=lr, weight_decay=weight_decay, momentum=momentum)
    total = max(1, int(module.trainer.estimated_stepping_batches))
    warmup = int(warmup_fraction * total)

    def factor(step: int) -> float:
        return cosine_schedule(step, total, 1.0, final_lr_fraction, warmup_steps=warmup)

    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
