"""Heads: linear, projection MLPs, DINO's head, multi-exit auxiliary heads, and their registry."""

from __future__ import annotations

from fewlabel.plugins.heads.dino_head import DINOHead
from fewlabel.plugins.heads.linear import linear_head
from fewlabel.plugins.heads.multi_exit import aux_head
from fewlabel.plugins.heads.projection import projection_mlp
from fewlabel.plugins.heads.registry import HEADS, create_head, list_heads, register_head

__all__ = [
    "DINOHead",
    "HEADS",
    "aux_head",
    "create_head",
    "linear_head",
    "list_heads",
    "projection_mlp",
    "register_head",
]
