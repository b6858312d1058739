"""Property tests (hypothesis) of the label budget and the held-out splits on odd label vectors (one
sample per class, absent classes, unknown labels, tiny and skewed classes), and of a datamodule built on
them: each case ends in a correct draw or a ValueError that names the problem."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fewlabel.datamodules import (
    DatasetSplits,
    FewLabelDataModule,
    InMemoryDataset,
    label_budget_split,
    stratified_split,
)

SETTINGS = settings(max_examples=60, deadline=None)
targets_strategy = st.lists(st.integers(-1, 4), min_size=1, max_size=60).map(lambda t: np.array(t, dtype=np.int64))


@SETTINGS
@given(targets=targets_strategy, k=st.integers(1, 8), seed=st.integers(0, 2**31))
def test_a_draw_has_exactly_k_of_every_class_or_names_the_short_one(targets: np.ndarray, k: int, seed: int) -> None:
    known = targets[targets >= 0]
    if known.size == 0:
        with pytest.raises(ValueError, match="no sample has a known"):
            label_budget_split(targets, k, seed)
        return
    classes, counts = np.unique(known, return_counts=True)
    if counts.min() < k:
        short = int(classes[np.argmin(counts)])
        with pytest.raises(ValueError, match=rf"labels_per_class={k} is too many: class {short} has only "
                                             rf"{counts.min()} training samples"):
            label_budget_split(targets, k, seed)
        return
    drawn = label_budget_split(targets, k, seed)
    assert (np.diff(drawn) > 0).all() and (targets[drawn] >= 0).all()  # sorted, distinct, never unknown
    assert np.bincount(targets[drawn], minlength=5)[classes].tolist() == [k] * len(classes)
    assert np.array_equal(drawn, label_budget_split(targets, k, seed))  # the seed fixes the draw


@SETTINGS
@given(targets=targets_strategy, fraction=st.floats(0.0, 0.9), seed=st.integers(0, 100))
def test_a_held_out_split_partitions_the_labeled_samples_or_says_why_not(targets: np.ndarray, fraction: float,
                                                                         seed: int) -> None:
    try:
        keep, held = stratified_split(targets, fraction, seed)
    except ValueError as err:
        known = targets[targets >= 0]
        counts = np.unique(known, return_counts=True)[1]
        assert fraction > 0 and ("single sample" in str(err) and (counts < 2).any()
                                 or "each side needs one sample of each" in str(err)
                                 or "with none on the" in str(err)
                                 or "no sample has a known" in str(err) and not known.size), err
        return
    assert np.array_equal(np.sort(np.concatenate([keep, held])), np.arange(targets.size))
    assert (targets[held] >= 0).all()  # unknown labels are never held out
    known = int((targets >= 0).sum())
    assert len(held) == (math.ceil(fraction * known) if fraction > 0 else 0)
    if fraction > 0:  # every class on both sides
        assert set(targets[held].tolist()) == set(targets[keep][targets[keep] >= 0].tolist())


class Tiny(FewLabelDataModule):
    """A datamodule over a label vector: inputs are the sample positions (duplicates share an input)."""

    def __init__(self, targets: np.ndarray, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.targets = targets

    def load_splits(self) -> DatasetSplits:
        inputs = torch.zeros(len(self.targets), 2)  # every sample identical: duplicated inputs
        data = InMemoryDataset(inputs, self.targets)
        return DatasetSplits(train=data, test=data, class_names=[f"c{i}" for i in range(5)])


@SETTINGS
@given(targets=st.lists(st.integers(0, 4), min_size=1, max_size=40).map(np.array), k=st.integers(1, 4),
       val_fraction=st.sampled_from([0.0, 0.25]))
def test_a_datamodule_draws_its_budget_or_names_the_class(targets: np.ndarray, k: int, val_fraction: float) -> None:
    dm = Tiny(targets, labels_per_class=k, val_fraction=val_fraction, batch_size=4)
    try:
        dm.setup()
    except ValueError as err:
        message = str(err)
        assert any(part in message for part in ("class 'c", "single sample", "each side needs")), message
        return
    labeled = dm.pool_targets[dm.labeled_indices]
    assert np.bincount(labeled, minlength=5).tolist() == [k] * 5
    batch = next(iter(dm.labeled_dataloader()))
    assert set(batch) >= {"input", "label", "index"} and (batch["label"] >= 0).all()
    assert dm.num_unlabeled + len(dm.val_dataloader().dataset) == len(targets)
