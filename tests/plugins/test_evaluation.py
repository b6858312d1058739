from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

import fewlabel.plugins
from fewlabel.plugins.evaluation import (
    check_knn_args,
    fit_linear_probe,
    knn_accuracy,
    knn_predict,
    linear_probe_accuracy,
)

# Four unit vectors: two of class 0, two of class 1.
BANK = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]], dtype=np.float32)
LABELS = np.array([0, 0, 1, 1])


def test_public_surface() -> None:
    for name in ("fit_linear_probe", "knn_accuracy", "knn_predict", "linear_probe_accuracy"):
        assert name in fewlabel.plugins.__all__


def test_hand_computed_weighted_votes() -> None:
    """Query (0.8, 0.6): cosine 0.8, 0.96, 0.6, -0.8 to the bank; k=3 keeps the first three."""
    pred, scores = knn_predict(BANK, LABELS, np.array([[0.8, 0.6]]), k=3, temperature=0.5)
    w0, w1, w2 = math.exp(0.8 / 0.5), math.exp(0.96 / 0.5), math.exp(0.6 / 0.5)
    total = w0 + w1 + w2
    assert pred.tolist() == [0]
    np.testing.assert_allclose(scores, [[(w0 + w1) / total, w2 / total]], rtol=1e-5)
    assert scores.dtype == np.float32 and pred.dtype == np.int64


@pytest.mark.parametrize(("temperature", "expected"), [(0.07, 1), (1.0, 0)])
def test_the_weights_not_the_majority_decide(temperature: float, expected: int) -> None:
    """Query (0.28, 0.96): neighbours class 1 at 0.96, class 0 at 0.936 and 0.28. The majority says 0; with a
    sharp temperature the single closest class-1 neighbour outweighs both."""
    pred, scores = knn_predict(BANK, LABELS, np.array([[0.28, 0.96]]), k=3, temperature=temperature)
    w = [math.exp(s / temperature) for s in (0.28, 0.936, 0.96)]
    np.testing.assert_allclose(scores[0], [(w[0] + w[1]) / sum(w), w[2] / sum(w)], rtol=1e-4)
    assert pred.tolist() == [expected]


def test_two_clusters_are_classified_and_scale_does_not_matter() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal([5.0, 0.0, 0.0], 0.3, (10, 3))
    b = rng.normal([0.0, 5.0, 0.0], 0.3, (10, 3))
    bank, labels = np.concatenate([a, b]), np.repeat([0, 1], 10)
    queries = np.array([[4.0, 0.5, 0.1], [0.3, 6.0, -0.2], [1.0, 0.1, 0.0]])
    assert knn_accuracy(bank, labels, queries, np.array([0, 1, 0]), k=5) == 1.0
    pred, scores = knn_predict(bank, labels, queries, k=5)
    pred2, scores2 = knn_predict(bank * rng.uniform(0.1, 10.0, (20, 1)), labels, queries * 7.0, k=5)
    assert np.array_equal(pred, pred2)
    np.testing.assert_allclose(scores, scores2, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-6)


def test_matches_dino_eval_knn_formula() -> None:
    """DINO's eval_knn: top-k of the cosine, one-hot votes weighted by exp(s / T), summed; top-1 = argmax."""
    rng = np.random.default_rng(1)
    bank = rng.normal(size=(200, 16)).astype(np.float32)
    labels = rng.integers(0, 7, 200)
    queries = rng.normal(size=(50, 16)).astype(np.float32)
    t = torch.nn.functional.normalize(torch.from_numpy(bank), dim=1)
    q = torch.nn.functional.normalize(torch.from_numpy(queries), dim=1)
    sim, idx = (q @ t.T).topk(20, dim=1)
    one_hot = torch.zeros(50 * 20, 7).scatter_(1, torch.from_numpy(labels)[idx].view(-1, 1), 1).view(50, 20, 7)
    votes = (one_hot * sim.div(0.07).exp().view(50, 20, 1)).sum(1)
    pred, scores = knn_predict(bank, labels, queries, k=20, temperature=0.07, num_classes=7)
    assert np.array_equal(pred, votes.argmax(1).numpy())
    np.testing.assert_allclose(scores, (votes / votes.sum(1, keepdim=True)).numpy(), rtol=1e-4, atol=1e-6)
    chunked = knn_predict(bank, labels, queries, k=20, temperature=0.07, num_classes=7, chunk_size=7)
    assert np.array_equal(chunked[0], pred) and np.allclose(chunked[1], scores, atol=1e-6)


def test_inputs_are_not_modified_and_other_types_are_accepted() -> None:
    bank, query = BANK * 3.0, np.array([[2.0, 1.0]], dtype=np.float32)
    kept = bank.copy(), query.copy()
    reference = knn_predict(bank, LABELS, query, k=2)
    assert np.array_equal(bank, kept[0]) and np.array_equal(query, kept[1])
    for b, lab, q in [(bank.astype(np.float16), LABELS.astype(np.int32), query.astype(np.float64)),
                      (torch.from_numpy(bank), torch.from_numpy(LABELS), torch.from_numpy(query))]:
        pred, scores = knn_predict(b, lab, q, k=2)
        assert np.array_equal(pred, reference[0]) and np.allclose(scores, reference[1], atol=1e-3)


def test_num_classes_adds_empty_columns_and_k_equal_to_n_works() -> None:
    pred, scores = knn_predict(BANK, LABELS, np.array([[1.0, 0.1]]), k=4, num_classes=5)
    assert scores.shape == (1, 5) and np.all(scores[:, 2:] == 0) and pred.tolist() == [0]


def test_zero_query_has_equal_similarity_to_every_row() -> None:
    _, scores = knn_predict(BANK, LABELS, np.zeros((1, 2)), k=4, temperature=0.1)
    np.testing.assert_allclose(scores, [[0.5, 0.5]], rtol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"train_emb": BANK[:, 0]}, r"train_emb must be a 2-D \(N, D\) array"),
        ({"train_emb": BANK[:0]}, "train_emb is empty"),
        ({"query_emb": np.ones((2, 3))}, "query_emb has 3 dimensions but train_emb has 2"),
        ({"train_labels": LABELS[:3]}, "train_labels has 3 entries but its embeddings have 4 rows"),
        ({"train_labels": LABELS[:, None]}, "train_labels must be a 1-D array"),
        ({"train_labels": LABELS.astype(float)}, "train_labels must hold integer class ids"),
        ({"train_labels": np.array([0, -1, 1, 1])}, r"1 negative \(unknown\) labels; drop those rows first"),
        ({"k": 5}, "k=5 neighbours requested but the bank has only N=4 rows"),
        ({"k": 0}, "k must be an int >= 1"),
        ({"k": 2.0}, "k must be an int >= 1"),
        ({"k": True}, "k must be an int >= 1"),
        ({"temperature": 0.0}, "temperature must be a finite float > 0"),
        ({"temperature": float("nan")}, "temperature must be a finite float > 0"),
        ({"temperature": "hot"}, "temperature must be a float > 0"),
        ({"num_classes": 1}, r"num_classes must be an int >= 2 \(the largest bank label \+ 1\)"),
        ({"train_emb": np.where(np.eye(4, 2) > 0, np.nan, BANK)}, "train_emb has 2 non-finite values"),
        ({"query_emb": np.array([[np.inf, 0.0]])}, "query_emb has 1 non-finite values"),
    ],
)
def test_knn_errors(kwargs: dict[str, Any], match: str) -> None:
    args = {"train_emb": BANK, "train_labels": LABELS, "query_emb": np.ones((2, 2)), "k": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        knn_predict(**args)


def test_knn_accuracy_checks_query_labels() -> None:
    with pytest.raises(ValueError, match="query_labels has 1 entries but its embeddings have 2 rows"):
        knn_accuracy(BANK, LABELS, np.ones((2, 2)), np.array([0]), k=2)
    with pytest.raises(ValueError, match="query_labels holds 1 negative"):
        knn_accuracy(BANK, LABELS, np.ones((2, 2)), np.array([0, -1]), k=2)
    assert knn_accuracy(BANK, LABELS, np.array([[1.0, 0.0]]), np.array([3]), k=1) == 0.0  # an unseen class
    check_knn_args(1, 1e-3)


def _blobs(seed: int, n: int = 20) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(0).normal(0.0, 5.0, (3, 8))
    y = np.repeat(np.arange(3), n)
    return centers[y] + rng.normal(0.0, 0.5, (3 * n, 8)), y


@pytest.mark.parametrize("standardize", [True, False])
def test_linear_probe_separates_separable_data(standardize: bool) -> None:
    x, y = _blobs(1)
    x_test, y_test = _blobs(2)
    assert linear_probe_accuracy(x, y, x_test, y_test, standardize=standardize) == 1.0
    probe = fit_linear_probe(torch.from_numpy(x).float(), torch.from_numpy(y), C=0.5, standardize=standardize)
    again = fit_linear_probe(x.astype(np.float32), y, C=0.5, standardize=standardize)
    np.testing.assert_allclose(probe.predict_proba(x_test), again.predict_proba(x_test), rtol=1e-6)


def test_linear_probe_chance_on_random_labels_and_unseen_classes_count_wrong() -> None:
    x, _ = _blobs(1)
    x_test, _ = _blobs(2)
    shuffled = np.random.default_rng(3).integers(0, 2, len(x))
    assert 0.2 < linear_probe_accuracy(x, shuffled, x_test, np.zeros(len(x_test), dtype=np.int64)) < 0.9
    assert linear_probe_accuracy(x, shuffled, x_test, np.full(len(x_test), 7)) == 0.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"train_labels": np.zeros(60, dtype=np.int64)}, r"at least 2 classes in train_labels, got \[0\]"),
        ({"test_emb": np.ones((5, 3))}, "test_emb has 3 dimensions but train_emb has 8"),
        ({"test_emb": np.full((5, 8), np.nan)}, "test_emb has 40 non-finite values"),
        ({"train_emb": np.ones(8)}, r"train_emb must be a 2-D \(N, D\) array"),
        ({"test_labels": np.zeros(4, dtype=np.int64)}, "test_labels has 4 entries but its embeddings have 5 rows"),
        ({"C": 0.0}, "C must be a finite float > 0"),
        ({"max_iter": 0}, "max_iter must be an int >= 1"),
        ({"standardize": 1}, "standardize must be True or False"),
        ({"seed": -1}, "seed must be an int >= 0"),
    ],
)
def test_linear_probe_errors(kwargs: dict[str, Any], match: str) -> None:
    x, y = _blobs(1)
    args = {"train_emb": x, "train_labels": y, "test_emb": np.ones((5, 8)), "test_labels": np.zeros(5, dtype=np.int64),
            **kwargs}
    with pytest.raises(ValueError, match=match):
        linear_probe_accuracy(**args)
