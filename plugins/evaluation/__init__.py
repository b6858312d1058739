"""Evaluation of frozen embeddings: pure functions on arrays, no Trainer inside.

Callbacks (``fewlabel.callbacks.eval``) gather the embeddings with
:func:`fewlabel.plugins.gather.gather_embeddings` and call these.
"""

from __future__ import annotations

from fewlabel.plugins.evaluation.clustering import clustering_metrics
from fewlabel.plugins.evaluation.knn import check_knn_args, knn_accuracy, knn_predict
from fewlabel.plugins.evaluation.linear_probe import fit_linear_probe, linear_probe_accuracy
from fewlabel.plugins.evaluation.separability import check_separability_args, separability_score

__all__ = [
    "check_knn_args",
    "check_separability_args",
    "clustering_metrics",
    "fit_linear_probe",
    "knn_accuracy",
    "knn_predict",
    "linear_probe_accuracy",
    "separability_score",
]
