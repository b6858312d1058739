"""Heads: linear, projection MLPs, DINO's head, multi-exit auxiliary heads, few-shot heads, and their registry."""

from __future__ import annotations

from fewlabel.plugins.heads.dino_head import DINOHead
from fewlabel.plugins.heads.few_shot import (
    BDCSPN,
    FewShotHead,
    GDAHead,
    LogisticRegressionHead,
    ProtoNet,
    SimpleShot,
    class_means,
)
from fewlabel.plugins.heads.linear import linear_head
from fewlabel.plugins.heads.multi_exit import aux_head
from fewlabel.plugins.heads.projection import projection_mlp
from fewlabel.plugins.heads.registry import (
    HEADS,
    create_few_shot_head,
    create_head,
    list_few_shot_heads,
    list_heads,
    register_head,
)

__all__ = [
    "BDCSPN",
    "DINOHead",
    "FewShotHead",
    "GDAHead",
    "HEADS",
    "LogisticRegressionHead",
    "ProtoNet",
    "SimpleShot",
    "aux_head",
    "class_means",
    "create_few_shot_head",
    "create_head",
    "linear_head",
    "list_few_shot_heads",
    "list_heads",
    "projection_mlp",
    "register_head",
]
