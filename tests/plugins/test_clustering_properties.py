"""Property tests (hypothesis) of the pseudo-label clustering on odd inputs: constant, duplicated and tiny
embeddings, k up to and beyond N, NaN/inf. Each case ends in a valid clustering or a clear ValueError,
never in an error from inside faiss or numpy."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fewlabel.plugins.clustering import cluster_embeddings

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def embeddings(draw: st.DrawFn) -> np.ndarray:
    """``(N, D)`` float32 matrices built from a few distinct rows, repeated (duplicates), some constant."""
    n = draw(st.integers(1, 40))
    d = draw(st.integers(1, 6))
    distinct = draw(st.integers(1, n))
    values = st.floats(-1e3, 1e3, allow_nan=False, width=32)
    rows = np.array(draw(st.lists(st.lists(values, min_size=d, max_size=d), min_size=distinct, max_size=distinct)),
                    dtype=np.float32)
    picks = draw(st.lists(st.integers(0, distinct - 1), min_size=n, max_size=n))
    return rows[picks]


@SETTINGS
@given(x=embeddings(), k=st.integers(1, 45), pca=st.sampled_from([None, 2, 128]), whiten=st.booleans(),
       seed=st.integers(0, 3))
def test_any_finite_matrix_is_clustered_or_refused_clearly(x: np.ndarray, k: int, pca: int | None, whiten: bool,
                                                           seed: int) -> None:
    n = len(x)
    if k > n:
        with pytest.raises(ValueError, match=f"cannot make k={k} clusters from only N={n} samples"):
            cluster_embeddings(x, k, pca_dim=pca, whiten=whiten, seed=seed)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # degenerate clusterings are warned about, not refused
        try:
            result = cluster_embeddings(x, k, pca_dim=pca, whiten=whiten, seed=seed)
        except ValueError as err:  # what PCA cannot do: fewer than 2 rows, or whitening rows that are all equal
            message = str(err)
            assert pca is not None, message
            assert ("PCA needs at least 2 samples" in message and n < 2) or (
                "PCA whitening needs variance" in message and whiten and (x == x[0]).all()), message
            return
    assert result.labels.shape == (n,) and result.labels.dtype == np.int64
    assert ((result.labels >= 0) & (result.labels < k)).all()
    assert result.sizes.sum() == n and result.num_empty == int((result.sizes == 0).sum())
    assert (result.margins >= 0).all() and (np.isfinite(result.margins).all() or k == 1)  # k = 1: inf
    # identical rows always share a cluster
    _, first = np.unique(x, axis=0, return_inverse=True)
    for group in np.unique(first):
        assert len(set(result.labels[first.reshape(-1) == group].tolist())) == 1


@SETTINGS
@given(x=embeddings(), bad=st.sampled_from([np.nan, np.inf, -np.inf]), where=st.integers(0, 10_000))
def test_non_finite_values_are_refused_with_their_count(x: np.ndarray, bad: float, where: int) -> None:
    x = x.copy()
    x.reshape(-1)[where % x.size] = bad
    with pytest.raises(ValueError, match=r"has 1 non-finite values"):
        cluster_embeddings(x, 1, pca_dim=None)
