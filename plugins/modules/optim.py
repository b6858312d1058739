"""Optimiser + per-step cosine schedule shared by the fewlabel modules."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from fewlabel.plugins.schedules import cosine_schedule

OPTIMIZERS = ("adam", "adamw", "sgd")


def check_optimizer(name: str) -> None:
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {list(OPTIMIZERS)}")


def build_optimizer(module: L.LightningModule, params: Any, *, name: str, lr: float, weight_decay: float,
                    momentum: float = 0.9, warmup_fraction: float = 0.0, final_lr_fraction: float = 0.0
                    ) -> dict[str, Any]:
    """Return Lightning's optimiser dict: ``name`` optimiser, warm-up + cosine decay stepped per optimizer step.

    The schedule length is ``trainer.estimated_stepping_batches``, so it follows ``max_epochs``,
    ``max_steps`` and gradient accumulation.
    """
    check_optimizer(name)
    if name == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    elif name == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    total = max(1, int(module.trainer.estimated_stepping_batches))
    warmup = int(warmup_fraction * total)

    def factor(step: int) -> float:
        return cosine_schedule(step, total, 1.0, final_lr_fraction, warmup_steps=warmup)

    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
