"""Clustering primitives: chunked PCA whitening (numpy), faiss k-means and the pseudo-labelling pipeline.

:func:`cluster_embeddings` is the pseudo-labelling step of DeepCluster ("Deep Clustering for
Unsupervised Learning of Visual Features", Caron et al., 2018, arXiv 1807.05520) as used in stage 2
of UnFuSeD ("UnFuSeD: UNsupervised Finetuning Using SElf supervised Distillation", 2023,
arXiv 2303.05668): PCA to 128 dimensions with whitening (eigen power -0.5), L2 normalisation, then
k-means with 20 iterations. :func:`clustering_metrics` scores a clustering against true labels.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from threadpoolctl import threadpool_limits

__all__ = [
    "ClusterResult",
    "check_max_train_rows",
    "cluster_embeddings",
    "clustering_metrics",
    "degenerate_clusters",
    "faiss_threads",
    "kmeans",
    "pca_whiten",
]


@dataclass(frozen=True)
class ClusterResult:
    """Output of :func:`cluster_embeddings`.

    Attributes:
        labels: ``(N,)`` int64 cluster of each row.
        centroids: ``(k, D')`` float32 centroids in the space that was clustered (after PCA).
        sizes: ``(k,)`` int64 number of rows per cluster.
        num_empty: number of clusters with no row.
        inertia: k-means objective, the sum over all ``N`` rows of the squared L2 distance to the
            assigned centroid in the clustered space.
    """

    labels: np.ndarray
    centroids: np.ndarray
    sizes: np.ndarray
    num_empty: int
    inertia: float = float("nan")


# Rows are streamed in chunks of about this many bytes of float32 (32,768 rows of 128 dims): every
# temporary is chunk-sized, so the extra memory stays bounded whatever N is.
CHUNK_BYTES = 16 << 20
# PCA statistics come from at most this many rows (a seeded sample beyond), as faiss' PCAMatrix does.
PCA_MAX_POINTS = 262_144
# Whitening drops components whose variance is at most this fraction of the largest one.
EIG_RTOL = 1e-5
# k-means trains on every row up to this many (a seeded sample beyond), as the UnFuSeD reference trains
# on every row. 1,000,000 x 128 with k = 1000 then pseudo-labels in ~24 s on 2 quiet CPU cores (target
# < 60 s; twice as many training rows took 83 s under load: benchmarks/README.md).
KMEANS_MAX_TRAIN_ROWS = 262_144
# A clustering is degenerate when more than this fraction of its clusters is empty, or when its
# largest cluster holds more than this fraction of the rows.
DEGENERATE_EMPTY_FRACTION = 0.5
DEGENERATE_LARGEST_FRACTION = 0.9


def _is_count(value: Any, minimum: int) -> bool:
    """Whether ``value`` is an integer (Python or numpy, not a bool) ``>= minimum``."""
    return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value >= minimum


def _chunk_rows(d: int, chunk_size: int | None) -> int:
    if chunk_size is None:
        return max(256, CHUNK_BYTES // (4 * d))
    if not _is_count(chunk_size, 1):
        raise ValueError(f"chunk_size must be an integer >= 1 (rows) or None, got {chunk_size!r}")
    return int(chunk_size)


def _as_matrix(x: Any, name: str = "x", chunk_size: int | None = None) -> np.ndarray:
    """Validate ``x`` as a finite ``(N, D)`` array without copying it (float16, float64 and memmaps stay).

    The non-finite count is taken chunk by chunk after casting to float32, the type faiss sees.
    """
    x = x if isinstance(x, np.ndarray) else np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, D) array, got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {x.shape}")
    if x.dtype.kind not in "fiub":
        raise ValueError(f"{name} must hold real numbers, got dtype {x.dtype}")
    if x.dtype.kind == "f":
        rows, bad = _chunk_rows(x.shape[1], chunk_size), 0
        for a in range(0, x.shape[0], rows):
            block = np.asarray(x[a : a + rows], dtype=np.float32)
            bad += block.size - int(np.count_nonzero(np.isfinite(block)))
        if bad:
            raise ValueError(f"{name} has {bad} non-finite values (NaN/inf, after casting to float32)")
    return x


def _read(x: np.ndarray, a: int, b: int, sample: np.ndarray | None, fresh: bool) -> np.ndarray:
    """Rows ``a:b`` (of ``sample`` when given) as C-contiguous float32; ``fresh`` = never a view of ``x``."""
    block = np.asarray(x[a:b] if sample is None else x[sample[a:b]])
    if block.dtype == np.float32 and block.flags.c_contiguous:
        return block.copy() if fresh and sample is None else block
    return np.array(block, dtype=np.float32, order="C")


def _check_k(k: int, n: int) -> None:
    if not _is_count(k, 1):
        raise ValueError(f"the number of clusters k must be an integer >= 1, got {k!r}")
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
    if max_train_rows is not None and not _is_count(max_train_rows, k):
        raise ValueError(
            f"max_train_rows must be an integer >= {k} (the number of clusters) or None (train on every row), "
            f"got {max_train_rows!r}"
        )


@dataclass(frozen=True)
class _Projection:
    """``y = (x - mean) @ matrix``; the whitening scale is folded into ``matrix``."""

    mean: np.ndarray  # (D,) float32
    matrix: np.ndarray  # (D, m) float32

    def apply(self, block: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Project a fresh float32 block (centred in place) into ``out`` or a new array."""
        block -= self.mean
        return np.matmul(block, self.matrix, out=out)


def _fit_projection(
    x: np.ndarray, dim: int, eigen_power: float, *, rows: int, seed: int, max_points: int, eig_rtol: float
) -> _Projection:
    """Validate ``dim`` and ``N >= 2``, then fit the (whitened) PCA projection of ``x``."""
    if not _is_count(dim, 1):
        raise ValueError(f"pca dim must be an integer >= 1, got {dim!r}")
    n, d = x.shape
    if n < 2:
        raise ValueError(f"PCA needs at least 2 samples, got N={n}")
    sample = None
    if n > max_points:
        sample = np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))
    m = n if sample is None else sample.shape[0]
    total = np.zeros(d, dtype=np.float64)
    for a in range(0, m, rows):
        total += _read(x, a, a + rows, sample, fresh=False).sum(axis=0, dtype=np.float64)
    mean = (total / m).astype(np.float32)
    # dense eigendecompositions: BLAS threads only pay off for large matrices, and on a busy machine
    # their spin-waiting made a 1024 x 1024 decomposition 40x slower (20 s vs 0.47 s single-threaded)
    with threadpool_limits(limits=1 if min(m, d) <= 2048 else None, user_api="blas"):
        if m < d:  # fewer rows than dimensions: decompose the m x m Gram matrix instead (same spectrum)
            xc = np.concatenate([_read(x, a, a + rows, sample, fresh=True) for a in range(0, m, rows)])
            xc = xc.astype(np.float64) - mean
            gram_val, gram_vec = np.linalg.eigh(xc @ xc.T)
            gram_val, gram_vec = np.maximum(gram_val[::-1], 0.0), gram_vec[:, ::-1]  # descending
            norm = np.sqrt(gram_val)
            eigvec = np.divide(xc.T @ gram_vec, norm, out=np.zeros((d, m)), where=norm > 1e-12 * max(norm[0], 1e-300))
            eigval = gram_val / m
        else:
            cov = np.zeros((d, d), dtype=np.float64)
            for a in range(0, m, rows):  # two passes: centring first keeps the float32 products accurate
                block = _read(x, a, a + rows, sample, fresh=True)
                block -= mean
                cov += block.T @ block
            eigval, eigvec = np.linalg.eigh(cov / m)
            eigval, eigvec = eigval[::-1], eigvec[:, ::-1]  # descending
    out_dim = int(min(dim, d, n - 1))
    if eigen_power < 0:
        if not eigval[0] > 0:
            raise ValueError(
                "PCA whitening needs variance, but all rows are equal: the data span fewer than 1 direction; "
                "disable whitening (pca_dim=None or whiten=False)"
            )
        out_dim = int(np.count_nonzero(eigval[:out_dim] > eig_rtol * eigval[0]))
    scale = np.maximum(eigval[:out_dim], 0.0) ** eigen_power if eigen_power else np.ones(out_dim)
    matrix = np.ascontiguousarray(eigvec[:, :out_dim] * scale, dtype=np.float32)
    return _Projection(mean=mean, matrix=matrix)


def pca_whiten(
    x: Any,
    dim: int,
    eigen_power: float = -0.5,
    *,
    eig_rtol: float = EIG_RTOL,
    max_points: int = PCA_MAX_POINTS,
    seed: int = 0,
    chunk_size: int | None = None,
) -> np.ndarray:
    """Project ``x`` on its top principal components, scaled by ``variance ** eigen_power``.

    ``-0.5`` whitens (unit variance, decorrelated: DeepCluster's ``preprocess_features``), ``0`` is
    plain PCA. The mean and covariance come from ``x`` (a seeded sample of ``max_points`` rows when
    larger, as faiss' ``PCAMatrix`` subsamples) in two chunked passes; the eigenvectors of the
    ``D x D`` covariance give the components. The output is written chunk by chunk into one
    preallocated array, so the only full-size allocation is the result; ``x`` may be float16/32/64
    or a memmap and is never copied whole.

    The output dimension is at most ``min(dim, D, N - 1)``. When whitening (``eigen_power < 0``),
    components whose variance is at most ``eig_rtol`` times the largest (constant or duplicated
    embedding dimensions, fewer points than dimensions) are dropped instead of being divided by
    ~0, so the output may have fewer columns than requested.

    Args:
        x: ``(N, D)`` data, ``N >= 2``.
        dim: requested output dimension (``>= 1``).
        eigen_power: power of the eigenvalues applied to each component.
        eig_rtol: relative variance below which a component is dropped when whitening.
        max_points: rows used to estimate the mean and covariance.
        seed: seed of that sample (unused when ``N <= max_points``).
        chunk_size: rows per chunk; ``None`` = about 16 MiB of float32.

    Returns:
        ``(N, m)`` float32 C-contiguous array, ``m <= min(dim, D, N - 1)``.

    Raises:
        ValueError: bad shape, non-finite values, ``dim < 1``, ``N < 2``, or whitening data whose
            rows are all equal (no direction has variance).

    Example:
        >>> x = np.c_[np.random.default_rng(0).normal(size=(100, 3)), np.ones(100)]  # a constant column
        >>> pca_whiten(x, 128).shape
        (100, 3)
    """
    x = _as_matrix(x, chunk_size=chunk_size)
    n, d = x.shape
    rows = _chunk_rows(d, chunk_size)
    proj = _fit_projection(
        x, dim, float(eigen_power), rows=rows, seed=seed, max_points=int(max_points), eig_rtol=eig_rtol
    )
    out = np.empty((n, proj.matrix.shape[1]), dtype=np.float32)
    for a in range(0, n, rows):
        proj.apply(_read(x, a, a + rows, None, fresh=True), out=out[a : a + rows])
    return out


# Below this much work (rows x clusters x dims) faiss' OpenMP threads cost more than they save: on a
# loaded 2-core machine a 1131 x 16, k=20 k-means took 0.28 s with 2 threads and 0.001 s with 1.
SINGLE_THREAD_WORK = 50_000_000


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


_Transform = Callable[[np.ndarray, 'np.ndarray | None'], np.ndarray]


def _kmeans(
    x: np.ndarray,
    k: int,
    transform: _Transform | None,
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
    """Train on every row, or a seeded sample of ``max_train_rows`` rows, then assign all rows in chunks.

    ``transform(block, out)`` maps a fresh float32 chunk of ``x`` to the clustered space (``dim``
    columns), written into ``out`` when given (else returned); ``None`` clusters ``x`` itself.
    """
    if niter < 1 or nredo < 1:
        raise ValueError(f"niter and nredo must be >= 1, got niter={niter}, nredo={nredo}")
    n = x.shape[0]
    rows = _chunk_rows(max(x.shape[1], dim), chunk_size)
    n_train = n if max_train_rows is None else int(min(n, max_train_rows))
    sample = None if n_train == n else np.sort(np.random.default_rng(seed).choice(n, n_train, replace=False))
    if transform is None and sample is None:
        train = np.ascontiguousarray(x, dtype=np.float32)  # no copy for float32 input
    else:
        train = np.empty((n_train, dim), dtype=np.float32)
        for a in range(0, n_train, rows):
            block = _read(x, a, a + rows, sample, fresh=transform is not None)
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
                block = _read(x, a, a + rows, None, fresh=transform is not None)
                block = block if transform is None else transform(block, None)
            dist, assign = km.index.search(block, 1)
            labels[a : a + rows] = assign[:, 0]
            if centroids_sq is not None:
                dist = np.einsum("ij,ij->i", block, block) + centroids_sq[assign[:, 0]] - 2.0 * dist[:, 0]
            inertia += float(np.sum(dist, dtype=np.float64))
    return labels, centroids, inertia


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
        ValueError: bad input (see :func:`cluster_embeddings`), ``k`` outside ``[1, N]``, ``niter < 1``,
            ``max_train_rows`` neither ``None`` nor an integer ``>= k``.
        RuntimeError: ``use_gpu=True`` but faiss sees no GPU.
    """
    x = _as_matrix(x, chunk_size=chunk_size)
    _check_k(k, x.shape[0])
    check_max_train_rows(max_train_rows, k)
    labels, centroids, _ = _kmeans(
        x, k, None, x.shape[1], niter=niter, seed=seed, spherical=spherical, nredo=nredo,
        max_train_rows=max_train_rows, use_gpu=use_gpu, chunk_size=chunk_size,
    )
    return labels, centroids


def cluster_embeddings(
    x: Any,
    k: int,
    *,
    pca_dim: int | None = 128,
    whiten: bool = True,
    l2_normalize: bool = True,
    niter: int = 20,
    nredo: int = 1,
    seed: int = 0,
    spherical: bool = False,
    max_train_rows: int | None = KMEANS_MAX_TRAIN_ROWS,
    use_gpu: bool | None = None,
    chunk_size: int | None = None,
) -> ClusterResult:
    """Pseudo-label embeddings: PCA (+ whitening) -> L2 normalisation -> k-means.

    The stage-2 pipeline of UnFuSeD (arXiv 2303.05668), after DeepCluster (arXiv 1807.05520).
    Built for millions of rows: PCA statistics come from at most :data:`PCA_MAX_POINTS` rows,
    k-means trains on every transformed row up to ``max_train_rows`` (a seeded sample beyond), and
    every row is then projected, normalised and assigned chunk by chunk. Beyond ``x`` itself, memory
    holds the transformed training rows, a chunk and the ``(N,)`` labels. A degenerate result (most
    clusters empty, or one cluster holding nearly every row) raises a ``UserWarning`` that names the
    likely causes (see :func:`degenerate_clusters`). ``x`` may be float16 or a memmap (e.g. from
    :func:`~fewlabel.plugins.gather.gather_embeddings` with a float16 or disk buffer).

    Args:
        x: ``(N, D)`` embeddings.
        k: number of clusters, ``1 <= k <= N``.
        pca_dim: PCA output dimension (reduced as in :func:`pca_whiten`, whose zero-variance
            components are dropped when whitening); ``None`` skips PCA.
        whiten: whiten the PCA components (eigen power -0.5) instead of plain PCA.
        l2_normalize: L2-normalise rows (``faiss.normalize_L2``, in place on each chunk) before k-means.
        niter: k-means iterations.
        nredo: k-means restarts, the best objective is kept (see :func:`kmeans`).
        seed: seed of the PCA and k-means samples and of the k-means initialisation.
        spherical: spherical k-means (unit-norm centroids, inner-product assignment).
        max_train_rows: k-means trains on at most this many rows (a seeded sample beyond); ``None`` =
            every row. Must be ``>= k``.
        use_gpu: faiss GPU switch, see :func:`kmeans` (``None`` = auto; CPU without a GPU).
        chunk_size: rows per chunk; ``None`` = about 16 MiB of float32.

    Note:
        Whitening gives every kept component unit variance, noise directions included. When
        ``pca_dim`` reaches the number of noise directions (e.g. isotropic blobs with ``D <= pca_dim``),
        the noise drowns the ``k - 1`` directions that separate the clusters; real embeddings, whose
        spectrum decays, are clustered in fewer dimensions than they have.

    Returns:
        A :class:`ClusterResult`; ``num_empty`` counts clusters that got no row in the final assignment.

    Raises:
        ValueError: non-2-D or empty input, non-finite values (with their count), ``k < 1`` or
            ``k > N`` (with both numbers), ``max_train_rows`` neither ``None`` nor an integer ``>= k``.
        RuntimeError: ``use_gpu=True`` but faiss sees no GPU.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> x = np.concatenate([rng.normal(m, 0.1, (20, 4)) for m in (-5, 5)])
        >>> res = cluster_embeddings(x, 2, pca_dim=None)
        >>> sorted(res.sizes.tolist())
        [20, 20]
    """
    x = _as_matrix(x, chunk_size=chunk_size)
    n, d = x.shape
    _check_k(k, n)
    check_max_train_rows(max_train_rows, k)
    proj = None
    if pca_dim is not None:
        proj = _fit_projection(
            x, pca_dim, -0.5 if whiten else 0.0, rows=_chunk_rows(d, chunk_size), seed=seed,
            max_points=PCA_MAX_POINTS, eig_rtol=EIG_RTOL,
        )

    def transform(block: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        if proj is not None:
            out = proj.apply(block, out=out)
        elif out is not None:
            out[...] = block
        else:
            out = block
        if l2_normalize:
            faiss.normalize_L2(out)
        return out

    dim = d if proj is None else proj.matrix.shape[1]
    labels, centroids, inertia = _kmeans(
        x, k, None if proj is None and not l2_normalize else transform, dim, niter=niter, seed=seed,
        spherical=spherical, nredo=nredo, max_train_rows=max_train_rows, use_gpu=use_gpu, chunk_size=chunk_size,
    )
    sizes = np.bincount(labels, minlength=k).astype(np.int64)
    problem = degenerate_clusters(sizes)
    if problem is not None:
        warnings.warn(problem, UserWarning, stacklevel=2)
    return ClusterResult(
        labels=labels, centroids=centroids, sizes=sizes, num_empty=int((sizes == 0).sum()), inertia=inertia
    )


def degenerate_clusters(sizes: Any) -> str | None:
    """Say why a clustering with these cluster sizes is degenerate, or return ``None`` if it is not.

    Degenerate: more than :data:`DEGENERATE_EMPTY_FRACTION` of the ``k >= 2`` clusters are empty, or
    the largest holds more than :data:`DEGENERATE_LARGEST_FRACTION` of the rows. The message names the
    likely causes and what to try.

    Args:
        sizes: ``(k,)`` number of rows per cluster.

    Returns:
        The message, or ``None``.

    Example:
        >>> degenerate_clusters([100, 0, 0, 0])[:40]
        'degenerate k-means clusters: 3 of 4 are '
        >>> degenerate_clusters([30, 40, 30]) is None
        True
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    k, n = sizes.shape[0], int(sizes.sum())
    empty, largest = int((sizes == 0).sum()), int(sizes.max(initial=0))
    if k < 2 or n == 0 or (empty <= DEGENERATE_EMPTY_FRACTION * k and largest <= DEGENERATE_LARGEST_FRACTION * n):
        return None
    return (
        f"degenerate k-means clusters: {empty} of {k} are empty and the largest holds {largest / n:.1%} of the "
        f"{n} rows. Likely causes: collapsed or constant embeddings (an untrained or collapsed teacher), too "
        "few distinct samples, or k too large for the data. Try: check that the teacher's embeddings vary "
        "across samples (train it longer or with a lower learning rate), PCA-whitening (pca_dim) so k-means "
        "sees the directions that vary, a smaller k, or more k-means restarts (nredo)."
    )


def clustering_metrics(pred: Any, true: Any) -> dict[str, float]:
    """NMI, ARI and Hungarian-matched accuracy of a clustering, ignoring rows with ``true < 0``.

    Accuracy maps clusters one-to-one to classes with the assignment maximising the matches
    (``scipy.optimize.linear_sum_assignment``), the usual unsupervised-clustering accuracy.

    Args:
        pred: ``(N,)`` non-negative cluster ids.
        true: ``(N,)`` class ids; negative = unknown, ignored.

    Returns:
        ``{"nmi": ..., "ari": ..., "accuracy": ...}`` as Python floats.

    Raises:
        ValueError: shapes differ or are not 1-D, no row has a true label, or ``pred`` is negative.

    Example:
        >>> clustering_metrics([1, 1, 0, 0], [0, 0, 1, -1])["accuracy"]
        1.0
    """
    pred, true = np.asarray(pred).astype(np.int64), np.asarray(true).astype(np.int64)
    if pred.ndim != 1 or pred.shape != true.shape:
        raise ValueError(f"pred and true must be 1-D of equal length, got {pred.shape} and {true.shape}")
    mask = true >= 0
    if not mask.any():
        raise ValueError("no row has a true label (all true labels are < 0)")
    pred, true = pred[mask], true[mask]
    if (pred < 0).any():
        raise ValueError(f"{int((pred < 0).sum())} labelled rows have a negative (missing) cluster id")
    counts = np.zeros((int(pred.max()) + 1, int(true.max()) + 1), dtype=np.int64)
    np.add.at(counts, (pred, true), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return {
        "nmi": float(normalized_mutual_info_score(true, pred)),
        "ari": float(adjusted_rand_score(true, pred)),
        "accuracy": float(counts[rows, cols].sum() / pred.shape[0]),
    }
