"""Test-time adaptation as plain wrappers, usable without a Trainer.

Each wrapper holds a model; calling it on a batch adapts on that batch and returns the outputs
(the protocol of ``Tent`` in github DequanWang/tent). Episodic (reset after every batch) or continual;
``reset()`` returns to the initial state and ``state_dict()`` holds the adapted state.

- :class:`BNAdapt`: BatchNorm statistics from the test batch (prediction-time BN, arXiv 2006.10963;
  Schneider et al.'s prior, arXiv 2006.16971) with optional running re-estimation;
- :class:`Tent`: entropy minimisation of the norm layers' affine parameters (arXiv 2006.10726);
- :class:`EATA`: reliable, non-redundant, re-weighted entropy minimisation with a Fisher regulariser
  (arXiv 2204.02610);
- :class:`SAR`: reliable entropy minimisation with a sharpness-aware :class:`SAM` update and model
  recovery (arXiv 2302.12400);
- :class:`T3A`: classifier prototypes from low-entropy pseudo-labelled test embeddings, no
  backpropagation (NeurIPS 2021).

:func:`configure_model`, :func:`collect_params` and :func:`check_model` set a model up for the
gradient-based methods (BatchNorm, LayerNorm, GroupNorm, timm's norm layers); :func:`create_tta` builds
any method by name.
"""

from __future__ import annotations

from fewlabel.plugins.tta.base import TTAWrapper, full_precision, softmax_entropy
from fewlabel.plugins.tta.bn_adapt import BNAdapt
from fewlabel.plugins.tta.eata import EATA, fisher_information
from fewlabel.plugins.tta.norm_layers import (
    ModelFlags,
    check_model,
    collect_params,
    configure_model,
    is_norm_layer,
    use_batch_statistics,
)
from fewlabel.plugins.tta.registry import TTA_METHODS, check_tta_kwargs, create_tta, list_tta_methods, register_tta
from fewlabel.plugins.tta.sam import SAM
from fewlabel.plugins.tta.sar import SAR
from fewlabel.plugins.tta.t3a import T3A
from fewlabel.plugins.tta.tent import Tent

__all__ = [
    "BNAdapt",
    "EATA",
    "ModelFlags",
    "SAM",
    "SAR",
    "T3A",
    "TTAWrapper",
    "TTA_METHODS",
    "Tent",
    "check_model",
    "check_tta_kwargs",
    "collect_params",
    "configure_model",
    "create_tta",
    "fisher_information",
    "full_precision",
    "is_norm_layer",
    "list_tta_methods",
    "register_tta",
    "softmax_entropy",
    "use_batch_statistics",
]
