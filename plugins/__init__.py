"""fewlabel.plugins: encoders, augmentations, losses, LightningModules and the gather + clustering primitives.

The recipe layer (``fewlabel.plugins.recipes``) sits above this package and is not imported here.
"""

from __future__ import annotations

from fewlabel.plugins.augment import BatchImageAugment, ByolaAugment, create_augment
from fewlabel.plugins.clustering import ClusterResult, cluster_embeddings, clustering_metrics, kmeans, pca_whiten
from fewlabel.plugins.encoders import AudioNTT, Encoder, LogMelFrontend, SmallCNN, TimmEncoder, create_encoder, list_encoders, register_encoder
from fewlabel.plugins.gather import Embeddings, gather_embeddings, merge_embeddings
from fewlabel.plugins.losses import (
    BarlowTwinsLoss,
    DINOLoss,
    MultiExitDistillationLoss,
    NegativeCosineSimilarity,
    NTXentLoss,
    VICRegLoss,
    deepcluster_v2_loss,
)
from fewlabel.plugins.modules import Classifier, DeepClusterV2, PseudoLabelMixin, SelfDistillation
from fewlabel.plugins.registry import Registry
from fewlabel.plugins.schedules import cosine_schedule

__all__ = [
    "AudioNTT",
    "BarlowTwinsLoss",
    "BatchImageAugment",
    "ByolaAugment",
    "Classifier",
    "ClusterResult",
    "DINOLoss",
    "DeepClusterV2",
    "Embeddings",
    "Encoder",
    "LogMelFrontend",
    "MultiExitDistillationLoss",
    "NTXentLoss",
    "NegativeCosineSimilarity",
    "PseudoLabelMixin",
    "Registry",
    "SelfDistillation",
    "SmallCNN",
    "TimmEncoder",
    "VICRegLoss",
    "cluster_embeddings",
    "clustering_metrics",
    "cosine_schedule",
    "create_augment",
    "create_encoder",
    "deepcluster_v2_loss",
    "gather_embeddings",
    "kmeans",
    "list_encoders",
    "merge_embeddings",
    "pca_whiten",
    "register_encoder",
]
