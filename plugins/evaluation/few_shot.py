"""Few-shot episodes on frozen embeddings: N-way K-shot Q-query sampling and mean accuracy +- 95 % CI.

The evaluation protocol of the few-shot literature (Prototypical Networks, arXiv 1703.05175;
SimpleShot, arXiv 1911.04623): each episode draws ``N`` classes, ``K`` support and ``Q`` query
samples of each (disjoint), fits a few-shot head on the support and classifies the queries; the
figure is the mean episode accuracy with the 95 % confidence interval ``1.96 * std / sqrt(E)``
over ``E`` episodes (``std`` with ``ddof=0``, as SimpleShot's code reports it).

Episode draws (:func:`sample_episodes`, and :class:`fewlabel.datamodules.EpisodeSampler`, which draws
the same episodes from the same generator; datamodules may not import plugins, so the drawing loop
exists twice, and a test keeps them identical): from a numpy ``Generator``, for each episode,
``rng.choice(eligible, N, replace=False)`` picks the classes (``eligible`` = the sorted classes with at
least ``K + Q`` samples), then for each chosen class in that order ``rng.choice(its sample
positions, K + Q, replace=False)`` gives ``K`` support then ``Q`` query positions. Negative labels
(unknown) are never drawn.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from fewlabel.plugins.arguments import check_int
from fewlabel.plugins.arrays import as_matrix
from fewlabel.plugins.heads.registry import create_few_shot_head

__all__ = [
    "Episode",
    "FewShotResult",
    "check_episode_args",
    "confidence_interval95",
    "evaluate_episodes",
    "sample_episodes",
]


class Episode(NamedTuple):
    """One N-way K-shot Q-query episode as positions into the labels it was drawn from.

    Attributes:
        support: ``(N * K,)`` int64 positions, class by class (``K`` of the first chosen class first).
        query: ``(N * Q,)`` int64 positions, class by class, disjoint from ``support``.

    Example:
        >>> import numpy as np
        >>> (episode,) = sample_episodes(np.repeat(np.arange(3), 10), n_way=2, k_shot=1, n_query=4, num_episodes=1)
        >>> episode.support.shape, episode.query.shape
        ((2,), (8,))
    """

    support: np.ndarray
    query: np.ndarray


@dataclass(frozen=True)
class FewShotResult:
    """Accuracy over few-shot episodes.

    Attributes:
        mean: mean episode accuracy in ``[0, 1]``.
        ci95: half-width of the 95 % confidence interval, ``1.96 * std / sqrt(E)`` (``ddof=0``).
        accuracies: ``(E,)`` float64 accuracy of each episode, in draw order.

    Example:
        >>> import numpy as np
        >>> labels = np.repeat(np.arange(5), 20)
        >>> embeddings = np.eye(5, dtype=np.float32)[labels]  # every class its own point
        >>> result = evaluate_episodes("protonet", embeddings, labels, n_way=5, k_shot=1, num_episodes=10)
        >>> float(result.mean), result.accuracies.shape
        (1.0, (10,))
    """

    mean: float
    ci95: float
    accuracies: np.ndarray

    @property
    def num_episodes(self) -> int:
        return int(self.accuracies.shape[0])

    def __str__(self) -> str:
        return f"{100 * self.mean:.2f} +- {100 * self.ci95:.2f} %"


def check_episode_args(n_way: Any, k_shot: Any, n_query: Any, num_episodes: Any = 1) -> None:
    """Raise unless ``n_way >= 1``, ``k_shot >= 1``, ``n_query >= 1`` and ``num_episodes >= 1`` are integers.

    Raises:
        ValueError: naming the argument, its valid values and the value given.
    """
    check_int("n_way", n_way, 1)
    check_int("k_shot", k_shot, 1)
    check_int("n_query", n_query, 1)
    check_int("num_episodes", num_episodes, 1)


def _labels(labels: Any, rows: int | None = None) -> np.ndarray:
    out = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if out.ndim != 1:
        raise ValueError(f"labels must be a 1-D array of class ids, got shape {out.shape}")
    if out.dtype.kind not in "iu":
        raise ValueError(f"labels must hold integer class ids, got dtype {out.dtype}")
    if rows is not None and out.shape[0] != rows:
        raise ValueError(f"labels has {out.shape[0]} entries but embeddings has {rows} rows")
    return out.astype(np.int64, copy=False)


def _eligible(labels: np.ndarray, need: int, n_way: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """The sorted classes with at least ``need`` samples and each one's sample positions."""
    known = labels >= 0
    classes, counts = np.unique(labels[known], return_counts=True)
    keep = classes[counts >= need]
    if keep.size < n_way:
        short = {int(c): int(n) for c, n in zip(classes, counts) if n < need}
        raise ValueError(
            f"{n_way}-way episodes with k_shot + n_query = {need} samples per class need {n_way} classes with at "
            f"least {need} samples, but only {keep.size} of {classes.size} classes have that many "
            f"(too few: {short}); lower n_way, k_shot or n_query"
        )
    return keep, [np.flatnonzero(labels == c) for c in keep]


def sample_episodes(
    labels: Any,
    n_way: int,
    k_shot: int,
    n_query: int,
    num_episodes: int,
    seed: int | np.random.Generator = 0,
) -> list[Episode]:
    """Draw ``num_episodes`` N-way K-shot Q-query episodes from ``labels`` (see the module docstring).

    Classes with fewer than ``k_shot + n_query`` samples are left out; labels ``< 0`` are never drawn.

    Args:
        labels: ``(M,)`` integer class ids (``-1`` = unknown).
        n_way: classes per episode ``N``.
        k_shot: support samples per class ``K``.
        n_query: query samples per class ``Q``.
        num_episodes: how many episodes.
        seed: an int seed of ``np.random.default_rng`` or a ``Generator`` (advanced in place).

    Returns:
        The episodes, in draw order.

    Raises:
        ValueError: bad counts or labels, or fewer than ``n_way`` classes with ``k_shot + n_query``
            samples (the message lists the classes that are too small).

    Example:
        >>> ep = sample_episodes(np.array([0, 0, 1, 1, 2, 2]), n_way=2, k_shot=1, n_query=1, num_episodes=1)[0]
        >>> len(ep.support), len(ep.query), set(ep.support) & set(ep.query)
        (2, 2, set())
    """
    check_episode_args(n_way, k_shot, n_query, num_episodes)
    y = _labels(labels)
    classes, positions = _eligible(y, k_shot + n_query, n_way)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    episodes = []
    for _ in range(num_episodes):
        chosen = rng.choice(classes.size, n_way, replace=False)
        draws = [rng.choice(positions[c], k_shot + n_query, replace=False) for c in chosen]
        episodes.append(Episode(support=np.concatenate([d[:k_shot] for d in draws]),
                                query=np.concatenate([d[k_shot:] for d in draws])))
    return episodes


def confidence_interval95(accuracies: Any) -> float:
    """``1.96 * std(accuracies) / sqrt(len(accuracies))`` with ``ddof=0`` (0 for a single episode).

    Example:
        >>> confidence_interval95([0.5, 1.0, 0.5, 1.0])
        0.245
    """
    acc = np.asarray(accuracies, dtype=np.float64).reshape(-1)
    if acc.size == 0:
        raise ValueError("confidence_interval95 needs at least one accuracy")
    return float(1.96 * acc.std() / math.sqrt(acc.size))


# Episodes whose embedding dimension D has D**3 below this (D < 512: GDA's inverse is the largest step) run
# with one torch thread: multi-threading tiny tensors only spins (100 ProtoNet episodes, D = 64, on 2 loaded
# cores: 2.0 s with 2 threads, 0.13 s with 1).
_SINGLE_THREAD_WORK = 1 << 27


@contextlib.contextmanager
def _torch_threads(work: int, device: torch.device) -> Iterator[None]:
    """One torch intra-op thread for small CPU work, restored afterwards; otherwise leave torch alone."""
    if device.type != "cpu" or work >= _SINGLE_THREAD_WORK:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _head_factory(head: str | Callable[[], Any], head_kwargs: Mapping[str, Any] | None) -> Callable[[], Any]:
    """A zero-argument head maker: a callable as given, or one head built by name and refitted every episode."""
    if isinstance(head, str):
        built = create_few_shot_head(head, **dict(head_kwargs or {}))  # a bad name or argument fails here
        return lambda: built  # ``fit`` replaces everything a previous fit set
    if not callable(head):
        raise ValueError(f"head must be a registered few-shot head name or a zero-argument callable returning a "
                         f"head, got {type(head).__name__}")
    if head_kwargs:
        raise ValueError("head_kwargs only applies to a head given by name; bind them in the factory instead")
    return head


def evaluate_episodes(
    head: str | Callable[[], Any],
    embeddings: Any,
    labels: Any,
    n_way: int = 5,
    k_shot: int = 1,
    n_query: int = 15,
    num_episodes: int = 1000,
    seed: int | np.random.Generator = 0,
    *,
    head_kwargs: Mapping[str, Any] | None = None,
    device: torch.device | str = "cpu",
) -> FewShotResult:
    """Mean accuracy and 95 % confidence interval of a few-shot head over sampled episodes.

    For each episode of :func:`sample_episodes`, the head is fitted on the support embeddings with
    their original labels (a head given by name is built once and refitted, a factory is called
    every episode) and predicts every query of the episode at once (transductive heads
    see the episode's query set together); the episode's accuracy is the fraction of queries whose
    predicted class (``head.classes_[argmax(logits)]``, or the sorted support classes for a head
    without ``classes_``) is their label. No gradients are recorded. On the CPU, episodes of
    embeddings narrower than 512 dimensions run with one torch thread (restored afterwards): their
    tensors are tiny, and more threads only spin.

    Args:
        head: a registered few-shot head name (``fewlabel.plugins.heads.list_few_shot_heads()``) or a
            zero-argument callable returning an unfitted head with ``fit(support, labels)`` and
            ``head(query) -> logits``.
        embeddings: ``(M, D)`` embeddings (array, memmap or tensor; cast to float32).
        labels: ``(M,)`` integer class ids (``-1`` = unknown, never drawn).
        n_way, k_shot, n_query, num_episodes, seed: as in :func:`sample_episodes`.
        head_kwargs: keyword arguments of a head given by name (e.g. ``{"base_mean": pool_mean}``).
        device: where the heads run.

    Returns:
        A :class:`FewShotResult` (``mean``, ``ci95``, per-episode ``accuracies``).

    Raises:
        ValueError: an unknown head name or bad head arguments, bad embeddings (shape, NaN/inf),
            labels or counts, or too few classes with ``k_shot + n_query`` samples.

    Example:
        >>> x = np.array([[0.0], [0.1], [0.2], [5.0], [5.1], [5.2]])
        >>> evaluate_episodes("protonet", x, np.array([0, 0, 0, 1, 1, 1]), n_way=2, k_shot=1, n_query=2,
        ...                   num_episodes=10).mean
        1.0
    """
    make = _head_factory(head, head_kwargs)
    x_np = as_matrix(embeddings.detach().cpu().numpy() if isinstance(embeddings, torch.Tensor) else embeddings,
                     "embeddings")
    y = _labels(labels, x_np.shape[0])
    episodes = sample_episodes(y, n_way, k_shot, n_query, num_episodes, seed)
    x = torch.as_tensor(np.asarray(x_np, dtype=np.float32), device=device)
    y_t = torch.as_tensor(y, device=device)
    accuracies = np.empty(len(episodes), dtype=np.float64)
    with torch.no_grad(), _torch_threads(x.shape[1] ** 3, x.device):
        for e, (support, query) in enumerate(episodes):
            s_idx = torch.as_tensor(support, device=device)
            q_idx = torch.as_tensor(query, device=device)
            fitted = make()
            fitted.fit(x[s_idx], y_t[s_idx])
            logits = fitted(x[q_idx])
            classes = getattr(fitted, "classes_", None)
            classes = torch.unique(y_t[s_idx]) if classes is None else classes.to(device)
            accuracies[e] = float((classes[logits.argmax(dim=1)] == y_t[q_idx]).float().mean())
    return FewShotResult(mean=float(accuracies.mean()), ci95=confidence_interval95(accuracies), accuracies=accuracies)
