"""``FewLabelDataModule.with_labels``: a cheap view with another label draw; the original is untouched."""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn

from fewlabel.datamodules import DigitsDataModule
from tests.callbacks.trainer_helpers import RecordingLogger


@pytest.fixture
def dm() -> DigitsDataModule:
    module = DigitsDataModule(labels_per_class=5, seed=0, batch_size=16, labeled_samples_per_epoch=40)
    module.setup("fit")
    return module


def _indices(loader: torch.utils.data.DataLoader) -> list[int]:
    return torch.cat([batch["index"] for batch in loader]).tolist()


def test_view_shares_the_loaded_data(dm: DigitsDataModule) -> None:
    view = dm.with_labels(2, seed=3)
    assert type(view) is DigitsDataModule and view is not dm
    assert view._pool is dm._pool and view._val is dm._val and view._test is dm._test
    pool_inputs = dm._pool.source.inputs  # type: ignore[union-attr]
    assert view.labeled_dataloader().dataset.dataset.source.inputs.data_ptr() == pool_inputs.data_ptr()
    assert view.unlabeled_dataloader().dataset.dataset is dm._pool
    assert view.test_dataloader().dataset.dataset is dm._test
    assert view.class_names == dm.class_names and view.num_unlabeled == dm.num_unlabeled


def test_view_needs_no_setup_and_never_reloads(dm: DigitsDataModule, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_reload() -> Any:
        raise AssertionError("load_splits called again")

    monkeypatch.setattr(dm, "load_splits", no_reload)
    view = dm.with_labels(1, seed=0)
    view.setup("fit")
    assert len(view.labeled_indices) == 10


def test_original_is_untouched(dm: DigitsDataModule) -> None:
    before = dm.labeled_indices
    hparams, initial = dict(dm.hparams), dict(dm.hparams_initial)
    view = dm.with_labels(1, seed=7)
    assert np.array_equal(dm.labeled_indices, before) and len(before) == 50
    assert (dm.labels_per_class, dm.seed) == (5, 0) and (view.labels_per_class, view.seed) == (1, 7)
    assert dict(dm.hparams) == hparams and dict(dm.hparams_initial) == initial
    assert sorted(_indices(dm.labeled_dataloader(train=False))) == before.tolist()
    assert len(_indices(view.labeled_dataloader(train=False))) == 10


@pytest.mark.parametrize(("labels_per_class", "seed"), [(1, 0), (3, 4), (5, 0), (None, 2)])
def test_draw_equals_draw_labels(dm: DigitsDataModule, labels_per_class: int | None, seed: int) -> None:
    view = dm.with_labels(labels_per_class, seed)
    other = DigitsDataModule(labels_per_class=5, seed=0, batch_size=16, labeled_samples_per_epoch=40)
    other.setup("fit")
    other.draw_labels(labels_per_class, seed)
    assert np.array_equal(view.labeled_indices, other.labeled_indices)
    assert len(view.labeled_dataloader()) == len(other.labeled_dataloader())  # the same oversampling
    assert (view.labels_per_class, view.seed) == (other.labels_per_class, other.seed)


def test_views_of_views_and_draws_differ(dm: DigitsDataModule) -> None:
    a, b = dm.with_labels(2, seed=0), dm.with_labels(2, seed=1)
    assert not np.array_equal(a.labeled_indices, b.labeled_indices)
    again = b.with_labels(2, seed=0)
    assert np.array_equal(again.labeled_indices, a.labeled_indices) and again._pool is dm._pool
    assert b.labels_per_class == 2 and b.seed == 1


def test_hparams_are_the_views_own(dm: DigitsDataModule) -> None:
    view = dm.with_labels(2, seed=9)
    assert view.hparams is not dm.hparams
    assert view.hparams["labels_per_class"] == 2 and view.hparams["seed"] == 9
    assert view.hparams_initial["labels_per_class"] == 2 and view.hparams_initial["seed"] == 9
    assert dm.hparams["labels_per_class"] == 5 and dm.hparams_initial["labels_per_class"] == 5
    assert view.hparams["batch_size"] == 16 and view.hparams["labeled_samples_per_epoch"] == 40
    view.hparams["batch_size"] = 3
    assert dm.hparams["batch_size"] == 16


class _Linear(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return nn.functional.cross_entropy(self.net(batch["input"]), batch["label"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.filterwarnings("ignore:.*LeafSpec.*")
@pytest.mark.filterwarnings("ignore:.*does not have many workers.*")
@pytest.mark.filterwarnings("ignore:You passed in a `val_dataloader` but have no `validation_step`")
def test_a_trainer_logs_the_views_draw(dm: DigitsDataModule, tmp_path: Any) -> None:
    view = dm.with_labels(1, seed=4)
    logger = RecordingLogger()
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=logger, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        log_every_n_steps=1)
    trainer.fit(_Linear(), datamodule=view)
    assert logger.params["labels_per_class"] == 1 and logger.params["seed"] == 4
    assert trainer.global_step == 3  # 10 labeled samples repeated to 40, batch 16
    assert dm.trainer is None and view.trainer is trainer


def test_errors(dm: DigitsDataModule) -> None:
    with pytest.raises(RuntimeError, match=r"DigitsDataModule.setup\(\) must be called first"):
        DigitsDataModule(labels_per_class=1).with_labels(1, seed=0)
    with pytest.raises(ValueError, match="labels_per_class must be an int >= 1, got 0"):
        dm.with_labels(0, seed=0)
    with pytest.raises(ValueError, match="labels_per_class=500 is too many: class"):
        dm.with_labels(500, seed=0)
    with pytest.raises(ValueError, match="seed must be an int >= 0, got -1"):
        dm.with_labels(1, seed=-1)
    with pytest.raises(ValueError, match="seed must be an int >= 0, got 1.5"):
        dm.with_labels(None, seed=1.5)  # type: ignore[arg-type]
    assert (dm.labels_per_class, dm.seed, len(dm.labeled_indices)) == (5, 0, 50)
