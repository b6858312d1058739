"""Clustering: PCA-whitening (``pca``), faiss k-means (``faiss_kmeans``), the pseudo-label pipeline
(``pipeline``) and the choice of its PCA dimension on a validation split (``select``).

:func:`clustering_metrics` lives in :mod:`fewlabel.plugins.evaluation.clustering` and is re-exported
here for existing imports.
"""

from __future__ import annotations

from fewlabel.plugins.clustering.faiss_kmeans import KMEANS_MAX_TRAIN_ROWS, check_max_train_rows, faiss_threads, kmeans
from fewlabel.plugins.clustering.pca import pca_whiten
from fewlabel.plugins.clustering.pipeline import (
    ClusterResult,
    check_keep_fraction,
    cluster_embeddings,
    degenerate_clusters,
    keep_confident,
)
from fewlabel.plugins.clustering.select import PCA_DIM_CANDIDATES, select_pca_dim
from fewlabel.plugins.evaluation.clustering import clustering_metrics

__all__ = [
    "ClusterResult",
    "KMEANS_MAX_TRAIN_ROWS",
    "PCA_DIM_CANDIDATES",
    "check_keep_fraction",
    "check_max_train_rows",
    "cluster_embeddings",
    "clustering_metrics",
    "degenerate_clusters",
    "faiss_threads",
    "keep_confident",
    "kmeans",
    "pca_whiten",
    "select_pca_dim",
]
