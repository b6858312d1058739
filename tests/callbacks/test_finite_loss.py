"""FiniteLossGuard stops at the first non-finite loss, before its backward pass reaches the weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from fewlabel.callbacks import FiniteLossGuard
from fewlabel.datamodules import DigitsDataModule
from fewlabel.plugins import Classifier


class NaNInputFrom(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        if trainer.global_step >= self.step:
            batch["input"].fill_(float("nan"))


def _fit(tmp_path: Path, callbacks: list[L.Callback]) -> Classifier:
    dm = DigitsDataModule(labels_per_class=5, batch_size=16)
    dm.setup("fit")
    torch.manual_seed(0)
    module = Classifier({"name": "small_cnn", "width": 4}, num_classes=10)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=6, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path,
                        callbacks=callbacks)
    trainer.fit(module, train_dataloaders=dm.labeled_dataloader())
    return module


def test_guard_names_the_module_and_step_and_keeps_the_weights_finite(tmp_path: Path) -> None:
    seen: list[L.LightningModule] = []

    class Keep(L.Callback):
        def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            seen.append(pl_module)

    with pytest.raises(FloatingPointError, match=r"Classifier: non-finite loss \(nan\) at global step 3; lower the"):
        _fit(tmp_path, [NaNInputFrom(3), FiniteLossGuard(), Keep()])
    assert all(torch.isfinite(p).all() for p in seen[0].parameters())


def test_without_the_guard_the_weights_turn_nan_and_every_n_steps_thins_checks(tmp_path: Path) -> None:
    module = _fit(tmp_path, [NaNInputFrom(3)])
    assert not all(torch.isfinite(p).all() for p in module.parameters())
    guard = FiniteLossGuard(every_n_steps=2)
    assert [guard.should_check(s) for s in range(4)] == [True, False, True, False]
    with pytest.raises(ValueError, match="every_n_steps must be an int >= 1"):
        FiniteLossGuard(every_n_steps=0)
