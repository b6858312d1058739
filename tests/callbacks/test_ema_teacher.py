"""EMATeacher, ema_update and momentum_schedule: hand-computed values, gradient accumulation, resume and DDP."""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor, nn
from torch.utils.data import DataLoader

import fewlabel.callbacks.ema_teacher as ema_teacher_module
from fewlabel.callbacks import EMATeacher, RNGStateKeeper
from fewlabel.datamodules import DigitsDataModule
from fewlabel.plugins import BatchImageAugment
from fewlabel.plugins.methods import BYOL
from fewlabel.plugins.optim import ema_update, momentum_schedule

DDP_SCRIPT = Path(__file__).resolve().parents[1] / "distributed" / "ema_ddp_job.py"


def _pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    teacher = copy.deepcopy(student).requires_grad_(False)
    with torch.no_grad():
        for p in teacher.parameters():
            p.normal_()
    student(torch.randn(5, 3))  # moves the student's running statistics and num_batches_tracked
    return student, teacher


def test_ema_update_matches_formula_and_copies_buffers_only_when_asked() -> None:
    student, teacher = _pair()
    old = [p.clone() for p in teacher.parameters()]
    old_buffers = [b.clone() for b in teacher.buffers()]
    ema_update(student, teacher, 0.75)
    for s, t, o in zip(student.parameters(), teacher.parameters(), old):
        assert torch.allclose(t, 0.75 * o + 0.25 * s, atol=1e-7)
        assert not t.requires_grad
    assert all(torch.equal(b, o) for b, o in zip(teacher.buffers(), old_buffers))  # the teacher's own statistics
    ema_update(student, teacher, 0.75, copy_buffers=True)
    for s, t in zip(student.buffers(), teacher.buffers()):
        assert torch.equal(s, t)
    assert int(teacher[1].num_batches_tracked) == 1

    kept = [p.clone() for p in teacher.parameters()]
    ema_update(student, teacher, 1.0)
    assert all(torch.equal(p, k) for p, k in zip(teacher.parameters(), kept))
    ema_update(student, teacher, 0.0)
    assert all(torch.equal(p, s) for p, s in zip(teacher.parameters(), student.parameters()))


def test_ema_update_rejects_bad_momentum_and_structure() -> None:
    student, teacher = _pair()
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\]"):
        ema_update(student, teacher, 1.5)
    with pytest.raises(ValueError, match="differ in structure"):
        ema_update(student, nn.Linear(3, 2), 0.5)


def test_momentum_schedule_start_middle_end() -> None:
    assert momentum_schedule(0, 100, 0.996) == pytest.approx(0.996)
    assert momentum_schedule(50, 100, 0.996) == pytest.approx(0.998)
    assert momentum_schedule(100, 100, 0.996) == pytest.approx(1.0)
    assert momentum_schedule(250, 100, 0.996) == pytest.approx(1.0)  # past the end: final
    assert momentum_schedule(25, 100, 0.9, 0.99) == pytest.approx(0.99 - 0.09 * (math.cos(math.pi / 4) + 1) / 2)
    assert momentum_schedule(7, 10, 0.9, 0.9) == 0.9
    with pytest.raises(ValueError, match="total_steps"):
        momentum_schedule(0, 0, 0.9)


@pytest.mark.parametrize(("kwargs", "match"), [({"base_momentum": 1.2}, "base_momentum"),
                                               ({"final_momentum": -0.1}, "final_momentum"),
                                               ({"total_steps": 0}, "total_steps")])
def test_constructor_fails_fast(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        EMATeacher(**kwargs)


class Boring(L.LightningModule):
    """A linear student with a BatchNorm, its momentum copy, and 8 batches of random inputs."""

    def __init__(self, momentum_pairs: bool = True, trainable_teacher: bool = False) -> None:
        super().__init__()
        self.student = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
        self.teacher = copy.deepcopy(self.student).requires_grad_(trainable_teacher)
        if momentum_pairs:
            self.momentum_pairs = lambda: [(self.student, self.teacher)]

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        return self.student(batch[0]).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.student.parameters(), lr=0.1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(torch.utils.data.TensorDataset(torch.randn(32, 4)), batch_size=4)


def _trainer(tmp_path: Path, **kwargs: Any) -> L.Trainer:
    defaults: dict[str, Any] = dict(accelerator="cpu", devices=1, max_epochs=1, logger=False,
                                    enable_progress_bar=False, enable_model_summary=False,
                                    enable_checkpointing=False, limit_val_batches=0, default_root_dir=tmp_path)
    defaults.update(kwargs)
    return L.Trainer(**defaults)


def test_one_update_per_optimizer_step_under_accumulation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    momenta: list[float] = []

    def spy(student: nn.Module, teacher: nn.Module, momentum: float) -> None:
        momenta.append(momentum)
        ema_update(student, teacher, momentum)

    monkeypatch.setattr(ema_teacher_module, "ema_update", spy)
    callback = EMATeacher(base_momentum=0.9, final_momentum=1.0)
    trainer = _trainer(tmp_path, accumulate_grad_batches=2, callbacks=[callback])
    trainer.fit(Boring())
    # 8 batches, 2 per optimizer step: 4 steps, 4 updates, the schedule runs over the 4 optimizer steps
    assert trainer.global_step == 4 == trainer.estimated_stepping_batches
    assert momenta == pytest.approx([momentum_schedule(k, 4, 0.9, 1.0) for k in range(4)])
    assert callback.last_step == 4 and callback.momentum == pytest.approx(momenta[-1])

    momenta.clear()
    _trainer(tmp_path, callbacks=[EMATeacher(base_momentum=0.9, total_steps=16)]).fit(Boring())
    assert momenta == pytest.approx([momentum_schedule(k, 16, 0.9, 1.0) for k in range(8)])


def test_module_without_momentum_pairs_is_named(tmp_path: Path) -> None:
    with pytest.raises(AttributeError, match=r"EMATeacher needs Boring to have momentum_pairs\(\)"):
        _trainer(tmp_path, callbacks=[EMATeacher()]).fit(Boring(momentum_pairs=False))


def test_trainable_teacher_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="teachers with trainable parameters .*requires_grad=False"):
        _trainer(tmp_path, callbacks=[EMATeacher()]).fit(Boring(trainable_teacher=True))


class _Crash(L.Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


def test_stop_and_resume_matches_uninterrupted(tmp_path: Path) -> None:
    """2 epochs of 2 steps (momentum 0.9 -> 1.0 over the 4 steps), interrupted after the first epoch, resumed."""
    dm = DigitsDataModule(batch_size=32, train_split="unlabeled")
    dm.setup("fit")

    def run(root: Path, ckpt: str | None = None, crash_at: int | None = None) -> tuple[BYOL, EMATeacher]:
        L.seed_everything(0, verbose=False)
        module = BYOL({"name": "small_cnn", "width": 4}, augment=BatchImageAugment(), hidden_dim=16, out_dim=8)
        ema = EMATeacher(base_momentum=0.9, final_momentum=1.0)
        checkpoint = ModelCheckpoint(dirpath=root, filename="last", save_top_k=1, enable_version_counter=False)
        callbacks: list[L.Callback] = [RNGStateKeeper(), ema, checkpoint]
        if crash_at is not None:
            callbacks.append(_Crash(crash_at))
        trainer = _trainer(root, max_epochs=2, limit_train_batches=2, enable_checkpointing=True, callbacks=callbacks)
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt)
        return module, ema

    full, full_ema = run(tmp_path / "full")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tmp_path / "part", crash_at=1)
    stopped = torch.load(tmp_path / "part" / "last.ckpt", weights_only=False)
    assert stopped["global_step"] == 2 and stopped["callbacks"]["EMATeacher"]["last_step"] == 2
    resumed, resumed_ema = run(tmp_path / "part", ckpt=str(tmp_path / "part" / "last.ckpt"))
    assert resumed_ema.last_step == full_ema.last_step == 4
    assert resumed_ema.momentum == pytest.approx(full_ema.momentum)
    full_state = full.state_dict()
    moved = 0
    for name, value in resumed.state_dict().items():
        assert torch.allclose(value.float(), full_state[name].float(), atol=1e-6, rtol=0), name
        moved += name.startswith("target_")
    assert moved > 0


def test_ddp_ranks_hold_the_same_teacher(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, str(DDP_SCRIPT), str(tmp_path)], capture_output=True, text=True, env=env,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rank0, rank1 = (torch.load(tmp_path / f"ema_rank{r}.pt", weights_only=False) for r in (0, 1))
    assert rank0["world_size"] == 2 and rank0["global_step"] == rank0["ema_steps"] == 3 == rank1["ema_steps"]
    params = rank0["target_encoder_params"]
    assert params
    for name in params:  # DDP keeps the online weights equal, so the EMA keeps the target's equal
        assert torch.equal(rank0["target_encoder"][name], rank1["target_encoder"][name]), name
        assert torch.equal(rank0["encoder"][name], rank1["encoder"][name]), name
    for name, value in rank0["target_projector"].items():
        if "running" not in name and "num_batches" not in name:
            assert torch.equal(value, rank1["target_projector"][name]), name
    assert any(not torch.equal(rank0["target_encoder"][n], rank0["initial_target"][n]) for n in params)
