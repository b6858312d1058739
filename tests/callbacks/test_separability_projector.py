"""SeparabilityMonitor (a label-free monitorable metric) and EmbeddingProjector (PNG + wandb image) in real Trainers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

import fewlabel.callbacks
from fewlabel.callbacks import EmbeddingEvaluator, EmbeddingProjector, RNGStateKeeper, SeparabilityMonitor
from fewlabel.callbacks.eval.projector import label_colours, project_2d, render_scatter, to_pixels
from trainer_helpers import RecordingLogger, make_trainer

from fewlabel.plugins import gather_embeddings, separability_score
from fewlabel.plugins.methods import PseudoLabelMixin

K, PER, DIM = 3, 20, 6


class Pool(Dataset):
    """Rows of ``x``; ``"label"`` is ``-1`` when hidden, ``"target"`` the true class, ``"index"`` the position."""

    def __init__(self, x: Tensor, y: Tensor, hide: bool) -> None:
        self.x, self.y, self.hide = x, y, hide

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        label = torch.tensor(-1) if self.hide else self.y[i]
        return {"input": self.x[i], "label": label, "target": self.y[i], "index": torch.tensor(i)}


def blobs(seed: int, noise: float) -> tuple[Tensor, Tensor]:
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(0).normal(0.0, 2.0, (K, DIM))
    x = np.concatenate([c + rng.normal(0.0, noise, (PER, DIM)) for c in centers])
    return torch.tensor(x, dtype=torch.float32), torch.tensor(np.repeat(np.arange(K), PER))


class PoolDataModule(L.LightningDataModule):
    """An unlabeled pool of overlapping blobs (true labels under ``"target"``) and a labeled validation set."""

    num_classes = K

    def __init__(self, noise: float = 1.5) -> None:
        super().__init__()
        self.x, self.y = blobs(1, noise)
        self.val_x, self.val_y = blobs(2, noise)

    def unlabeled_dataloader(self, train: bool = True) -> DataLoader:
        return DataLoader(Pool(self.x, self.y, hide=True), batch_size=16, shuffle=train)

    def train_dataloader(self) -> DataLoader:
        return self.unlabeled_dataloader(train=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(Pool(self.val_x, self.val_y, hide=False), batch_size=16)


class TargetModule(L.LightningModule):
    """``.encoder`` (``embed_dim``) trained through a head on the pool's hidden targets, so separability moves."""

    def __init__(self, lr: float = 0.05, encoder: nn.Module | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        if encoder is None:
            encoder = nn.Linear(DIM, DIM)
            encoder.embed_dim = DIM
        self.encoder, self.head, self.lr = encoder, nn.Linear(DIM, K), lr

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return nn.functional.cross_entropy(self.head(self.encoder(batch["input"])), batch["target"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class PseudoLabelModule(PseudoLabelMixin, TargetModule):
    def __init__(self) -> None:
        super().__init__()
        self.init_pseudo_labels(0)


def pool_score(model: TargetModule, dm: PoolDataModule, k: int) -> float:
    emb = gather_embeddings(model.encoder, dm.unlabeled_dataloader(train=False))
    return separability_score(emb.embeddings, k, K)


def test_public_surface() -> None:
    assert {"EmbeddingEvaluator", "EmbeddingProjector", "SeparabilityMonitor"} <= set(fewlabel.callbacks.__all__)
    assert issubclass(SeparabilityMonitor, EmbeddingEvaluator) and issubclass(EmbeddingProjector, EmbeddingEvaluator)


# --- SeparabilityMonitor ------------------------------------------------------------------------------------


def test_separability_is_logged_on_the_pool_and_model_checkpoint_keeps_the_best(tmp_path: Path) -> None:
    L.seed_everything(0)
    dm, model, logger = PoolDataModule(), TargetModule(), RecordingLogger()
    monitor = SeparabilityMonitor(k=5, eval_on_fit_end=True)  # C from dm.num_classes, rows from the pool
    best = ModelCheckpoint(dirpath=tmp_path, monitor="eval/separability", mode="max", filename="best")
    trainer = make_trainer(3, [monitor, best], logger=logger, enable_checkpointing=True)
    trainer.fit(model, datamodule=dm)
    expected = pool_score(model, dm, k=5)  # the labels of the pool are hidden: the score needs none
    assert monitor.metrics == {"eval/separability": expected}
    assert trainer.callback_metrics["eval/separability"].item() == pytest.approx(expected)
    logged = [m["eval/separability"] for _, m in logger.logged if "eval/separability" in m]
    assert len(logged) == 3 and logged[-1] == pytest.approx(expected) and len(set(logged)) == 3
    assert best.best_model_score.item() == pytest.approx(max(logged))
    state = torch.load(best.best_model_path, weights_only=True)["callbacks"][monitor.state_key]
    assert state["metrics"]["eval/separability"] == pytest.approx(max(logged))


def test_early_stopping_stops_when_separability_stops_improving() -> None:
    model = TargetModule(lr=0.0)  # the encoder never changes: neither does the score
    monitor = SeparabilityMonitor(k=5, num_clusters=3)
    stop = EarlyStopping(monitor="eval/separability", mode="max", patience=2)
    trainer = make_trainer(10, [stop, monitor])  # listed after EarlyStopping: Lightning runs monitors last
    trainer.fit(model, datamodule=PoolDataModule())
    assert stop.stopped_epoch == 2 and trainer.current_epoch == 3
    assert stop.best_score.item() == pytest.approx(pool_score(model, PoolDataModule(), k=5))


def _run_monitor(epochs: int, ckpt: Path | None) -> tuple[L.Trainer, SeparabilityMonitor, RecordingLogger]:
    monitor, logger = SeparabilityMonitor(k=5), RecordingLogger()
    trainer = make_trainer(epochs, [RNGStateKeeper(), monitor], logger=logger)
    trainer.fit(TargetModule(), datamodule=PoolDataModule(), ckpt_path=ckpt)
    return trainer, monitor, logger


def test_separability_stop_and_resume_matches_uninterrupted(tmp_path: Path) -> None:
    L.seed_everything(0)
    _, full, full_log = _run_monitor(4, None)
    L.seed_everything(0)
    first, _, first_log = _run_monitor(2, None)
    first.save_checkpoint(tmp_path / "stop.ckpt")
    torch.manual_seed(123)
    _, resumed, resumed_log = _run_monitor(4, tmp_path / "stop.ckpt")
    def scores(*logs: RecordingLogger) -> dict[int | None, float]:
        return {s: m["eval/separability"] for log in logs for s, m in log.logged if "eval/separability" in m}

    assert list(scores(first_log, resumed_log)) == list(scores(full_log)) == [3, 7, 11, 15]
    assert list(scores(first_log, resumed_log).values()) == pytest.approx(list(scores(full_log).values()), abs=1e-6)
    assert resumed.metrics == pytest.approx(full.metrics) and resumed.last_evaluated_step == full.last_evaluated_step


def test_monitor_errors_are_named() -> None:
    dm = PoolDataModule()
    with pytest.raises(ValueError, match=r"dataloader=None\) uses trainer.datamodule.unlabeled_dataloader\("
                                         r"train=False\), but the trainer has no datamodule"):
        make_trainer(1, [SeparabilityMonitor(num_clusters=3)]).fit(TargetModule(), dm.train_dataloader())

    class NoClasses(PoolDataModule):
        num_classes = None  # type: ignore[assignment]

    with pytest.raises(ValueError, match=r"num_clusters=None\) takes .* num_classes=None; pass num_clusters=<int>"):
        make_trainer(1, [SeparabilityMonitor()]).fit(TargetModule(), datamodule=NoClasses())
    with pytest.raises(ValueError, match=r"SeparabilityMonitor: k=60 neighbours need at least k \+ 1 = 61 rows, got "
                                         r"N=60 \(the dataloader gave 60 rows\)"):
        make_trainer(1, [SeparabilityMonitor(k=60)]).fit(TargetModule(), datamodule=dm)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: SeparabilityMonitor(k=0), "SeparabilityMonitor: k must be an int >= 1"),
        (lambda: SeparabilityMonitor(num_clusters=1), "num_clusters must be an int >= 2"),
        (lambda: SeparabilityMonitor(max_rows=3), "max_rows must be None .* or an int >= max"),
        (lambda: SeparabilityMonitor(seed=-1), "SeparabilityMonitor: seed must be an int >= 0"),
        (lambda: SeparabilityMonitor(every_n_epochs=0), "every_n_epochs must be an int >= 1 or None"),
        (lambda: SeparabilityMonitor(every_n_epochs=None), "would never evaluate; pass every_n_epochs"),
        (lambda: SeparabilityMonitor(dataloader=5),
         r"dataloader must be a DataLoader.*unlabeled_dataloader\(train=False\)"),
        (lambda: EmbeddingProjector(method="umap"), r"method must be one of \('pca', 'tsne'\), got 'umap'"),
        (lambda: EmbeddingProjector(color_by="target"), r"color_by must be one of \('label', 'pseudo_labels'\)"),
        (lambda: EmbeddingProjector(image_size=(32, 640)), r"image_size must be \(width, height\) with ints >= 64"),
        (lambda: EmbeddingProjector(max_points=1), "max_points must be an int >= 2 or None"),
        (lambda: EmbeddingProjector(dirpath=3), "dirpath must be a folder path or None"),
        (lambda: EmbeddingProjector(eval_on_fit_end=False), "would never evaluate"),
    ],
)
def test_bad_kwargs(make: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


class FlagCheck(L.Callback):
    """Listed after the evaluators: the encoder's per-module flags after their epoch-end hooks are those of training."""

    def __init__(self) -> None:
        self.flags: list[bool] = []
        self.checked = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.flags = [m.training for m in pl_module.encoder.modules()]

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert [m.training for m in pl_module.encoder.modules()] == self.flags
        self.checked += 1


def test_encoder_flags_are_left_alone(tmp_path: Path) -> None:
    encoder = nn.Sequential(nn.Linear(DIM, DIM), nn.BatchNorm1d(DIM), nn.Dropout(0.2))
    encoder.embed_dim = DIM
    encoder[1].eval()  # mixed flags, as a module that freezes its BatchNorm statistics would have
    check = FlagCheck()
    callbacks = [SeparabilityMonitor(k=5), EmbeddingProjector(every_n_epochs=1, dirpath=tmp_path), check]

    class Frozen(TargetModule):
        def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
            self.encoder[1].eval()

    make_trainer(2, callbacks).fit(Frozen(encoder=encoder), datamodule=PoolDataModule())
    assert check.checked == 2 and check.flags == [True, True, False, True]


# --- EmbeddingProjector -------------------------------------------------------------------------------------


def _colour_at(image: Image.Image, pixels: np.ndarray) -> list[tuple[int, int, int]]:
    return [image.getpixel((int(x), int(y))) for x, y in pixels]


def test_render_scatter_draws_each_label_in_its_own_colour() -> None:
    points = np.array([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    labels = np.array([0, 1, 2, -1])
    image = render_scatter(points, labels, (200, 100), radius=3)
    assert image.size == (200, 100) and image.mode == "RGB"
    colours = label_colours(labels.tolist())
    assert _colour_at(image, to_pixels(points, (200, 100))) == [colours[0], colours[1], colours[2], colours[-1]]
    assert len(set(label_colours(range(-1, 60)).values())) == 61  # distinct far beyond tab20


def test_project_2d_pca_is_the_top_two_principal_components() -> None:
    from sklearn.decomposition import PCA

    x = np.random.default_rng(0).standard_normal((50, 5)) * np.array([5.0, 3.0, 1.0, 0.5, 0.1])
    points = project_2d(x, "pca", normalize=False)
    np.testing.assert_allclose(np.abs(points), np.abs(PCA(2).fit_transform(x)), atol=1e-9)  # up to each axis' sign
    np.testing.assert_allclose(project_2d(-x, "pca", normalize=False), -points, atol=1e-9)  # the sign is fixed
    assert project_2d(x[:, :1], "pca").shape == (50, 2)


def test_projector_saves_a_png_whose_classes_have_distinct_colours(tmp_path: Path) -> None:
    L.seed_everything(0)
    dm = PoolDataModule(noise=0.3)
    projector = EmbeddingProjector(image_size=(240, 200), point_radius=2)  # at fit end, into trainer.log_dir
    model = TargetModule()
    trainer = make_trainer(1, [projector], default_root_dir=tmp_path)
    trainer.fit(model, datamodule=dm)
    assert projector.last_path == tmp_path / "projections" / "projection-pca-epoch001-step000004.png"
    image = Image.open(projector.last_path)
    image.verify()
    image = Image.open(projector.last_path).convert("RGB")
    assert image.size == (240, 200)
    val = gather_embeddings(model.encoder, dm.val_dataloader())  # the default rows: the labeled validation set
    seen = _colour_at(image, to_pixels(project_2d(val.embeddings), (240, 200)))
    colours = label_colours(range(K))
    assert len(set(colours.values())) == K
    for c in range(K):
        drawn = [colour for colour, label in zip(seen, val.labels) if label == c]
        assert drawn.count(colours[c]) >= len(drawn) / 2  # a class's points wear its colour (a few are covered)


def test_projector_every_n_epochs_with_tsne_and_no_repeat_at_fit_end(tmp_path: Path) -> None:
    projector = EmbeddingProjector(method="tsne", every_n_epochs=1, dirpath=tmp_path / "maps", image_size=(96, 96))
    make_trainer(2, [projector]).fit(TargetModule(), datamodule=PoolDataModule())
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == [
        "projection-tsne-epoch000-step000004.png", "projection-tsne-epoch001-step000008.png"]
    assert projector.metrics == {} and projector.last_evaluated_step == 8


def test_projector_colours_by_pseudo_labels(tmp_path: Path) -> None:
    dm = PoolDataModule(noise=0.3)
    model = PseudoLabelModule()
    pseudo = (dm.y + 1) % K
    model.set_pseudo_labels(pseudo)
    projector = EmbeddingProjector(color_by="pseudo_labels", dirpath=tmp_path, image_size=(200, 200))
    make_trainer(1, [projector]).fit(model, datamodule=dm)  # default rows: the pool, which the table indexes
    image = Image.open(projector.last_path).convert("RGB")
    pool = gather_embeddings(model.encoder, dm.unlabeled_dataloader(train=False))
    seen = _colour_at(image, to_pixels(project_2d(pool.embeddings), (200, 200)))
    colours = label_colours(range(K))
    for c in range(K):
        drawn = [colour for colour, label in zip(seen, pseudo.numpy()) if label == c]
        assert drawn.count(colours[c]) >= len(drawn) / 2
    with pytest.raises(AttributeError, match=r"color_by='pseudo_labels'\) needs TargetModule to have a "
                                             r"`pseudo_labels`"):
        make_trainer(1, [EmbeddingProjector(color_by="pseudo_labels", dirpath=tmp_path)]).fit(TargetModule(),
                                                                                              datamodule=dm)


def test_projector_logs_a_wandb_image_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(offline=True, save_dir=str(tmp_path))
    projector = EmbeddingProjector(image_size=(128, 128))
    make_trainer(1, [projector], logger=logger).fit(TargetModule(), datamodule=PoolDataModule())
    logger.experiment.finish()
    assert projector.last_path is not None and projector.last_path.parent == tmp_path / "projections"
    media = list(tmp_path.glob("wandb/offline-run-*/files/media/images/eval/projection_*.png"))
    assert len(media) == 1
    assert Image.open(media[0]).size == (128, 128)
