"""A label-free estimate of class separability: how close the k-NN graph is to ``C`` disconnected parts.

After "An Unsupervised Method for Estimating Class Separability of Datasets with Application to LLMs
Fine-Tuning" (Ghalyan et al., 2023, arXiv 2305.15016; later versions: "Estimating class separability
of text embeddings with persistent homology"). The paper reads separability off the 0-th homology
``H0`` of the data manifold: classes that are well separated show up as a few connected components
that persist over a long range of scales, and it monitors this during fine-tuning to decide when to
stop, without labels. This module computes a cheap, deterministic, single-scale relative of that
idea: a *soft count of the connected components* of the k-nearest-neighbour graph, through its
spectrum (the multiplicity of the eigenvalue 0 of a graph Laplacian is the number of connected
components, the graph's ``H0``).

What :func:`separability_score` computes, exactly:

1. Rows are L2 normalised (cosine geometry, as kNN evaluation uses) and, above ``max_rows``, a seeded
   uniform sample of ``max_rows`` rows is kept.
2. The symmetric k-NN graph: an edge ``i - j`` (weight 1) when ``j`` is one of the ``k`` most
   cosine-similar rows of ``i`` or ``i`` one of ``j``'s (exact search, faiss ``IndexFlatIP``; a row
   is never its own neighbour). Every row has degree ``>= k``.
3. The eigenvalues ``1 = mu_1 >= mu_2 >= ... >= mu_N >= -1`` of the normalised adjacency
   ``D^-1/2 A D^-1/2`` (``lambda_i = 1 - mu_i`` are those of the normalised Laplacian).
4. The score is ``mean(mu_2, ..., mu_C)`` with ``C = num_clusters``, i.e.
   ``1 - (lambda_1 + ... + lambda_C) / (C - 1)``.

Why it tracks class separability. ``sum_{i <= C} lambda_i`` is the minimum of the spectral
relaxation of the normalised cut of the graph into ``C`` parts, ``sum_c cut(A_c) / vol(A_c)`` (Shi
& Malik, 2000; von Luxburg, "A Tutorial on Spectral Clustering", 2007, arXiv 0711.0189): for a hard
partition, ``cut(A_c) / vol(A_c)`` is the fraction of the neighbourhood edges of part ``c`` that
leave it. The score is therefore at least ``1 - NCut* / (C - 1)``, where ``NCut*`` is the best
normalised cut, and by the higher-order Cheeger inequality (Lee, Oveis Gharan & Trevisan, 2012,
arXiv 1111.1055) ``lambda_C`` is small exactly when the rows split into ``C`` groups of small
conductance. Under the cluster assumption (classes are dense regions separated by low-density gaps)
such a split is the classes, and their neighbourhoods stop crossing class borders: the regime where a
kNN classifier with a few labels per class is accurate. The score is 1 exactly when the graph has at
least ``C`` connected components (``C`` perfectly separated groups), and it falls as neighbourhood
edges start to cross between any ``C``-way split; overlapping classes and a featureless blob both
score low. It needs no labels, only the expected number of classes.

Limits (read the value as a trend, not as an accuracy):

* It sees clusters, not classes: a class made of several separate modes, or a clustering by a
  nuisance factor (style, background, recording device), scores high without the classes being
  separable; classes that touch along a smooth continuum score low even when a linear classifier
  would separate them.
* Values are comparable only at the same ``N`` (or ``max_rows``), ``k`` and ``num_clusters`` on the
  same data: larger ``k`` lowers it, and a larger sample makes the graph denser in detail. Compare
  checkpoints of one run, not datasets.
* Only the direction of each row counts (per-row scaling and rotations leave it unchanged), but a
  translation of all rows changes the cosine geometry.
* Random features can be kNN-readable without being clustered: over SimCLR checkpoints on the digits
  (``benchmarks/separability_vs_knn.py``) the score rises with kNN accuracy through training, but in
  two of three runs the random initialisation scored lowest although its kNN accuracy was above that
  of the first trained epochs.
* Cost: exact k-NN search is ``O(N^2 D)`` (hence the ``max_rows`` sample); the ``C`` eigenvalues come
  from a sparse Lanczos solver (ARPACK) started from a seeded vector, dense ``eigvalsh`` for small N.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np
from scipy import sparse
from scipy.sparse.linalg import ArpackNoConvergence, eigsh
from threadpoolctl import threadpool_limits

from fewlabel.plugins.arguments import is_count
from fewlabel.plugins.arrays import as_matrix, chunk_rows, read_rows
from fewlabel.plugins.clustering.faiss_kmeans import faiss_threads

__all__ = ["SEPARABILITY_MAX_ROWS", "check_separability_args", "separability_score"]

#: Rows scored by default; beyond it a seeded uniform sample (exact k-NN search is quadratic in N).
SEPARABILITY_MAX_ROWS = 10_000
# Up to this many rows the spectrum is computed densely (exact, and faster than Lanczos when small).
_DENSE_ROWS = 512


def check_separability_args(k: Any, num_clusters: Any, max_rows: Any = SEPARABILITY_MAX_ROWS) -> None:
    """Raise unless ``k >= 1``, ``num_clusters >= 2`` and ``max_rows`` is ``None`` or ``> k`` and ``>= num_clusters``.

    Callers that fix these values before any embedding exists (a callback's constructor) call this to
    fail fast; :func:`separability_score` checks them again against the number of rows.

    Raises:
        ValueError: naming the argument, the valid values and the value given.
    """
    if not is_count(k, 1):
        raise ValueError(f"k must be an int >= 1 (neighbours per row), got {k!r}")
    if not is_count(num_clusters, 2):
        raise ValueError(f"num_clusters must be an int >= 2 (the expected number of classes), got {num_clusters!r}")
    if max_rows is not None and not is_count(max_rows, max(int(k) + 1, int(num_clusters))):
        raise ValueError(
            f"max_rows must be None (score every row) or an int >= max(k + 1, num_clusters) = "
            f"{max(int(k) + 1, int(num_clusters))}, got {max_rows!r}"
        )


def separability_score(
    embeddings: Any,
    k: int = 10,
    num_clusters: int = 10,
    *,
    max_rows: int | None = SEPARABILITY_MAX_ROWS,
    seed: int = 0,
    chunk_size: int | None = None,
) -> float:
    """Label-free class separability of an embedding: ``mean(mu_2..mu_C)`` of the normalised k-NN graph.

    See the module docstring for what is computed, why it tracks class separability, and its limits.
    Higher means more separable; the value lies in ``[-1, 1]``, in practice in ``(0, 1]``, and is 1
    exactly when the symmetric k-NN graph has at least ``num_clusters`` connected components.

    The inputs are never modified; rows are read in chunks of about 16 MiB of float32. The result
    depends only on the rows' directions and on ``seed`` (through the sample and the Lanczos start),
    so repeated calls return the same float.

    Args:
        embeddings: ``(N, D)`` rows (numpy array, memmap or CPU tensor; any real dtype).
        k: neighbours per row, ``1 <= k < N`` (after sampling).
        num_clusters: ``C >= 2``, the expected number of classes; ``C <= N``.
        max_rows: score a seeded uniform sample of this many rows when ``N`` is larger; ``None`` =
            every row (exact k-NN search costs ``O(N^2 D)``).
        seed: seed of that sample and of the Lanczos start vector.
        chunk_size: rows per chunk; ``None`` = about 16 MiB per chunk.

    Returns:
        The score as a Python ``float``.

    Raises:
        ValueError: a non-2-D, empty or non-finite array; ``k``, ``num_clusters`` or ``max_rows``
            outside their ranges (also ``k >= N`` or ``num_clusters > N``).
        RuntimeError: the Lanczos solver did not converge (never seen in practice).

    Example:
        >>> angles = np.arange(12) * (2 * np.pi / 12)  # a ring: its 2-NN graph is a 12-cycle
        >>> ring = np.stack([np.cos(angles), np.sin(angles)], axis=1)
        >>> round(separability_score(ring, k=2, num_clusters=3), 4)  # cos(2 pi / 12)
        0.866
    """
    check_separability_args(k, num_clusters, max_rows)
    x = as_matrix(embeddings, "embeddings", chunk_size)
    n = x.shape[0]
    sample = None
    if max_rows is not None and n > max_rows:
        sample = np.sort(np.random.default_rng(seed).choice(n, size=int(max_rows), replace=False))
        n = int(max_rows)
    if k >= n:
        raise ValueError(f"k={k} neighbours need at least k + 1 = {k + 1} rows, got N={n}")
    if num_clusters > n:
        raise ValueError(f"num_clusters={num_clusters} is larger than the number of rows N={n}")
    neighbours = _knn_graph(x, int(k), sample, chunk_size)
    mu = _top_eigenvalues(_normalised_adjacency(neighbours), int(num_clusters), seed)
    return float(np.mean(mu[1:]))


def _knn_graph(x: np.ndarray, k: int, sample: np.ndarray | None, chunk_size: int | None) -> np.ndarray:
    """``(N, k)`` int64: the ``k`` most cosine-similar other rows of every (sampled) row, most similar first."""
    n = x.shape[0] if sample is None else sample.shape[0]
    d = x.shape[1]
    rows = chunk_rows(d, chunk_size)
    index = faiss.IndexFlatIP(d)
    out = np.empty((n, k), dtype=np.int64)
    with faiss_threads(n * n * d):
        for a in range(0, n, rows):
            block = read_rows(x, a, a + rows, sample, fresh=True)
            faiss.normalize_L2(block)
            index.add(block)
        for a in range(0, n, rows):
            block = read_rows(x, a, a + rows, sample, fresh=True)
            faiss.normalize_L2(block)
            _, found = index.search(block, k + 1)
            # drop the row itself; a row tied with its duplicates may not find itself: then drop the last
            other = found != np.arange(a, a + block.shape[0], dtype=np.int64)[:, None]
            other[other.all(axis=1), -1] = False
            out[a : a + block.shape[0]] = found[other].reshape(-1, k)
    return out


def _normalised_adjacency(neighbours: np.ndarray) -> sparse.csr_matrix:
    """``D^-1/2 A D^-1/2`` (float64) of the symmetric k-NN graph ``A`` (union of both directions)."""
    n, k = neighbours.shape
    rows = np.repeat(np.arange(n, dtype=np.int64), k)
    directed = sparse.csr_matrix((np.ones(n * k), (rows, neighbours.reshape(-1))), shape=(n, n))
    adjacency = directed.maximum(directed.T).tocsr()
    scale = 1.0 / np.sqrt(np.asarray(adjacency.sum(axis=1)).reshape(-1))
    return sparse.diags(scale) @ adjacency @ sparse.diags(scale)


def _top_eigenvalues(matrix: sparse.csr_matrix, count: int, seed: int) -> np.ndarray:
    """The ``count`` largest eigenvalues of the symmetric ``matrix``, in decreasing order."""
    n = matrix.shape[0]
    if n <= _DENSE_ROWS or count >= n - 1:
        with threadpool_limits(1):  # a few hundred rows: BLAS threads cost more than they save
            return np.linalg.eigvalsh(matrix.toarray())[::-1][:count]
    start = np.random.default_rng(seed).standard_normal(n)  # never an eigenvector: no Krylov breakdown
    try:
        values = eigsh(matrix, k=count, which="LA", v0=start, return_eigenvectors=False)
    except ArpackNoConvergence as err:
        raise RuntimeError(
            f"the Lanczos solver found only {len(err.eigenvalues)} of the {count} largest eigenvalues of the "
            f"{n}-node k-NN graph; lower max_rows or change seed"
        ) from err
    return np.sort(values)[::-1]
