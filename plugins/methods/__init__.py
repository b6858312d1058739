"""LightningModules: the method skeleton, SSL pretraining, self-distillation and fine-tuning."""

from __future__ import annotations

from fewlabel.plugins.methods.barlow_twins import BarlowTwins
from fewlabel.plugins.methods.base import Method
from fewlabel.plugins.methods.byol import BYOL, BYOLA
from fewlabel.plugins.methods.classifier import Classifier
from fewlabel.plugins.methods.ensemble import ClassifierEnsemble
from fewlabel.plugins.methods.deepcluster_v2 import DeepClusterV2
from fewlabel.plugins.methods.dino import DINO
from fewlabel.plugins.methods.distillation import KnowledgeDistillation
from fewlabel.plugins.methods.pseudo_labels import PseudoLabelMixin
from fewlabel.plugins.methods.registry import METHODS, create_method, list_methods, register_method
from fewlabel.plugins.methods.rotnet import RotNet
from fewlabel.plugins.methods.self_distillation import SelfDistillation
from fewlabel.plugins.methods.simclr import SimCLR
from fewlabel.plugins.methods.vicreg import VICReg

__all__ = [
    "BYOL",
    "BYOLA",
    "BarlowTwins",
    "Classifier",
    "ClassifierEnsemble",
    "DINO",
    "DeepClusterV2",
    "KnowledgeDistillation",
    "METHODS",
    "Method",
    "PseudoLabelMixin",
    "RotNet",
    "SelfDistillation",
    "SimCLR",
    "VICReg",
    "create_method",
    "list_methods",
    "register_method",
]
