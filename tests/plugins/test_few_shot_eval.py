"""Few-shot episodes: the draws, the 95 % confidence interval and ``evaluate_episodes``."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from fewlabel.plugins.evaluation import (
    Episode,
    FewShotResult,
    confidence_interval95,
    evaluate_episodes,
    sample_episodes,
)
from fewlabel.plugins.heads import ProtoNet

LABELS = np.repeat(np.arange(6), [10, 10, 10, 10, 10, 3])  # class 5 is too small for 2 + 3 samples


def test_episodes_have_n_distinct_classes_k_and_q_each_and_disjoint_sets() -> None:
    episodes = sample_episodes(LABELS, n_way=4, k_shot=2, n_query=3, num_episodes=50, seed=1)
    assert len(episodes) == 50 and all(isinstance(e, Episode) for e in episodes)
    for support, query in episodes:
        assert support.shape == (8,) and query.shape == (12,)
        assert not set(support.tolist()) & set(query.tolist())
        s_classes = LABELS[support].reshape(4, 2)  # class by class
        q_classes = LABELS[query].reshape(4, 3)
        assert (s_classes == s_classes[:, :1]).all() and (q_classes == q_classes[:, :1]).all()
        assert (s_classes[:, 0] == q_classes[:, 0]).all() and len(set(s_classes[:, 0])) == 4
        assert 5 not in s_classes  # a class with fewer than k + q samples is never drawn


def test_episodes_are_seeded() -> None:
    a = sample_episodes(LABELS, 3, 1, 2, 10, seed=7)
    b = sample_episodes(LABELS, 3, 1, 2, 10, seed=7)
    c = sample_episodes(LABELS, 3, 1, 2, 10, seed=8)
    assert all(np.array_equal(x.support, y.support) and np.array_equal(x.query, y.query) for x, y in zip(a, b))
    assert any(not np.array_equal(x.support, y.support) for x, y in zip(a, c))
    gen = np.random.default_rng(7)  # a Generator is used (and advanced) as given
    assert all(np.array_equal(x.support, y.support) for x, y in zip(a, sample_episodes(LABELS, 3, 1, 2, 10, gen)))


def test_unknown_labels_are_never_drawn_and_too_few_classes_is_named() -> None:
    labels = np.array([-1] * 20 + [0] * 3 + [1] * 3 + [2] * 1)
    for support, query in sample_episodes(labels, 2, 1, 2, 20):
        assert (labels[support] >= 0).all() and (labels[query] >= 0).all()
        assert 2 not in labels[support]
    with pytest.raises(ValueError, match=r"only 2 of 3 classes have that many \(too few: \{2: 1\}\)"):
        sample_episodes(labels, 3, 1, 2, 1)
    with pytest.raises(ValueError, match="k_shot must be an int >= 1"):
        sample_episodes(labels, 2, 0, 2, 1)
    with pytest.raises(ValueError, match="integer class ids"):
        sample_episodes(labels.astype(float), 2, 1, 2, 1)


def test_confidence_interval_formula() -> None:
    acc = np.array([0.2, 0.4, 0.9, 0.7, 0.8])
    assert confidence_interval95(acc) == pytest.approx(1.96 * np.std(acc) / math.sqrt(5))
    assert confidence_interval95([0.5, 1.0, 0.5, 1.0]) == pytest.approx(1.96 * 0.25 / 2)  # std 0.25, ddof 0
    assert confidence_interval95([0.7]) == 0.0


class FirstClassHead:
    """A user's head: always predicts the first support class (accuracy exactly 1 / n_way)."""

    seen: list[int] = []

    def fit(self, support: torch.Tensor, labels: torch.Tensor) -> FirstClassHead:
        self.n = int(torch.unique(labels).numel())
        return self

    def __call__(self, query: torch.Tensor) -> torch.Tensor:
        FirstClassHead.seen.append(len(query))
        logits = torch.zeros(len(query), self.n)
        logits[:, 0] = 1
        return logits


def test_evaluate_episodes_mean_and_ci_from_the_episode_accuracies() -> None:
    FirstClassHead.seen = []
    result = evaluate_episodes(FirstClassHead, np.zeros((len(LABELS), 2)), LABELS, n_way=4, k_shot=2, n_query=3,
                               num_episodes=25)
    assert isinstance(result, FewShotResult) and result.num_episodes == 25
    np.testing.assert_array_equal(result.accuracies, np.full(25, 0.25))
    assert result.mean == 0.25 and result.ci95 == 0.0
    assert FirstClassHead.seen == [12] * 25  # one call per episode with its whole query set

    rng = np.random.default_rng(0)
    x = rng.normal(size=(len(LABELS), 5)) + LABELS[:, None] * 0.8  # overlapping classes: a number that can be wrong
    result = evaluate_episodes("protonet", x, LABELS, 5, 1, 3, 40, seed=2)
    by_hand = []
    for support, query in sample_episodes(LABELS, 5, 1, 3, 40, seed=2):
        head = ProtoNet().fit(torch.tensor(x[support]), torch.tensor(LABELS[support]))
        by_hand.append(float((head.predict(torch.tensor(x[query])).numpy() == LABELS[query]).mean()))
    np.testing.assert_allclose(result.accuracies, by_hand)
    assert 0.2 < result.mean < 1.0
    assert result.mean == pytest.approx(np.mean(by_hand))
    assert result.ci95 == pytest.approx(1.96 * np.std(by_hand) / math.sqrt(40))
    assert str(result) == f"{100 * result.mean:.2f} +- {100 * result.ci95:.2f} %"


@pytest.mark.parametrize("head", ["protonet", "simpleshot", "gda", "logistic", "bd_cspn"])
def test_separated_classes_give_full_accuracy(head: str) -> None:
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(6), 8)
    centres = 30 * np.eye(6)
    x = torch.tensor(centres[labels] + 0.1 * rng.normal(size=(48, 6)), dtype=torch.float32)  # a tensor is fine too
    result = evaluate_episodes(head, x, labels, n_way=3, k_shot=2, n_query=4, num_episodes=20)
    assert result.mean == 1.0 and result.ci95 == 0.0


def test_head_kwargs_and_errors() -> None:
    x, labels = np.random.default_rng(0).normal(size=(len(LABELS), 3)), LABELS
    base = evaluate_episodes("simpleshot", x, labels, 3, 1, 2, 5, head_kwargs={"base_mean": np.zeros(3)})
    assert base.num_episodes == 5
    with pytest.raises(ValueError, match="unknown few-shot head 'protonets'.*did you mean 'protonet'"):
        evaluate_episodes("protonets", x, labels)
    with pytest.raises(TypeError):
        evaluate_episodes("protonet", x, labels, head_kwargs={"temperature": 1.0})
    with pytest.raises(ValueError, match="head_kwargs only applies"):
        evaluate_episodes(ProtoNet, x, labels, head_kwargs={"a": 1})
    with pytest.raises(ValueError, match="head must be"):
        evaluate_episodes(3, x, labels)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="labels has 3 entries but embeddings has"):
        evaluate_episodes("protonet", x, labels[:3])
    bad: Any = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        evaluate_episodes("protonet", bad, labels)
    with pytest.raises(ValueError, match="need 5 classes with at least 16 samples"):
        evaluate_episodes("protonet", x, labels, 5, 1, 15)


def test_one_torch_thread_during_small_episodes_is_restored() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = []

        class Recorder(ProtoNet):
            def fit_classes(self, *args: Any) -> None:
                seen.append(torch.get_num_threads())
                super().fit_classes(*args)

        evaluate_episodes(Recorder, np.random.default_rng(0).normal(size=(len(LABELS), 4)), LABELS, 2, 1, 1, 3)
        assert seen == [1, 1, 1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
