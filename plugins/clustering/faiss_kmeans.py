"""k-means with faiss: thread and GPU policy, training-sample size, chunked assignment of every row.

The k-means of DeepCluster ("Deep Clustering for Unsupervised Learning of Visual Features", Caron
et al., 2018, arXiv 1807.05520) and of the UnFuSeD pseudo-labels (arXiv 2303.05668); spherical
k-means fits DeepCluster-v2's prototypes (arXiv 2006.09882).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import faiss
import numpy as np

from fewlabel.plugins.arguments import is_count
from fewlabel.plugins.arrays import as_matrix, chunk_rows, read_rows

__all__ = [
    "KMEANS_MAX_TRAIN_ROWS",
    "SINGLE_THREAD_WORK",
    "Transform",
    "check_max_train_rows",
    "check_num_clusters",
    "faiss_threads",
    "kmeans",
    "kmeans_transformed",
]

# k-means trains on every row up to this many (a seeded sample beyond), as the UnFuSeD reference trains
# on every row. 1,000,000 x 128 with k = 1000 then pseudo-labels in ~24 s on 2 quiet CPU cores (target
# < 60 s; twice as many training rows took 83 s under load: benchmarks/README.md).
KMEANS_MAX_TRAIN_ROWS = 262_144
# Below this much work (rows x clusters x dims) faiss' OpenMP threads cost more than they save: on a
# loaded 2-core machine a 1131 x 16, k=20 k-means took 0.28 s with 2 threads and 0.001 s with 1.
SINGLE_THREAD_WORK = 50_000_000


def check_num_clusters(k: int, n: int) -> None:
    """Raise unless ``k`` is an integer in ``[1, n]``, naming both numbers."""
    if not is_count(k, 1):
        raise ValueError(f"the number of clusters k must be an int >= 1, got {k!r}")
    if k > n:
        raise ValueError(f"cannot make k={k} clusters from only N={n} samples (need k <= N)")


def check_max_train_rows(max_train_rows: int | None, k: int = 1) -> None:
    """Raise unless ``max_train_rows`` is ``None`` (train k-means on every row) or an integer ``>= k``.

    Args:
        max_train_rows: the k-means training-sample size to check.
        k: the number of clusters it must train (``1`` when not known yet).

    Raises:
        ValueError: naming the valid values and the one given.
    """
    if max_train_rows is not None and not is_count(max_train_rows, k):
        raise ValueError(
            f"max_train_rows must be an int >= {k} (the number of clusters) or None (train on every row), "
            f"got {max_train_rows!r}"
        )


@contextmanager
def faiss_threads(work: int) -> Iterator[None]:
    """Run faiss single-threaded for small problems, with its default thread count otherwise."""
    if work >= SINGLE_THREAD_WORK:
        yield
        return
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def _num_gpus(use_gpu: bool | None, work: int) -> int:
    """GPUs faiss should use: ``None`` = all when faiss has GPU support, a GPU is present and the work is large."""
    available = int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0
    if use_gpu is None:
        return available if work >= SINGLE_THREAD_WORK else 0
    if use_gpu and available == 0:
        raise RuntimeError(
            "use_gpu=True, but faiss sees no GPU (faiss.get_num_gpus() == 0: a faiss-cpu build or no visible "
            "device); install faiss-gpu on a GPU machine, or pass use_gpu=None (auto) or False"
        )
    return available if use_gpu else 0


#: ``transform(block, out)``: a fresh float32 chunk mapped to the clustered space, into ``out`` when given.
Transform = Callable[[np.ndarray, 'np.ndarray | None'], np.ndarray]


def kmeans_transformed(
    x: np.ndarray,
    k: int,
    transform: Transform | None,
    dim: int,
    *,
    niter: int,
    seed: int,
    spherical: bool,
    nredo: int,
    max_train_rows: int | None,
    use_gpu: bool | None,
    chunk_size: int | None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """k-means of ``transform(x)``: train on every row, or a seeded sample of ``max_train_rows`` rows,
    then assign all rows in chunks.

    ``x`` and ``k`` are checked by the caller (:func:`kmeans`, or the pseudo-label pipeline).
    ``transform(block, out)`` maps a fresh float32 chunk of ``x`` to the clustered space (``dim``
    columns), written into ``out`` when given (else returned); ``None`` clusters ``x`` itself. The
    other arguments are those of :func:`kmeans`.

    Returns:
        ``(labels, centroids, inertia, margins)``: int64 ``(N,)``, float32 ``(k, dim)``, the sum over all
        rows of the squared L2 distance to the assigned centroid, and float32 ``(N,)`` margins: each
        row's squared distance to its second-nearest centroid minus that to its nearest (``inf`` when
        ``k = 1``), a confidence of the assignment.
    """
    if niter < 1 or nredo < 1:
        raise ValueError(f"niter and nredo must be >= 1, got niter={niter}, nredo={nredo}")
    n = x.shape[0]
    rows = chunk_rows(max(x.shape[1], dim), chunk_size)
    n_train = n if max_train_rows is None else int(min(n, max_train_rows))
    sample = None if n_train == n else np.sort(np.random.default_rng(seed).choice(n, n_train, replace=False))
    if transform is None and sample is None:
        train = np.ascontiguousarray(x, dtype=np.float32)  # no copy for float32 input
    else:
        train = np.empty((n_train, dim), dtype=np.float32)
        for a in range(0, n_train, rows):
            block = read_rows(x, a, a + rows, sample, fresh=transform is not None)
            if transform is None:
                train[a : a + rows] = block
            else:
                transform(block, train[a : a + rows])
    ngpu = _num_gpus(use_gpu, n * int(k) * dim)
    km = faiss.Kmeans(
        dim,
        int(k),
        niter=int(niter),
        seed=int(seed),
        spherical=bool(spherical),
        nredo=int(nredo),
        # faiss must train on the rows it is given: it would subsample beyond k * max_points_per_centroid
        # and warn below k * min_points_per_centroid (small pools are legitimate here)
        max_points_per_centroid=n_train,
        min_points_per_centroid=1,
        verbose=False,
        gpu=ngpu if ngpu else False,
    )
    centroids_sq = None
    labels = np.empty(n, dtype=np.int64)
    margins = np.full(n, np.inf, dtype=np.float32)
    nearest = min(2, int(k))
    inertia = 0.0
    with faiss_threads(n * int(k) * dim if not ngpu else SINGLE_THREAD_WORK):
        km.train(train)
        centroids = np.ascontiguousarray(km.centroids, dtype=np.float32)
        if spherical:  # IndexFlatIP returns inner products; report squared L2 distances
            centroids_sq = np.einsum("ij,ij->i", centroids, centroids)
        for a in range(0, n, rows):
            if sample is None:  # the training rows are all the rows, already transformed
                block = train[a : a + rows]
            else:
                block = read_rows(x, a, a + rows, None, fresh=transform is not None)
                block = block if transform is None else transform(block, None)
            dist, assign = km.index.search(block, nearest)
            labels[a : a + rows] = assign[:, 0]
            if centroids_sq is not None:
                dist = np.einsum("ij,ij->i", block, block)[:, None] + centroids_sq[assign] - 2.0 * dist
            inertia += float(np.sum(dist[:, 0], dtype=np.float64))
            if nearest == 2:
                margins[a : a + rows] = dist[:, 1] - dist[:, 0]
    return labels, centroids, inertia, margins


def kmeans(
    x: Any,
    k: int,
    *,
    niter: int = 20,
    seed: int = 0,
    spherical: bool = False,
    nredo: int = 1,
    max_train_rows: int | None = KMEANS_MAX_TRAIN_ROWS,
    use_gpu: bool | None = None,
    chunk_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """k-means with ``faiss.Kmeans``; every row is then assigned to its nearest centroid.

    faiss trains on every row, or on a seeded sample of ``max_train_rows`` rows when there are more
    (by default beyond :data:`KMEANS_MAX_TRAIN_ROWS`, so millions of rows stay fast); then all rows
    are assigned chunk by chunk through the faiss index. The extra memory is the training rows plus a
    chunk (none for float32 input trained on every row, which is clustered in place).

    Args:
        x: ``(N, D)`` data (float16/32/64, or a memmap; read in chunks).
        k: number of clusters, ``1 <= k <= N``.
        niter: Lloyd iterations.
        seed: seed of the training sample and of faiss' initialisation; a seed gives the same result.
        spherical: normalise centroids to unit norm after each iteration (inner-product assignment).
        nredo: runs from different random initialisations; the one with the lowest objective is kept.
            faiss initialises with ``k`` random rows, so for small ``k`` a single run often merges
            two clusters; ``1`` matches DeepCluster / UnFuSeD.
        max_train_rows: train on at most this many rows (a seeded sample beyond); ``None`` = every row.
            Must be ``>= k``.
        use_gpu: ``None`` = faiss GPU when faiss has GPU support, a GPU is present and the problem is
            not tiny; ``True`` = GPU or an error; ``False`` = CPU.
        chunk_size: rows per assignment chunk; ``None`` = about 16 MiB of float32. The labels do not
            depend on it.

    Returns:
        ``(labels, centroids)``: int64 ``(N,)`` and float32 ``(k, D)``.

    Raises:
        ValueError: bad input (see :func:`~fewlabel.plugins.clustering.pipeline.cluster_embeddings`),
            ``k`` outside ``[1, N]``, ``niter < 1``, ``max_train_rows`` neither ``None`` nor an integer
            ``>= k``.
        RuntimeError: ``use_gpu=True`` but faiss sees no GPU.
    """
    x = as_matrix(x, chunk_size=chunk_size)
    check_num_clusters(k, x.shape[0])
    check_max_train_rows(max_train_rows, k)
    labels, centroids, _, _ = kmeans_transformed(
        x, k, None, x.shape[1], niter=niter, seed=seed, spherical=spherical, nredo=nredo,
        max_train_rows=max_train_rows, use_gpu=use_gpu, chunk_size=chunk_size,
    )
    return labels, centroids
