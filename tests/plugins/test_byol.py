"""BYOL and BYOL-A: the loss, the target network's treatment, and short real fits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fewlabel.callbacks import EMATeacher
from fewlabel.datamodules import DigitsDataModule
from fewlabel.plugins import BatchImageAugment, ByolaAugment
from fewlabel.plugins.methods import BYOL, BYOLA, METHODS

ENCODER = {"name": "small_cnn", "width": 4}


@pytest.fixture(scope="module")
def digits() -> DigitsDataModule:
    dm = DigitsDataModule(labels_per_class=5, batch_size=64, train_split="unlabeled")
    dm.setup("fit")
    return dm


def _trainer(tmp_path: Path, **kwargs: Any) -> L.Trainer:
    defaults: dict[str, Any] = dict(accelerator="cpu", devices=1, max_epochs=1, logger=False,
                                    enable_progress_bar=False, enable_model_summary=False,
                                    enable_checkpointing=False, limit_val_batches=0, default_root_dir=tmp_path)
    defaults.update(kwargs)
    return L.Trainer(**defaults)


def _byol(**kwargs: Any) -> BYOL:
    return BYOL(ENCODER, augment=BatchImageAugment(), hidden_dim=32, out_dim=16, **kwargs)


def _params(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def test_registered_and_built_as_documented() -> None:
    assert METHODS.get("byol") is BYOL and METHODS.get("byola") is BYOLA
    module = METHODS.create("byol", encoder=ENCODER)
    assert module.hparams.hidden_dim == 512 and module.hparams.out_dim == 128
    assert module.optimizer_settings == {"name": "sgd", "lr": 0.05, "weight_decay": 1e-4, "momentum": 0.9,
                                         "warmup_fraction": 0.1}
    assert [m.out_features for m in module.projector if isinstance(m, nn.Linear)] == [512, 128]
    assert [m.out_features for m in module.predictor if isinstance(m, nn.Linear)] == [512, 128]
    # the target starts as an exact, frozen copy of the online encoder + projector, and is checkpointed
    assert module.momentum_pairs() == [(module.encoder, module.target_encoder),
                                       (module.projector, module.target_projector)]
    for online, target in module.momentum_pairs():
        assert online is not target
        for (name, a), b in zip(online.state_dict().items(), target.state_dict().values()):
            assert torch.equal(a, b), name
        assert not any(p.requires_grad for p in target.parameters())
    state = module.state_dict()
    assert any(k.startswith("target_encoder.") for k in state) and any(k.startswith("target_projector.") for k in state)
    # the optimiser trains the online network only
    trained = {id(p) for p in module.parameter_groups()}
    online = [*module.encoder.parameters(), *module.projector.parameters(), *module.predictor.parameters()]
    assert trained == {id(p) for p in online}
    with pytest.raises(ValueError, match="hidden_dim and out_dim"):
        BYOL(ENCODER, out_dim=0)


def test_loss_formula_and_paper_scale() -> None:
    torch.manual_seed(0)
    p1, p2, z1, z2 = torch.randn(4, 6, 8).unbind(0)
    module = _byol()
    loss = module.loss((p1, p2), (z1, z2))
    expected = -F.cosine_similarity(p1, z2).mean() - F.cosine_similarity(p2, z1).mean()
    assert torch.allclose(loss, expected, atol=1e-6)
    # the paper's symmetrised ||p/|p| - z/|z|||^2 = 2 - 2 cos, summed over both directions, is 4 + 2 * loss
    def regression(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return (F.normalize(p, dim=1) - F.normalize(z, dim=1)).pow(2).sum(dim=1).mean()

    assert torch.allclose(regression(p1, z2) + regression(p2, z1), 4 + 2 * loss, atol=1e-5)
    assert torch.allclose(module.loss((p1, p2), (3 * p2, 0.5 * p1)), torch.tensor(-2.0))
    assert torch.allclose(module.loss((p1, p2), (-p2, -p1)), torch.tensor(2.0))


def test_identical_views_with_identity_predictor_give_minus_two(digits: DigitsDataModule) -> None:
    """Online and target start equal; with an identity predictor and two identical views (no augment)
    the prediction equals the target projection exactly, in train mode (batch statistics) too."""
    module = BYOL(ENCODER, hidden_dim=32, out_dim=16)
    module.predictor = nn.Identity()
    batch = {k: v[:32] for k, v in next(iter(digits.unlabeled_dataloader(train=False))).items()}
    v1, v2 = module.views(batch, 2)
    assert torch.equal(v1, v2)
    for training in (True, False):
        module.train(training)
        predictions = (module.predict_online(v1), module.predict_online(v2))
        targets = (module.project_target(v1), module.project_target(v2))
        assert not targets[0].requires_grad and predictions[0].requires_grad
        assert torch.allclose(module.loss(predictions, targets), torch.tensor(-2.0), atol=1e-6)


class _Recorder(L.Callback):
    """Snapshots around every optimizer step: place one before EMATeacher and one after it."""

    def __init__(self) -> None:
        self.target: list[dict[str, torch.Tensor]] = []
        self.online: list[dict[str, torch.Tensor]] = []
        self.modes: list[tuple[bool, bool]] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: object) -> None:
        self.modes.append((pl_module.target_encoder.training, pl_module.target_projector.training))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: object) -> None:
        self.target.append(_params(pl_module.target_encoder))
        self.online.append(_params(pl_module.encoder))


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_byol_trains_and_target_moves_only_by_ema(digits: DigitsDataModule, tmp_path: Path, precision: str) -> None:
    torch.manual_seed(0)
    module = _byol()
    start_online, start_target = _params(module.encoder), _params(module.target_encoder)
    before, after = _Recorder(), _Recorder()
    trainer = _trainer(tmp_path, max_steps=3, precision=precision,
                       callbacks=[before, EMATeacher(base_momentum=0.9, final_momentum=0.9), after])
    trainer.fit(module, datamodule=digits)
    assert trainer.global_step == 3
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert before.modes == [(True, True)] * 3  # the target runs in train mode, as in BYOL's reference
    assert any(not torch.equal(start_online[k], v) for k, v in module.encoder.named_parameters())
    previous = start_target
    for step in range(3):
        # nothing but the EMA touched the target: before the callback it is what the last EMA left
        for name, value in before.target[step].items():
            assert torch.equal(value, previous[name]), (step, name)
            expected = 0.9 * previous[name] + 0.1 * after.online[step][name]
            assert torch.allclose(after.target[step][name], expected, atol=1e-6, rtol=0), (step, name)
        previous = after.target[step]
    assert any(not torch.equal(start_target[k], v) for k, v in previous.items())
    for online, target in module.momentum_pairs():
        assert all(not p.requires_grad and p.grad is None for p in target.parameters())


def test_missing_ema_teacher_is_named(digits: DigitsDataModule, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"add fewlabel\.callbacks\.EMATeacher\(\) to the Trainer's callbacks"):
        _trainer(tmp_path, max_steps=1).fit(_byol(), datamodule=digits)


def test_byola_defaults_and_one_step_on_waveforms(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = BYOLA({"name": "audio_ntt", "channels": 4, "embed_dim": 32, "n_mels": 16},
                   hidden_dim=16, out_dim=8)
    assert isinstance(module.augment, ByolaAugment)
    assert module.optimizer_settings["name"] == "adam" and module.optimizer_settings["lr"] == 3e-4
    assert module.optimizer_settings["weight_decay"] == 0.0
    assert METHODS.create("byola", encoder={"name": "audio_ntt", "channels": 4, "embed_dim": 32,
                                            "n_mels": 16}).augment is not None
    waves = torch.randn(8, 16000) * 0.1
    batch = {"input": waves, "label": torch.full((8,), -1), "index": torch.arange(8)}
    loader = torch.utils.data.DataLoader([{k: v[i] for k, v in batch.items()} for i in range(8)], batch_size=4)
    start = _params(module.encoder)
    trainer = _trainer(tmp_path, max_steps=1, callbacks=[EMATeacher(base_momentum=0.99, final_momentum=0.99)])
    trainer.fit(module, train_dataloaders=loader)
    assert trainer.global_step == 1 and torch.isfinite(trainer.callback_metrics["train/loss"])
    assert any(not torch.equal(start[k], v) for k, v in module.encoder.named_parameters())
