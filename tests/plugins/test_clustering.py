from __future__ import annotations

import math

import numpy as np
import pytest

from fewlabel.plugins.clustering import (
    ClusterResult,
    cluster_embeddings,
    clustering_metrics,
    kmeans,
    pca_whiten,
)


def blobs(n_per: int = 60, k: int = 5, dim: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 10.0, (k, dim))
    x = np.concatenate([c + rng.normal(0.0, 0.5, (n_per, dim)) for c in centers])
    y = np.repeat(np.arange(k), n_per)
    perm = rng.permutation(len(y))
    return x[perm], y[perm]


def test_blobs_are_recovered_through_the_pipeline() -> None:
    x, y = blobs()  # 300 x 32, float64 on purpose
    # pca_dim < D: whitening all 32 isotropic-noise directions would drown the 4 that separate 5 blobs
    res = cluster_embeddings(x, 5, pca_dim=16, nredo=5)
    assert isinstance(res, ClusterResult)
    assert res.labels.dtype == np.int64 and res.labels.shape == (300,)
    assert res.centroids.dtype == np.float32 and res.centroids.shape == (5, 16)
    metrics = clustering_metrics(res.labels, y)
    assert metrics["nmi"] == pytest.approx(1.0) and metrics["accuracy"] == 1.0 and metrics["ari"] == pytest.approx(1.0)
    assert res.sizes.tolist() == np.bincount(res.labels, minlength=5).tolist() and res.num_empty == 0
    small_x, small_y = blobs(n_per=20, dim=8)  # default pca_dim=128 falls back to D = 8
    small = cluster_embeddings(small_x, 5, nredo=5)
    assert small.centroids.shape == (5, 8)
    assert clustering_metrics(small.labels, small_y)["nmi"] == pytest.approx(1.0)


def test_deterministic_for_a_seed() -> None:
    x, _ = blobs(n_per=40, k=8, dim=16, seed=3)
    x = x + np.random.default_rng(1).normal(0, 5.0, x.shape)  # overlapping, so the seed matters
    a = cluster_embeddings(x, 8, seed=7)
    b = cluster_embeddings(x, 8, seed=7)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    la, ca = kmeans(x, 8, seed=2)
    lb, cb = kmeans(x, 8, seed=2)
    np.testing.assert_array_equal(la, lb)
    np.testing.assert_array_equal(ca, cb)


def test_pca_whitening_gives_identity_covariance() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 20)) @ rng.normal(size=(20, 20)) + 3.0  # correlated, offset
    y = pca_whiten(x, 8)
    assert y.shape == (2000, 8) and y.dtype == np.float32 and y.flags.c_contiguous
    np.testing.assert_allclose(y.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(np.cov(y.T, bias=True), np.eye(8), atol=1e-3)
    plain = pca_whiten(x, 8, eigen_power=0.0)  # plain PCA: decorrelated, decreasing variance
    var = np.cov(plain.T, bias=True)
    np.testing.assert_allclose(var - np.diag(np.diag(var)), 0.0, atol=1e-2)
    assert np.all(np.diff(np.diag(var)) <= 1e-6)


def test_pca_dim_fallback_for_small_d_and_n() -> None:
    rng = np.random.default_rng(0)
    assert pca_whiten(rng.normal(size=(50, 6)), 128).shape == (50, 6)  # D < dim
    assert pca_whiten(rng.normal(size=(5, 32)), 128).shape == (5, 4)  # N - 1 < dim
    res = cluster_embeddings(rng.normal(size=(5, 32)), 2)
    assert res.centroids.shape == (2, 4)
    with pytest.raises(ValueError, match="at least 2 samples"):
        pca_whiten(rng.normal(size=(1, 4)), 2)
    with pytest.raises(ValueError, match="fewer than"):
        pca_whiten(np.ones((10, 3)), 2)  # no variance to whiten


@pytest.mark.parametrize(
    ("x", "k", "match"),
    [
        (np.zeros((4, 3)), 5, r"k=5 .* N=4"),
        (np.zeros((4, 3)), 0, "k must be an integer >= 1"),
        (np.zeros(12), 2, "2-D"),
        (np.zeros((0, 3)), 1, "empty"),
        (np.array([[0.0, np.nan], [np.inf, 1.0], [1.0, 2.0]]), 2, "2 non-finite"),
    ],
)
def test_errors(x: np.ndarray, k: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        cluster_embeddings(x, k)
    with pytest.raises(ValueError, match=match):
        kmeans(x, k)


def test_metrics_invariant_to_permutation_and_ignore_unknown() -> None:
    true = np.array([0, 0, 1, 1, 2, 2, -1, -1])
    pred = np.array([2, 2, 0, 0, 1, 1, 0, 2])
    m = clustering_metrics(pred, true)
    assert m["accuracy"] == 1.0 and m["nmi"] == pytest.approx(1.0) and m["ari"] == pytest.approx(1.0)


def test_metrics_hand_computed() -> None:
    # contingency (pred x true) = [[1, 1], [0, 2]]: best matching 0->0, 1->1 gets 3 of 4.
    m = clustering_metrics([0, 0, 1, 1], [0, 1, 1, 1])
    assert m["accuracy"] == pytest.approx(0.75)
    # ARI: sum C(n_ij, 2) = 1, expected = C(2,2)+C(2,2) times C(3,2) over C(4,2) = 2 * 3 / 6 = 1, max = 2.5.
    assert m["ari"] == pytest.approx(0.0, abs=1e-12)
    h_pred = math.log(2)
    h_true = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    mi = 0.25 * math.log(2) + 0.25 * math.log(2 / 3) + 0.5 * math.log(4 / 3)
    assert m["nmi"] == pytest.approx(mi / ((h_pred + h_true) / 2))
    with pytest.raises(ValueError, match="no row has a true label"):
        clustering_metrics([0, 1], [-1, -1])
