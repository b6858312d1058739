"""VICReg self-supervised pretraining.

Bardes, Ponce & LeCun, "VICReg: Variance-Invariance-Covariance Regularization for Self-Supervised
Learning", ICLR 2022, arXiv 2105.04906.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from fewlabel.plugins.heads.projection import projection_mlp
from fewlabel.plugins.losses.vicreg import VICRegLoss
from fewlabel.plugins.methods.base import Method
from fewlabel.plugins.methods.registry import register_method

__all__ = ["VICReg"]


@register_method("vicreg")
class VICReg(Method):
    """Two views, a 3-layer expander, and invariance + variance + covariance terms on its outputs.

    Each view goes through the encoder and the expander on its own (BatchNorm statistics per view,
    as in the reference code); :class:`~fewlabel.plugins.losses.VICRegLoss` computes
    ``lambda * MSE + mu * variance hinge + nu * covariance`` in float32. The expander is
    ``[Linear -> BatchNorm -> ReLU] x 2 -> Linear`` without a last bias, as in the reference code.

    The paper's expander is 8192 wide for a 2048-d ResNet-50 and accuracy rises with the width; the
    default 2048 keeps the ``D x D`` covariance and the expander cheap on a CPU. Pass
    ``proj_dim=8192`` for fidelity on an accelerator. Batches need two or more samples.

    Args:
        encoder: A fewlabel encoder (``nn.Module`` with ``embed_dim``) or a registry spec ``{"name": ..., **kwargs}``.
        augment: Batch-wise augmentation applied after the encoder's front end to make each view;
            ignored when batches carry ``"views"``. Without either, both views are the same input.
        proj_dim: Width of every expander layer (hidden and output).
        lambda_param: Weight of the invariance term (25 in the paper).
        mu_param: Weight of the variance term (25).
        nu_param: Weight of the covariance term (1).
        gather_distributed: Compute the terms over every rank's batch (see ``VICRegLoss``).
        optimizer, lr, weight_decay, momentum, warmup_fraction: Optimiser and warm-up + cosine
            schedule (the paper: LARS, weight decay 1e-6, warm-up 10 epochs).

    Raises:
        ValueError: On ``proj_dim < 1``, a negative loss weight or a bad optimiser setting.

    Example:
        >>> from fewlabel.plugins.methods import METHODS
        >>> module = METHODS.create("vicreg", encoder={"name": "small_cnn", "width": 4}, proj_dim=64)
        >>> module.projector[-1].bias is None
        True
    """

    def __init__(
        self,
        encoder: nn.Module | Mapping[str, Any],
        augment: nn.Module | None = None,
        proj_dim: int = 2048,
        lambda_param: float = 25.0,
        mu_param: float = 25.0,
        nu_param: float = 1.0,
        gather_distributed: bool = False,
        optimizer: str = "sgd",
        lr: float = 0.05,
        weight_decay: float = 1e-6,
        momentum: float = 0.9,
        warmup_fraction: float = 0.1,
    ) -> None:
        super().__init__(encoder, augment, optimizer=optimizer, lr=lr, weight_decay=weight_decay, momentum=momentum,
                         warmup_fraction=warmup_fraction)
        self.save_hyperparameters(ignore=["encoder", "augment"])
        self.projector = projection_mlp([self.embed_dim, proj_dim, proj_dim, proj_dim], last_bias=False)
        self.criterion = VICRegLoss(lambda_param=lambda_param, mu_param=mu_param, nu_param=nu_param,
                                    gather_distributed=gather_distributed)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        first, second = self.views(batch, 2)
        loss = self.criterion(self.projector(self.embed(first)), self.projector(self.embed(second)))
        self.log_train("train/loss", loss, prog_bar=True)
        return loss
