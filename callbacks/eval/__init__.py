"""Evaluators of ``pl_module.encoder`` during training, each logging one monitorable metric."""

from __future__ import annotations

from fewlabel.callbacks.eval.knn import KNNEvaluator
from fewlabel.callbacks.eval.linear_probe import LinearProbeEvaluator

__all__ = ["KNNEvaluator", "LinearProbeEvaluator"]
