"""Weighted k-nearest-neighbour classification of frozen embeddings (cosine similarity, faiss).

The protocol of "Unsupervised Feature Learning via Non-Parametric Instance Discrimination" (Wu et
al., 2018, arXiv 1805.01978), as DINO's ``eval_knn.py`` runs it ("Emerging Properties in
Self-Supervised Vision Transformers", Caron et al., 2021, arXiv 2104.14294): embeddings are L2
normalised, each query finds its ``k`` most cosine-similar bank rows, neighbour ``j`` votes for its
class with weight ``exp(s_j / T)``, and the class with the largest summed vote wins. ``k = 20`` and
``T = 0.07`` are the defaults of both papers.
"""

from __future__ import annotations

import math
from typing import Any

import faiss
import numpy as np

from fewlabel.plugins.arguments import is_count
from fewlabel.plugins.arrays import as_matrix, chunk_rows, read_rows
from fewlabel.plugins.clustering.faiss_kmeans import faiss_threads

__all__ = ["check_knn_args", "knn_accuracy", "knn_predict"]


def _as_labels(labels: Any, name: str, rows: int) -> np.ndarray:
    """``labels`` as a ``(rows,)`` int64 array of non-negative class ids, or a ``ValueError`` saying what is wrong."""
    out = np.asarray(labels)
    if out.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of class ids, got shape {out.shape}")
    if out.shape[0] != rows:
        raise ValueError(f"{name} has {out.shape[0]} entries but its embeddings have {rows} rows")
    if out.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integer class ids, got dtype {out.dtype}")
    out = out.astype(np.int64, copy=False)
    if rows and out.min() < 0:
        raise ValueError(
            f"{name} holds {int(np.count_nonzero(out < 0))} negative (unknown) labels; drop those rows first"
        )
    return out


def _check_temperature(temperature: Any) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.floating)):
        raise ValueError(f"temperature must be a float > 0, got {temperature!r}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite float > 0, got {temperature!r}")
    return float(temperature)


def check_knn_args(k: Any, temperature: Any) -> None:
    """Raise unless ``k`` is an integer ``>= 1`` and ``temperature`` a finite float ``> 0``.

    Callers that fix these values long before the bank exists (a callback's constructor) call this
    to fail fast; :func:`knn_predict` checks them again, together with ``k <= N``.

    Raises:
        ValueError: naming the argument, the valid values and the value given.
    """
    if not is_count(k, 1):
        raise ValueError(f"k must be an int >= 1 (neighbours per query), got {k!r}")
    _check_temperature(temperature)


def knn_predict(
    train_emb: Any,
    train_labels: Any,
    query_emb: Any,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    *,
    chunk_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted kNN prediction of each query's class from a labeled bank.

    Rows of both sets are L2 normalised (a copy; the inputs are never modified) and searched exactly
    with faiss ``IndexFlatIP`` on contiguous float32 arrays, so the similarity is the cosine. Query
    ``q`` with neighbours ``j = 1..k`` of similarity ``s_j`` gives class ``c`` the score
    ``sum_{j: y_j = c} exp(s_j / T) / sum_j exp(s_j / T)``: InstDisc's / DINO's summed votes divided by
    the total weight, so each row of scores sums to 1 and large ``1 / T`` cannot overflow (the
    division does not change the ranking). The predicted class is the highest score, the smallest
    class id on a tie. A zero embedding has similarity 0 to every row.

    Rows are added and searched in chunks of about 16 MiB, so the extra memory beyond the index
    (``N x D`` float32) and the returned scores (``M x C`` float32) is bounded.

    Args:
        train_emb: ``(N, D)`` bank embeddings (numpy array, memmap or CPU tensor; any real dtype).
        train_labels: ``(N,)`` integer class ids ``>= 0`` of the bank.
        query_emb: ``(M, D)`` query embeddings.
        k: neighbours per query, ``1 <= k <= N``.
        temperature: ``T > 0`` of the vote weights ``exp(s / T)``.
        num_classes: ``C``, the number of score columns; ``None`` = ``max(train_labels) + 1``.
        chunk_size: rows per chunk; ``None`` = about 16 MiB per chunk.

    Returns:
        ``(pred_labels, class_scores)``: ``(M,)`` int64 predicted classes and ``(M, C)`` float32
        normalised class votes.

    Raises:
        ValueError: a non-2-D, empty or non-finite embedding array; different embedding dimensions;
            labels of the wrong length, dtype or sign; ``k`` outside ``[1, N]``; ``temperature <= 0``;
            ``num_classes`` smaller than a bank label + 1.

    Example:
        >>> bank = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
        >>> pred, scores = knn_predict(bank, np.array([0, 0, 1, 1]), np.array([[1.0, 0.2]]), k=3)
        >>> pred.tolist(), scores.shape
        ([0], (1, 2))
    """
    check_knn_args(k, temperature)
    temperature = float(temperature)
    train = as_matrix(train_emb, "train_emb", chunk_size)
    query = as_matrix(query_emb, "query_emb", chunk_size)
    n, d = train.shape
    if query.shape[1] != d:
        raise ValueError(f"query_emb has {query.shape[1]} dimensions but train_emb has {d}")
    labels = _as_labels(train_labels, "train_labels", n)
    if k > n:
        raise ValueError(f"k={k} neighbours requested but the bank has only N={n} rows (need k <= N)")
    top = int(labels.max()) + 1
    if num_classes is None:
        num_classes = top
    elif not is_count(num_classes, top):
        raise ValueError(
            f"num_classes must be an int >= {top} (the largest bank label + 1) or None, got {num_classes!r}"
        )
    c = int(num_classes)
    m = query.shape[0]
    rows = chunk_rows(max(d, 2 * c, 2 * int(k)), chunk_size)  # the float64 votes are (rows, C)
    pred = np.empty(m, dtype=np.int64)
    scores = np.empty((m, c), dtype=np.float32)
    index = faiss.IndexFlatIP(d)
    with faiss_threads(n * m * d):
        for a in range(0, n, rows):
            block = read_rows(train, a, a + rows, None, fresh=True)
            faiss.normalize_L2(block)
            index.add(block)
        for a in range(0, m, rows):
            block = read_rows(query, a, a + rows, None, fresh=True)
            faiss.normalize_L2(block)
            sim, nbr = index.search(block, int(k))  # (b, k), most similar first
            # exp((s - s_max) / T) is exp(s / T) up to a per-query factor that the normalisation removes
            weight = np.exp((sim.astype(np.float64) - sim[:, :1]) / temperature)
            b = block.shape[0]
            flat = (np.arange(b, dtype=np.int64)[:, None] * c + labels[nbr]).reshape(-1)
            votes = np.bincount(flat, weights=weight.reshape(-1), minlength=b * c).reshape(b, c)
            votes /= weight.sum(axis=1, keepdims=True)
            scores[a : a + b] = votes
            pred[a : a + b] = votes.argmax(axis=1)
    return pred, scores


def knn_accuracy(
    train_emb: Any,
    train_labels: Any,
    query_emb: Any,
    query_labels: Any,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    *,
    chunk_size: int | None = None,
) -> float:
    """Top-1 accuracy of :func:`knn_predict` on labeled queries.

    A query whose class never occurs in the bank counts as wrong.

    Args:
        train_emb, train_labels, query_emb, k, temperature, num_classes, chunk_size: as in
            :func:`knn_predict`.
        query_labels: ``(M,)`` integer class ids ``>= 0`` of the queries.

    Returns:
        The fraction of queries whose predicted class is their label, in ``[0, 1]``.

    Raises:
        ValueError: as :func:`knn_predict`, and for query labels of the wrong length, dtype or sign.

    Example:
        >>> bank = np.array([[1.0, 0.0], [0.0, 1.0]])
        >>> knn_accuracy(bank, np.array([0, 1]), np.array([[2.0, 0.1], [0.1, 3.0]]), np.array([0, 0]), k=1)
        0.5
    """
    shape = np.shape(query_emb)
    if len(shape) == 2:  # otherwise knn_predict names the bad shape
        truth = _as_labels(query_labels, "query_labels", shape[0])
    pred, _ = knn_predict(train_emb, train_labels, query_emb, k, temperature, num_classes, chunk_size=chunk_size)
    return float(np.mean(pred == truth))
