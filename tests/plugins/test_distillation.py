"""SimCLRv2's distillation: the loss on hand-computed values, and KnowledgeDistillation's treatment of both networks."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from fewlabel.plugins.losses import DistillationLoss
from fewlabel.plugins.methods import Classifier, KnowledgeDistillation


def test_loss_hand_computed() -> None:
    # teacher softmax([0, ln 3]) = [1/4, 3/4]; student softmax([0, 0]) = [1/2, 1/2]: CE = ln 2
    teacher = torch.tensor([[0.0, math.log(3.0)]])
    assert DistillationLoss()(torch.zeros(1, 2), teacher).item() == pytest.approx(math.log(2.0), rel=1e-6)
    # student softmax([ln 3, 0]) = [3/4, 1/4]: CE = -(1/4 ln 3/4 + 3/4 ln 1/4)
    expected = -(0.25 * math.log(0.75) + 0.75 * math.log(0.25))
    assert DistillationLoss()(torch.tensor([[math.log(3.0), 0.0]]), teacher).item() == pytest.approx(expected, rel=1e-6)
    # T = 2 softens both: teacher softmax([0, ln 3 / 2]) = [1, sqrt 3] / (1 + sqrt 3); the loss is scaled by T^2
    p = torch.tensor([1.0, math.sqrt(3.0)]) / (1 + math.sqrt(3.0))
    student = torch.tensor([[2.0, 0.0]])  # / T = [1, 0]
    q = torch.softmax(torch.tensor([1.0, 0.0]), -1)
    expected = 4 * -(p * q.log()).sum().item()
    assert DistillationLoss(2.0)(student, teacher).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
def test_loss_is_kl_plus_teacher_entropy_averaged_over_the_batch(temperature: float) -> None:
    torch.manual_seed(0)
    student, teacher = torch.randn(6, 5), torch.randn(6, 5) * 3
    log_q = F.log_softmax(student / temperature, -1)
    p = F.softmax(teacher / temperature, -1)
    kl = F.kl_div(log_q, p, reduction="batchmean")
    entropy = -(p * p.log()).sum(-1).mean()
    loss = DistillationLoss(temperature)(student, teacher)
    assert loss.item() == pytest.approx(temperature**2 * (kl + entropy).item(), rel=1e-5)
    per_sample = [DistillationLoss(temperature)(student[i:i + 1], teacher[i:i + 1]) for i in range(6)]
    assert loss.item() == pytest.approx(torch.stack(per_sample).mean().item(), rel=1e-5)


def test_loss_gradient_is_zero_at_the_teacher_and_never_reaches_it() -> None:
    torch.manual_seed(0)
    teacher = torch.randn(4, 3, requires_grad=True)
    student = teacher.detach().clone().requires_grad_(True)
    DistillationLoss(2.0)(student, teacher).backward()
    assert torch.allclose(student.grad, torch.zeros_like(student.grad), atol=1e-7)
    assert teacher.grad is None
    # elsewhere the gradient is T * (q - p) / B per logit (the T^2 factor cancels the 1 / T of the softmax)
    student = torch.randn(4, 3, requires_grad=True)
    DistillationLoss(2.0)(student, teacher).backward()
    expected = 2.0 * (F.softmax(student.detach() / 2, -1) - F.softmax(teacher.detach() / 2, -1)) / 4
    assert torch.allclose(student.grad, expected, atol=1e-6)


def test_loss_runs_in_float32_and_rejects_bad_input() -> None:
    logits = torch.randn(3, 4).to(torch.bfloat16)
    assert DistillationLoss()(logits, logits.clone()).dtype == torch.float32
    with pytest.raises(ValueError, match="temperature"):
        DistillationLoss(0.0)
    with pytest.raises(ValueError, match="same shape"):
        DistillationLoss()(torch.zeros(2, 3), torch.zeros(2, 4))


def _pool(n: int = 64, labeled: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(1)
    inputs = torch.rand(n, 1, 8, 8, generator=g)
    labels = [i % 3 if i < labeled else -1 for i in range(n)]
    samples = [{"input": inputs[i], "label": labels[i], "index": i} for i in range(n)]
    return DataLoader(samples, batch_size=16, shuffle=True, generator=g,
                      collate_fn=lambda b: {k: torch.stack([torch.as_tensor(s[k]) for s in b]) for k in b[0]})


class _Flags(L.Callback):
    """Records the frozen copy's mode and gradient flags at every training step."""

    def __init__(self) -> None:
        self.seen: list[tuple[bool, bool]] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        teacher = pl_module.teacher
        self.seen.append((any(m.training for m in teacher.modules()), any(p.requires_grad for p in teacher.parameters())))


def test_student_learns_and_the_teacher_is_never_changed(tmp_path: Any) -> None:
    L.seed_everything(0, verbose=False)
    teacher = Classifier({"name": "small_cnn", "width": 8, "in_chans": 1}, num_classes=3)
    teacher.train()  # the caller's module: its mode and flags must survive
    teacher.head.requires_grad_(False)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    flags = {n: p.requires_grad for n, p in teacher.named_parameters()}
    modes = {n: m.training for n, m in teacher.named_modules()}

    module = KnowledgeDistillation(teacher, {"name": "small_cnn", "width": 4, "in_chans": 1}, num_classes=3, lr=0.1)
    assert module.teacher is not teacher and not module.teacher.training
    assert "teacher" not in module.hparams and module.hparams.temperature == 1.0
    assert module.student_parameters() == sum(p.numel() for p in [*module.encoder.parameters(),
                                                                   *module.head.parameters()])
    copy_before = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in module.encoder.state_dict().items()}
    with torch.no_grad():
        batch = next(iter(_pool()))
        agreement_before = (module(batch["input"]).argmax(1) == module.teacher(batch["input"]).argmax(1)).float().mean()
    recorder = _Flags()
    trainer = L.Trainer(max_epochs=15, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[recorder], default_root_dir=tmp_path)
    trainer.fit(module, _pool())

    for name, value in teacher.state_dict().items():  # the caller's teacher: weights, flags and modes as they were
        assert torch.equal(value, before[name]), name
    assert {n: p.requires_grad for n, p in teacher.named_parameters()} == flags
    assert {n: m.training for n, m in teacher.named_modules()} == modes
    for name, value in module.teacher.state_dict().items():  # the frozen copy: BatchNorm statistics included
        assert torch.equal(value, copy_before[name]), name
    assert recorder.seen and all(mode == (False, False) for mode in recorder.seen)
    changed = [n for n, v in module.encoder.state_dict().items() if not torch.equal(v, student_before[n])]
    assert len(changed) == len(student_before)  # every student tensor trained
    with torch.no_grad():
        module.eval()
        agreement = (module(batch["input"]).argmax(1) == module.teacher(batch["input"]).argmax(1)).float().mean()
    assert agreement > max(agreement_before, 0.8)
    assert 0.0 <= trainer.callback_metrics["train/teacher_agreement"] <= 1.0


def test_several_loaders_are_one_batch_and_label_weight_adds_the_labeled_cross_entropy(tmp_path: Any) -> None:
    L.seed_everything(0, verbose=False)
    teacher = Classifier({"name": "small_cnn", "width": 4, "in_chans": 1}, num_classes=3)
    module = KnowledgeDistillation(teacher, {"name": "small_cnn", "width": 4, "in_chans": 1}, num_classes=3,
                                   label_weight=0.5)
    trainer = L.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, log_every_n_steps=1, default_root_dir=tmp_path)
    trainer.fit(module, [_pool(), _pool(n=6, labeled=6)])
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train/ce"]) and metrics["train/ce"] > 0
    assert metrics["train/loss"].item() == pytest.approx(metrics["train/distill"].item()
                                                         + 0.5 * metrics["train/ce"].item(), rel=1e-5)
    # a batch without labeled samples adds 0, not NaN
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, log_every_n_steps=1, default_root_dir=tmp_path)
    trainer.fit(module, _pool())
    assert trainer.callback_metrics["train/ce"].item() == 0.0


def test_constructor_fails_fast() -> None:
    teacher = Classifier({"name": "small_cnn", "width": 4}, num_classes=3)
    with pytest.raises(ValueError, match="temperature"):
        KnowledgeDistillation(teacher, {"name": "small_cnn", "width": 4}, num_classes=3, temperature=0.0)
    with pytest.raises(ValueError, match="label_weight"):
        KnowledgeDistillation(teacher, {"name": "small_cnn", "width": 4}, num_classes=3, label_weight=-1.0)
    with pytest.raises(TypeError, match="teacher must be an nn.Module"):
        KnowledgeDistillation("teacher", {"name": "small_cnn", "width": 4}, num_classes=3)  # type: ignore[arg-type]
    # a student with a log-mel front end makes spectrogram views: a plain teacher cannot take them
    with pytest.raises(ValueError, match="front end"):
        KnowledgeDistillation(nn.Linear(4, 3), {"name": "audio_ntt", "channels": 4, "embed_dim": 8}, num_classes=3)


def test_the_teacher_can_come_from_its_checkpoint(tmp_path: Any) -> None:
    """teacher_checkpoint loads the whole trained teacher (encoder and head) into the frozen copy, exactly."""
    trained = Classifier({"name": "small_cnn", "width": 4}, num_classes=3)
    torch.save({"state_dict": trained.state_dict()}, tmp_path / "teacher.ckpt")
    fresh = Classifier({"name": "small_cnn", "width": 4}, num_classes=3)
    student = KnowledgeDistillation(fresh, {"name": "small_cnn", "width": 4}, num_classes=3,
                                    teacher_checkpoint=str(tmp_path / "teacher.ckpt"))
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in student.teacher.state_dict().items())
    assert not torch.equal(fresh.head.weight, trained.head.weight)  # the module passed in is left as it was
    other = Classifier({"name": "small_cnn", "width": 8}, num_classes=3)
    with pytest.raises(ValueError, match=r"do not fit the teacher Classifier: size mismatch for encoder"):
        KnowledgeDistillation(other, {"name": "small_cnn", "width": 4}, num_classes=3,
                              teacher_checkpoint=str(tmp_path / "teacher.ckpt"))
    with pytest.raises(FileNotFoundError, match="missing.ckpt does not exist"):
        KnowledgeDistillation(fresh, {"name": "small_cnn", "width": 4}, num_classes=3,
                              teacher_checkpoint=str(tmp_path / "missing.ckpt"))
