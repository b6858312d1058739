"""The method registry, so that a config can name the teacher's method (``--teacher.method byol``)."""

from __future__ import annotations

from typing import Any

import lightning as L

from fewlabel.plugins.registry import Registry

__all__ = ["METHODS", "create_method", "list_methods", "register_method"]

METHODS: Registry[L.LightningModule] = Registry("method")

#: Decorator that registers a method class: ``@register_method("simclr")``.
register_method = METHODS.register


def create_method(name: str, **kwargs: Any) -> L.LightningModule:
    """Build the method registered under ``name`` with ``kwargs`` (``encoder=`` a module or an encoder spec).

    Raises:
        ValueError: ``name`` is not registered; the message gives the closest name and every valid one.

    Example:
        >>> from fewlabel.plugins.methods import create_method
        >>> type(create_method("simclr", encoder={"name": "small_cnn", "width": 4})).__name__
        'SimCLR'
    """
    return METHODS.create(name, **kwargs)


def list_methods() -> list[str]:
    """Sorted names of the registered methods."""
    return METHODS.names()
