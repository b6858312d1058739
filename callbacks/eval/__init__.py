"""Evaluators of ``pl_module.encoder`` during training, each logging one monitorable metric."""

from __future__ import annotations

from fewlabel.callbacks.eval.base import EmbeddingEvaluator
from fewlabel.callbacks.eval.few_shot import FewShotEvaluator
from fewlabel.callbacks.eval.knn import KNNEvaluator
from fewlabel.callbacks.eval.linear_probe import LinearProbeEvaluator
from fewlabel.callbacks.eval.projector import EmbeddingProjector
from fewlabel.callbacks.eval.separability import SeparabilityMonitor

__all__ = [
    "EmbeddingEvaluator",
    "EmbeddingProjector",
    "FewShotEvaluator",
    "KNNEvaluator",
    "LinearProbeEvaluator",
    "SeparabilityMonitor",
]
