"""Per-sample random parameters of the batch-wise augmentations, drawn from torch's global RNG.

Also the one check of the arguments that describe them: a range ``(lo, hi)`` to draw from and a
probability.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import Tensor

__all__ = ["check_probability", "check_range", "uniform"]


def uniform(n: int, lo: float, hi: float, device: torch.device) -> Tensor:
    """``n`` float32 draws from ``U(lo, hi)`` on ``device`` (one ``torch.rand`` call, so seeding is reproducible).

    Example:
        >>> x = uniform(1000, -2.0, 3.0, torch.device("cpu"))
        >>> bool(x.min() >= -2.0 and x.max() < 3.0)
        True
    """
    return torch.rand(n, device=device) * (hi - lo) + lo


def check_range(name: str, value: Any, low: float | None = None, high: float | None = None, *,
                strict_low: bool = False) -> tuple[float, float]:
    """Check that ``value`` is a pair ``(lo, hi)`` of numbers with ``low <= lo <= hi <= high``.

    Args:
        name: The argument's name, as the message shows it.
        value: The value given (any sequence of two numbers).
        low: Smallest valid ``lo``; ``None`` = unbounded.
        high: Largest valid ``hi``; ``None`` = unbounded.
        strict_low: ``lo`` must exceed ``low`` (``low < lo``).

    Returns:
        ``(lo, hi)`` as floats.

    Raises:
        ValueError: ``"<name> must be a range (lo, hi) with <bounds>, got <value>"``.

    Example:
        >>> check_range("sigma", [0.1, 2], low=0.0, strict_low=True)
        (0.1, 2.0)
        >>> check_range("sigma", (2.0, 0.1), low=0.0)
        Traceback (most recent call last):
        ...
        ValueError: sigma must be a range (lo, hi) with 0 <= lo <= hi, got (2.0, 0.1)
    """
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        lo = hi = math.nan
    fits_low = low is None or (lo > low if strict_low else lo >= low)
    if not (lo <= hi and fits_low and (high is None or hi <= high)):
        bound_low = "" if low is None else f"{low:g} {'<' if strict_low else '<='} "
        bound_high = "" if high is None else f" <= {high:g}"
        shown = tuple(value) if isinstance(value, (list, tuple)) else value
        raise ValueError(f"{name} must be a range (lo, hi) with {bound_low}lo <= hi{bound_high}, got {shown!r}")
    return lo, hi


def check_probability(name: str, value: Any) -> float:
    """Check that ``value`` is a number in ``[0, 1]`` and return it as a float.

    Raises:
        ValueError: ``"<name> is a probability in [0, 1], got <value>"``.

    Example:
        >>> check_probability("blur_prob", 1)
        1.0
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} is a probability in [0, 1], got {value!r}")
    return float(value)
