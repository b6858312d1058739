"""The integer-argument check that plugins and callbacks share.

:func:`is_count` is the one test of "an integer (Python or numpy, not a bool) ``>= minimum``";
:func:`check_int` raises with the standard message. Callers with a message of their own (one that
names what the bound means) call :func:`is_count` and raise themselves. Datamodules may not import
plugins, so ``fewlabel.datamodules.budget`` keeps its own copy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["check_int", "is_count"]


def is_count(value: Any, minimum: int) -> bool:
    """Whether ``value`` is an integer (Python or numpy, not a bool) ``>= minimum``.

    Example:
        >>> is_count(3, 1), is_count(np.int64(0), 0), is_count(True, 0), is_count(2.0, 1)
        (True, True, False, False)
    """
    return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and bool(value >= minimum)


def check_int(name: str, value: Any, minimum: int, none_means: str | None = None, *, owner: str | None = None) -> None:
    """Raise unless ``value`` is an integer ``>= minimum`` (or ``None`` when ``none_means`` says what that means).

    Args:
        name: the argument's name, as the message shows it.
        value: the value given.
        minimum: the smallest valid value.
        none_means: what ``None`` selects (e.g. ``"None (no PCA)"``); ``None`` = ``None`` is invalid.
        owner: prefix of the message (e.g. the callback's class name).

    Raises:
        ValueError: ``"<owner>: <name> must be an int >= <minimum> [or <none_means>], got <value>"``.

    Example:
        >>> check_int("pca_dim", None, 1, "None (no PCA)")
        >>> check_int("niter", 0, 1)
        Traceback (most recent call last):
        ...
        ValueError: niter must be an int >= 1, got 0
    """
    if value is None and none_means is not None:
        return
    if not is_count(value, minimum):
        choices = f"an int >= {minimum}" + (f" or {none_means}" if none_means else "")
        prefix = f"{owner}: " if owner else ""
        raise ValueError(f"{prefix}{name} must be {choices}, got {value!r}")
