"""Model soups (arXiv 2203.05482): hand-made state dicts, the greedy rule, BatchNorm buffers, mismatches."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fewlabel.plugins.optim import GreedySoup, greedy_soup, uniform_soup


def _sd(w: list[float], b: float, tracked: int = 0) -> dict[str, torch.Tensor]:
    return {"w": torch.tensor(w), "b": torch.tensor([b]), "num_batches_tracked": torch.tensor(tracked)}


def test_uniform_soup_of_two_hand_made_state_dicts_is_exact() -> None:
    soup = uniform_soup([_sd([1.0, -2.0], 0.5, tracked=7), _sd([3.0, 4.0], 1.5, tracked=9)])
    assert list(soup) == ["w", "b", "num_batches_tracked"]
    assert torch.equal(soup["w"], torch.tensor([2.0, 1.0]))
    assert torch.equal(soup["b"], torch.tensor([1.0]))
    assert torch.equal(soup["num_batches_tracked"], torch.tensor(7))  # integers: the first ingredient's
    assert soup["num_batches_tracked"].dtype == torch.int64


def test_weights_dtypes_and_inputs_left_alone() -> None:
    a, b = _sd([0.0, 0.0], 0.0), _sd([4.0, 8.0], 4.0)
    assert torch.equal(uniform_soup([a, b], weights=[3, 1])["w"], torch.tensor([1.0, 2.0]))
    assert torch.equal(a["w"], torch.zeros(2))  # ingredients untouched
    half = [{"x": torch.tensor(v, dtype=torch.bfloat16)} for v in ([1.0, 2.0], [2.0, 4.0])]
    soup = uniform_soup(half)["x"]
    assert soup.dtype == torch.bfloat16 and torch.equal(soup, torch.tensor([1.5, 3.0], dtype=torch.bfloat16))
    assert uniform_soup([a])["w"] is not a["w"]
    with pytest.raises(ValueError, match="weights must be 2 non-negative"):
        uniform_soup([a, b], weights=[1.0, -1.0])


def test_modules_and_batchnorm_buffers() -> None:
    torch.manual_seed(0)
    nets = [nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)) for _ in range(3)]
    for steps, net in enumerate(nets, 1):  # different running statistics and counts
        for _ in range(steps):
            net(torch.randn(8, 3) * steps)
    soup = uniform_soup(nets)
    for key in ("0.weight", "0.bias", "1.running_mean", "1.running_var"):
        expected = sum(net.state_dict()[key] for net in nets) / 3
        assert torch.allclose(soup[key], expected, atol=1e-7), key
    assert soup["1.num_batches_tracked"].item() == 1
    merged = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    merged.load_state_dict(soup)  # a soup loads into the architecture


def test_greedy_soup_keeps_and_rejects_per_the_evaluation() -> None:
    # score = -(distance of w to the target 2.0); ingredients 1.0, 3.0, 10.0, 2.5
    models = [_sd([v], 0.0) for v in (1.0, 3.0, 10.0, 2.5)]
    calls: list[float] = []

    def evaluate(state: dict[str, torch.Tensor]) -> float:
        calls.append(float(state["w"]))
        return -abs(float(state["w"]) - 2.0)

    soup = greedy_soup(models, evaluate)
    assert isinstance(soup, GreedySoup)
    assert soup.scores == [-1.0, -1.0, -8.0, -0.5]
    # best-first: 2.5 (-0.5); + 1.0 -> 1.75 (-0.25) kept; + 3.0 -> 2.1667 (-0.1667) kept; + 10 -> 4.125 rejected
    assert soup.ingredients == [3, 0, 1]
    assert torch.allclose(soup.state_dict["w"], torch.tensor([6.5 / 3]))
    assert soup.score == pytest.approx(-(6.5 / 3 - 2.0))
    assert calls[4:] == pytest.approx([1.75, 6.5 / 3, 16.5 / 4])  # after the 4 individual scores: 3 candidates


def test_greedy_soup_keeps_an_ingredient_that_ties_and_uses_given_scores() -> None:
    models = [_sd([v], 0.0) for v in (1.0, 2.0)]
    soup = greedy_soup(models, lambda state: 0.5, scores=[0.5, 0.5])  # ties: the soup may grow (paper: >=)
    assert soup.ingredients == [0, 1] and torch.equal(soup.state_dict["w"], torch.tensor([1.5]))
    never_better = greedy_soup(models, lambda state: 0.0, scores=[1.0, 0.9])
    assert never_better.ingredients == [0] and torch.equal(never_better.state_dict["w"], torch.tensor([1.0]))
    with pytest.raises(ValueError, match="scores has 1 entries for 2 ingredients"):
        greedy_soup(models, lambda state: 0.0, scores=[1.0])


def test_mismatched_ingredients_fail_clearly() -> None:
    with pytest.raises(ValueError, match="at least one ingredient"):
        uniform_soup([])
    with pytest.raises(ValueError, match=r"ingredient 1 does not match ingredient 0: missing keys \['b'\]"):
        uniform_soup([{"w": torch.zeros(2), "b": torch.zeros(1)}, {"w": torch.zeros(2), "c": torch.zeros(1)}])
    with pytest.raises(ValueError, match=r"'w' has shape \(3,\) in ingredient 1 but \(2,\) in ingredient 0"):
        uniform_soup([{"w": torch.zeros(2)}, {"w": torch.zeros(3)}])
    with pytest.raises(ValueError, match="dtype"):
        uniform_soup([{"w": torch.zeros(2)}, {"w": torch.zeros(2, dtype=torch.float64)}])
    with pytest.raises(ValueError, match="shape"):
        greedy_soup([nn.Linear(2, 3), nn.Linear(2, 4)], lambda state: 0.0)
    with pytest.raises(TypeError, match="ingredient 1 must be an nn.Module or a state dict"):
        uniform_soup([{"w": torch.zeros(2)}, [torch.zeros(2)]])  # type: ignore[list-item]
