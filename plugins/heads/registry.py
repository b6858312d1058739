"""The head registry, so that a config can name a head (``create_head("dino_head", in_dim=64)``).

Registered heads and their keyword arguments:

- ``"linear"``: :func:`~fewlabel.plugins.heads.linear_head` (``in_dim``, ``out_dim``, ``bias``);
- ``"projection_mlp"``: :func:`~fewlabel.plugins.heads.projection_mlp` (``dims``, ``batch_norm``,
  ``last_batch_norm``, ``last_bias``);
- ``"aux_head"``: :func:`~fewlabel.plugins.heads.aux_head` (``in_dim``, ``hidden_dim``, ``num_classes``);
- ``"dino_head"``: :class:`~fewlabel.plugins.heads.DINOHead` (``in_dim``, ``out_dim``, ``hidden_dim``, ...).

Few-shot heads (:class:`~fewlabel.plugins.heads.FewShotHead`: ``fit(support, labels)``, then ``head(query)``),
listed by :func:`list_few_shot_heads` and built by :func:`create_few_shot_head`:

- ``"protonet"``: :class:`~fewlabel.plugins.heads.ProtoNet` (no arguments);
- ``"simpleshot"``: :class:`~fewlabel.plugins.heads.SimpleShot` (``base_mean``, ``metric``);
- ``"gda"``: :class:`~fewlabel.plugins.heads.GDAHead` (``shrinkage``, ``prior``);
- ``"logistic"``: :class:`~fewlabel.plugins.heads.LogisticRegressionHead` (``C``, ``max_iter``, ``standardize``);
- ``"bd_cspn"``: :class:`~fewlabel.plugins.heads.BDCSPN` (``temperature``), transductive.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from fewlabel.plugins.heads.dino_head import DINOHead
from fewlabel.plugins.heads.few_shot import BDCSPN, FewShotHead, GDAHead, LogisticRegressionHead, ProtoNet, SimpleShot
from fewlabel.plugins.heads.linear import linear_head
from fewlabel.plugins.heads.multi_exit import aux_head
from fewlabel.plugins.heads.projection import projection_mlp
from fewlabel.plugins.registry import Registry, closest

__all__ = ["HEADS", "create_few_shot_head", "create_head", "list_few_shot_heads", "list_heads", "register_head"]

HEADS: Registry[nn.Module] = Registry("head")

#: Decorator that registers a head constructor: ``@register_head("my_head")``.
register_head = HEADS.register

HEADS.register("aux_head")(aux_head)
HEADS.register("bd_cspn")(BDCSPN)
HEADS.register("dino_head")(DINOHead)
HEADS.register("gda")(GDAHead)
HEADS.register("linear")(linear_head)
HEADS.register("logistic")(LogisticRegressionHead)
HEADS.register("projection_mlp")(projection_mlp)
HEADS.register("protonet")(ProtoNet)
HEADS.register("simpleshot")(SimpleShot)


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


def list_few_shot_heads() -> list[str]:
    """Sorted names of the registered few-shot heads (classes derived from :class:`FewShotHead`).

    Example:
        >>> list_few_shot_heads()
        ['bd_cspn', 'gda', 'logistic', 'protonet', 'simpleshot']
    """
    return [name for name in HEADS.names()
            if isinstance(HEADS.get(name), type) and issubclass(HEADS.get(name), FewShotHead)]  # type: ignore[arg-type]


def create_few_shot_head(name: str, **kwargs: Any) -> FewShotHead:
    """Build the few-shot head registered under ``name`` with ``kwargs``.

    Raises:
        ValueError: ``name`` is not a registered few-shot head; the message gives the closest name and
            every valid one.

    Example:
        >>> create_few_shot_head("gda", shrinkage=0.1).shrinkage
        0.1
    """
    names = list_few_shot_heads()
    if name not in names:
        raise ValueError(f"unknown few-shot head {name!r}{closest(name, names)}; choose one of {names}")
    return HEADS.create(name, **kwargs)  # type: ignore[return-value]
