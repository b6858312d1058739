"""Tests of the seeded, stratified label budget and held-out splits."""

from __future__ import annotations

import numpy as np
import pytest

from fewlabel.datamodules import label_budget_split, stratified_split


@pytest.fixture
def targets() -> np.ndarray:
    # class 0: 10 samples, class 1: 6, class 2: 4 (the smallest), interleaved
    return np.array([0] * 10 + [1] * 6 + [2] * 4)[np.random.default_rng(1).permutation(20)]


def test_exact_counts_per_class(targets: np.ndarray) -> None:
    idx = label_budget_split(targets, labels_per_class=3, seed=0)
    assert idx.dtype == np.int64
    assert np.all(np.diff(idx) > 0)  # sorted, no repeats
    assert np.bincount(targets[idx]).tolist() == [3, 3, 3]


def test_whole_smallest_class_is_allowed(targets: np.ndarray) -> None:
    idx = label_budget_split(targets, labels_per_class=4, seed=3)
    assert set(np.flatnonzero(targets == 2)) <= set(idx.tolist())


def test_seeded_determinism_and_seeds_differ(targets: np.ndarray) -> None:
    a = label_budget_split(targets, 2, seed=7)
    b = label_budget_split(targets, 2, seed=7)
    np.testing.assert_array_equal(a, b)
    draws = {tuple(label_budget_split(targets, 2, seed=s)) for s in range(5)}
    assert len(draws) > 1


def test_negative_targets_are_never_drawn() -> None:
    targets = np.array([0, 0, -1, 1, 1, -1])
    idx = label_budget_split(targets, 2, seed=0)
    assert idx.tolist() == [0, 1, 3, 4]


def test_too_many_labels_names_the_class(targets: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"class 2 has only 4 training samples; lower labels_per_class to at most 4"):
        label_budget_split(targets, labels_per_class=5, seed=0)
    with pytest.raises(ValueError, match=r"class 'dog' has only 4 training samples"):
        label_budget_split(targets, labels_per_class=5, seed=0, class_names=["cat", "bird", "dog"])


def test_named_class_without_samples_is_an_error(targets: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"class 'fish' has only 0 training samples"):
        label_budget_split(targets, labels_per_class=1, seed=0, class_names=["cat", "bird", "dog", "fish"])
    with pytest.raises(ValueError, match="target 2 has no name"):
        label_budget_split(targets, labels_per_class=1, seed=0, class_names=["cat", "bird"])


def test_names_do_not_change_the_draw(targets: np.ndarray) -> None:
    named = label_budget_split(targets, 3, seed=4, class_names=["cat", "bird", "dog"])
    np.testing.assert_array_equal(named, label_budget_split(targets, 3, seed=4))


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
def test_fewer_than_one_label_is_an_error(targets: np.ndarray, bad: object) -> None:
    with pytest.raises(ValueError, match="labels_per_class"):
        label_budget_split(targets, labels_per_class=bad, seed=0)  # type: ignore[arg-type]


def test_stratified_split_partitions_and_stratifies() -> None:
    targets = np.repeat(np.arange(4), 10)
    keep, held = stratified_split(targets, 0.2, seed=0)
    assert sorted(np.concatenate([keep, held]).tolist()) == list(range(40))
    assert np.bincount(targets[held]).tolist() == [2, 2, 2, 2]
    keep2, held2 = stratified_split(targets, 0.2, seed=0)
    np.testing.assert_array_equal(held, held2)


def test_stratified_split_holds_out_labeled_samples_only() -> None:
    targets = np.array([0, 1] * 10 + [-1] * 7)
    keep, held = stratified_split(targets, 0.2, seed=0)
    assert np.array_equal(np.sort(np.concatenate([keep, held])), np.arange(27))
    assert len(held) == 4 and (targets[held] >= 0).all() and np.bincount(targets[held]).tolist() == [2, 2]
    assert set(np.flatnonzero(targets < 0)) <= set(keep)
    # the labeled samples split as they would without the unlabeled ones
    assert np.array_equal(held, stratified_split(targets[:20], 0.2, seed=0)[1])


def test_stratified_split_zero_fraction_holds_out_nothing() -> None:
    keep, held = stratified_split(np.array([0, 1, 0, 1]), 0.0, seed=0)
    assert keep.tolist() == [0, 1, 2, 3] and held.size == 0 and held.dtype == np.int64


@pytest.mark.parametrize("bad", [1.0, -0.1, 2])
def test_stratified_split_rejects_bad_fraction(bad: float) -> None:
    with pytest.raises(ValueError, match="fraction"):
        stratified_split(np.array([0, 1, 0, 1]), bad, seed=0)


def test_stratified_split_names_a_single_sample_class() -> None:
    targets = np.array([0, 0, 0, 1, 1, 1, 2])
    with pytest.raises(ValueError, match="class 'bird' has a single sample"):
        stratified_split(targets, 0.3, seed=0, class_names=["cat", "dog", "bird"])
    with pytest.raises(ValueError, match="class 2 has a single sample"):
        stratified_split(targets, 0.3, seed=0)
    keep, held = stratified_split(targets, 0.0, seed=0)  # nothing held out: nothing to split
    assert keep.size == 7 and held.size == 0
