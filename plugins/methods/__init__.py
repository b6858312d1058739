"""LightningModules: the method skeleton, SSL pretraining, self-distillation and fine-tuning."""

from __future__ import annotations

from fewlabel.plugins.methods.base import Method
from fewlabel.plugins.methods.classifier import Classifier
from fewlabel.plugins.methods.deepcluster_v2 import DeepClusterV2
from fewlabel.plugins.methods.pseudo_labels import PseudoLabelMixin
from fewlabel.plugins.methods.registry import METHODS, register_method
from fewlabel.plugins.methods.self_distillation import SelfDistillation

__all__ = ["Classifier", "DeepClusterV2", "METHODS", "Method", "PseudoLabelMixin", "SelfDistillation", "register_method"]
