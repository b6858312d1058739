"""Linear probe: multinomial logistic regression on frozen embeddings (scikit-learn).

The offline linear evaluation of self-supervised representations ("A Simple Framework for
Contrastive Learning of Visual Representations", Chen et al., 2020, arXiv 2002.05709, appendix B.5,
evaluates with an L2-regularised logistic regression on frozen features): features are
standardised with the training set's mean and standard deviation, then scikit-learn's
``LogisticRegression`` (L-BFGS, multinomial loss, L2 penalty ``C``) is fitted on the labeled
training embeddings and scored on the test embeddings.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from fewlabel.plugins.arguments import is_count
from fewlabel.plugins.arrays import as_matrix
from fewlabel.plugins.evaluation.knn import _as_labels

__all__ = ["fit_linear_probe", "linear_probe_accuracy"]


def fit_linear_probe(
    train_emb: Any,
    train_labels: Any,
    *,
    C: float = 1.0,
    max_iter: int = 1000,
    standardize: bool = True,
    seed: int = 0,
) -> Pipeline:
    """Fit a logistic-regression probe on frozen embeddings.

    Settings: ``StandardScaler`` fitted on ``train_emb`` (when ``standardize``), then
    ``LogisticRegression(C=C, solver="lbfgs", max_iter=max_iter, random_state=seed)`` (a multinomial
    softmax over all classes with an L2 penalty of strength ``1 / C``, bias not penalised). The
    features are copied to float64 by scikit-learn (``N x D x 8`` bytes). L-BFGS is deterministic,
    so the same inputs give the same probe; a ``ConvergenceWarning`` is scikit-learn's own.

    Args:
        train_emb: ``(N, D)`` training embeddings (numpy array, memmap or CPU tensor).
        train_labels: ``(N,)`` integer class ids ``>= 0``, with at least two classes.
        C: inverse L2 regularisation strength, ``> 0`` (scikit-learn's default 1.0).
        max_iter: L-BFGS iterations, ``>= 1``.
        standardize: standardise the features with the training mean and standard deviation.
        seed: ``random_state`` of the classifier (only used by other solvers; kept for reproducibility).

    Returns:
        The fitted scikit-learn ``Pipeline`` (``predict``, ``predict_proba``, ``score``).

    Raises:
        ValueError: a non-2-D, empty or non-finite ``train_emb``; labels of the wrong length, dtype or
            sign; fewer than two classes; a bad ``C``, ``max_iter``, ``standardize`` or ``seed``.
    """
    if isinstance(C, bool) or not isinstance(C, (int, float, np.floating)) or not (math.isfinite(C) and C > 0):
        raise ValueError(f"C must be a finite float > 0 (inverse regularisation strength), got {C!r}")
    if not is_count(max_iter, 1):
        raise ValueError(f"max_iter must be an int >= 1, got {max_iter!r}")
    if not isinstance(standardize, bool):
        raise ValueError(f"standardize must be True or False, got {standardize!r}")
    if not is_count(seed, 0):
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    x = as_matrix(train_emb, "train_emb")
    y = _as_labels(train_labels, "train_labels", x.shape[0])
    classes = np.unique(y)
    if classes.size < 2:
        raise ValueError(f"a linear probe needs at least 2 classes in train_labels, got {classes.tolist()}")
    steps: list[Any] = [StandardScaler()] if standardize else []
    steps.append(LogisticRegression(C=float(C), solver="lbfgs", max_iter=int(max_iter), random_state=int(seed)))
    return make_pipeline(*steps).fit(np.asarray(x, dtype=np.float64), y)


def linear_probe_accuracy(
    train_emb: Any,
    train_labels: Any,
    test_emb: Any,
    test_labels: Any,
    *,
    C: float = 1.0,
    max_iter: int = 1000,
    standardize: bool = True,
    seed: int = 0,
) -> float:
    """Top-1 test accuracy of a logistic-regression probe fitted on the training embeddings.

    A test sample whose class never occurs in ``train_labels`` counts as wrong.

    Args:
        train_emb, train_labels, C, max_iter, standardize, seed: as in :func:`fit_linear_probe`.
        test_emb: ``(M, D)`` test embeddings, the same ``D`` as ``train_emb``.
        test_labels: ``(M,)`` integer class ids ``>= 0``.

    Returns:
        The fraction of test samples classified correctly, in ``[0, 1]``.

    Raises:
        ValueError: as :func:`fit_linear_probe`, and for a bad ``test_emb`` (shape, dimension,
            non-finite values) or ``test_labels``.

    Example:
        >>> x = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]])
        >>> linear_probe_accuracy(x, np.array([0, 0, 1, 1]), x + 0.05, np.array([0, 0, 1, 1]))
        1.0
    """
    x_test = as_matrix(test_emb, "test_emb")
    y_test = _as_labels(test_labels, "test_labels", x_test.shape[0])
    d = np.shape(train_emb)[-1] if np.ndim(train_emb) == 2 else None
    if d is not None and x_test.shape[1] != d:
        raise ValueError(f"test_emb has {x_test.shape[1]} dimensions but train_emb has {d}")
    probe = fit_linear_probe(train_emb, train_labels, C=C, max_iter=max_iter, standardize=standardize, seed=seed)
    return float(np.mean(probe.predict(np.asarray(x_test, dtype=np.float64)) == y_test))
