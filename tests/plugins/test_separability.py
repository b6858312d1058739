"""The label-free separability estimate: hand-computed graphs, synthetic separation, invariances, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from threadpoolctl import threadpool_limits

from fewlabel.plugins.evaluation import check_separability_args, separability_score


def blobs(separation: float, seed: int = 0, classes: int = 4, per_class: int = 100, dim: int = 8) -> np.ndarray:
    """``classes`` unit Gaussians in ``dim`` dimensions, class ``c`` shifted by ``separation`` along axis ``c``."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    x = rng.standard_normal((classes * per_class, dim))
    x[np.arange(len(labels)), labels] += separation
    return x.astype(np.float32)


def ring(n: int) -> np.ndarray:
    angles = np.arange(n) * (2 * np.pi / n)
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


@pytest.mark.parametrize("n", [12, 30])
def test_a_ring_is_a_cycle_graph_with_known_spectrum(n: int) -> None:
    # 2 nearest neighbours on an evenly spaced ring: the n-cycle, whose normalised adjacency has
    # eigenvalues cos(2 pi j / n): mu_2 = mu_3 = cos(2 pi / n)
    for num_clusters in (2, 3):
        assert separability_score(ring(n), k=2, num_clusters=num_clusters) == pytest.approx(np.cos(2 * np.pi / n),
                                                                                            abs=1e-9)
    # mu_4 = mu_5 = cos(4 pi / n)
    expected = (2 * np.cos(2 * np.pi / n) + np.cos(4 * np.pi / n)) / 3
    assert separability_score(ring(n), k=2, num_clusters=4) == pytest.approx(expected, abs=1e-9)


def test_disconnected_groups_score_one_and_complete_graphs_are_hand_computed() -> None:
    # two tight groups of 4 on opposite sides: with k = 3 the graph is two disjoint K4
    rng = np.random.default_rng(0)
    groups = np.concatenate([[1.0, 0.0] + 1e-3 * rng.standard_normal((4, 2)),
                             [-1.0, 0.0] + 1e-3 * rng.standard_normal((4, 2))])
    assert separability_score(groups, k=3, num_clusters=2) == pytest.approx(1.0, abs=1e-12)  # 2 components
    # K4's normalised adjacency: 1 and -1/3 (x3); two copies: mu = 1, 1, -1/3, ...
    assert separability_score(groups, k=3, num_clusters=3) == pytest.approx((1 - 1 / 3) / 2, abs=1e-12)


def test_separated_blobs_score_higher_than_overlapping_ones() -> None:
    overlapping = separability_score(blobs(1.0), k=10, num_clusters=4)
    separated = separability_score(blobs(6.0), k=10, num_clusters=4)
    assert separated > overlapping + 0.1
    assert separated == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_monotone_in_the_separation(seed: int) -> None:
    levels = [1.0, 2.0, 3.0, 4.0, 5.0]
    scores = [separability_score(blobs(s, seed), k=10, num_clusters=4) for s in levels]
    assert spearmanr(levels, scores)[0] == pytest.approx(1.0), scores


def test_invariant_to_scaling_and_rotation() -> None:
    x = blobs(2.5).astype(np.float64)
    base = separability_score(x, k=10, num_clusters=4)
    rotation, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((8, 8)))
    row_scale = np.random.default_rng(2).uniform(0.1, 10.0, size=(len(x), 1))
    for variant in (x * 37.5, x * row_scale, x @ rotation, (x @ rotation) * row_scale):
        assert separability_score(variant, k=10, num_clusters=4) == pytest.approx(base, abs=1e-9)


def test_deterministic_input_types_and_the_input_is_not_modified() -> None:
    x = blobs(2.0)
    copy = x.copy()
    first = separability_score(x, k=10, num_clusters=4)
    assert isinstance(first, float)
    assert separability_score(x, k=10, num_clusters=4) == first
    assert separability_score(torch.from_numpy(x), k=10, num_clusters=4) == first
    assert separability_score(x.astype(np.float16), k=10, num_clusters=4) == pytest.approx(first, abs=0.02)
    assert separability_score(x, k=10, num_clusters=4, chunk_size=7) == first
    np.testing.assert_array_equal(x, copy)


def test_max_rows_scores_a_seeded_sample() -> None:
    x = np.concatenate([blobs(3.0, seed=s) for s in range(3)])  # 1,200 rows
    full = separability_score(x, k=10, num_clusters=4, max_rows=None)
    sampled = separability_score(x, k=10, num_clusters=4, max_rows=600, seed=3)
    assert sampled == separability_score(x, k=10, num_clusters=4, max_rows=600, seed=3)
    assert sampled != separability_score(x, k=10, num_clusters=4, max_rows=600, seed=4)
    assert separability_score(x, k=10, num_clusters=4, max_rows=1200) == full  # nothing to sample
    assert abs(sampled - full) < 0.05


def test_sparse_and_dense_spectra_agree() -> None:
    x = blobs(2.0, per_class=150)  # 600 rows: the sparse (Lanczos) path
    sparse_path = separability_score(x, k=10, num_clusters=4)
    dense_path = separability_score(x, k=10, num_clusters=4, max_rows=512)  # the dense path, on a sample
    assert abs(sparse_path - dense_path) < 0.03
    from fewlabel.plugins.evaluation import separability

    graph = separability._normalised_adjacency(separability._knn_graph(x, 10, None, None))
    with threadpool_limits(1):
        dense = np.linalg.eigvalsh(graph.toarray())[::-1][:4]
    np.testing.assert_allclose(separability._top_eigenvalues(graph, 4, seed=0), dense, atol=1e-9)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": 0}, r"k must be an int >= 1 \(neighbours per row\), got 0"),
        ({"k": 2.0}, "k must be an int >= 1"),
        ({"num_clusters": 1}, r"num_clusters must be an int >= 2 \(the expected number of classes\)"),
        ({"num_clusters": True}, "num_clusters must be an int >= 2"),
        ({"max_rows": 5}, r"max_rows must be None \(score every row\) or an int >= max\(k \+ 1, "
                          r"num_clusters\) = 11"),
        ({"k": 40}, r"k=40 neighbours need at least k \+ 1 = 41 rows, got N=40"),
        ({"k": 3, "num_clusters": 41}, "num_clusters=41 is larger than the number of rows N=40"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        separability_score(blobs(2.0, per_class=10), **kwargs)


def test_bad_arrays_are_named() -> None:
    with pytest.raises(ValueError, match=r"embeddings must be a 2-D \(N, D\) array, got shape \(5,\)"):
        separability_score(np.ones(5))
    with pytest.raises(ValueError, match="embeddings is empty"):
        separability_score(np.ones((0, 3)))
    x = blobs(2.0, per_class=10)
    x[3, 1] = np.nan
    with pytest.raises(ValueError, match="embeddings has 1 non-finite values"):
        separability_score(x)
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        check_separability_args(-1, 10)
    check_separability_args(10, 10, None)
