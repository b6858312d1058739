"""Model soups: average the weights of several models fine-tuned from the same initialisation.

From Wortsman et al., "Model soups: averaging weights of multiple fine-tuned models improves
accuracy without increasing inference time", 2022, arXiv 2203.05482. Fine-tunes of one pretrained
network with different hyperparameters or seeds often lie in one low-loss basin, so the average of
their weights is itself a good model (one model's inference cost, unlike an ensemble).

* :func:`uniform_soup` averages every ingredient.
* :func:`greedy_soup` (the paper's Recipe 1) sorts the ingredients by their held-out score and adds
  each in turn if the soup's held-out score does not drop. Give it a **validation** split: choosing
  ingredients on the test split makes the test score a selection score.

These average *across* runs (plain state-dict arithmetic). To average *along* one run's trajectory
(stochastic weight averaging or an EMA of the weights), use Lightning's own
``lightning.pytorch.callbacks.WeightAveraging`` callback (``torch.optim.swa_utils.AveragedModel``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple, Union

import torch
from torch import Tensor, nn

__all__ = ["GreedySoup", "greedy_soup", "uniform_soup"]

StateDict = Mapping[str, Tensor]
Ingredient = Union[nn.Module, StateDict]


def _state(ingredient: Ingredient, position: int) -> StateDict:
    if isinstance(ingredient, nn.Module):
        return ingredient.state_dict()
    if isinstance(ingredient, Mapping):
        return ingredient
    raise TypeError(f"ingredient {position} must be an nn.Module or a state dict, got {type(ingredient).__name__}")


def _check_alike(states: Sequence[StateDict]) -> None:
    """Raise unless every state dict has the first one's keys, shapes and dtypes."""
    first = states[0]
    for i, state in enumerate(states[1:], 1):
        missing, extra = sorted(set(first) - set(state)), sorted(set(state) - set(first))
        if missing or extra:
            raise ValueError(f"ingredient {i} does not match ingredient 0: missing keys {missing[:5]}"
                             f"{' ...' if len(missing) > 5 else ''}, unexpected keys {extra[:5]}"
                             f"{' ...' if len(extra) > 5 else ''} (soups need models of one architecture)")
        for key, tensor in first.items():
            other = state[key]
            if not isinstance(other, Tensor) or not isinstance(tensor, Tensor):
                raise ValueError(f"{key!r} is not a tensor in every ingredient (a soup averages tensors only)")
            if other.shape != tensor.shape:
                raise ValueError(f"{key!r} has shape {tuple(other.shape)} in ingredient {i} but "
                                 f"{tuple(tensor.shape)} in ingredient 0")
            if other.dtype != tensor.dtype:
                raise ValueError(f"{key!r} has dtype {other.dtype} in ingredient {i} but {tensor.dtype} in "
                                 f"ingredient 0")


def uniform_soup(ingredients: Sequence[Ingredient], weights: Sequence[float] | None = None) -> dict[str, Tensor]:
    """The average of several models' state dicts (the paper's uniform soup).

    Floating-point tensors (parameters and BatchNorm's ``running_mean`` / ``running_var``) are
    averaged, accumulated in at least float32 and cast back to their dtype. Averaged running
    statistics are not the statistics of the averaged network; where that matters, re-estimate them
    with ``torch.optim.swa_utils.update_bn(loader, model)`` after loading the soup. Integer and boolean
    tensors (BatchNorm's ``num_batches_tracked``, per-sample tables) cannot be averaged and are taken
    from the first ingredient (``num_batches_tracked`` only matters for ``BatchNorm(momentum=None)``).
    Tensors are averaged on the device of the first ingredient's tensor; the result is a new dict of
    new tensors (the ingredients are not changed).

    Args:
        ingredients: Models or state dicts of one architecture, e.g. fine-tunes of one pretrained model.
        weights: Optional non-negative weight per ingredient (normalised to sum to 1); default equal.

    Returns:
        A state dict with the first ingredient's keys, in its order.

    Raises:
        ValueError: no ingredients; ingredients with different keys, shapes or dtypes (naming the key);
            bad ``weights``.
        TypeError: an ingredient that is neither a module nor a mapping.

    Example:
        >>> a, b = {"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([3.0, 6.0])}
        >>> uniform_soup([a, b])["w"]
        tensor([2., 4.])
    """
    states = [_state(ingredient, i) for i, ingredient in enumerate(ingredients)]
    if not states:
        raise ValueError("a soup needs at least one ingredient")
    if weights is None:
        weights = [1.0] * len(states)
    weights = [float(w) for w in weights]
    if len(weights) != len(states) or any(not w >= 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights must be {len(states)} non-negative numbers with a positive sum, got {weights}")
    _check_alike(states)
    total = sum(weights)
    soup: dict[str, Tensor] = {}
    for key, first in states[0].items():
        if not first.is_floating_point():
            soup[key] = first.detach().clone()
            continue
        dtype = torch.promote_types(first.dtype, torch.float32)
        acc = torch.zeros(first.shape, dtype=dtype, device=first.device)
        for state, w in zip(states, weights):
            acc.add_(state[key].detach().to(device=first.device, dtype=dtype), alpha=w)
        soup[key] = acc.div_(total).to(first.dtype)
    return soup


class GreedySoup(NamedTuple):
    """What :func:`greedy_soup` returns.

    Attributes:
        state_dict: The soup's weights.
        ingredients: Positions (in the input sequence) of the ingredients in the soup, in the order added.
        score: The held-out score of the soup.
        scores: The held-out score of each input model alone, by input position.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> ingredients = [nn.Linear(2, 1) for _ in range(3)]
        >>> soup = greedy_soup(ingredients, lambda state: -float(state["bias"].abs().sum()))
        >>> soup.ingredients[0] == int(torch.stack([m.bias.abs().sum() for m in ingredients]).argmin())
        True
    """

    state_dict: dict[str, Tensor]
    ingredients: list[int]
    score: float
    scores: list[float]


def greedy_soup(ingredients: Sequence[Ingredient], evaluate_fn: Callable[[dict[str, Tensor]], float],
                scores: Sequence[float] | None = None) -> GreedySoup:
    """The paper's greedy soup (Recipe 1): add ingredients best-first while the held-out score does not drop.

    The ingredients are sorted by their own score (descending; ties keep the input order); the soup
    starts as the best one, and each next ingredient is kept if the uniform average of the soup's
    ingredients plus it scores at least as well as the soup does (``>=``, as in the paper's
    Algorithm 1). The soup is therefore never worse on the held-out data than the best single model.
    ``evaluate_fn`` is called once per ingredient (unless ``scores`` are given) and once per candidate.

    Args:
        ingredients: Models or state dicts of one architecture (see :func:`uniform_soup`).
        evaluate_fn: Maps a state dict to a held-out score, higher is better; score the **validation**
            split, never the test split.
        scores: Each ingredient's own held-out score, if already known (e.g. logged after training).

    Returns:
        A :class:`GreedySoup`.

    Raises:
        ValueError: no ingredients, mismatched ingredients (see :func:`uniform_soup`) or a wrong
            number of ``scores``.

    Example:
        >>> models = [{"w": torch.tensor([v])} for v in (1.0, 3.0, 10.0)]
        >>> soup = greedy_soup(models, lambda s: -abs(float(s["w"]) - 2.0))  # the best weight is 2
        >>> soup.ingredients, soup.state_dict["w"]
        ([0, 1], tensor([2.]))
    """
    states = [_state(ingredient, i) for i, ingredient in enumerate(ingredients)]
    if not states:
        raise ValueError("a soup needs at least one ingredient")
    _check_alike(states)
    if scores is None:
        scores = [float(evaluate_fn(dict(state))) for state in states]
    elif len(scores) != len(states):
        raise ValueError(f"scores has {len(scores)} entries for {len(states)} ingredients")
    scores = [float(s) for s in scores]
    order = sorted(range(len(states)), key=lambda i: -scores[i])
    chosen = [order[0]]
    soup, best = uniform_soup([states[order[0]]]), scores[order[0]]
    for i in order[1:]:
        candidate = uniform_soup([states[j] for j in (*chosen, i)])
        score = float(evaluate_fn(candidate))
        if score >= best:
            chosen.append(i)
            soup, best = candidate, score
    return GreedySoup(soup, chosen, best, scores)
