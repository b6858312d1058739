"""FewLabelDataModule(labeled_samples_per_epoch=...): tiny labeled draws repeated to full epochs."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from fewlabel.datamodules import DigitsDataModule


def _epoch_indices(dm: DigitsDataModule) -> list[int]:
    return [int(i) for batch in dm.train_dataloader() for i in batch["index"]]


def test_default_serves_every_labeled_sample_once() -> None:
    dm = DigitsDataModule(labels_per_class=1, batch_size=64)
    dm.setup("fit")
    assert dm.labeled_samples_per_epoch is None
    seen = _epoch_indices(dm)
    assert sorted(seen) == sorted(dm.labeled_indices.tolist())


def test_small_draw_is_repeated_evenly_to_at_least_the_requested_size() -> None:
    dm = DigitsDataModule(labels_per_class=1, batch_size=64, labeled_samples_per_epoch=64)
    dm.setup("fit")
    seen = _epoch_indices(dm)  # 10 labeled samples -> 7 copies each = 70 >= 64
    assert len(seen) == 70
    counts = Counter(seen)
    assert set(counts) == set(dm.labeled_indices.tolist()) and set(counts.values()) == {7}
    first_batch = next(iter(dm.train_dataloader()))
    assert first_batch["input"].shape[0] == 64 and (first_batch["label"] >= 0).all()
    # the unlabeled loader and the draw itself are untouched
    assert len(dm.labeled_indices) == 10
    dm.train_split = "unlabeled"
    assert len(dm.train_dataloader().dataset) == dm.num_unlabeled


def test_large_enough_draw_and_redraws_are_unchanged() -> None:
    dm = DigitsDataModule(labels_per_class=10, batch_size=32, labeled_samples_per_epoch=50)
    dm.setup("fit")
    assert sorted(_epoch_indices(dm)) == sorted(dm.labeled_indices.tolist())  # 100 >= 50
    dm.draw_labels(2, seed=3)
    seen = _epoch_indices(dm)
    assert len(seen) == 60 and set(Counter(seen).values()) == {3}
    assert np.array_equal(np.unique(seen), dm.labeled_indices)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_invalid_value_is_rejected(bad: object) -> None:
    with pytest.raises(ValueError, match="labeled_samples_per_epoch"):
        DigitsDataModule(labeled_samples_per_epoch=bad)  # type: ignore[arg-type]
