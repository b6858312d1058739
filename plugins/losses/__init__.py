"""Losses: plain functions and modules with no Trainer inside."""

from __future__ import annotations

from fewlabel.plugins.losses.barlow_twins import BarlowTwinsLoss
from fewlabel.plugins.losses.deepcluster import deepcluster_v2_loss
from fewlabel.plugins.losses.dino import DINOLoss
from fewlabel.plugins.losses.distillation import DistillationLoss
from fewlabel.plugins.losses.multi_exit import MultiExitDistillationLoss
from fewlabel.plugins.losses.negative_cosine import NegativeCosineSimilarity
from fewlabel.plugins.losses.ntxent import NTXentLoss
from fewlabel.plugins.losses.vicreg import VICRegLoss

__all__ = [
    "BarlowTwinsLoss",
    "DINOLoss",
    "DistillationLoss",
    "MultiExitDistillationLoss",
    "NTXentLoss",
    "NegativeCosineSimilarity",
    "VICRegLoss",
    "deepcluster_v2_loss",
]
