"""The pseudo-labelling pipeline: PCA-whitening -> L2 normalisation -> k-means, and its degeneracy check.

:func:`cluster_embeddings` is the pseudo-labelling step of DeepCluster ("Deep Clustering for
Unsupervised Learning of Visual Features", Caron et al., 2018, arXiv 1807.05520) as used in stage 2
of UnFuSeD ("UnFuSeD: UNsupervised Finetuning Using SElf supervised Distillation", 2023,
arXiv 2303.05668): PCA to 128 dimensions with whitening (eigen power -0.5), L2 normalisation, then
k-means with 20 iterations.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from fewlabel.plugins.arrays import as_matrix, chunk_rows
from fewlabel.plugins.clustering.faiss_kmeans import (
    KMEANS_MAX_TRAIN_ROWS,
    check_max_train_rows,
    check_num_clusters,
    kmeans_transformed,
)
from fewlabel.plugins.clustering.pca import EIG_RTOL, PCA_MAX_POINTS, fit_projection

__all__ = [
    "ClusterResult",
    "DEGENERATE_EMPTY_FRACTION",
    "DEGENERATE_LARGEST_FRACTION",
    "check_keep_fraction",
    "cluster_embeddings",
    "degenerate_clusters",
    "keep_confident",
]

# A clustering is degenerate when more than this fraction of its clusters is empty, or when its
# largest cluster holds more than this fraction of the rows.
DEGENERATE_EMPTY_FRACTION = 0.5
DEGENERATE_LARGEST_FRACTION = 0.9


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
        margins: ``(N,)`` float32 confidence of each row's assignment: its squared distance to the
            second-nearest centroid minus that to its own (``inf`` when ``k = 1``); ``None`` when unknown.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> x = np.concatenate([rng.normal(m, 0.1, (20, 4)) for m in (-5, 5)])
        >>> result = cluster_embeddings(x, 2, pca_dim=None)
        >>> sorted(result.sizes.tolist()), result.num_empty, result.labels.shape
        ([20, 20], 0, (40,))
    """

    labels: np.ndarray
    centroids: np.ndarray
    sizes: np.ndarray
    num_empty: int
    inertia: float = float("nan")
    margins: np.ndarray | None = None


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
    Built for millions of rows: PCA statistics come from at most
    :data:`~fewlabel.plugins.clustering.pca.PCA_MAX_POINTS` rows, k-means trains on every transformed
    row up to ``max_train_rows`` (a seeded sample beyond), and every row is then projected, normalised
    and assigned chunk by chunk. Beyond ``x`` itself, memory holds the transformed training rows, a
    chunk and the ``(N,)`` labels. A degenerate result (most clusters empty, or one cluster holding
    nearly every row) raises a ``UserWarning`` that names the likely causes (see
    :func:`degenerate_clusters`). ``x`` may be float16 or a memmap (e.g. from
    :func:`~fewlabel.plugins.gather.gather_embeddings` with a float16 or disk buffer).

    Args:
        x: ``(N, D)`` embeddings.
        k: number of clusters, ``1 <= k <= N``.
        pca_dim: PCA output dimension (reduced as in :func:`~fewlabel.plugins.clustering.pca.pca_whiten`,
            whose zero-variance components are dropped when whitening); ``None`` skips PCA.
        whiten: whiten the PCA components (eigen power -0.5) instead of plain PCA.
        l2_normalize: L2-normalise rows (``faiss.normalize_L2``, in place on each chunk) before k-means.
        niter: k-means iterations.
        nredo: k-means restarts, the best objective is kept (see
            :func:`~fewlabel.plugins.clustering.faiss_kmeans.kmeans`).
        seed: seed of the PCA and k-means samples and of the k-means initialisation.
        spherical: spherical k-means (unit-norm centroids, inner-product assignment).
        max_train_rows: k-means trains on at most this many rows (a seeded sample beyond); ``None`` =
            every row. Must be ``>= k``.
        use_gpu: faiss GPU switch, see :func:`~fewlabel.plugins.clustering.faiss_kmeans.kmeans` (``None`` =
            auto; CPU without a GPU).
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
    x = as_matrix(x, chunk_size=chunk_size)
    n, d = x.shape
    check_num_clusters(k, n)
    check_max_train_rows(max_train_rows, k)
    proj = None
    if pca_dim is not None:
        proj = fit_projection(
            x, pca_dim, -0.5 if whiten else 0.0, rows=chunk_rows(d, chunk_size), seed=seed,
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
    labels, centroids, inertia, margins = kmeans_transformed(
        x, k, None if proj is None and not l2_normalize else transform, dim, niter=niter, seed=seed,
        spherical=spherical, nredo=nredo, max_train_rows=max_train_rows, use_gpu=use_gpu, chunk_size=chunk_size,
    )
    sizes = np.bincount(labels, minlength=k).astype(np.int64)
    problem = degenerate_clusters(sizes)
    if problem is not None:
        warnings.warn(problem, UserWarning, stacklevel=2)
    return ClusterResult(
        labels=labels, centroids=centroids, sizes=sizes, num_empty=int((sizes == 0).sum()), inertia=inertia,
        margins=margins,
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


def check_keep_fraction(keep_fraction: Any, owner: str = "") -> None:
    """Raise a ``ValueError`` naming ``owner`` unless ``keep_fraction`` is a number in ``(0, 1]``."""
    if isinstance(keep_fraction, bool) or not isinstance(keep_fraction, (int, float)) or not 0 < keep_fraction <= 1:
        prefix = f"{owner}: " if owner else ""
        raise ValueError(f"{prefix}keep_fraction must be a number in (0, 1] (1 = keep every row), "
                         f"got {keep_fraction!r}")


def keep_confident(labels: Any, margins: Any, keep_fraction: float) -> np.ndarray:
    """Which rows to keep: the ``keep_fraction`` most confident rows of every cluster.

    Confidence is the assignment margin of :class:`ClusterResult` (the squared distance to the
    second-nearest centroid minus that to the nearest): rows near a boundary between two clusters
    are the likeliest to be wrong. Each cluster keeps ``ceil(keep_fraction * size)`` rows, so the
    clusters keep their proportions. Ties are broken by row order.

    Args:
        labels: ``(N,)`` cluster of each row.
        margins: ``(N,)`` their margins.
        keep_fraction: in ``(0, 1]``; ``1`` keeps every row.

    Returns:
        ``(N,)`` bool mask of the kept rows.

    Raises:
        ValueError: shapes that differ, a fraction outside ``(0, 1]``, or NaN margins.

    Example:
        >>> keep_confident([0, 0, 1, 1], [0.9, 0.1, 0.5, 0.7], 0.5).tolist()
        [True, False, False, True]
    """
    labels, margins = np.asarray(labels), np.asarray(margins, dtype=np.float64)
    if labels.ndim != 1 or labels.shape != margins.shape:
        raise ValueError(f"labels and margins must be 1-D of equal length, got {labels.shape} and {margins.shape}")
    check_keep_fraction(keep_fraction)
    if np.isnan(margins).any():
        raise ValueError(f"{int(np.isnan(margins).sum())} margins are NaN")
    keep = np.zeros(labels.shape[0], dtype=bool)
    order = np.lexsort((np.arange(labels.shape[0]), -margins, labels))  # by cluster, then most confident first
    sizes, start = np.bincount(labels.astype(np.int64)), 0
    for size in sizes[sizes > 0]:
        keep[order[start : start + int(np.ceil(keep_fraction * size))]] = True
        start += size
    return keep
