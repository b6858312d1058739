"""The head registry, so that a config can name a head (``create_head("dino_head", in_dim=64)``).

Registered heads and their keyword arguments:

- ``"linear"``: :func:`~fewlabel.plugins.heads.linear_head` (``in_dim``, ``out_dim``, ``bias``);
- ``"projection_mlp"``: :func:`~fewlabel.plugins.heads.projection_mlp` (``dims``, ``batch_norm``,
  ``last_batch_norm``, ``last_bias``);
- ``"aux_head"``: :func:`~fewlabel.plugins.heads.aux_head` (``in_dim``, ``hidden_dim``, ``num_classes``);
- ``"dino_head"``: :class:`~fewlabel.plugins.heads.DINOHead` (``in_dim``, ``out_dim``, ``hidden_dim``, ...).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from fewlabel.plugins.heads.dino_head import DINOHead
from fewlabel.plugins.heads.linear import linear_head
from fewlabel.plugins.heads.multi_exit import aux_head
from fewlabel.plugins.heads.projection import projection_mlp
from fewlabel.plugins.registry import Registry

__all__ = ["HEADS", "create_head", "list_heads", "register_head"]

HEADS: Registry[nn.Module] = Registry("head")

#: Decorator that registers a head constructor: ``@register_head("my_head")``.
register_head = HEADS.register

HEADS.register("aux_head")(aux_head)
HEADS.register("dino_head")(DINOHead)
HEADS.register("linear")(linear_head)
HEADS.register("projection_mlp")(projection_mlp)


def create_head(name: str, **kwargs: Any) -> nn.Module:
    """Build the head registered under ``name`` with ``kwargs``.

    Raises:
        ValueError: ``name`` is not registered; the message gives the closest name and every valid one.

    Example:
        >>> create_head("linear", in_dim=8, out_dim=3, bias=False)
        Linear(in_features=8, out_features=3, bias=False)
    """
    return HEADS.create(name, **kwargs)


def list_heads() -> list[str]:
    """Sorted names of the registered heads."""
    return HEADS.names()
