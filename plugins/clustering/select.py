"""Choose the pseudo-label pipeline's PCA dimension on a labeled validation split."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import normalized_mutual_info_score

from fewlabel.plugins.arrays import as_matrix
from fewlabel.plugins.clustering.pipeline import cluster_embeddings

__all__ = ["PCA_DIM_CANDIDATES", "select_pca_dim"]

#: The PCA dimensions ``pca_dim="auto"`` tries (those up to the embedding width).
PCA_DIM_CANDIDATES = (8, 16, 32, 64, 128)


def select_pca_dim(
    pool: Any,
    val: Any,
    val_labels: Any,
    k: int,
    candidates: Sequence[int] = PCA_DIM_CANDIDATES,
    **cluster_kwargs: Any,
) -> tuple[int, dict[int, float]]:
    """The PCA dimension whose k-means clusters agree best with the validation labels.

    For each candidate ``d`` (up to the embedding width), :func:`cluster_embeddings` clusters the pool
    and the validation embeddings together, unlabeled, with ``pca_dim=d``; the score is the NMI
    between the clusters of the validation rows and their labels. The labels only score: they never
    shape a cluster, and the test split is never looked at. Ties go to the smaller dimension. Whitening
    gives every kept direction unit variance, so too many dimensions drown the few that separate the
    classes in noise and too few lose some of them; which width is right depends on the encoder and
    the data (16 for the digits teacher, 32 for the spoken-digits one).

    Args:
        pool: ``(N, D)`` embeddings of the unlabeled pool.
        val: ``(M, D)`` embeddings of the labeled validation split.
        val_labels: ``(M,)`` their labels.
        k: number of clusters.
        candidates: PCA dimensions to try; those above ``D`` are skipped (``D`` itself is tried if
            every candidate is above it).
        cluster_kwargs: further :func:`cluster_embeddings` arguments (``whiten``, ``niter``, ``nredo``,
            ``seed``, ...), the same for every candidate.

    Returns:
        ``(best dimension, {dimension: validation NMI})``.

    Raises:
        ValueError: no validation rows, a label count that does not match ``val``, widths that differ,
            or no candidate.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> centres = rng.normal(0, 3, (3, 32))
        >>> pool = np.concatenate([c + rng.normal(0, 1, (40, 32)) for c in centres])
        >>> val = np.concatenate([c + rng.normal(0, 1, (5, 32)) for c in centres])
        >>> best, scores = select_pca_dim(pool, val, np.repeat([0, 1, 2], 5), 3, candidates=(2, 16, 32))
        >>> best, sorted(scores)
        (2, [2, 16, 32])
    """
    if len(val) == 0:
        raise ValueError("select_pca_dim needs validation rows (a labeled validation split, e.g. val_fraction > 0)")
    pool, val = as_matrix(pool, "pool"), as_matrix(val, "val")
    val_labels = np.asarray(val_labels)
    if val_labels.shape != (val.shape[0],):
        raise ValueError(f"select_pca_dim: {val.shape[0]} validation rows but labels of shape {val_labels.shape}")
    if pool.shape[1] != val.shape[1]:
        raise ValueError(f"select_pca_dim: pool rows have {pool.shape[1]} dimensions, validation rows {val.shape[1]}")
    if not candidates:
        raise ValueError("select_pca_dim needs at least one candidate dimension")
    width = pool.shape[1]
    tried = sorted({int(d) for d in candidates if d <= width}) or [width]
    both = np.concatenate([np.asarray(pool, dtype=np.float32), np.asarray(val, dtype=np.float32)])
    scores = {}
    for d in tried:
        labels = cluster_embeddings(both, k, pca_dim=d, **cluster_kwargs).labels[pool.shape[0]:]
        scores[d] = float(normalized_mutual_info_score(val_labels, labels))
    best = max(tried, key=lambda d: (scores[d], -d))
    return best, scores
