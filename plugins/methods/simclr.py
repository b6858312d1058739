"""SimCLR self-supervised pretraining.

Chen, Kornblith, Norouzi & Hinton, "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020, arXiv 2002.05709.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from fewlabel.plugins.heads.projection import projection_mlp
from fewlabel.plugins.losses.ntxent import NTXentLoss
from fewlabel.plugins.methods.base import Method
from fewlabel.plugins.methods.registry import register_method

__all__ = ["SimCLR"]


@register_method("simclr")
class SimCLR(Method):
    """Two augmented views of every sample, a projection MLP, and the NT-Xent contrastive loss.

    Both views go through the encoder and the head as one ``2B`` batch (BatchNorm sees both, as in
    the reference code); the loss treats the other view of the same sample as the positive and the
    remaining ``2B - 2`` views as negatives (:class:`~fewlabel.plugins.losses.NTXentLoss`, float32).
    The head is ``Linear -> BatchNorm -> ReLU -> Linear``; the encoder's embedding is what downstream
    stages use, the head is dropped.

    Defaults are for small batches on a CPU: the temperature is 0.5, lightly's default and the
    paper's choice for CIFAR-10 (its ImageNet runs use 0.1 with batches of 4096, where more negatives
    make a sharper softmax pay off); plain SGD with momentum stands in for LARS.

    Args:
        encoder: A fewlabel encoder (``nn.Module`` with ``embed_dim``) or a registry spec ``{"name": ..., **kwargs}``.
        augment: Batch-wise augmentation applied after the encoder's front end to make each view;
            ignored when batches carry ``"views"``. Without either, both views are the same input and
            the task is trivial, so pass one.
        hidden_dim: Hidden width of the head; ``None`` = the encoder's ``embed_dim``, as in the paper.
        out_dim: Output width of the head (128 in the paper).
        temperature: NT-Xent temperature.
        gather_distributed: Use every rank's views as negatives (see ``NTXentLoss``).
        optimizer, lr, weight_decay, momentum, warmup_fraction: Optimiser and warm-up + cosine
            schedule (the paper: LARS, weight decay 1e-6, warm-up 10 of 100 epochs).

    Raises:
        ValueError: On a width below 1 or ``temperature <= 0``, or a bad optimiser setting.

    Example:
        >>> from fewlabel.plugins.methods import METHODS
        >>> module = METHODS.create("simclr", encoder={"name": "small_cnn", "width": 4})
        >>> module.projector[-1].out_features
        128
    """

    def __init__(
        self,
        encoder: nn.Module | Mapping[str, Any],
        augment: nn.Module | None = None,
        hidden_dim: int | None = None,
        out_dim: int = 128,
        temperature: float = 0.5,
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
        hidden = self.embed_dim if hidden_dim is None else hidden_dim
        self.projector = projection_mlp([self.embed_dim, hidden, out_dim])
        self.criterion = NTXentLoss(temperature=temperature, gather_distributed=gather_distributed)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        first, second = self.views(batch, 2)
        z0, z1 = self.projector(self.embed(torch.cat([first, second]))).chunk(2)
        loss = self.criterion(z0, z1)
        self.log_train("train/loss", loss, prog_bar=True)
        return loss
