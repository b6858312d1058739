"""Seeded, stratified index draws: the label budget and held-out splits."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import train_test_split

__all__ = ["label_budget_split", "stratified_split"]


def _check_targets(targets: np.ndarray) -> np.ndarray:
    targets = np.asarray(targets)
    if targets.ndim != 1:
        raise ValueError(f"targets must be a 1-D array of class ids, got shape {targets.shape}")
    if targets.size and not np.issubdtype(targets.dtype, np.integer):
        raise ValueError(f"targets must hold integer class ids, got dtype {targets.dtype}")
    return targets.astype(np.int64, copy=False)


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def label_budget_split(targets: np.ndarray, labels_per_class: int, seed: int) -> np.ndarray:
    """Draw exactly ``labels_per_class`` samples of every class, reproducibly.

    Classes are the distinct non-negative values of ``targets``; negative targets mean
    "label unknown" and are never drawn. The draw uses ``numpy.random.Generator(seed)``
    (``np.random.default_rng(seed)``), so a seed always gives the same indices and
    different seeds give different draws.

    Args:
        targets: 1-D integer array of class ids, one per sample.
        labels_per_class: How many samples to draw from each class (>= 1).
        seed: Seed of the draw.

    Returns:
        Sorted ``int64`` positions into ``targets``; ``labels_per_class`` per class.

    Raises:
        ValueError: If ``labels_per_class < 1``, if it exceeds the size of the smallest
            class (the message names that class and its count), or if no sample has a
            known label.

    Example:
        >>> idx = label_budget_split(np.array([0, 0, 1, 1, 1]), labels_per_class=2, seed=0)
        >>> len(idx)
        4
    """
    targets = _check_targets(targets)
    if not _is_int(labels_per_class) or labels_per_class < 1:
        raise ValueError(f"labels_per_class must be an integer >= 1, got {labels_per_class!r}")
    classes, counts = np.unique(targets[targets >= 0], return_counts=True)
    if classes.size == 0:
        raise ValueError("cannot draw a label budget: no sample has a known (non-negative) label")
    smallest = int(np.argmin(counts))
    if counts[smallest] < labels_per_class:
        raise ValueError(
            f"labels_per_class={labels_per_class} is larger than class {int(classes[smallest])}, "
            f"which has only {int(counts[smallest])} samples"
        )
    rng = np.random.default_rng(seed)
    chosen = [
        rng.choice(np.flatnonzero(targets == c), size=labels_per_class, replace=False) for c in classes
    ]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def stratified_split(targets: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hold out a stratified ``fraction`` of the samples (for validation or test sets).

    Uses :func:`sklearn.model_selection.train_test_split` with ``stratify=targets`` and
    ``random_state=seed``; the held-out size is ``ceil(fraction * len(targets))``.

    Args:
        targets: 1-D integer array of class ids, one per sample.
        fraction: Share of samples to hold out, in ``[0, 1)``; 0 holds out nothing.
        seed: ``random_state`` of the split.

    Returns:
        ``(keep_idx, held_idx)``: sorted ``int64`` positions into ``targets`` that
        together cover every sample exactly once.

    Raises:
        ValueError: If ``fraction`` is outside ``[0, 1)``, or (from scikit-learn) if the
            held-out part is too small to contain every class.
    """
    targets = _check_targets(targets)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be a float in [0, 1), got {fraction!r}")
    positions = np.arange(targets.size, dtype=np.int64)
    if fraction == 0.0:
        return positions, np.empty(0, dtype=np.int64)
    keep, held = train_test_split(positions, test_size=float(fraction), stratify=targets, random_state=seed)
    return np.sort(keep).astype(np.int64), np.sort(held).astype(np.int64)
