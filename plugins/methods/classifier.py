"""Supervised fine-tuning on the labeled few (UnFuSeD stage 4, and the supervised baseline)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from fewlabel.plugins.encoders import RunningNorm
from fewlabel.plugins.methods.base import Method


class Classifier(Method):
    """Encoder + linear head trained with cross-entropy on labeled samples (label ``-1`` is ignored).

    ``freeze_encoder=True`` is linear evaluation: the encoder stays in eval mode without gradients.
    Otherwise the whole network is fine-tuned, the encoder at ``lr * encoder_lr_scale``. The
    constructor sets the encoder's ``requires_grad`` from ``freeze_encoder`` and fitting starts in
    train mode, whatever flags the encoder arrived with.
    Logs ``val/acc`` and ``test/acc`` (torchmetrics, synchronised across ranks).

    Args:
        encoder: A fewlabel encoder or a registry spec.
        num_classes: Number of classes.
        augment: Batch-wise augmentation after the encoder's front end (training only).
        freeze_encoder: Linear evaluation instead of full fine-tuning.
        optimizer, lr, weight_decay, warmup_fraction: Adam lr 1e-3 in the reference code.
        encoder_lr_scale: Encoder learning rate relative to the head's.
        label_smoothing: Cross-entropy label smoothing.
        bn_eval: Keep the encoder's BatchNorm layers (and a log-mel front end's running normaliser) in
            eval mode while fine-tuning: their running statistics stay frozen and are used in training
            too; their affine weights still learn. A common few-shot practice: statistics of a few
            labeled samples per batch are noisy, and a short fine-tune leaves the running averages far
            from the data. ``False``: they update as in ordinary training.
    """

    def __init__(
        self,
        encoder: nn.Module | Mapping[str, Any],
        num_classes: int,
        augment: nn.Module | None = None,
        freeze_encoder: bool = False,
        optimizer: str = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_fraction: float = 0.0,
        encoder_lr_scale: float = 1.0,
        label_smoothing: float = 0.0,
        bn_eval: bool = False,
    ) -> None:
        super().__init__(encoder, augment, optimizer=optimizer, lr=lr, weight_decay=weight_decay,
                         warmup_fraction=warmup_fraction)
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.save_hyperparameters(ignore=["encoder", "augment"])
        self.head = nn.Linear(self.embed_dim, num_classes)
        # set, never assume: an encoder handed over by another stage may arrive frozen or in eval mode
        self.encoder.requires_grad_(not freeze_encoder)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        if mode:
            self._hold_encoder_modes()
        return self

    def _hold_encoder_modes(self) -> None:
        """A frozen encoder stays in eval mode; with ``bn_eval`` its running-statistics layers do."""
        if self.hparams.freeze_encoder:
            self.encoder.eval()
        elif self.hparams.bn_eval:
            for layer in self.encoder.modules():
                if isinstance(layer, (nn.modules.batchnorm._BatchNorm, RunningNorm)):
                    layer.eval()

    def forward(self, x: Tensor) -> Tensor:
        """Class logits of a raw input batch."""
        return self.head(self.encoder(x))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        self._hold_encoder_modes()  # Lightning may switch sub-modules to train mode directly
        (z,) = self.views(batch, 1)
        with torch.set_grad_enabled(not self.hparams.freeze_encoder):
            emb = self.embed(z)
        logits = self.head(emb.float() if self.hparams.freeze_encoder else emb)
        loss = F.cross_entropy(logits.float(), batch["label"], ignore_index=-1,
                               label_smoothing=self.hparams.label_smoothing)
        self.log_train("train/loss", loss, prog_bar=True)
        return loss

    def _evaluate(self, batch: dict[str, Any], metric: MulticlassAccuracy, name: str) -> None:
        metric.update(self(batch["input"]).float(), batch["label"])
        self.log(name, metric, prog_bar=True)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, self.val_acc, "val/acc")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, self.test_acc, "test/acc")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return self(batch["input"])

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The head at ``lr``; the encoder (unless frozen) at ``lr * encoder_lr_scale``."""
        hp = self.hparams
        groups: list[dict[str, Any]] = [{"params": self.head.parameters()}]
        if not hp.freeze_encoder:
            groups.append({"params": self.encoder.parameters(), "lr": hp.lr * hp.encoder_lr_scale})
        return groups
