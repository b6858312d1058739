"""fewlabel.callbacks: Lightning callbacks that compose with any fewlabel module through its contracts."""

from __future__ import annotations

from fewlabel.callbacks.ema_teacher import EMATeacher
from fewlabel.callbacks.eval import (
    EmbeddingEvaluator,
    EmbeddingProjector,
    FewShotEvaluator,
    KNNEvaluator,
    LinearProbeEvaluator,
    SeparabilityMonitor,
)
from fewlabel.callbacks.finite_loss import FiniteLossGuard
from fewlabel.callbacks.progress import StageProgressBar, task_bar
from fewlabel.callbacks.pseudo_labeler import PseudoLabeler
from fewlabel.callbacks.rng_state import RNGStateKeeper
from fewlabel.callbacks.tta import TestTimeAdaptation

__all__ = [
    "EMATeacher",
    "EmbeddingEvaluator",
    "EmbeddingProjector",
    "FewShotEvaluator",
    "FiniteLossGuard",
    "KNNEvaluator",
    "LinearProbeEvaluator",
    "PseudoLabeler",
    "RNGStateKeeper",
    "SeparabilityMonitor",
    "StageProgressBar",
    "TestTimeAdaptation",
    "task_bar",
]
