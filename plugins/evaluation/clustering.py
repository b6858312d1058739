"""Scores of a clustering against true labels: NMI, ARI and Hungarian-matched accuracy."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

__all__ = ["clustering_metrics"]


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
