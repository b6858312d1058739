"""fewlabel.plugins: encoders, augmentations, losses, LightningModules and the gather + clustering primitives.

The recipe layer (``fewlabel.plugins.recipes``) sits above this package and is not imported here.
"""

from __future__ import annotations

from fewlabel.plugins.augment import BatchImageAugment, ByolaAugment, create_augment
from fewlabel.plugins.clustering import ClusterResult, cluster_embeddings, kmeans, pca_whiten
from fewlabel.plugins.encoders import AudioNTT, Encoder, LogMelFrontend, SmallCNN, TimmEncoder, create_encoder, list_encoders, register_encoder
from fewlabel.plugins.evaluation import (
    clustering_metrics,
    fit_linear_probe,
    knn_accuracy,
    knn_predict,
    linear_probe_accuracy,
    separability_score,
)
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
from fewlabel.plugins.methods import (
    BYOL,
    BYOLA,
    DINO,
    BarlowTwins,
    Classifier,
    DeepClusterV2,
    Method,
    PseudoLabelMixin,
    RotNet,
    SelfDistillation,
    SimCLR,
    VICReg,
)
from fewlabel.plugins.optim import cosine_schedule
from fewlabel.plugins.registry import Registry

__all__ = [
    "AudioNTT",
    "BYOL",
    "BYOLA",
    "BarlowTwins",
    "BarlowTwinsLoss",
    "BatchImageAugment",
    "ByolaAugment",
    "Classifier",
    "ClusterResult",
    "DINO",
    "DINOLoss",
    "DeepClusterV2",
    "Embeddings",
    "Encoder",
    "LogMelFrontend",
    "Method",
    "MultiExitDistillationLoss",
    "NTXentLoss",
    "NegativeCosineSimilarity",
    "PseudoLabelMixin",
    "Registry",
    "RotNet",
    "SelfDistillation",
    "SimCLR",
    "SmallCNN",
    "TimmEncoder",
    "VICReg",
    "VICRegLoss",
    "cluster_embeddings",
    "clustering_metrics",
    "cosine_schedule",
    "create_augment",
    "create_encoder",
    "deepcluster_v2_loss",
    "fit_linear_probe",
    "gather_embeddings",
    "kmeans",
    "knn_accuracy",
    "knn_predict",
    "linear_probe_accuracy",
    "list_encoders",
    "merge_embeddings",
    "pca_whiten",
    "register_encoder",
    "separability_score",
]
