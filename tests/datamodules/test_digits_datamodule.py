"""Tests of FewLabelDataModule through DigitsDataModule (sklearn's bundled digits)."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn

from fewlabel.datamodules import DatasetSplits, DigitsDataModule


def _collect(loader: torch.utils.data.DataLoader) -> dict[str, torch.Tensor]:
    batches = list(loader)
    return {key: torch.cat([b[key] for b in batches]) for key in batches[0]}


@pytest.fixture(scope="module")
def dm() -> DigitsDataModule:
    module = DigitsDataModule(labels_per_class=5, seed=0, batch_size=64)
    module.setup("fit")
    return module


def test_split_sizes() -> None:
    no_val = DigitsDataModule(val_fraction=0.0)
    no_val.setup()
    assert no_val.num_unlabeled == 1257
    assert len(no_val.test_dataloader().dataset) == 540
    assert len(no_val.val_dataloader().dataset) == 0
    with_val = DigitsDataModule(val_fraction=0.1)
    with_val.setup()
    n_val = len(with_val.val_dataloader().dataset)
    assert n_val == 126 and with_val.num_unlabeled + n_val == 1257


def test_metadata(dm: DigitsDataModule) -> None:
    assert dm.num_classes == 10
    assert dm.class_names == [str(i) for i in range(10)]
    assert dm.input_shape == (1, 8, 8)
    assert dm.pool_targets.dtype == np.int64 and dm.pool_targets.shape == (dm.num_unlabeled,)


def test_batch_keys_dtypes_shapes(dm: DigitsDataModule) -> None:
    for loader in (dm.labeled_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        batch = next(iter(loader))
        assert list(batch) == ["input", "label", "index"]
        assert batch["input"].dtype == torch.float32 and batch["input"].shape[1:] == (1, 8, 8)
        assert batch["label"].dtype == torch.long and batch["index"].dtype == torch.long
        assert 0.0 <= batch["input"].min() and batch["input"].max() <= 1.0
    batch = next(iter(dm.unlabeled_dataloader()))
    assert list(batch) == ["input", "label", "index", "target"]
    assert batch["input"].shape == (64, 1, 8, 8) and batch["target"].dtype == torch.long


def test_labeled_loader_is_the_budget_with_true_labels(dm: DigitsDataModule) -> None:
    seen = _collect(dm.labeled_dataloader())
    assert seen["index"].numel() == 50
    assert sorted(seen["index"].tolist()) == dm.labeled_indices.tolist()
    np.testing.assert_array_equal(seen["label"].numpy(), dm.pool_targets[seen["index"].numpy()])
    assert np.bincount(seen["label"].numpy()).tolist() == [5] * 10


def test_labeled_indices_point_into_the_pool(dm: DigitsDataModule) -> None:
    idx = dm.labeled_indices
    assert idx.min() >= 0 and idx.max() < dm.num_unlabeled
    assert np.bincount(dm.pool_targets[idx]).tolist() == [5] * 10
    pool = _collect(dm.unlabeled_dataloader(train=False))
    labeled = _collect(dm.labeled_dataloader())
    order = labeled["index"].argsort()
    torch.testing.assert_close(labeled["input"][order], pool["input"][dm.labeled_indices])


def test_unlabeled_loader_hides_labels(dm: DigitsDataModule) -> None:
    seq = _collect(dm.unlabeled_dataloader(train=False))
    n = dm.num_unlabeled
    assert seq["index"].tolist() == list(range(n))
    assert (seq["label"] == -1).all()
    np.testing.assert_array_equal(seq["target"].numpy(), dm.pool_targets)
    assert _collect(dm.predict_dataloader())["index"].tolist() == list(range(n))
    shuffled = _collect(dm.unlabeled_dataloader(train=True))
    assert shuffled["index"].numel() == (n // 64) * 64  # drop_last
    assert (shuffled["label"] == -1).all() and shuffled["index"].tolist() != sorted(shuffled["index"].tolist())
    np.testing.assert_array_equal(shuffled["target"].numpy(), dm.pool_targets[shuffled["index"].numpy()])


def test_train_split_switch(dm: DigitsDataModule) -> None:
    assert _collect(dm.train_dataloader())["index"].numel() == 50
    dm.train_split = "unlabeled"
    try:
        assert (next(iter(dm.train_dataloader()))["label"] == -1).all()
    finally:
        dm.train_split = "labeled"
    with pytest.raises(ValueError, match="'labeled', 'unlabeled'"):
        dm.train_split = "both"


def test_seeds_change_labels_but_not_validation() -> None:
    a, b = DigitsDataModule(labels_per_class=3, seed=0), DigitsDataModule(labels_per_class=3, seed=1)
    a.setup()
    b.setup()
    assert a.labeled_indices.tolist() != b.labeled_indices.tolist()
    torch.testing.assert_close(_collect(a.val_dataloader())["input"], _collect(b.val_dataloader())["input"])
    np.testing.assert_array_equal(a.pool_targets, b.pool_targets)


def test_no_budget_labels_the_whole_pool() -> None:
    dm = DigitsDataModule()
    dm.setup()
    assert dm.labeled_indices.tolist() == list(range(dm.num_unlabeled))


def test_setup_is_idempotent() -> None:
    calls = []

    class Counting(DigitsDataModule):
        def load_splits(self) -> DatasetSplits:
            calls.append(1)
            return super().load_splits()

    dm = Counting(labels_per_class=2)
    dm.setup("fit")
    first = dm.labeled_indices
    dm.setup("test")
    assert len(calls) == 1
    np.testing.assert_array_equal(first, dm.labeled_indices)


def test_budget_larger_than_a_class_fails_at_setup() -> None:
    dm = DigitsDataModule(labels_per_class=500)
    with pytest.raises(ValueError, match=r"labels_per_class=500 is too many: class '\d' has only \d+ training samples"):
        dm.setup()


def test_check_label_budget(dm: DigitsDataModule) -> None:
    counts = np.bincount(dm.pool_targets)
    smallest, name = int(counts.min()), dm.class_names[int(counts.argmin())]
    dm.check_label_budget([1, 5, smallest])
    message = f"labels_per_class={smallest + 1} is too many: class '{name}' has only {smallest} training samples"
    with pytest.raises(ValueError, match=message):
        dm.check_label_budget([1, smallest + 1, 10_000])
    with pytest.raises(ValueError, match="labels_per_class must be an int >= 1, got 0"):
        dm.check_label_budget([0])
    with pytest.raises(RuntimeError, match="setup"):
        DigitsDataModule().check_label_budget([1])


def test_properties_need_setup() -> None:
    with pytest.raises(RuntimeError, match="setup"):
        DigitsDataModule().num_classes


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"labels_per_class": 0}, "labels_per_class"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"batch_size": 0}, "batch_size"),
        ({"eval_batch_size": -2}, "eval_batch_size"),
        ({"num_workers": -1}, "num_workers"),
        ({"train_split": "all"}, "train_split"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        DigitsDataModule(**kwargs)  # type: ignore[arg-type]


class _Linear(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return nn.functional.cross_entropy(self.net(batch["input"]), batch["label"])

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.log("val_loss", nn.functional.cross_entropy(self.net(batch["input"]), batch["label"]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.filterwarnings("ignore:.*LeafSpec.*")
def test_runs_in_a_trainer(tmp_path) -> None:  # type: ignore[no-untyped-def]
    dm = DigitsDataModule(labels_per_class=2, batch_size=8)
    trainer = L.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )
    trainer.fit(_Linear(), datamodule=dm)
    assert trainer.global_step == 3  # 20 labeled samples, batch 8, no drop_last
    assert dm.hparams["labels_per_class"] == 2


def test_sequential_labeled_loader_serves_each_labeled_sample_once_and_gathers() -> None:
    from fewlabel.plugins import gather_embeddings

    dm = DigitsDataModule(labels_per_class=3, labeled_samples_per_epoch=100, eval_batch_size=7)
    dm.setup("fit")
    loader = dm.labeled_dataloader(train=False)
    indices = torch.cat([batch["index"] for batch in loader])
    assert indices.tolist() == sorted(dm.labeled_indices.tolist())  # once each, in order, no tiling
    assert len(dm.labeled_dataloader()) * dm.batch_size >= 100  # the training form still tiles
    assert loader.dataset.num_positions == dm.num_unlabeled  # "index" refers to the whole pool
    emb = gather_embeddings(torch.nn.Flatten(), loader)  # a view of part of the pool gathers by pool position
    assert emb.indices.tolist() == sorted(dm.labeled_indices.tolist()) and emb.embeddings.shape == (30, 64)
