"""DeepClusterV2, SelfDistillation and Classifier in real Lightning Trainers on the digits data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint

import fewlabel.plugins.methods.deepcluster_v2 as deepcluster_v2_module

from fewlabel.callbacks import RNGStateKeeper
from fewlabel.datamodules import DigitsDataModule
from fewlabel.plugins import BatchImageAugment, Classifier, DeepClusterV2, SelfDistillation
from fewlabel.plugins.losses.deepcluster import deepcluster_v2_loss


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
    written = module.memory_written
    assert written.float().mean() > 0.95  # only samples the shuffled drop_last loader never yielded are missing
    norms = module.memory.norm(dim=-1)
    assert bool((norms[:, written] > 0.99).all()) and bool((norms[:, ~written] == 0).all())
    assert not torch.equal(conv, module.encoder.blocks[0][0].weight)
    assert not torch.equal(bn_mean, module.encoder.blocks[0][1].running_mean)
    for h, k in enumerate([10, 20]):
        clustered = module.assignments[h] >= 0  # rows written before the last clustering
        assert clustered.float().mean() > 0.95
        assert int(module.assignments[h].max()) < k and bool(written[clustered].all())
        norms = getattr(module, f"prototypes_{h}").norm(dim=1)
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


class _Stop(Exception):
    pass


class _StopBeforeFirstStep(L.Callback):
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: object) -> None:
        raise _Stop


@pytest.mark.parametrize("train_mode", [True, False])
def test_deepcluster_v2_init_memory_mode(digits: DigitsDataModule, tmp_path: Path, train_mode: bool) -> None:
    """The first bank is filled in train mode as in SwAV (BatchNorm running statistics move), or in eval
    mode; either way no weight changes and the module's mode is restored."""
    digits.train_split = "unlabeled"
    module = DeepClusterV2({"name": "small_cnn", "width": 4}, num_samples=digits.num_unlabeled,
                           augment=BatchImageAugment(), num_prototypes=[10, 20], hidden_dim=32, feat_dim=16,
                           init_memory_train_mode=train_mode)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    modes: list[bool] = []
    views = DeepClusterV2.views

    def spy(self: DeepClusterV2, *args: Any) -> list[torch.Tensor]:
        modes.append(self.encoder.training)
        return views(self, *args)

    with pytest.MonkeyPatch.context() as mp, pytest.raises(_Stop):
        mp.setattr(DeepClusterV2, "views", spy)
        _trainer(tmp_path, 1, callbacks=[_StopBeforeFirstStep()]).fit(module, datamodule=digits)
    assert modes and set(modes) == {train_mode}
    assert module.training
    assert bool(module.memory_ready) and module.memory.abs().sum() > 0
    after = module.state_dict()
    for name, value in module.named_parameters():
        assert torch.equal(before[name], value), name
    moved = [name for name in before if "running" in name and not torch.equal(before[name], after[name])]
    assert bool(moved) == train_mode


def test_deepcluster_v2_unwritten_rows_are_left_out(digits: DigitsDataModule, tmp_path: Path) -> None:
    """The drop_last train loader leaves 1131 - 8 * 128 = 107 rows unwritten by init_memory: k-means never
    sees them, their assignment is -1 and the loss ignores them."""
    digits.train_split = "unlabeled"
    module = _dcv2(digits)
    seen_rows: list[int] = []
    kmeans = deepcluster_v2_module.kmeans

    def spy(x: Any, k: int, **kwargs: Any) -> Any:
        seen_rows.append(len(x))
        return kmeans(x, k, **kwargs)

    with pytest.MonkeyPatch.context() as mp, pytest.raises(_Stop):
        mp.setattr(deepcluster_v2_module, "kmeans", spy)
        _trainer(tmp_path, 1, callbacks=[_StopBeforeFirstStep()]).fit(module, datamodule=digits)
    written = module.memory_written
    assert int(written.sum()) == 1024 == digits.num_unlabeled - 107
    assert seen_rows == [1024, 1024]
    assert bool((module.memory[:, ~written] == 0).all())
    assert bool((module.assignments[:, ~written] == -1).all()) and bool((module.assignments[:, written] >= 0).all())
    state = module.state_dict()
    assert torch.equal(state["memory_written"], written)  # persistent: a resumed run keeps it

    z = F.normalize(torch.randn(4, 16), dim=1)
    scores = [module.prototype_scores(z, 0)]
    target = torch.tensor([3, -1, 5, -1])
    expected = F.cross_entropy(scores[0][[0, 2]] / 0.1, target[[0, 2]])
    assert torch.allclose(deepcluster_v2_loss(scores, [target]), expected)
    nothing = deepcluster_v2_loss([scores[0].requires_grad_()], [torch.full((4,), -1)])
    assert nothing.item() == 0.0 and nothing.requires_grad  # a batch of unwritten rows: 0, not NaN


def test_deepcluster_v2_too_few_written_rows_is_named(digits: DigitsDataModule, tmp_path: Path) -> None:
    digits.train_split = "unlabeled"
    module = _dcv2(digits)
    module.memory_ready.fill_(True)  # pretend the bank was filled, with only 5 rows written
    module.memory_written[:5] = True
    with pytest.raises(RuntimeError, match="only 5 of 1131 memory-bank rows were written"):
        _trainer(tmp_path, 1).fit(module, datamodule=digits)


def test_deepcluster_v2_prototype_scores_are_float32_under_bf16_autocast() -> None:
    module = DeepClusterV2({"name": "small_cnn", "width": 4}, num_samples=50, num_prototypes=[10], feat_dim=16)
    torch.manual_seed(0)
    z = F.normalize(torch.randn(32, 16), dim=1)
    expected = z @ module.prototypes_0.T
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (z @ module.prototypes_0.T).dtype == torch.bfloat16  # what a bare matmul would give
        scores = module.prototype_scores(z, 0)
    assert scores.dtype == torch.float32
    assert torch.equal(scores, expected)


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
    with pytest.raises(ValueError, match=r"max_train_rows must be an int >= 30 .* or None"):
        DeepClusterV2({"name": "small_cnn", "width": 4}, num_samples=50, max_train_rows=20)
    with pytest.raises(ValueError, match="init_memory_train_mode must be True or False"):
        DeepClusterV2({"name": "small_cnn", "width": 4}, num_samples=50,
                      init_memory_train_mode=1)  # type: ignore[arg-type]
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


def test_self_distillation_leaves_unlabeled_samples_out_of_the_loss() -> None:
    torch.manual_seed(0)
    module = SelfDistillation({"name": "small_cnn", "width": 4}, num_classes=3, num_samples=6)
    module.set_pseudo_labels(torch.tensor([0, -1, 2, 1, -1, 0]))
    batch = {"input": torch.randn(6, 1, 8, 8), "index": torch.arange(6), "label": torch.full((6,), -1)}
    module.eval()  # deterministic forward: the same exits for the whole batch and for the comparison
    final, aux = module.forward_exits(module.views(batch, 1)[0])
    kept = torch.tensor([0, 2, 3, 5])
    expected, _ = module.loss(final[kept], [a[kept] for a in aux], torch.tensor([0, 2, 1, 0]))
    torch.testing.assert_close(module.training_step(batch, 0), expected)
    module.set_pseudo_labels(torch.full((6,), -1))  # a batch with no label left: zero loss, gradients reach the heads
    loss = module.training_step(batch, 0)
    loss.backward()
    assert loss.item() == 0.0 and module.head.weight.grad is not None
    assert torch.count_nonzero(module.head.weight.grad) == 0


def test_self_distillation_aux_heads_follow_the_unfused_code() -> None:
    # LAPE src/upstream/unfused/upstream_expert.py (Project): 2 x [Linear no bias, BN, ReLU] with
    # hidden width = number of classes, then Linear -> classes without bias; AudioNTT exits 2048/1024/512.
    module = SelfDistillation({"name": "audio_ntt", "channels": 4, "embed_dim": 16}, num_classes=5)
    assert [head[0].in_features for head in module.aux_heads] == [4 * 32, 4 * 16, 4 * 8]
    for head in module.aux_heads:
        linears = [m for m in head if isinstance(m, torch.nn.Linear)]
        assert [(m.out_features, m.bias) for m in linears] == [(5, None)] * 3
        assert [type(m).__name__ for m in head] == ["Linear", "BatchNorm1d", "ReLU"] * 2 + ["Linear"]
    assert module.head.bias is not None  # the final exit keeps its bias (Classifier in the reference)
    assert module.loss.detach_teacher is False
    final, aux = module.forward_exits(torch.randn(3, 1, 64, 20))
    assert final.shape == (3, 5) and [a.shape for a in aux] == [(3, 5)] * 3


def test_self_distillation_aux_options() -> None:
    module = SelfDistillation({"name": "small_cnn", "width": 4}, num_classes=10, aux_hidden_dim=16, detach_teacher=True)
    assert [head[0].out_features for head in module.aux_heads] == [16, 16]
    assert module.loss.detach_teacher is True
    with pytest.raises(ValueError, match="aux_hidden_dim"):
        SelfDistillation({"name": "small_cnn", "width": 4}, num_classes=10, aux_hidden_dim=0)


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
