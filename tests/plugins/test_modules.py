"""DeepClusterV2, SelfDistillation and Classifier in real Lightning Trainers on the digits data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from fewlabel.callbacks import RNGStateKeeper
from fewlabel.datamodules import DigitsDataModule
from fewlabel.plugins import BatchImageAugment, Classifier, DeepClusterV2, SelfDistillation


@pytest.fixture(scope="module")
def digits() -> DigitsDataModule:
    dm = DigitsDataModule(labels_per_class=5, batch_size=128)
    dm.setup("fit")
    return dm


def _trainer(tmp_path: Path, epochs: int, **kwargs: Any) -> L.Trainer:
    defaults: dict[str, Any] = dict(accelerator="cpu", devices=1, max_epochs=epochs, logger=False,
                                    enable_progress_bar=False, enable_model_summary=False,
                                    enable_checkpointing=False, limit_val_batches=0, default_root_dir=tmp_path)
    defaults.update(kwargs)
    return L.Trainer(**defaults)


def _dcv2(dm: DigitsDataModule) -> DeepClusterV2:
    return DeepClusterV2({"name": "small_cnn", "width": 4}, num_samples=dm.num_unlabeled,
                         augment=BatchImageAugment(), num_prototypes=[10, 20], hidden_dim=32, feat_dim=16)


def test_deepcluster_v2_fills_memory_then_trains(digits: DigitsDataModule, tmp_path: Path) -> None:
    digits.train_split = "unlabeled"
    torch.manual_seed(0)
    module = _dcv2(digits)
    conv = module.encoder.blocks[0][0].weight.detach().clone()
    bn_mean = module.encoder.blocks[0][1].running_mean.clone()
    trainer = _trainer(tmp_path, 2)
    trainer.fit(module, datamodule=digits)
    assert bool(module.memory_ready)
    filled = module.memory.norm(dim=-1) > 0.99
    assert filled.float().mean() > 0.95  # only the few samples of dropped last batches may be missing
    assert not torch.equal(conv, module.encoder.blocks[0][0].weight)
    assert not torch.equal(bn_mean, module.encoder.blocks[0][1].running_mean)
    for h, k in enumerate([10, 20]):
        assert int(module.assignments[h].min()) >= 0 and int(module.assignments[h].max()) < k
        norms = getattr(module, f"prototypes_{h}").norm(dim=1)
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


def test_deepcluster_v2_init_memory_leaves_weights_alone(digits: DigitsDataModule, tmp_path: Path) -> None:
    digits.train_split = "unlabeled"
    module = _dcv2(digits)
    before = {k: v.clone() for k, v in module.encoder.state_dict().items()}

    class Stop(Exception):
        pass

    class StopBeforeFirstStep(L.Callback):
        def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: object) -> None:
            raise Stop

    with pytest.raises(Stop):
        _trainer(tmp_path, 1, callbacks=[StopBeforeFirstStep()]).fit(module, datamodule=digits)
    assert bool(module.memory_ready) and module.memory.abs().sum() > 0
    for k, v in module.encoder.state_dict().items():
        assert torch.equal(before[k], v), k


class Interrupt(L.Callback):
    """Crash at the start of epoch ``epoch``, after the previous epoch's checkpoint was written."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


def test_deepcluster_v2_resume_matches_uninterrupted(digits: DigitsDataModule, tmp_path: Path) -> None:
    digits.train_split = "unlabeled"

    def run(root: Path, ckpt: str | None = None, crash_at: int | None = None) -> DeepClusterV2:
        if ckpt is None:
            L.seed_everything(0, verbose=False)
        module = _dcv2(digits)
        checkpoint = ModelCheckpoint(dirpath=root, filename="last", save_top_k=1, enable_version_counter=False)
        callbacks: list[L.Callback] = [RNGStateKeeper(), checkpoint]
        if crash_at is not None:
            callbacks.append(Interrupt(crash_at))
        _trainer(root, 3, enable_checkpointing=True, callbacks=callbacks).fit(module, datamodule=digits, ckpt_path=ckpt)
        return module

    full = run(tmp_path / "full")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tmp_path / "part", crash_at=2)
    resumed = run(tmp_path / "part", ckpt=str(tmp_path / "part" / "last.ckpt"))
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), name


def test_deepcluster_v2_validation() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        DeepClusterV2({"name": "small_cnn", "width": 4}, num_samples=5, num_prototypes=[10])
    with pytest.raises(ValueError, match="optimizer"):
        DeepClusterV2({"name": "small_cnn", "width": 4}, num_samples=50, optimizer="lamb")
    with pytest.raises(TypeError, match="spec dict"):
        DeepClusterV2("small_cnn", num_samples=50)  # type: ignore[arg-type]


def test_self_distillation_needs_pseudo_labels(digits: DigitsDataModule, tmp_path: Path) -> None:
    digits.train_split = "unlabeled"
    module = SelfDistillation({"name": "small_cnn", "width": 4}, num_classes=10)
    with pytest.raises(RuntimeError, match="PseudoLabeler"):
        _trainer(tmp_path, 1).fit(module, datamodule=digits)


def test_self_distillation_learns_given_labels_and_checkpoints_them(digits: DigitsDataModule, tmp_path: Path) -> None:
    digits.train_split = "unlabeled"
    torch.manual_seed(0)
    module = SelfDistillation({"name": "small_cnn", "width": 8}, num_classes=10, aux_hidden_dim=16, lr=0.05)
    module.set_pseudo_labels(torch.from_numpy(digits.pool_targets))  # true labels as pseudo-labels
    trainer = _trainer(tmp_path, 5)
    trainer.fit(module, datamodule=digits)
    assert len(module.aux_heads) == 2
    assert trainer.callback_metrics["train/pseudo_acc"] > 0.5
    path = tmp_path / "sd.ckpt"
    trainer.save_checkpoint(path)
    fresh = SelfDistillation({"name": "small_cnn", "width": 8}, num_classes=10, aux_hidden_dim=16)
    fresh.load_state_dict(torch.load(path, weights_only=False)["state_dict"])
    assert torch.equal(fresh.pseudo_labels, module.pseudo_labels)


def test_classifier_frozen_encoder_stays_fixed(digits: DigitsDataModule, tmp_path: Path) -> None:
    digits.train_split = "labeled"
    module = Classifier({"name": "small_cnn", "width": 4}, num_classes=10, freeze_encoder=True, lr=0.01)
    before = {k: v.clone() for k, v in module.encoder.state_dict().items()}
    trainer = _trainer(tmp_path, 3)
    trainer.fit(module, datamodule=digits)
    for k, v in module.encoder.state_dict().items():
        assert torch.equal(before[k], v), k  # weights and BatchNorm statistics unchanged
    acc = trainer.test(module, datamodule=digits, verbose=False)[0]["test/acc"]
    assert 0.0 <= acc <= 1.0


def test_classifier_learns_digits(digits: DigitsDataModule, tmp_path: Path) -> None:
    digits.train_split = "labeled"
    torch.manual_seed(0)
    module = Classifier({"name": "small_cnn", "width": 8}, num_classes=10, lr=3e-3)
    trainer = _trainer(tmp_path, 60)
    trainer.fit(module, datamodule=digits)
    assert trainer.test(module, datamodule=digits, verbose=False)[0]["test/acc"] > 0.6  # 5 labels per class


def test_non_finite_loss_stops_with_clear_message(digits: DigitsDataModule, tmp_path: Path) -> None:
    class NaNInput(L.Callback):
        def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
            batch["input"].fill_(float("nan"))

    digits.train_split = "labeled"
    module = Classifier({"name": "small_cnn", "width": 4}, num_classes=10)
    with pytest.raises(FloatingPointError, match="non-finite loss .* global step 0"):
        _trainer(tmp_path, 1, callbacks=[NaNInput()]).fit(module, datamodule=digits)


@pytest.mark.parametrize("kind", ["dcv2", "self_distillation", "classifier"])
def test_modules_run_in_bf16_mixed(kind: str, digits: DigitsDataModule, tmp_path: Path) -> None:
    digits.train_split = "labeled" if kind == "classifier" else "unlabeled"
    if kind == "dcv2":
        module: L.LightningModule = _dcv2(digits)
        epochs = 2
    elif kind == "self_distillation":
        module = SelfDistillation({"name": "small_cnn", "width": 4}, num_classes=10, aux_hidden_dim=8)
        module.set_pseudo_labels(torch.from_numpy(digits.pool_targets))
        epochs = 1
    else:
        module = Classifier({"name": "small_cnn", "width": 4}, num_classes=10)
        epochs = 1
    trainer = _trainer(tmp_path, epochs, precision="bf16-mixed", limit_train_batches=3)
    trainer.fit(module, datamodule=digits)
    loss = trainer.callback_metrics["train/loss"]
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
