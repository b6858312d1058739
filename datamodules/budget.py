"""Seeded, stratified index draws: the label budget and held-out splits."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import train_test_split

__all__ = ["label_budget_split", "stratified_split"]


def _check_int(name: str, value: object, minimum: int, none_means: str | None = None) -> None:
    """Raise unless ``value`` is an integer (Python or numpy, not a bool) ``>= minimum``, or ``None`` when
    ``none_means`` says what that selects.

    The datamodules' one integer check. It has the test and the message of the plugins' ``check_int``
    (``plugins/arguments.py``), which datamodules may not import.

    Raises:
        ValueError: ``"<name> must be an int >= <minimum>[ or <none_means>], got <value>"``.
    """
    if value is None and none_means is not None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not value >= minimum:
        choices = f"an int >= {minimum}" + (f" or {none_means}" if none_means else "")
        raise ValueError(f"{name} must be {choices}, got {value!r}")


def _check_targets(targets: np.ndarray) -> np.ndarray:
    targets = np.asarray(targets)
    if targets.ndim != 1:
        raise ValueError(f"targets must be a 1-D array of class ids, got shape {targets.shape}")
    if targets.size and not np.issubdtype(targets.dtype, np.integer):
        raise ValueError(f"targets must hold integer class ids, got dtype {targets.dtype}")
    return targets.astype(np.int64, copy=False)


def _class_label(target: int, class_names: Sequence[str] | None) -> str:
    """How an error message names a class: ``'dog'`` given names, else the id."""
    if class_names is None or target < 0:
        return str(target)
    return repr(class_names[target])


def _check_budget(targets: np.ndarray, labels_per_class: int, class_names: Sequence[str] | None = None) -> None:
    """Raise unless every class of ``targets`` (checked, ``int64``) can supply ``labels_per_class`` samples."""
    _check_int("labels_per_class", labels_per_class, 1)
    known = targets[targets >= 0]
    if class_names is None:
        classes, counts = np.unique(known, return_counts=True)
    elif known.size and known.max() >= len(class_names):
        raise ValueError(f"target {known.max()} has no name: there are only {len(class_names)} class names")
    else:
        classes, counts = np.arange(len(class_names)), np.bincount(known, minlength=len(class_names))
    if classes.size == 0:
        raise ValueError("cannot draw a label budget: no sample has a known (non-negative) label")
    smallest = int(np.argmin(counts))
    if counts[smallest] < labels_per_class:
        raise ValueError(
            f"labels_per_class={labels_per_class} is too many: class "
            f"{_class_label(int(classes[smallest]), class_names)} has only {int(counts[smallest])} training "
            f"samples; lower labels_per_class to at most {int(counts[smallest])} or add samples to that class"
        )


def label_budget_split(
    targets: np.ndarray, labels_per_class: int, seed: int, class_names: Sequence[str] | None = None
) -> np.ndarray:
    """Draw exactly ``labels_per_class`` samples of every class, reproducibly.

    Classes are the distinct non-negative values of ``targets`` (or, given
    ``class_names``, every id ``0 .. len(class_names) - 1``, so that a class without
    samples is an error rather than silently unlabeled); negative targets mean "label
    unknown" and are never drawn. The draw uses ``numpy.random.Generator(seed)``
    (``np.random.default_rng(seed)``), so a seed always gives the same indices and
    different seeds give different draws.

    Args:
        targets: 1-D integer array of class ids, one per sample.
        labels_per_class: How many samples to draw from each class (>= 1).
        seed: Seed of the draw.
        class_names: Name of each class id, used to name a class in errors.

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
    _check_budget(targets, labels_per_class, class_names)
    rng = np.random.default_rng(seed)
    chosen = [
        rng.choice(np.flatnonzero(targets == c), size=labels_per_class, replace=False)
        for c in np.unique(targets[targets >= 0])
    ]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def stratified_split(
    targets: np.ndarray, fraction: float, seed: int, class_names: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Hold out a stratified ``fraction`` of the samples (for validation or test sets).

    Uses :func:`sklearn.model_selection.train_test_split` with ``stratify=targets`` and
    ``random_state=seed``; the held-out size is ``ceil(fraction * len(targets))``. Samples whose
    label is unknown (negative targets, e.g. STL-10's unlabeled split) are never held out: the
    split and ``fraction`` cover the labeled samples only.

    Args:
        targets: 1-D integer array of class ids, one per sample.
        fraction: Share of samples to hold out, in ``[0, 1)``; 0 holds out nothing.
        seed: ``random_state`` of the split.
        class_names: Name of each class id (e.g. its folder), used to name a class in errors.

    Returns:
        ``(keep_idx, held_idx)``: sorted ``int64`` positions into ``targets`` that
        together cover every sample exactly once.

    Raises:
        ValueError: If ``fraction`` is outside ``[0, 1)``, if ``fraction > 0`` and a class
            has a single sample (the message names it), if either part is too small to
            contain every class, or if no sample has a known label.
    """
    targets = _check_targets(targets)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be a float in [0, 1), got {fraction!r}")
    if fraction == 0.0:
        return np.arange(targets.size, dtype=np.int64), np.empty(0, dtype=np.int64)
    unknown = np.flatnonzero(targets < 0)
    if unknown.size:
        known = np.flatnonzero(targets >= 0)
        if not known.size:
            raise ValueError("cannot hold out a stratified split: no sample has a known (non-negative) label")
        keep, held = stratified_split(targets[known], fraction, seed, class_names)
        return np.sort(np.concatenate([known[keep], unknown])).astype(np.int64), known[held]
    positions = np.arange(targets.size, dtype=np.int64)
    classes, counts = np.unique(targets, return_counts=True)
    if (counts < 2).any():
        lonely = _class_label(int(classes[np.argmin(counts)]), class_names)
        raise ValueError(
            f"class {lonely} has a single sample, which a stratified split cannot put on both sides: "
            "add samples to it or remove it"
        )
    held_size = int(np.ceil(fraction * targets.size))
    if held_size < classes.size or targets.size - held_size < classes.size:
        raise ValueError(
            f"holding out {fraction:g} of {targets.size} samples leaves {held_size} held out and "
            f"{targets.size - held_size} kept, but each side needs one sample of each of the {classes.size} "
            "classes: add samples or change the fraction"
        )
    keep, held = train_test_split(positions, test_size=float(fraction), stratify=targets, random_state=seed)
    for side, name in ((keep, "kept"), (held, "held-out")):  # sklearn's rounding can empty a small class's side
        missing = np.setdiff1d(classes, targets[side])
        if missing.size:
            raise ValueError(
                f"holding out {fraction:g} of {targets.size} samples leaves class "
                f"{_class_label(int(missing[0]), class_names)} ({int(counts[classes == missing[0]][0])} samples) "
                f"with none on the {name} side: change the fraction or add samples to that class"
            )
    return np.sort(keep).astype(np.int64), np.sort(held).astype(np.int64)
