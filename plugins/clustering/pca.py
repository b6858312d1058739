"""Chunked PCA and PCA-whitening of ``(N, D)`` arrays (numpy).

Whitening (eigen power -0.5) is DeepCluster's ``preprocess_features`` ("Deep Clustering for
Unsupervised Learning of Visual Features", Caron et al., 2018, arXiv 1807.05520), the first step of
the UnFuSeD pseudo-labels (arXiv 2303.05668).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from fewlabel.plugins.arguments import is_count
from fewlabel.plugins.arrays import as_matrix, chunk_rows, read_rows

__all__ = ["EIG_RTOL", "PCA_MAX_POINTS", "Projection", "fit_projection", "pca_whiten"]

# PCA statistics come from at most this many rows (a seeded sample beyond), as faiss' PCAMatrix does.
PCA_MAX_POINTS = 262_144
# Whitening drops components whose variance is at most this fraction of the largest one.
EIG_RTOL = 1e-5


@dataclass(frozen=True)
class Projection:
    """``y = (x - mean) @ matrix``; the whitening scale is folded into ``matrix``."""

    mean: np.ndarray  # (D,) float32
    matrix: np.ndarray  # (D, m) float32

    def apply(self, block: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Project a fresh float32 block (centred in place) into ``out`` or a new array."""
        block -= self.mean
        return np.matmul(block, self.matrix, out=out)


def fit_projection(
    x: np.ndarray, dim: int, eigen_power: float, *, rows: int, seed: int, max_points: int, eig_rtol: float
) -> Projection:
    """Validate ``dim`` and ``N >= 2``, then fit the (whitened) PCA projection of a validated ``x``.

    Args:
        x: ``(N, D)`` data, already checked by :func:`~fewlabel.plugins.arrays.as_matrix`.
        dim, eigen_power, eig_rtol, max_points, seed: as in :func:`pca_whiten`.
        rows: rows per chunk.

    Raises:
        ValueError: ``dim < 1``, ``N < 2``, or whitening rows that are all equal.
    """
    if not is_count(dim, 1):
        raise ValueError(f"pca dim must be an int >= 1, got {dim!r}")
    n, d = x.shape
    if n < 2:
        raise ValueError(f"PCA needs at least 2 samples, got N={n}")
    sample = None
    if n > max_points:
        sample = np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))
    m = n if sample is None else sample.shape[0]
    total = np.zeros(d, dtype=np.float64)
    for a in range(0, m, rows):
        total += read_rows(x, a, a + rows, sample, fresh=False).sum(axis=0, dtype=np.float64)
    mean = (total / m).astype(np.float32)
    # dense eigendecompositions: BLAS threads only pay off for large matrices, and on a busy machine
    # their spin-waiting made a 1024 x 1024 decomposition 40x slower (20 s vs 0.47 s single-threaded)
    with threadpool_limits(limits=1 if min(m, d) <= 2048 else None, user_api="blas"):
        if m < d:  # fewer rows than dimensions: decompose the m x m Gram matrix instead (same spectrum)
            xc = np.concatenate([read_rows(x, a, a + rows, sample, fresh=True) for a in range(0, m, rows)])
            xc = xc.astype(np.float64) - mean
            gram_val, gram_vec = np.linalg.eigh(xc @ xc.T)
            gram_val, gram_vec = np.maximum(gram_val[::-1], 0.0), gram_vec[:, ::-1]  # descending
            norm = np.sqrt(gram_val)
            eigvec = np.divide(xc.T @ gram_vec, norm, out=np.zeros((d, m)), where=norm > 1e-12 * max(norm[0], 1e-300))
            eigval = gram_val / m
        else:
            cov = np.zeros((d, d), dtype=np.float64)
            for a in range(0, m, rows):  # two passes: centring first keeps the float32 products accurate
                block = read_rows(x, a, a + rows, sample, fresh=True)
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
    return Projection(mean=mean, matrix=matrix)


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
    x = as_matrix(x, chunk_size=chunk_size)
    n, d = x.shape
    rows = chunk_rows(d, chunk_size)
    proj = fit_projection(
        x, dim, float(eigen_power), rows=rows, seed=seed, max_points=int(max_points), eig_rtol=eig_rtol
    )
    out = np.empty((n, proj.matrix.shape[1]), dtype=np.float32)
    for a in range(0, n, rows):
        proj.apply(read_rows(x, a, a + rows, None, fresh=True), out=out[a : a + rows])
    return out
