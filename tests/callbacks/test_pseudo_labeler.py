from __future__ import annotations

import contextlib
import io
import re
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

import fewlabel.callbacks
import fewlabel.callbacks.pseudo_labeler as pseudo_labeler_module
from fewlabel.callbacks import PseudoLabeler, StageProgressBar
from fewlabel.plugins.clustering import KMEANS_MAX_TRAIN_ROWS
from fewlabel.plugins.evaluation import clustering_metrics
from fewlabel.plugins.methods.pseudo_labels import PseudoLabelMixin
from tests.callbacks.trainer_helpers import RecordingLogger, make_trainer

K, PER, DIM = 5, 20, 8


class Blobs(Dataset):
    """K separable Gaussian blobs, shuffled; ``target`` is the blob, ``label`` is -1 (unlabeled)."""

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        centers = rng.normal(0.0, 10.0, (K, DIM))
        x = np.concatenate([c + rng.normal(0.0, 0.5, (PER, DIM)) for c in centers])
        y = np.repeat(np.arange(K), PER)
        perm = rng.permutation(len(y))
        self.x = torch.tensor(x[perm], dtype=torch.float32)
        self.y = torch.tensor(y[perm])

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"input": self.x[i], "label": torch.tensor(-1), "index": torch.tensor(i), "target": self.y[i]}


class BlobDataModule(L.LightningDataModule):
    num_classes = K

    def __init__(self) -> None:
        super().__init__()
        self.data = Blobs()

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=25)

    def unlabeled_dataloader(self, train: bool = True) -> DataLoader:
        return DataLoader(self.data, batch_size=32, shuffle=train)


class LabeledBlobDataModule(BlobDataModule):
    """Blobs with a labeled validation split: 5 more samples per blob, with their labels."""

    def val_dataloader(self) -> DataLoader:
        rng = np.random.default_rng(1)
        centers = np.random.default_rng(0).normal(0.0, 10.0, (K, DIM))
        x = np.concatenate([c + rng.normal(0.0, 0.5, (5, DIM)) for c in centers])
        rows = [{"input": torch.tensor(v, dtype=torch.float32), "label": torch.tensor(i // 5), "index": torch.tensor(i)}
                for i, v in enumerate(x)]
        return DataLoader(rows, batch_size=16)


class BoringPseudoModule(PseudoLabelMixin, L.LightningModule):
    """A linear encoder (initialised to the identity) and a head trained on the pseudo-labels."""

    def __init__(self) -> None:
        super().__init__()
        self.init_pseudo_labels()
        self.encoder = nn.Linear(DIM, DIM)
        self.encoder.embed_dim = DIM
        with torch.no_grad():
            self.encoder.weight.copy_(torch.eye(DIM))
            self.encoder.bias.zero_()
        self.head = nn.Linear(DIM, K)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        logits = self.head(self.encoder(batch["input"]))
        labels = self.pseudo_labels[batch["index"]]
        seen = labels >= 0
        return nn.functional.cross_entropy(logits[seen], labels[seen]) if seen.any() else logits.sum() * 0

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class CountingPseudoLabeler(PseudoLabeler):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.calls: list[int] = []

    def run_clustering(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.calls.append(trainer.current_epoch)
        super().run_clustering(trainer, pl_module)


def test_public_surface() -> None:
    assert "PseudoLabeler" in fewlabel.callbacks.__all__


def test_labels_filled_and_metrics_logged() -> None:
    L.seed_everything(0)
    model, dm, logger = BoringPseudoModule(), BlobDataModule(), RecordingLogger()
    cb = CountingPseudoLabeler(nredo=5)
    make_trainer(1, [cb], logger=logger).fit(model, datamodule=dm)
    assert cb.calls == [0] and cb.last_clustered_epoch == 0
    labels = model.pseudo_labels.numpy()
    assert labels.shape == (K * PER,) and labels.min() >= 0 and labels.max() < K
    assert clustering_metrics(labels, dm.data.y.numpy())["nmi"] == pytest.approx(1.0)
    assert cb.metrics["pseudo_labels/nmi"] == pytest.approx(1.0)
    assert cb.metrics["pseudo_labels/accuracy"] == 1.0 and cb.metrics["pseudo_labels/ari"] == pytest.approx(1.0)
    assert cb.metrics["pseudo_labels/cluster_size_min"] == PER == cb.metrics["pseudo_labels/cluster_size_max"]
    assert cb.metrics["pseudo_labels/empty_clusters"] == 0
    assert [metrics for _, metrics in logger.logged] == [cb.metrics]


def test_a_stage_progress_bar_shows_the_extraction_and_the_clustering() -> None:
    """Under a StageProgressBar the labelling pass draws its own bar: every batch of the pool, then k-means."""
    out = io.StringIO()
    model, dm = BoringPseudoModule(), BlobDataModule()  # 100 samples / batch 32 = 4 batches, + 1 clustering step
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_model_summary=False,
                        callbacks=[PseudoLabeler(), StageProgressBar("student", file=out, file_interval_s=0)])
    trainer.fit(model, datamodule=dm)
    text = out.getvalue()
    assert re.search(r"pseudo-labels: 100%.*\| 5/5 .*done", text) and "k-means (k=5)" in text
    assert text.index("pseudo-labels:") < text.index("student:")  # labelled before the student's first step
    quiet = io.StringIO()  # without a StageProgressBar nothing is drawn
    with contextlib.redirect_stderr(quiet):
        make_trainer(1, [PseudoLabeler()]).fit(BoringPseudoModule(), datamodule=dm)
    assert "pseudo-labels" not in quiet.getvalue()


def test_keep_fraction_drops_the_least_confident_samples_of_each_cluster() -> None:
    L.seed_everything(0)
    model, dm, logger = BoringPseudoModule(), BlobDataModule(), RecordingLogger()
    x, y = dm.data.x, dm.data.y
    centres = torch.stack([x[y == c].mean(0) for c in range(K)])
    moved = np.flatnonzero(y.numpy() == 0)[:3]  # three samples of blob 0 moved next to the border with blob 1
    x[moved] = 0.55 * centres[0] + 0.45 * centres[1] + 0.01 * torch.randn(3, DIM)
    cb = PseudoLabeler(nredo=5, pca_dim=None, keep_fraction=0.8)
    make_trainer(1, [cb], logger=logger).fit(model, datamodule=dm)
    labels = model.pseudo_labels.numpy()
    kept = labels >= 0
    assert cb.metrics["pseudo_labels/kept_fraction"] == pytest.approx(kept.mean())
    assert 0.75 <= kept.mean() <= 0.85
    assert not kept[moved].any()  # the samples near a border are the least confident
    assert cb.metrics["pseudo_labels/kept_accuracy"] == 1.0
    full = PseudoLabeler(nredo=5, pca_dim=None)
    make_trainer(1, [full], logger=False).fit(BoringPseudoModule(), datamodule=dm)
    assert "pseudo_labels/kept_fraction" not in full.metrics


def test_teacher_is_left_as_given_and_unseen_samples_keep_minus_one() -> None:
    dm = BlobDataModule()
    model, teacher = BoringPseudoModule(), nn.Linear(DIM, DIM)
    with torch.no_grad():
        teacher.weight.copy_(2 * torch.eye(DIM))
        teacher.bias.zero_()
    seen = [i for i in range(K * PER) if i % 10]  # every 10th sample is never embedded
    cb = PseudoLabeler(teacher=teacher, dataloader=lambda: DataLoader(dm.data, batch_size=16, sampler=seen), nredo=5)
    make_trainer(1, [cb]).fit(model, datamodule=dm)
    assert teacher.training and all(p.requires_grad for p in teacher.parameters())  # not the callback's to change
    labels = model.pseudo_labels.numpy()
    assert labels.shape == (K * PER,)
    assert (labels[::10] == -1).all() and (labels[seen] >= 0).all()
    assert clustering_metrics(labels[seen], dm.data.y.numpy()[seen])["accuracy"] == 1.0


def test_recluster_every_n_epochs() -> None:
    cb = CountingPseudoLabeler(recluster_every_n_epochs=2, nredo=5)
    make_trainer(5, [cb]).fit(BoringPseudoModule(), datamodule=BlobDataModule())
    assert cb.calls == [0, 2, 4]
    once = CountingPseudoLabeler(nredo=5)
    make_trainer(3, [once]).fit(BoringPseudoModule(), datamodule=BlobDataModule())
    assert once.calls == [0]


@pytest.mark.parametrize(("stop", "resumed_calls"), [(3, []), (2, [2])])
def test_stop_and_resume_matches_uninterrupted(tmp_path: Path, stop: int, resumed_calls: list[int]) -> None:
    L.seed_everything(0)
    full_model, full_cb = BoringPseudoModule(), CountingPseudoLabeler(recluster_every_n_epochs=2, nredo=5)
    make_trainer(4, [full_cb]).fit(full_model, datamodule=BlobDataModule())
    assert full_cb.calls == [0, 2]

    L.seed_everything(0)
    model, cb = BoringPseudoModule(), CountingPseudoLabeler(recluster_every_n_epochs=2, nredo=5)
    first = make_trainer(stop, [cb])
    first.fit(model, datamodule=BlobDataModule())
    ckpt = tmp_path / "stop.ckpt"
    first.save_checkpoint(ckpt)

    resumed_model, resumed_cb = BoringPseudoModule(), CountingPseudoLabeler(recluster_every_n_epochs=2, nredo=5)
    make_trainer(4, [resumed_cb]).fit(resumed_model, datamodule=BlobDataModule(), ckpt_path=ckpt)
    assert resumed_cb.calls == resumed_calls  # only an epoch the uninterrupted run also reclustered
    assert torch.equal(resumed_model.pseudo_labels, full_model.pseudo_labels)
    assert resumed_cb.last_clustered_epoch == 2 and resumed_cb.metrics == full_cb.metrics
    for a, b in zip(resumed_model.state_dict().values(), full_model.state_dict().values()):
        assert torch.equal(a, b)


def test_auto_pca_dim_is_chosen_on_the_validation_split() -> None:
    model, logger = BoringPseudoModule(), RecordingLogger()
    cb = PseudoLabeler(pca_dim="auto", pca_dim_candidates=(2, 4, 8, 64), nredo=5)
    make_trainer(1, [cb], logger=logger).fit(model, datamodule=LabeledBlobDataModule())
    assert cb.chosen["pca_dim"] in (2, 4, 8) and set(cb.chosen["val_nmi"]) == {"2", "4", "8"}  # 64 > DIM: skipped
    assert cb.chosen["val_nmi"][str(cb.chosen["pca_dim"])] == max(cb.chosen["val_nmi"].values())
    assert cb.metrics["pseudo_labels/pca_dim"] == cb.chosen["pca_dim"] and cb.metrics["pseudo_labels/nmi"] > 0.95
    assert any("pseudo_labels/pca_dim" in metrics for _, metrics in logger.logged)
    assert (model.pseudo_labels >= 0).all()


def test_auto_pca_dim_needs_validation_labels() -> None:
    unlabeled = DataLoader([{"input": torch.zeros(DIM), "label": torch.tensor(-1), "index": torch.tensor(0)}])
    cb = PseudoLabeler(pca_dim="auto", val_dataloader=lambda: unlabeled)
    with pytest.raises(ValueError, match="pca_dim='auto'\) needs a labeled validation split"):
        make_trainer(1, [cb]).fit(BoringPseudoModule(), datamodule=BlobDataModule())
    with pytest.raises(ValueError, match=r"val_dataloader=None\) needs trainer.datamodule.val_dataloader\(\)"):
        make_trainer(1, [PseudoLabeler(pca_dim="auto")]).fit(BoringPseudoModule(), datamodule=BlobDataModule())


def test_state_dict_round_trip_reads_missing_keys() -> None:
    cb = PseudoLabeler()
    cb.load_state_dict({"last_clustered_epoch": 3, "metrics": {"pseudo_labels/nmi": 0.5}, "chosen": {"pca_dim": 4}})
    assert cb.state_dict() == {"last_clustered_epoch": 3, "metrics": {"pseudo_labels/nmi": 0.5},
                               "chosen": {"pca_dim": 4}}
    cb.load_state_dict({})
    assert cb.state_dict() == {"last_clustered_epoch": None, "metrics": {}, "chosen": {}}


def test_missing_pseudo_label_buffer_is_named() -> None:
    class NoTable(BoringPseudoModule):
        def __init__(self) -> None:
            super().__init__()
            del self.pseudo_labels

        def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
            return self.head(batch["input"]).sum()

    with pytest.raises(AttributeError, match="`pseudo_labels` tensor buffer"):
        make_trainer(1, [PseudoLabeler()]).fit(NoTable(), datamodule=BlobDataModule())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_clusters": 0}, "num_clusters must be an int >= 1 or None"),
        ({"num_clusters": True}, "num_clusters must be"),
        ({"pca_dim": -1}, "pca_dim must be an int >= 1 or None"),
        ({"pca_dim": "best"}, r"pca_dim must be an int >= 1 or None \(no PCA\) or 'auto'"),
        ({"pca_dim_candidates": []}, "pca_dim_candidates must be a non-empty list of ints >= 1"),
        ({"pca_dim_candidates": [8, 0]}, "pca_dim_candidates must be a non-empty list of ints >= 1"),
        ({"val_dataloader": 5}, "val_dataloader must be a DataLoader, a zero-argument callable"),
        ({"niter": 0}, "niter must be an int >= 1"),
        ({"nredo": 0}, "nredo must be an int >= 1"),
        ({"max_train_rows": 0}, r"max_train_rows must be an int >= 1 .* or None \(train on every row\)"),
        ({"max_train_rows": 2.5}, "max_train_rows must be an int"),
        ({"recluster_every_n_epochs": 0}, r"recluster_every_n_epochs must be an int >= 1 or None \(cluster once"),
        ({"seed": 1.5}, r"PseudoLabeler: seed must be an int >= 0, got 1\.5"),
        ({"seed": -1}, "PseudoLabeler: seed must be an int >= 0, got -1"),
        ({"whiten": 1}, "whiten must be True or False"),
        ({"teacher": "resnet"}, "teacher must be an nn.Module"),
        ({"dataloader": 5}, "dataloader must be a DataLoader, a zero-argument callable"),
        ({"label_key": ""}, "label_key must be a non-empty string"),
        ({"keep_fraction": 0.0}, r"keep_fraction must be a number in \(0, 1\]"),
        ({"keep_fraction": 1.2}, r"keep_fraction must be a number in \(0, 1\]"),
        ({"keep_fraction": "half"}, r"keep_fraction must be a number in \(0, 1\]"),
    ],
)
def test_bad_kwargs(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PseudoLabeler(**kwargs)


def test_max_train_rows_reaches_k_means(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int | None] = []
    real = pseudo_labeler_module.cluster_embeddings

    def spy(x: Any, k: int, **kwargs: Any) -> Any:
        calls.append(kwargs["max_train_rows"])
        return real(x, k, **kwargs)

    monkeypatch.setattr(pseudo_labeler_module, "cluster_embeddings", spy)
    for value in (KMEANS_MAX_TRAIN_ROWS, None, 40):
        kwargs = {} if value == KMEANS_MAX_TRAIN_ROWS else {"max_train_rows": value}
        make_trainer(1, [PseudoLabeler(nredo=5, **kwargs)]).fit(BoringPseudoModule(), datamodule=BlobDataModule())
    assert calls == [KMEANS_MAX_TRAIN_ROWS, None, 40]


def test_degenerate_pseudo_labels_warn() -> None:
    """A constant teacher puts every sample in one cluster: a UserWarning names the likely causes."""
    constant = nn.Linear(DIM, DIM)
    with torch.no_grad():
        constant.weight.zero_()
        constant.bias.fill_(1.0)
    with pytest.warns(UserWarning, match=r"4 of 5 are empty .* collapsed or constant embeddings"):
        make_trainer(1, [PseudoLabeler(teacher=constant, pca_dim=None)]).fit(
            BoringPseudoModule(), datamodule=BlobDataModule()
        )
    with warnings.catch_warnings(record=True) as caught:  # separable blobs: no such warning
        warnings.simplefilter("always")
        make_trainer(1, [PseudoLabeler(nredo=5)]).fit(BoringPseudoModule(), datamodule=BlobDataModule())
    assert not [w for w in caught if "degenerate" in str(w.message)]


def test_k_larger_than_pool_and_missing_num_classes() -> None:
    with pytest.raises(ValueError, match="num_clusters=1000 clusters from only 100 samples"):
        make_trainer(1, [PseudoLabeler(num_clusters=1000)]).fit(BoringPseudoModule(), datamodule=BlobDataModule())
    data = Blobs()
    cb = PseudoLabeler(dataloader=DataLoader(data, batch_size=50))
    with pytest.raises(ValueError, match="num_classes"):
        make_trainer(1, [cb]).fit(BoringPseudoModule(), train_dataloaders=DataLoader(data, batch_size=50))


@pytest.mark.parametrize("training", [True, False])
def test_teacher_keeps_requires_grad_and_mode(training: bool) -> None:
    """The callback does not own the teacher: its requires_grad and train/eval flags are left alone."""
    teacher = nn.Sequential(nn.Linear(DIM, DIM), nn.BatchNorm1d(DIM))
    teacher.embed_dim = DIM
    teacher.train(training)
    module = BoringPseudoModule()
    make_trainer(1, [PseudoLabeler(teacher=teacher, pca_dim=None)]).fit(module, datamodule=BlobDataModule())
    assert (module.pseudo_labels >= 0).all()
    assert all(p.requires_grad for p in teacher.parameters())
    assert all(m.training is training for m in teacher.modules())


class _Fill(nn.Module):
    """A teacher whose every embedding is ``value`` (a constant, or NaN)."""

    embed_dim = DIM

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: Tensor) -> Tensor:
        return torch.full((x.shape[0], DIM), self.value)


@pytest.mark.parametrize(("teacher", "kwargs", "match"), [
    (_Fill(1.0), {}, r"PCA whitening needs variance, but all rows are equal"),  # constant embeddings, whitened
    (_Fill(float("nan")), {}, r"non-finite"),
    (_Fill(float("inf")), {"pca_dim": None}, r"non-finite"),
])
def test_odd_teachers_end_in_a_clear_error(teacher: nn.Module, kwargs: dict[str, Any], match: str) -> None:
    """What a teacher cannot be clustered from stops the fit with the reason, not a faiss or numpy error."""
    with pytest.raises(ValueError, match=match):
        make_trainer(1, [PseudoLabeler(teacher=teacher, **kwargs)]).fit(BoringPseudoModule(), datamodule=BlobDataModule())


def test_duplicated_samples_share_a_pseudo_label() -> None:
    data = Blobs()
    data.x[50:] = data.x[:50]  # the second half repeats the first
    dm = BlobDataModule()
    dm.data = data
    module = BoringPseudoModule()
    make_trainer(1, [PseudoLabeler(pca_dim=None)]).fit(module, datamodule=dm)
    assert torch.equal(module.pseudo_labels[50:], module.pseudo_labels[:50]) and (module.pseudo_labels >= 0).all()
