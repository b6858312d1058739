"""LightningModules: SSL pretraining, self-distillation and fine-tuning."""

from __future__ import annotations

from fewlabel.plugins.modules.classifier import Classifier
from fewlabel.plugins.modules.deepcluster_v2 import DeepClusterV2
from fewlabel.plugins.modules.pseudo_labels import PseudoLabelMixin
from fewlabel.plugins.modules.self_distillation import SelfDistillation

__all__ = ["Classifier", "DeepClusterV2", "PseudoLabelMixin", "SelfDistillation"]
