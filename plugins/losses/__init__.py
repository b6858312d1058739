"""Losses: plain functions and modules with no Trainer inside."""

from __future__ import annotations

from fewlabel.plugins.losses.deepcluster import deepcluster_v2_loss
from fewlabel.plugins.losses.multi_exit import MultiExitDistillationLoss

__all__ = ["MultiExitDistillationLoss", "deepcluster_v2_loss"]
