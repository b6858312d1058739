from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor, nn
from torch.utils.data import DataLoader

import fewlabel.callbacks
from fewlabel.callbacks import KNNEvaluator, LinearProbeEvaluator, RNGStateKeeper
from fewlabel.datamodules import DigitsDataModule
from trainer_helpers import RecordingLogger, make_trainer

from fewlabel.plugins import SmallCNN, gather_embeddings, knn_accuracy

JOB = Path(__file__).resolve().parents[1] / "distributed" / "ddp_eval_job.py"
_spec = importlib.util.spec_from_file_location("ddp_eval_job", JOB)
job = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(job)  # type: ignore[union-attr]
K, DIM, Rows, blobs = job.K, job.DIM, job.Rows, job.blobs


class BlobDataModule(L.LightningDataModule):
    """Overlapping blobs; a labeled draw of every 3rd sample (``"index"`` = pool position) and a val set."""

    num_classes = K

    def __init__(self, *, train_labels: str = "draw", noise: float = 1.5) -> None:
        super().__init__()
        self.x, self.y = blobs(1, noise)
        self.val_x, self.val_y = blobs(2, noise)
        self.draw = np.arange(1, len(self.y), 3)
        seen = torch.full_like(self.y, -1)
        if train_labels == "draw":
            seen[self.draw] = self.y[self.draw]
        elif train_labels == "all":
            seen = self.y
        self.train_y = seen

    def train_dataloader(self) -> DataLoader:
        return DataLoader(Rows(self.x, self.train_y, np.arange(len(self.y))), batch_size=16, shuffle=True)

    def labeled_dataloader(self, train: bool = True) -> DataLoader:
        return DataLoader(Rows(self.x, self.y, self.draw), batch_size=8, shuffle=train)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(Rows(self.val_x, self.val_y, np.arange(len(self.val_y))), batch_size=16)


class UserModule(L.LightningModule):
    """A user's own module: only ``.encoder`` (``embed_dim``) and a head trained on the labeled rows."""

    def __init__(self, encoder: nn.Module | None = None, lr: float = 0.05, detach: bool = False) -> None:
        super().__init__()
        if encoder is None:
            encoder = nn.Linear(DIM, DIM)
            encoder.embed_dim = DIM
        self.encoder, self.head, self.lr, self.detach = encoder, nn.Linear(DIM, K), lr, detach

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        z = self.encoder(batch["input"])
        logits = self.head(z.detach() if self.detach else z)
        keep = batch["label"] >= 0
        return nn.functional.cross_entropy(logits[keep], batch["label"][keep]) if keep.any() else logits.sum() * 0

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def direct_knn(encoder: nn.Module, dm: BlobDataModule, k: int) -> float:
    # a list of batches: gather_embeddings cannot size a buffer from len(labeled view) (see the report)
    bank = gather_embeddings(encoder, list(dm.labeled_dataloader(train=False)))
    val = gather_embeddings(encoder, dm.val_dataloader())
    return knn_accuracy(bank.embeddings, bank.labels, val.embeddings, val.labels, k=k)


def test_public_surface() -> None:
    assert {"KNNEvaluator", "LinearProbeEvaluator"} <= set(fewlabel.callbacks.__all__)


def test_knn_metric_is_logged_monitorable_and_equals_the_pure_function(tmp_path: Path) -> None:
    L.seed_everything(0)
    dm, model, logger = BlobDataModule(), UserModule(), RecordingLogger()
    knn = KNNEvaluator(k=5, eval_on_fit_end=True)
    best = ModelCheckpoint(dirpath=tmp_path, monitor="eval/knn_acc", mode="max", filename="best")
    trainer = make_trainer(2, [knn, best], logger=logger, enable_checkpointing=True)
    trainer.fit(model, datamodule=dm)
    expected = direct_knn(model.encoder, dm, k=5)
    assert 0.4 < expected < 1.0  # overlapping blobs: a number that can be wrong
    assert knn.metrics == {"eval/knn_acc": expected}
    assert trainer.callback_metrics["eval/knn_acc"].item() == pytest.approx(expected)
    logged = [m["eval/knn_acc"] for _, m in logger.logged if "eval/knn_acc" in m]
    assert len(logged) == 2 and logged[-1] == pytest.approx(expected)  # fit end: same step, not repeated
    assert best.best_model_score is not None and Path(best.best_model_path).exists()
    assert best.best_model_score.item() == pytest.approx(max(logged))
    assert torch.load(best.best_model_path, weights_only=True)["callbacks"][knn.state_key]["metrics"]


def test_knn_every_n_epochs_and_fit_end() -> None:
    logger = RecordingLogger()
    knn = KNNEvaluator(k=3, every_n_epochs=2, eval_on_fit_end=True)
    make_trainer(3, [knn], logger=logger).fit(UserModule(), datamodule=BlobDataModule())
    steps = [step for step, m in logger.logged if "eval/knn_acc" in m]
    # 4 batches per epoch: after epoch 2 (Lightning logs epoch-end metrics at step 8 - 1) and at fit end (step 12)
    assert steps == [7, 12]
    assert knn.last_evaluated_step == 12


def test_k_larger_than_the_bank_uses_every_bank_row() -> None:
    dm = BlobDataModule()
    knn = KNNEvaluator(k=100)
    model = UserModule()
    with pytest.warns(UserWarning, match="k=100 but the bank has only 20 labeled samples; using k=20"):
        make_trainer(1, [knn]).fit(model, datamodule=dm)
    assert knn.metrics["eval/knn_acc"] == direct_knn(model.encoder, dm, k=20)


class FlagSpy(L.Callback):
    """Records the encoder's per-module flags and buffers after the training step and compares them after
    the evaluators (listed before it) have run their hooks."""

    def __init__(self) -> None:
        self.flags: list[bool] = []
        self.buffers: dict[str, Tensor] = {}
        self.checked = 0

    def _state(self, module: L.LightningModule) -> tuple[list[bool], dict[str, Tensor]]:
        return [m.training for m in module.encoder.modules()], {k: v.clone() for k, v in module.encoder.named_buffers()}

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor) -> None:
        self.flags, self.buffers = self._state(pl_module)

    def _check(self, pl_module: L.LightningModule) -> None:
        flags, buffers = self._state(pl_module)
        assert flags == self.flags
        assert buffers.keys() == self.buffers.keys() and all(torch.equal(buffers[k], self.buffers[k]) for k in buffers)
        self.checked += 1

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._check(pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check(pl_module)


class MixedModeModule(UserModule):
    """An encoder with BatchNorm and dropout; the module keeps its BatchNorm in eval mode (mixed flags)."""

    def __init__(self) -> None:
        encoder = nn.Sequential(nn.Linear(DIM, DIM), nn.BatchNorm1d(DIM), nn.Dropout(0.2), nn.BatchNorm1d(DIM))
        encoder.embed_dim = DIM
        super().__init__(encoder)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        self.encoder[3].eval()
        return super().training_step(batch, batch_idx)


@pytest.mark.parametrize("make", [lambda: KNNEvaluator(k=3), lambda: LinearProbeEvaluator(lr=0.05)])
def test_encoder_flags_and_buffers_unchanged(make: Any) -> None:
    spy = FlagSpy()
    model = MixedModeModule()
    make_trainer(1, [make(), spy]).fit(model, datamodule=BlobDataModule())
    assert spy.checked == 5 and spy.flags == [True, True, True, True, False]


def test_linear_probe_learns_only_from_labels_and_never_touches_the_encoder() -> None:
    L.seed_everything(0)
    dm = BlobDataModule(train_labels="draw", noise=0.3)
    model = UserModule(detach=True)  # the module's own loss never reaches the encoder
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    probe = LinearProbeEvaluator(lr=0.05, eval_on_fit_end=True)
    logger = RecordingLogger()
    make_trainer(8, [probe], logger=logger).fit(model, datamodule=dm)
    assert all(torch.equal(v, before[k]) for k, v in model.encoder.state_dict().items())
    assert probe.steps == 8 * 4  # every batch holds labeled rows of the draw
    assert probe.probe is not None and probe.probe.weight.abs().sum() > 0
    assert probe.probe.weight.dtype == torch.float32
    assert probe.metrics["eval/linear_probe_acc"] == 1.0
    assert [m for _, m in logger.logged if "eval/linear_probe_acc" in m][-1]["eval/linear_probe_acc"] == 1.0


class BatchRecorder(L.Callback):
    def __init__(self) -> None:
        self.batches: list[dict[str, Tensor]] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.batches.append({k: v.clone() for k, v in batch.items()})


def test_linear_probe_step_is_sgd_on_the_mean_cross_entropy_of_the_labeled_rows() -> None:
    """With a fixed encoder, the online probe equals plain SGD replayed on the same batches (SGD, not Adam:
    Adam's normalisation blows the rounding of a near-zero gradient up to a step of size ``lr``)."""
    L.seed_everything(0)
    dm = BlobDataModule(train_labels="draw")
    model, recorder = UserModule(detach=True), BatchRecorder()
    probe = LinearProbeEvaluator(optimizer="sgd", lr=0.5, momentum=0.9, weight_decay=1e-3)
    make_trainer(2, [probe, recorder]).fit(model, datamodule=dm)
    replay = nn.Linear(DIM, K)
    nn.init.zeros_(replay.weight)
    nn.init.zeros_(replay.bias)
    sgd = torch.optim.SGD(replay.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-3)
    with torch.no_grad():
        embed = [(model.encoder(b["input"][b["label"] >= 0]), b["label"][b["label"] >= 0]) for b in recorder.batches]
    for z, y in embed:
        sgd.zero_grad()
        nn.functional.cross_entropy(replay(z), y).backward()
        sgd.step()
    assert probe.steps == len(embed) == 8
    torch.testing.assert_close(probe.probe.weight, replay.weight, rtol=0, atol=1e-6)
    torch.testing.assert_close(probe.probe.bias, replay.bias, rtol=0, atol=1e-6)
    with torch.no_grad():
        val = replay(model.encoder(dm.val_x)).argmax(1)
    assert probe.metrics["eval/linear_probe_acc"] == pytest.approx((val == dm.val_y).float().mean().item())


def test_linear_probe_without_labels_in_the_batches_uses_labeled_dataloader() -> None:
    dm = BlobDataModule(train_labels="none", noise=0.3)
    idle = LinearProbeEvaluator(lr=0.05)
    with pytest.warns(UserWarning, match="the probe has not trained: no training batch had a 'label' >= 0"):
        make_trainer(1, [idle]).fit(UserModule(), datamodule=dm)
    assert idle.steps == 0 and idle.probe is not None and idle.probe.weight.abs().sum() == 0
    fed = LinearProbeEvaluator(lr=0.05, labeled_dataloader=lambda: dm.labeled_dataloader(train=True))
    make_trainer(3, [fed]).fit(UserModule(), datamodule=dm)
    assert fed.steps == 3 * 4 and fed.metrics["eval/linear_probe_acc"] > 0.9


def _run_probe(tmp_path: Path, epochs: int, ckpt: Path | None, labeled: bool) -> tuple[L.Trainer, UserModule, Any]:
    dm = BlobDataModule(train_labels="none" if labeled else "all")
    kwargs = {"labeled_dataloader": lambda: dm.labeled_dataloader(train=True)} if labeled else {}
    probe = LinearProbeEvaluator(lr=0.05, **kwargs)
    model = UserModule(lr=0.05)
    trainer = make_trainer(epochs, [RNGStateKeeper(), probe])
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt)
    return trainer, model, probe


@pytest.mark.parametrize("labeled", [False, True])
def test_linear_probe_stop_and_resume_matches_uninterrupted(tmp_path: Path, labeled: bool) -> None:
    L.seed_everything(0)
    _, full_model, full = _run_probe(tmp_path, 4, None, labeled)
    L.seed_everything(0)
    first, _, _ = _run_probe(tmp_path, 2, None, labeled)
    ckpt = tmp_path / "stop.ckpt"
    first.save_checkpoint(ckpt)
    state = torch.load(ckpt, weights_only=True)["callbacks"]  # tensors and plain values only
    assert {"probe", "optimizer", "steps"} <= set(state[LinearProbeEvaluator().state_key])
    torch.manual_seed(123)  # the resumed run must not depend on the generators' state before it
    _, resumed_model, resumed = _run_probe(tmp_path, 4, ckpt, labeled)
    assert resumed.steps == full.steps == 4 * 4
    assert resumed.metrics == pytest.approx(full.metrics, abs=1e-6)
    for name, value in full.probe.state_dict().items():
        torch.testing.assert_close(resumed.probe.state_dict()[name], value, rtol=0, atol=1e-6)
    for a, b in zip(resumed.optimizer.state_dict()["state"].values(), full.optimizer.state_dict()["state"].values()):
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    for a, b in zip(resumed_model.state_dict().values(), full_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_state_dict_round_trip_reads_missing_keys() -> None:
    knn = KNNEvaluator()
    knn.load_state_dict({"metrics": {"eval/knn_acc": 0.5}, "last_evaluated_step": 3})
    assert knn.state_dict() == {"metrics": {"eval/knn_acc": 0.5}, "last_evaluated_step": 3}
    knn.load_state_dict({})
    assert knn.state_dict() == {"metrics": {}, "last_evaluated_step": None}
    probe = LinearProbeEvaluator()
    probe.load_state_dict({})
    assert probe.state_dict() == {"metrics": {}, "last_evaluated_step": None, "steps": 0}
    assert KNNEvaluator(k=5).state_key != KNNEvaluator(k=20).state_key


class DigitsModule(UserModule):
    def __init__(self) -> None:
        super().__init__(SmallCNN(width=4), lr=0.05)
        self.head = nn.Linear(self.encoder.embed_dim, 10)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_digits_small_cnn(precision: str) -> None:
    L.seed_everything(0)
    dm = DigitsDataModule(labels_per_class=5, batch_size=64, labeled_samples_per_epoch=320)
    dm.setup("fit")
    knn = KNNEvaluator(k=10)  # bank: the datamodule's labeled_dataloader(train=False)
    probe = LinearProbeEvaluator(lr=0.05)
    model = DigitsModule()
    make_trainer(6, [knn, probe], precision=precision).fit(model, datamodule=dm)
    assert probe.steps == 6 * 6  # the draw of 50 tiled 7 times: 350 samples, 6 batches per epoch
    assert knn.metrics["eval/knn_acc"] > 0.3 and probe.metrics["eval/linear_probe_acc"] > 0.3  # chance: 0.1
    if precision == "32-true":
        bank = gather_embeddings(model.encoder, dm.labeled_dataloader(train=False))
        val = gather_embeddings(model.encoder, dm.val_dataloader())
        assert len(bank) == 50
        assert knn.metrics["eval/knn_acc"] == knn_accuracy(bank.embeddings, bank.labels, val.embeddings,
                                                           val.labels, k=10)


class NoTrainFlag(BlobDataModule):
    def labeled_dataloader(self) -> DataLoader:  # type: ignore[override]
        return super().labeled_dataloader(train=True)


def test_default_bank_needs_a_sequential_labeled_loader() -> None:
    with pytest.raises(ValueError, match=r"labeled_dataloader\(train=False\).*NoTrainFlag.labeled_dataloader\(\) takes "
                                         r"no \['train'\] argument; pass KNNEvaluator\(bank="):
        make_trainer(1, [KNNEvaluator()]).fit(UserModule(), datamodule=NoTrainFlag())
    dm = BlobDataModule()
    with pytest.raises(ValueError, match=r"queries=None\) uses trainer.datamodule.val_dataloader\(\), but the trainer "
                                         r"has no datamodule"):
        make_trainer(1, [KNNEvaluator(bank=dm.labeled_dataloader(False))]).fit(UserModule(), dm.train_dataloader())
    with pytest.raises(ValueError, match=r"num_classes=None\) takes .* no datamodule; pass num_classes"):
        make_trainer(1, [LinearProbeEvaluator(val_dataloader=dm.val_dataloader())]).fit(UserModule(),
                                                                                        dm.train_dataloader())


def test_empty_or_unlabeled_queries_are_named() -> None:
    dm = BlobDataModule()
    empty = DataLoader(Rows(dm.val_x, dm.val_y, np.arange(0)), batch_size=4)
    with pytest.raises(ValueError, match="the queries loader has no samples"):
        make_trainer(1, [KNNEvaluator(queries=empty)]).fit(UserModule(), datamodule=dm)
    hidden = DataLoader(Rows(dm.val_x, torch.full_like(dm.val_y, -1), np.arange(len(dm.val_y))), batch_size=8)
    with pytest.raises(ValueError, match=r"no sample of the val_dataloader loader has a label \(batch\['label'\] >= 0"):
        make_trainer(1, [LinearProbeEvaluator(val_dataloader=hidden)]).fit(UserModule(), datamodule=dm)


def test_contract_is_checked() -> None:
    class NoEncoder(UserModule):
        def __init__(self) -> None:
            super().__init__()
            self.body = self.encoder
            del self.encoder

        def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
            return self.head(self.body(batch["input"])).sum()

    with pytest.raises(AttributeError, match="KNNEvaluator needs NoEncoder to have an `encoder` nn.Module"):
        make_trainer(1, [KNNEvaluator()]).fit(NoEncoder(), datamodule=BlobDataModule())
    with pytest.raises(TypeError, match=r"missing \['embed_dim'\]"):
        make_trainer(1, [LinearProbeEvaluator()]).fit(UserModule(nn.Linear(DIM, DIM)), datamodule=BlobDataModule())


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: KNNEvaluator(k=0), "KNNEvaluator: k must be an int >= 1"),
        (lambda: KNNEvaluator(k=2.0), "k must be an int >= 1"),
        (lambda: KNNEvaluator(temperature=0.0), "temperature must be a finite float > 0"),
        (lambda: KNNEvaluator(every_n_epochs=0), "every_n_epochs must be an int >= 1"),
        (lambda: KNNEvaluator(eval_on_fit_end=1), "eval_on_fit_end must be True or False"),
        (lambda: KNNEvaluator(bank=5), r"bank must be a DataLoader, a zero-argument callable returning one, or None "
                                       r"\(use trainer.datamodule.labeled_dataloader\(train=False\)\)"),
        (lambda: KNNEvaluator(queries=5), r"queries must be a DataLoader.*val_dataloader\(\)"),
        (lambda: KNNEvaluator(metric_name=""), "metric_name must be a non-empty string"),
        (lambda: LinearProbeEvaluator(num_classes=1), "num_classes must be an int >= 2 or None"),
        (lambda: LinearProbeEvaluator(optimizer="lbfgs"), r"unknown optimizer 'lbfgs'.*choose one of"),
        (lambda: LinearProbeEvaluator(lr=0.0), "lr must be > 0"),
        (lambda: LinearProbeEvaluator(weight_decay=-1.0), "weight_decay must be >= 0"),
        (lambda: LinearProbeEvaluator(momentum=1.0), r"momentum must be in \[0, 1\)"),
        (lambda: LinearProbeEvaluator(labeled_dataloader=3), "labeled_dataloader must be a DataLoader"),
        (lambda: LinearProbeEvaluator(label_key=""), "label_key must be a non-empty string"),
    ],
)
def test_bad_kwargs(make: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_ddp_ranks_agree_with_a_single_process(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, str(JOB), str(tmp_path), "2"], capture_output=True, text=True, env=env,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rank0, rank1 = (torch.load(tmp_path / f"eval_rank{r}.pt", weights_only=True) for r in (0, 1))
    _, knn, probe = job.run(accelerator="cpu", devices=1)
    assert rank0["world_size"] == 2 and rank0["steps"] == rank1["steps"] == probe.steps == 2 * 3
    assert rank0["knn"] == rank1["knn"] == knn.metrics  # the same all-gathered arrays on every rank
    for rank in (rank0, rank1):  # logged on every rank, so ModelCheckpoint/EarlyStopping see it everywhere
        assert rank["callback_metrics"]["eval/knn_acc"] == pytest.approx(knn.metrics["eval/knn_acc"])
    for name, value in rank0["probe"].items():
        assert torch.equal(value, rank1["probe"][name]), name  # one reduced step: identical on every rank
        torch.testing.assert_close(value, probe.probe.state_dict()[name], rtol=0, atol=1e-5)
    assert rank0["probe_metrics"] == rank1["probe_metrics"] == probe.metrics
