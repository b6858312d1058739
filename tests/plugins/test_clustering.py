from __future__ import annotations

import math
import warnings
from typing import Any

import faiss
import numpy as np
import pytest

import fewlabel.plugins.clustering.faiss_kmeans as kmeans_module

from fewlabel.plugins.clustering import (
    KMEANS_MAX_TRAIN_ROWS,
    ClusterResult,
    cluster_embeddings,
    check_keep_fraction,
    degenerate_clusters,
    keep_confident,
    kmeans,
    pca_whiten,
)
from fewlabel.plugins.evaluation import clustering_metrics


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
        (np.zeros((4, 3)), 0, "k must be an int >= 1"),
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


def test_chunked_assignment_equals_one_shot() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 16)).astype(np.float32)
    labels, centroids = kmeans(x, 40, niter=5)
    chunked, chunked_centroids = kmeans(x, 40, niter=5, chunk_size=7)
    np.testing.assert_array_equal(chunked, labels)
    np.testing.assert_array_equal(chunked_centroids, centroids)
    index = faiss.IndexFlatL2(16)  # one faiss search over all rows
    index.add(centroids)
    np.testing.assert_array_equal(index.search(x, 1)[1][:, 0], labels)
    full = cluster_embeddings(x, 40, pca_dim=8, niter=5)
    parts = cluster_embeddings(x, 40, pca_dim=8, niter=5, chunk_size=13)
    np.testing.assert_array_equal(parts.labels, full.labels)
    assert parts.inertia == pytest.approx(full.inertia, rel=1e-5)


def test_training_on_a_seeded_sample_assigns_every_row() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5000, 8)).astype(np.float32)
    # max_train_rows = 400 < N: faiss trains on 400 sampled rows, all 5000 are assigned
    labels, centroids = kmeans(x, 10, max_train_rows=400, seed=3)
    again, _ = kmeans(x, 10, max_train_rows=400, seed=3)
    np.testing.assert_array_equal(labels, again)
    index = faiss.IndexFlatL2(8)
    index.add(centroids)
    dist, nearest = index.search(x, 1)
    np.testing.assert_array_equal(labels, nearest[:, 0])
    res = cluster_embeddings(x, 10, pca_dim=None, l2_normalize=False, max_train_rows=400, seed=3)
    np.testing.assert_array_equal(res.labels, labels)
    assert res.inertia == pytest.approx(float(dist.sum()), rel=1e-4)
    assert res.sizes.sum() == 5000


class _TrainSpy(faiss.Kmeans):
    """faiss.Kmeans that records, at each ``train``, the rows it got and how many faiss itself would keep."""

    calls: list[tuple[int, int]] = []

    def train(self, x: np.ndarray, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((x.shape[0], self.k * self.cp.max_points_per_centroid))
        return super().train(x, *args, **kwargs)


def test_kmeans_trains_on_every_row_by_default(monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture) -> None:
    """Up to KMEANS_MAX_TRAIN_ROWS rows faiss trains on all of them (the old default sampled k * 256 rows)."""
    assert KMEANS_MAX_TRAIN_ROWS >= 250_000
    x = np.random.default_rng(0).normal(size=(3000, 8)).astype(np.float32)
    monkeypatch.setattr(kmeans_module.faiss, "Kmeans", _TrainSpy)
    _TrainSpy.calls.clear()
    kmeans(x, 2)
    cluster_embeddings(x, 2, pca_dim=4)
    kmeans(x, 2, max_train_rows=None)
    kmeans(x, 2, max_train_rows=1000)
    kmeans(x, 2, max_train_rows=3000)
    rows = [got for got, _ in _TrainSpy.calls]
    assert rows == [3000, 3000, 3000, 1000, 3000]
    assert all(kept >= got for got, kept in _TrainSpy.calls)  # faiss does not subsample again
    out, err = capfd.readouterr()
    assert "WARNING" not in out + err and "Sampling" not in out + err
    kmeans(x[:50], 5, max_train_rows=10)  # below faiss' own 39 points per centroid: no warning either
    out, err = capfd.readouterr()
    assert out + err == ""


def test_every_row_gives_the_same_result_as_none() -> None:
    x, _ = blobs(n_per=40, k=4, dim=6)
    np.testing.assert_array_equal(kmeans(x, 4, max_train_rows=None)[0], kmeans(x, 4)[0])
    full = cluster_embeddings(x, 4, max_train_rows=None, pca_dim=3)
    np.testing.assert_array_equal(cluster_embeddings(x, 4, max_train_rows=len(x), pca_dim=3).labels, full.labels)


@pytest.mark.parametrize(("value", "match"), [(0, ">= 3"), (2, ">= 3"), (True, ">= 3"), (1.5, ">= 3"), ("all", ">= 3")])
def test_max_train_rows_validation(value: Any, match: str) -> None:
    x = np.random.default_rng(0).normal(size=(20, 4))
    for fn in (kmeans, cluster_embeddings):
        with pytest.raises(ValueError, match=f"max_train_rows must be an int {match} .* or None"):
            fn(x, 3, max_train_rows=value)


def test_degenerate_clusters_hand_cases() -> None:
    assert "3 of 4 are empty" in degenerate_clusters([100, 0, 0, 0])
    assert "3 of 5 are empty" in degenerate_clusters([0, 0, 0, 5, 5])  # most clusters empty
    assert "91.0%" in degenerate_clusters([91, 9])  # one cluster holds nearly everything
    for fine in ([30, 40, 30], [90, 10], [0, 0, 5, 5], [7], [0, 0]):
        assert degenerate_clusters(fine) is None, fine


def test_constant_embeddings_warn_and_normal_ones_do_not() -> None:
    with pytest.warns(UserWarning, match=r"9 of 10 are empty and the largest holds 100.0% .* constant embeddings"):
        res = cluster_embeddings(np.ones((200, 8)), 10, pca_dim=None)
    assert res.num_empty == 9
    x, _ = blobs(n_per=40, k=4, dim=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cluster_embeddings(x, 4, nredo=5)


def test_float16_and_memmap_inputs_are_read_in_chunks(tmp_path: Any) -> None:
    x, _ = blobs(n_per=50, k=4, dim=12)
    x16 = x.astype(np.float16)
    ref = cluster_embeddings(x16.astype(np.float32), 4, pca_dim=6, nredo=3)
    np.testing.assert_array_equal(cluster_embeddings(x16, 4, pca_dim=6, nredo=3, chunk_size=17).labels, ref.labels)
    mm = np.memmap(tmp_path / "x.f32", dtype=np.float32, mode="w+", shape=x.shape)
    mm[:] = x
    np.testing.assert_array_equal(
        cluster_embeddings(mm, 4, pca_dim=6, nredo=3).labels, cluster_embeddings(np.array(mm), 4, pca_dim=6, nredo=3).labels
    )
    np.testing.assert_array_equal(mm, x.astype(np.float32))  # the input is never modified


def test_whitening_with_constant_columns_drops_zero_variance_components() -> None:
    rng = np.random.default_rng(0)
    signal = rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6))
    x = np.concatenate([signal, np.full((500, 3), 7.0), np.zeros((500, 1))], axis=1).astype(np.float32)
    y = pca_whiten(x, 128)
    assert y.shape == (500, 6) and np.isfinite(y).all()
    np.testing.assert_allclose(np.cov(y.T, bias=True), np.eye(6), atol=1e-3)
    assert pca_whiten(x, 4).shape == (500, 4)
    assert pca_whiten(x, 128, eigen_power=0.0).shape == (500, 10)  # plain PCA keeps them (no division)
    duplicated = np.concatenate([signal, signal[:, :2]], axis=1)  # rank 6 in 8 dims
    assert pca_whiten(duplicated, 8).shape == (500, 6)
    blob_x, blob_y = blobs(n_per=40, k=4, dim=8)
    padded = np.concatenate([blob_x, np.ones((160, 5))], axis=1)
    res = cluster_embeddings(padded, 4, nredo=5)  # default pca_dim=128 > D: whitening used to raise here
    assert res.centroids.shape == (4, 8)
    assert clustering_metrics(res.labels, blob_y)["nmi"] == pytest.approx(1.0)


def test_chunked_and_sampled_pca_match() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3000, 10)) @ rng.normal(size=(10, 10)) + 5.0
    np.testing.assert_allclose(pca_whiten(x, 5, chunk_size=7), pca_whiten(x, 5), atol=1e-4)
    sampled = pca_whiten(x, 5, max_points=1000, seed=2)  # statistics from 1000 of 3000 rows
    np.testing.assert_allclose(np.cov(sampled.T, bias=True), np.eye(5), atol=0.15)


def test_empty_clusters_are_counted() -> None:
    x = np.repeat(np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]), 10, axis=0)  # 3 distinct points
    res = cluster_embeddings(x, 5, pca_dim=None, l2_normalize=False)
    assert res.num_empty == int((np.bincount(res.labels, minlength=5) == 0).sum()) >= 2
    assert res.sizes.sum() == 30


def test_spherical_option_through_the_pipeline() -> None:
    x, y = blobs(n_per=40, k=4, dim=8)
    res = cluster_embeddings(x, 4, spherical=True, nredo=5)
    np.testing.assert_allclose(np.linalg.norm(res.centroids, axis=1), 1.0, atol=1e-5)
    assert clustering_metrics(res.labels, y)["nmi"] == pytest.approx(1.0)
    assert res.inertia >= 0


class _KmeansSpy:
    """Stands in for faiss.Kmeans and records the ``gpu`` argument it was given."""

    gpu_args: list[Any] = []

    def __init__(self, d: int, k: int, **kwargs: Any) -> None:
        self.gpu_args.append(kwargs.get("gpu"))
        raise _Stop


class _Stop(Exception):
    pass


def test_gpu_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    x = np.random.default_rng(0).normal(size=(200, 4)).astype(np.float32)
    if faiss.get_num_gpus() == 0:  # this machine: faiss-cpu or no GPU
        with pytest.raises(RuntimeError, match=r"use_gpu=True, but faiss sees no GPU"):
            kmeans(x, 3, use_gpu=True)
        with pytest.raises(RuntimeError, match="faiss-gpu"):
            cluster_embeddings(x, 3, use_gpu=True)
        labels, _ = kmeans(x, 3, use_gpu=None)  # auto = CPU here
        np.testing.assert_array_equal(labels, kmeans(x, 3, use_gpu=False)[0])
    # the decision itself, with faiss.Kmeans replaced by a spy
    monkeypatch.setattr(kmeans_module.faiss, "Kmeans", _KmeansSpy)
    _KmeansSpy.gpu_args.clear()
    for gpus, use_gpu, big in [(0, None, True), (0, False, True), (1, None, False), (1, None, True),
                               (1, False, True), (1, True, False)]:
        monkeypatch.setattr(kmeans_module.faiss, "get_num_gpus", lambda gpus=gpus: gpus)
        data = np.zeros((30_000, 128), np.float32) if big else x  # big: rows x k x dims >= 50M
        with pytest.raises(_Stop):
            kmeans(data, 20, use_gpu=use_gpu)
    assert _KmeansSpy.gpu_args == [False, False, False, 1, False, 1]


def test_pca_with_fewer_rows_than_dims_matches_the_covariance_route() -> None:
    """N < D uses the N x N Gram matrix; components must equal those of the D x D covariance."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((300, 500)) @ rng.standard_normal((500, 500)) * 0.1).astype(np.float32)
    y = pca_whiten(x, 128)
    assert y.shape == (300, 128)
    np.testing.assert_allclose(np.cov(y.T, bias=True), np.eye(128), atol=1e-5)
    xc = x.astype(np.float64) - x.mean(0)
    w, v = np.linalg.eigh(xc.T @ xc / len(x))
    ref = xc @ v[:, ::-1][:, :128] / np.sqrt(w[::-1][:128])
    cos = np.abs((ref * y).sum(0)) / np.linalg.norm(ref, axis=0) / np.linalg.norm(y, axis=0)
    assert cos.min() > 0.9999  # equal up to each component's sign


def test_select_pca_dim_prefers_the_dimensions_that_separate_the_classes() -> None:
    """Classes differ in 2 of 40 dimensions: whitening many noise directions drowns them."""
    from fewlabel.plugins.clustering import select_pca_dim

    rng = np.random.default_rng(0)
    signal = np.repeat(np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]]), 60, axis=0)
    scale = np.geomspace(5.0, 1.0, 38)  # noise directions with more variance than the classes' spread
    pool = np.hstack([signal + rng.normal(0, 1, signal.shape), rng.normal(0, 1, (180, 38)) * scale])
    val_signal = np.repeat(np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]]), 10, axis=0)
    val = np.hstack([val_signal + rng.normal(0, 1, val_signal.shape), rng.normal(0, 1, (30, 38)) * scale])
    labels = np.repeat([0, 1, 2], 10)
    best, scores = select_pca_dim(pool, val, labels, 3, candidates=(2, 8, 40, 128), nredo=5)
    assert set(scores) == {2, 8, 40}  # 128 > 40 dimensions: skipped
    assert best == max(scores, key=lambda d: (scores[d], -d))
    assert scores[40] < max(scores.values())
    for bad, match in (((pool, val[:0], labels[:0], 3), "needs validation rows"),
                       ((pool, val, labels[:5], 3), "30 validation rows but labels of shape"),
                       ((pool, val[:, :5], labels, 3), "pool rows have 40 dimensions, validation rows 5")):
        with pytest.raises(ValueError, match=match):
            select_pca_dim(*bad)
    with pytest.raises(ValueError, match="at least one candidate"):
        select_pca_dim(pool, val, labels, 3, candidates=())


@pytest.mark.parametrize("spherical", [False, True])
def test_margins_are_second_minus_first_squared_distance(spherical: bool) -> None:
    x, _ = blobs(n_per=30, k=4, dim=8)
    res = cluster_embeddings(x, 4, pca_dim=6, spherical=spherical, chunk_size=50)
    # brute force in the clustered space: the same PCA-whitening and L2 normalisation, then all distances
    z = pca_whiten(x, 6)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    d2 = ((z[:, None, :] - res.centroids[None]) ** 2).sum(-1)
    two = np.sort(d2, axis=1)[:, :2]
    assert np.array_equal(np.argmin(d2, axis=1), res.labels)
    np.testing.assert_allclose(res.margins, two[:, 1] - two[:, 0], atol=1e-3)  # faiss: float32 expansions
    assert res.margins.dtype == np.float32 and (res.margins >= -1e-5).all()
    assert np.isinf(cluster_embeddings(x, 1, pca_dim=None).margins).all()  # one cluster: no runner-up


def test_keep_confident_keeps_the_widest_margins_of_every_cluster() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 2])
    margins = np.array([0.1, 0.9, 0.5, 0.3, 0.2, 0.7, 1.0, 0.0, 0.8, 0.6, 0.4, 0.2])
    keep = keep_confident(labels, margins, 0.5)
    # ceil(0.5 * size) per cluster: 2 of 4, 1 of 2, 3 of 6, the largest margins each
    assert np.flatnonzero(keep).tolist() == [1, 2, 5, 6, 8, 9]
    assert keep_confident(labels, margins, 1.0).all()
    assert keep_confident(labels, margins, 0.01).sum() == 3  # at least one row per cluster
    assert keep_confident(np.array([3, 3]), np.array([0.5, 0.5]), 0.5).tolist() == [True, False]  # ties: row order


@pytest.mark.parametrize(
    ("labels", "margins", "fraction", "match"),
    [
        ([0, 1], [0.1], 0.5, "equal length"),
        ([0, 1], [0.1, 0.2], 0.0, "keep_fraction"),
        ([0, 1], [0.1, 0.2], 1.5, "keep_fraction"),
        ([0, 1], [0.1, 0.2], True, "keep_fraction"),
        ([0, 1], [0.1, np.nan], 0.5, "NaN"),
    ],
)
def test_keep_confident_errors(labels: Any, margins: Any, fraction: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        keep_confident(np.array(labels), np.array(margins), fraction)


def test_check_keep_fraction_names_its_owner() -> None:
    check_keep_fraction(1)
    check_keep_fraction(0.25)
    with pytest.raises(ValueError, match=r"^Labeler: keep_fraction must be a number in \(0, 1\].*got -0\.5$"):
        check_keep_fraction(-0.5, "Labeler")
