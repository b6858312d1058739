"""``Method.log_train``: per-step values logged as window means on the logger's steps."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from fewlabel.plugins.methods.base import Method
from tests.callbacks.trainer_helpers import RecordingLogger, make_trainer


class _Linear(nn.Module):
    embed_dim = 2

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x)


class _CountingMethod(Method):
    """Loss = ``batch_idx`` (plus a zero term that keeps the graph): the expected window means are known."""

    def __init__(self) -> None:
        super().__init__(_Linear(), lr=0.01)
        self.seen: list[float] = []

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss = self.embed(batch["input"]).sum() * 0.0 + float(batch_idx)
        self.seen.append(float(batch_idx))
        self.log_train("train/loss", loss, prog_bar=True)
        return loss


def _loader(num_batches: int) -> DataLoader:
    data = [{"input": torch.randn(3), "label": torch.tensor(0), "index": torch.tensor(i)} for i in range(num_batches)]
    return DataLoader(data, batch_size=1)


def test_logger_receives_window_means_on_its_steps() -> None:
    logger = RecordingLogger()
    trainer = make_trainer(1, [], logger=logger, log_every_n_steps=5)
    trainer.fit(_CountingMethod(), train_dataloaders=_loader(12))
    losses = [(step, m["train/loss"]) for step, m in logger.logged if "train/loss" in m]
    # Lightning writes on steps 5 and 10 (logger step = 4, 9); batch_idx 0-4 mean 2, 5-9 mean 7.
    assert losses == [(4, pytest.approx(2.0)), (9, pytest.approx(7.0))]
    # The last batch closes the window (10, 11): callback_metrics is current at the end of fit.
    assert float(trainer.callback_metrics["train/loss"]) == pytest.approx(10.5)


def test_every_step_when_logging_every_step() -> None:
    logger = RecordingLogger()
    trainer = make_trainer(1, [], logger=logger, log_every_n_steps=1)
    trainer.fit(_CountingMethod(), train_dataloaders=_loader(4))
    assert [m["train/loss"] for _, m in logger.logged if "train/loss" in m] == [0.0, 1.0, 2.0, 3.0]


def test_max_steps_closes_the_window() -> None:
    trainer = make_trainer(3, [], log_every_n_steps=50, max_steps=7)
    trainer.fit(_CountingMethod(), train_dataloaders=_loader(5))
    # Epoch 0 (batches 0-4) ends a window; epoch 1 stops after batches 0 and 1 at max_steps: mean 0.5.
    assert float(trainer.callback_metrics["train/loss"]) == pytest.approx(0.5)


def test_outside_a_trainer_it_is_plain_log() -> None:
    module = _CountingMethod()
    with pytest.warns(UserWarning, match="trainer"):
        module.log_train("train/loss", torch.tensor(1.0))
    assert module._log_window == {}


def test_gradient_accumulation_keeps_whole_optimizer_steps_in_a_window() -> None:
    logger = RecordingLogger()
    trainer = make_trainer(1, [], logger=logger, log_every_n_steps=2, accumulate_grad_batches=2)
    trainer.fit(_CountingMethod(), train_dataloaders=_loader(8))
    # 4 optimizer steps of 2 batches; the logger writes after steps 2 and 4: batches 0-3 and 4-7.
    assert [m["train/loss"] for _, m in logger.logged if "train/loss" in m] == [1.5, 5.5]
