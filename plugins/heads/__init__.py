"""Heads: projection MLPs and multi-exit auxiliary heads."""

from __future__ import annotations

from fewlabel.plugins.heads.dino_head import DINOHead
from fewlabel.plugins.heads.multi_exit import aux_head
from fewlabel.plugins.heads.projection import projection_mlp

__all__ = ["DINOHead", "aux_head", "projection_mlp"]
