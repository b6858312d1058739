"""Evaluation of frozen embeddings: pure functions on arrays, no Trainer inside.

kNN, linear probe, few-shot episodes, clustering metrics and the separability estimate.

Callbacks (``fewlabel.callbacks.eval``) gather the embeddings with
:func:`fewlabel.plugins.gather.gather_embeddings` and call these.
"""

from __future__ import annotations

from fewlabel.plugins.evaluation.clustering import clustering_metrics
from fewlabel.plugins.evaluation.few_shot import (
    Episode,
    FewShotResult,
    check_episode_args,
    confidence_interval95,
    evaluate_episodes,
    sample_episodes,
)
from fewlabel.plugins.evaluation.knn import check_knn_args, knn_accuracy, knn_predict
from fewlabel.plugins.evaluation.linear_probe import fit_linear_probe, linear_probe_accuracy
from fewlabel.plugins.evaluation.separability import check_separability_args, separability_score

__all__ = [
    "Episode",
    "FewShotResult",
    "check_episode_args",
    "check_knn_args",
    "check_separability_args",
    "clustering_metrics",
    "confidence_interval95",
    "evaluate_episodes",
    "fit_linear_probe",
    "knn_accuracy",
    "knn_predict",
    "linear_probe_accuracy",
    "sample_episodes",
    "separability_score",
]
