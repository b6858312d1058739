"""Classifier(bn_eval=...): the encoder's BatchNorm layers stay in eval mode while fine-tuning."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch import nn

from fewlabel.datamodules import DigitsDataModule
from fewlabel.plugins import Classifier


def _bn_layers(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _fit(bn_eval: bool, tmp_path: Path) -> tuple[Classifier, list[torch.Tensor], torch.Tensor]:
    dm = DigitsDataModule(labels_per_class=3, batch_size=16)
    dm.setup("fit")
    torch.manual_seed(0)
    module = Classifier({"name": "small_cnn", "width": 4}, num_classes=dm.num_classes, lr=0.01, bn_eval=bn_eval)
    stats = [bn.running_mean.clone() for bn in _bn_layers(module.encoder)]
    weight = _bn_layers(module.encoder)[0].weight.detach().clone()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=4, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
                        default_root_dir=tmp_path)
    trainer.fit(module, datamodule=dm)
    return module, stats, weight


def test_bn_eval_default_is_off_and_train_mode_reaches_batchnorm() -> None:
    module = Classifier({"name": "small_cnn", "width": 4}, num_classes=3)
    assert module.hparams.bn_eval is False
    module.train()
    assert all(bn.training for bn in _bn_layers(module.encoder))


def test_bn_eval_keeps_batchnorm_in_eval_mode_but_trains_the_rest() -> None:
    module = Classifier({"name": "small_cnn", "width": 4}, num_classes=3, bn_eval=True)
    module.train()
    assert module.training and module.head.training
    assert _bn_layers(module.encoder) and not any(bn.training for bn in _bn_layers(module.encoder))
    assert any(m.training for m in module.encoder.modules() if not isinstance(m, nn.modules.batchnorm._BatchNorm))
    module.eval()
    assert not any(m.training for m in module.modules())


def test_bn_eval_freezes_running_statistics_during_fit(tmp_path: Path) -> None:
    module, before, weight = _fit(True, tmp_path)
    after = [bn.running_mean for bn in _bn_layers(module.encoder)]
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert not torch.equal(weight, _bn_layers(module.encoder)[0].weight.detach())  # affine parameters still learn


def test_without_bn_eval_running_statistics_move(tmp_path: Path) -> None:
    module, before, _ = _fit(False, tmp_path)
    after = [bn.running_mean for bn in _bn_layers(module.encoder)]
    assert not all(torch.equal(a, b) for a, b in zip(before, after))


def test_fine_tune_trains_an_encoder_that_arrives_frozen_and_in_eval_mode(tmp_path: Path) -> None:
    """An encoder handed over frozen and in eval mode (as another stage may leave it) is really fine-tuned."""
    from fewlabel.plugins import create_encoder

    torch.manual_seed(0)
    encoder = create_encoder("small_cnn", width=4).requires_grad_(False).eval()
    dm = DigitsDataModule(labels_per_class=3, batch_size=16)
    dm.setup("fit")
    module = Classifier(encoder, num_classes=dm.num_classes, lr=0.01)
    assert all(p.requires_grad for p in module.encoder.parameters())
    before = [p.detach().clone() for p in module.encoder.parameters()]
    stats = [bn.running_mean.clone() for bn in _bn_layers(module.encoder)]
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=3, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
                        default_root_dir=tmp_path)
    trainer.fit(module, train_dataloaders=dm.labeled_dataloader())
    changed = [not torch.equal(b, p.detach()) for b, p in zip(before, module.encoder.parameters())]
    assert all(changed), f"{changed.count(False)} of {len(changed)} encoder tensors did not change"
    # it trained in train mode: BatchNorm running statistics moved
    assert not any(torch.equal(s, bn.running_mean) for s, bn in zip(stats, _bn_layers(module.encoder)))


def test_linear_evaluation_leaves_the_encoder_unchanged(tmp_path: Path) -> None:
    dm = DigitsDataModule(labels_per_class=3, batch_size=16)
    dm.setup("fit")
    torch.manual_seed(0)
    module = Classifier({"name": "small_cnn", "width": 4}, num_classes=dm.num_classes, freeze_encoder=True)
    state = {k: v.clone() for k, v in module.encoder.state_dict().items()}
    head = module.head.weight.detach().clone()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=3, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
                        default_root_dir=tmp_path)
    trainer.fit(module, train_dataloaders=dm.labeled_dataloader())
    assert all(torch.equal(v, module.encoder.state_dict()[k]) for k, v in state.items())  # BN stats too
    assert not torch.equal(head, module.head.weight.detach())


def test_bn_eval_also_holds_the_log_mel_running_normaliser() -> None:
    module = Classifier({"name": "audio_ntt", "channels": 4, "embed_dim": 16}, num_classes=3, bn_eval=True)
    module.train()
    assert module.encoder.frontend.norm.training is False
    assert module.head.training and module.encoder.fc.training


class _Modes(L.Callback):
    """(encoder modules in train mode, BatchNorm layers in train mode) at each training batch."""

    def __init__(self) -> None:
        self.modes: list[tuple[bool, bool]] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: object) -> None:
        bns = _bn_layers(pl_module.encoder)
        others = [m for m in pl_module.encoder.modules() if m not in bns]
        self.modes.append((all(m.training for m in others), any(bn.training for bn in bns)))


def test_lp_ft_with_bn_eval_and_ssf_hold_batchnorm_after_the_probe(tmp_path: Path) -> None:
    """The probe runs the whole encoder in eval mode; fine-tuning then trains it, BatchNorm held by bn_eval
    (LP-FT) or by SSF (whose backbone, statistics included, is frozen)."""
    dm = DigitsDataModule(labels_per_class=3, batch_size=16)
    dm.setup("fit")
    for kwargs in ({"lp_steps": 2, "bn_eval": True}, {"lp_steps": 2, "peft": "ssf"}, {"lp_steps": 2}):
        torch.manual_seed(0)
        module = Classifier({"name": "small_cnn", "width": 4}, num_classes=dm.num_classes, lr=0.01, **kwargs)
        stats = [bn.running_mean.clone() for bn in _bn_layers(module.encoder)]
        modes = _Modes()
        trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=4, logger=False, enable_progress_bar=False,
                            enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
                            default_root_dir=tmp_path, callbacks=[modes])
        trainer.fit(module, train_dataloaders=dm.labeled_dataloader())
        held = kwargs.get("bn_eval", False) or "peft" in kwargs
        assert modes.modes == [(False, False)] * 2 + [(True, not held)] * 2, kwargs
        moved = not all(torch.equal(s, bn.running_mean) for s, bn in zip(stats, _bn_layers(module.encoder)))
        assert moved is not held, kwargs
