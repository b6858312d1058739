"""A recording logger and a quiet CPU trainer, shared by the evaluator callback tests."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.loggers.logger import Logger


class RecordingLogger(Logger):
    """Keeps every ``log_metrics`` call as ``(step, metrics)`` and the logged hyperparameters in ``params``."""

    def __init__(self) -> None:
        super().__init__()
        self.logged: list[tuple[int | None, dict[str, float]]] = []
        self.params: dict[str, Any] = {}

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        self.params.update(params)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.logged.append((step, dict(metrics)))


def make_trainer(max_epochs: int, callbacks: list[L.Callback], **kwargs: Any) -> L.Trainer:
    """A single-CPU trainer without progress bar or summary; no logger or checkpoints unless given."""
    kwargs.setdefault("logger", False)
    kwargs.setdefault("enable_checkpointing", False)
    return L.Trainer(accelerator="cpu", devices=1, max_epochs=max_epochs, enable_progress_bar=False,
                     enable_model_summary=False, callbacks=callbacks, **kwargs)
