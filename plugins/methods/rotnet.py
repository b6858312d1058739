"""RotNet: self-supervised pretraining by predicting image rotations.

Gidaris, Singh & Komodakis, "Unsupervised Representation Learning by Predicting Image Rotations",
ICLR 2018, arXiv 1803.07728.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewlabel.plugins.arguments import check_int
from fewlabel.plugins.augment.rotation import NUM_ROTATIONS, rotate_batch
from fewlabel.plugins.heads.projection import projection_mlp
from fewlabel.plugins.methods.base import Method
from fewlabel.plugins.methods.registry import register_method

__all__ = ["RotNet"]


@register_method("rotnet")
class RotNet(Method):
    """Classify which of the rotations 0, 90, 180, 270 degrees was applied to an image.

    Every step takes the batch's preprocessed view (after ``augment``, if any), rotates it with
    :func:`~fewlabel.plugins.augment.rotate_batch` and trains the encoder and a small head to predict
    the rotation with cross-entropy (float32). By default each image is fed in all four rotations, a
    ``4B`` batch, as in the paper, which found this better than one random rotation per image;
    ``all_rotations=False`` draws one rotation per sample instead (a ``B`` batch, a quarter of the
    compute). Logs ``train/loss`` and the rotation accuracy ``train/acc``.

    Image encoders only: views must be ``(B, C, H, W)`` with ``H == W`` (an audio encoder's log-mel
    view is not square and is refused at the first step).

    Defaults follow the paper where a CPU allows: SGD with momentum 0.9, lr 0.1, weight decay 5e-4
    (Nesterov momentum and the step schedule are replaced by plain momentum and a cosine). The
    paper's rotation classifier is the network's remaining conv blocks; here the encoder ends in a
    pooled embedding, so the head is a linear layer, or an MLP with ``hidden_dim``.

    Args:
        encoder: A fewlabel image encoder (``nn.Module`` with ``embed_dim``) or a registry spec
            ``{"name": ..., **kwargs}``.
        augment: Batch-wise augmentation applied after the encoder's front end, before rotating.
        all_rotations: Feed all four rotations of every image (``True``) or one random rotation each.
        hidden_dim: ``None``: a linear head ``embed_dim -> 4``; an integer: ``Linear -> BatchNorm ->
            ReLU -> Linear`` with this hidden width.
        optimizer, lr, weight_decay, momentum, warmup_fraction: Optimiser and warm-up + cosine schedule.

    Raises:
        ValueError: On a non-bool ``all_rotations``, ``hidden_dim < 1`` or a bad optimiser setting.

    Example:
        >>> from fewlabel.plugins.methods import METHODS
        >>> module = METHODS.create("rotnet", encoder={"name": "small_cnn", "width": 4})
        >>> module.head
        Linear(in_features=16, out_features=4, bias=True)
    """

    def __init__(
        self,
        encoder: nn.Module | Mapping[str, Any],
        augment: nn.Module | None = None,
        all_rotations: bool = True,
        hidden_dim: int | None = None,
        optimizer: str = "sgd",
        lr: float = 0.1,
        weight_decay: float = 5e-4,
        momentum: float = 0.9,
        warmup_fraction: float = 0.0,
    ) -> None:
        super().__init__(encoder, augment, optimizer=optimizer, lr=lr, weight_decay=weight_decay, momentum=momentum,
                         warmup_fraction=warmup_fraction)
        if not isinstance(all_rotations, bool):
            raise ValueError(f"all_rotations must be True or False, got {all_rotations!r}")
        check_int("hidden_dim", hidden_dim, 1, "None (a linear head)")
        self.save_hyperparameters(ignore=["encoder", "augment"])
        if hidden_dim is None:
            self.head: nn.Module = nn.Linear(self.embed_dim, NUM_ROTATIONS)
        else:
            self.head = projection_mlp([self.embed_dim, hidden_dim, NUM_ROTATIONS])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        images = torch.cat(self.views(batch, 1))
        try:
            rotated, labels = rotate_batch(images, all_rotations=self.hparams.all_rotations)
        except ValueError as err:
            raise ValueError(f"RotNet works on image encoders only: {err}") from None
        logits = self.head(self.embed(rotated)).float()
        loss = F.cross_entropy(logits, labels)
        self.log_train("train/loss", loss, prog_bar=True)
        self.log_train("train/acc", (logits.argmax(dim=1) == labels).float().mean())
        return loss
