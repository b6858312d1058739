"""The test-time adaptation registry: build a configured wrapper around a model by name.

Registered methods and their keyword arguments (besides ``model``):

- ``"bn_adapt"``: :class:`~fewlabel.plugins.tta.BNAdapt` (``prior``, ``momentum``, ``episodic``);
- ``"tent"``: :meth:`Tent.from_model <fewlabel.plugins.tta.Tent.from_model>` (``optimizer``, ``lr``,
  ``momentum``, ``weight_decay``, ``steps``, ``episodic``);
- ``"eata"``: :meth:`EATA.from_model <fewlabel.plugins.tta.EATA.from_model>` (as Tent, plus
  ``fisher_batches``, ``fisher_alpha``, ``e_margin``, ``d_margin``);
- ``"sar"``: :meth:`SAR.from_model <fewlabel.plugins.tta.SAR.from_model>` (``lr``, ``momentum``,
  ``weight_decay``, ``rho``, ``steps``, ``episodic``, ``margin_e0``, ``reset_constant_em``);
- ``"t3a"``: :class:`~fewlabel.plugins.tta.T3A` (``filter_k``, ``episodic``).

Tent, EATA and SAR configure the model in place (:func:`~fewlabel.plugins.tta.configure_model`).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from torch import nn

from fewlabel.plugins.registry import Registry, closest
from fewlabel.plugins.tta.base import TTAWrapper
from fewlabel.plugins.tta.bn_adapt import BNAdapt
from fewlabel.plugins.tta.eata import EATA
from fewlabel.plugins.tta.sar import SAR
from fewlabel.plugins.tta.t3a import T3A
from fewlabel.plugins.tta.tent import Tent

__all__ = ["TTA_METHODS", "check_tta_kwargs", "create_tta", "list_tta_methods", "register_tta"]

TTA_METHODS: Registry[TTAWrapper] = Registry("test-time adaptation method")

#: Decorator that registers a constructor ``(model, **kwargs) -> TTAWrapper``.
register_tta = TTA_METHODS.register

TTA_METHODS.register("bn_adapt")(BNAdapt)
TTA_METHODS.register("eata")(EATA.from_model)
TTA_METHODS.register("sar")(SAR.from_model)
TTA_METHODS.register("t3a")(T3A)
TTA_METHODS.register("tent")(Tent.from_model)


def check_tta_kwargs(name: str, kwargs: Mapping[str, Any]) -> None:
    """Fail before any test batch on an unknown method or an argument its constructor does not take.

    Raises:
        ValueError: unknown method (the closest name and every valid one), or an unknown argument (the
            closest valid one and every valid one); ``model`` is passed by the caller, not here.

    Example:
        >>> check_tta_kwargs("tent", {"lr": 1e-3})
        >>> check_tta_kwargs("tent", {"lrr": 1e-3})
        Traceback (most recent call last):
        ...
        ValueError: tent does not take 'lrr' (did you mean 'lr'?); valid: ['episodic', 'lr', 'momentum', 'optimizer', 'steps', 'weight_decay']
    """
    constructor = TTA_METHODS.get(name)
    params = inspect.signature(constructor).parameters
    if "model" in kwargs:
        raise ValueError(f"{name}: the model is passed by the caller, not among the method's arguments")
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return  # a registered constructor that takes anything
    valid = sorted(n for n in params if n != "model")
    for key in kwargs:
        if key not in valid:
            raise ValueError(f"{name} does not take {key!r}{closest(key, valid)}; valid: {valid}")


def create_tta(name: str, model: nn.Module, **kwargs: Any) -> TTAWrapper:
    """Build the test-time adaptation wrapper registered under ``name`` around ``model``.

    Args:
        name: ``"bn_adapt"``, ``"eata"``, ``"sar"``, ``"t3a"``, ``"tent"`` or a name added with
            :func:`register_tta`.
        model: The model to adapt; Tent, EATA and SAR configure it in place.
        **kwargs: The method's arguments (see the module docstring).

    Raises:
        ValueError: unknown name or argument (see :func:`check_tta_kwargs`).

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
        >>> type(create_tta("tent", model, lr=1e-3)).__name__
        'Tent'
    """
    check_tta_kwargs(name, kwargs)
    return TTA_METHODS.create(name, model=model, **kwargs)


def list_tta_methods() -> list[str]:
    """Sorted names of the registered test-time adaptation methods.

    Example:
        >>> list_tta_methods()
        ['bn_adapt', 'eata', 'sar', 't3a', 'tent']
    """
    return TTA_METHODS.names()
