"""Classifier(lp_steps=...): LP-FT (arXiv 2202.10054), a linear probe then fine-tuning from its head."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from fewlabel.callbacks import RNGStateKeeper
from fewlabel.datamodules import DigitsDataModule
from fewlabel.plugins import Classifier, create_augment

ENCODER = {"name": "small_cnn", "width": 4}


@pytest.fixture(scope="module")
def digits() -> DigitsDataModule:
    dm = DigitsDataModule(labels_per_class=3, batch_size=16, val_fraction=0.0)  # 30 labels: 2 steps per epoch
    dm.setup("fit")
    return dm


def _module(**kwargs: Any) -> Classifier:
    augment = create_augment("image", rotation=10.0, translate=0.1, noise=0.02)  # random: the RNG must line up
    return Classifier(ENCODER, num_classes=10, augment=augment, lr=0.01, **kwargs)


def _trainer(root: Path, callbacks: list[L.Callback] | None = None, **kwargs: Any) -> L.Trainer:
    settings: dict[str, Any] = dict(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                                    enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
                                    default_root_dir=root)
    settings.update(kwargs)
    return L.Trainer(callbacks=callbacks or [], **settings)


class _Snapshot(L.Callback):
    """The module's state when the optimizer step ``step`` is about to run, and the lr of each step."""

    def __init__(self, step: int) -> None:
        self.step, self.state, self.lrs, self.encoder_training = step, None, [], []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        self.lrs.append([group["lr"] for group in trainer.optimizers[0].param_groups])
        if trainer.global_step == self.step:
            self.state = {k: v.clone() for k, v in pl_module.state_dict().items()}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.encoder_training.append(pl_module.encoder.training)


def _encoder(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith("encoder.")}


def test_probe_phase_keeps_the_encoder_and_trains_the_head_of_an_independent_probe(
        digits: DigitsDataModule, tmp_path: Path) -> None:
    L.seed_everything(0, verbose=False)
    lpft = _module(lp_steps=4)
    initial = {k: v.clone() for k, v in lpft.state_dict().items()}
    snapshot = _Snapshot(step=4)
    _trainer(tmp_path / "lpft", [snapshot], max_steps=8).fit(lpft, train_dataloaders=digits.labeled_dataloader())

    L.seed_everything(0, verbose=False)
    probe = _module(freeze_encoder=True)
    _trainer(tmp_path / "probe", max_steps=4).fit(probe, train_dataloaders=digits.labeled_dataloader())

    after_probe = snapshot.state
    # the linear probe left every encoder tensor, BatchNorm statistics included, bit-identical ...
    assert all(torch.equal(v, after_probe[k]) for k, v in _encoder(initial).items())
    # ... and trained the head of an independently fitted linear probe (freeze_encoder=True, 4 steps)
    assert not torch.equal(initial["head.weight"], after_probe["head.weight"])
    assert torch.equal(after_probe["head.weight"], probe.head.weight.detach())
    assert torch.equal(after_probe["head.bias"], probe.head.bias.detach())
    # the encoder was in eval mode while probed and in train mode while fine-tuned
    assert snapshot.encoder_training == [False] * 4 + [True] * 4
    # fine-tuning then changed every encoder parameter and the BatchNorm statistics
    final = lpft.state_dict()
    changed = [not torch.equal(final[k], after_probe[k]) for k, _ in lpft.encoder.named_parameters(prefix="encoder")]
    assert all(changed), f"{changed.count(False)} encoder parameters did not change while fine-tuning"
    assert not torch.equal(final["encoder.blocks.0.1.running_mean"], after_probe["encoder.blocks.0.1.running_mean"])


def test_schedule_restarts_when_fine_tuning_begins(digits: DigitsDataModule, tmp_path: Path) -> None:
    L.seed_everything(0, verbose=False)
    module = _module(lp_steps=0.25, encoder_lr_scale=0.1)  # a fraction: 2 of the 8 steps
    snapshot = _Snapshot(step=2)
    _trainer(tmp_path, [snapshot], max_steps=8).fit(module, train_dataloaders=digits.labeled_dataloader())
    head = [lrs[0] for lrs in snapshot.lrs]
    # cosine over the 2 probe steps, then over the 6 fine-tuning steps, each from the full lr
    assert head == pytest.approx([0.01, 0.005, 0.01, 0.01 * 0.9330127, 0.0075, 0.005, 0.0025, 0.01 * 0.0669873])
    assert [lrs[1] for lrs in snapshot.lrs] == pytest.approx([0.1 * lr for lr in head])
    assert snapshot.encoder_training == [False] * 2 + [True] * 6


class _Crash(L.Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


@pytest.mark.parametrize("crash_epoch", [1, 3], ids=["mid-probe", "mid-fine-tune"])
def test_resume_matches_an_uninterrupted_run(digits: DigitsDataModule, tmp_path: Path, crash_epoch: int) -> None:
    """4 epochs of 2 steps, the probe for 3 of them; interrupted after step 2 (probing) or 6 (fine-tuning)."""

    def run(root: Path, ckpt: str | None = None, crash: int | None = None) -> Classifier:
        if ckpt is None:
            L.seed_everything(0, verbose=False)
        module = _module(lp_steps=3, warmup_fraction=0.2)
        checkpoint = ModelCheckpoint(dirpath=root, filename="last", save_top_k=1, enable_version_counter=False)
        callbacks: list[L.Callback] = [RNGStateKeeper(), checkpoint] + ([_Crash(crash)] if crash is not None else [])
        _trainer(root, callbacks, max_epochs=4, enable_checkpointing=True).fit(
            module, train_dataloaders=digits.labeled_dataloader(), ckpt_path=ckpt)
        return module

    full = run(tmp_path / "full")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tmp_path / "part", crash=crash_epoch)
    resumed = run(tmp_path / "part", ckpt=str(tmp_path / "part" / "last.ckpt"))
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_arguments_are_checked(digits: DigitsDataModule, tmp_path: Path) -> None:
    for bad in (-1, 1.0, 0.0, 1.5, True, "half"):
        with pytest.raises(ValueError, match="lp_steps"):
            Classifier(ENCODER, num_classes=3, lp_steps=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="freeze_encoder"):
        Classifier(ENCODER, num_classes=3, freeze_encoder=True, lp_steps=5)
    module = Classifier(ENCODER, num_classes=10, lp_steps=8)
    with pytest.raises(ValueError, match="leaves no fine-tuning: the fit has 8 optimizer steps"):
        _trainer(tmp_path, max_steps=8).fit(module, train_dataloaders=digits.labeled_dataloader())


def test_default_is_plain_fine_tuning() -> None:
    module = Classifier(ENCODER, num_classes=3)
    assert module.hparams.lp_steps == 0 and module.hparams.peft is None
    assert not module.in_linear_probe()


def test_the_recipe_config_can_select_lp_ft_and_ssf() -> None:
    from fewlabel.plugins.recipes.validate import RecipeError, check_arguments

    given = ("encoder", "num_classes")  # the recipe's own
    check_arguments("finetune.module", {"lp_steps": 0.5, "peft": "ssf", "encoder_lr_scale": 0.1}, Classifier, skip=given)
    check_arguments("finetune.module", {"lp_steps": 20}, Classifier, skip=given)
    with pytest.raises(RecipeError, match="did you mean 'lp_steps'"):
        check_arguments("finetune.module", {"lp_step": 20}, Classifier, skip=given)
    with pytest.raises(RecipeError, match="lp_steps must be"):
        check_arguments("finetune.module", {"lp_steps": "half"}, Classifier, skip=given)
    with pytest.raises(RecipeError, match="finetune.module needs encoder, num_classes"):
        check_arguments("finetune.module", {}, Classifier)
