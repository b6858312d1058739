"""Multi-exit self-distillation of a fresh student on pseudo-labels (UnFuSeD stage 3).

UnFuSeD: Ghosh et al., "UnFuSeD: UNsupervised Finetuning Using SElf supervised Distillation",
2023, arXiv 2303.05668. Multi-exit scheme: Zhang et al., "Be Your Own Teacher", 2019, arXiv 1905.08094.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
from torch import Tensor, nn

from fewlabel.plugins.losses.multi_exit import MultiExitDistillationLoss
from fewlabel.plugins.modules.common import build_encoder, check_encoder, check_finite, make_views
from fewlabel.plugins.modules.optim import build_optimizer, check_optimizer
from fewlabel.plugins.modules.pseudo_labels import PseudoLabelMixin


def aux_head(in_dim: int, hidden_dim: int, num_classes: int) -> nn.Sequential:
    """Auxiliary exit: 2 x [Linear (no bias), BatchNorm, ReLU] then Linear (no bias) -> classes.

    The UnFuSeD code builds this head with ``hidden_dim = num_classes``.

    Args:
        in_dim: Size of the block feature the head reads.
        hidden_dim: Width of the two hidden layers.
        num_classes: Number of output logits.

    Returns:
        The head, mapping ``(B, in_dim)`` to ``(B, num_classes)`` logits.
    """
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, num_classes, bias=False),
    )


class SelfDistillation(PseudoLabelMixin, L.LightningModule):
    """Train an encoder on per-sample pseudo-labels with a final exit and auxiliary exits.

    Needs ``self.pseudo_labels`` filled (e.g. by :class:`fewlabel.callbacks.PseudoLabeler` with
    the teacher's encoder). The auxiliary heads exist only for training; use ``.encoder`` afterwards.

    Args:
        encoder: A fewlabel encoder with ``forward_intermediates`` or a registry spec.
        num_classes: Number of pseudo-label classes (k of the k-means).
        num_samples: Length of the pseudo-label table (0 = let the callback size it).
        augment: Batch-wise augmentation after the encoder's front end.
        aux_hidden_dim: Hidden width of the auxiliary heads; ``None`` = ``num_classes``, as in the
            UnFuSeD code.
        aux_ce_weight, kl_weight, feature_weight, temperature: Loss weights (0.7 / 0.3 / 0.003, T=1).
        detach_teacher: Detach the final exit in the KL and cosine terms; by default (the UnFuSeD
            code) they send gradients into it too (see :class:`MultiExitDistillationLoss`).
        optimizer, lr, weight_decay, momentum, warmup_fraction: SGD lr 0.03, momentum 0.9, wd 1e-4
            in the reference code; warm-up + cosine per step.
    """

    def __init__(
        self,
        encoder: nn.Module | Mapping[str, Any],
        num_classes: int,
        num_samples: int = 0,
        augment: nn.Module | None = None,
        aux_hidden_dim: int | None = None,
        aux_ce_weight: float = 0.7,
        kl_weight: float = 0.3,
        feature_weight: float = 0.003,
        temperature: float = 1.0,
        detach_teacher: bool = False,
        optimizer: str = "sgd",
        lr: float = 0.03,
        weight_decay: float = 1e-4,
        momentum: float = 0.9,
        warmup_fraction: float = 0.0,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if aux_hidden_dim is not None and aux_hidden_dim < 1:
            raise ValueError(f"aux_hidden_dim must be None (= num_classes) or >= 1, got {aux_hidden_dim}")
        check_optimizer(optimizer, lr, weight_decay, warmup_fraction)
        self.save_hyperparameters(ignore=["encoder", "augment"])
        self.encoder = build_encoder(encoder)
        embed_dim = check_encoder(self.encoder, intermediates=True)
        self.augment = augment
        self.head = nn.Linear(embed_dim, num_classes)
        hidden = num_classes if aux_hidden_dim is None else aux_hidden_dim
        self.aux_heads = nn.ModuleList(aux_head(c, hidden, num_classes) for c in self.encoder.intermediate_dims)
        self.loss = MultiExitDistillationLoss(aux_ce_weight, kl_weight, feature_weight, temperature, detach_teacher)
        self.init_pseudo_labels(num_samples)

    def forward(self, x: Tensor) -> Tensor:
        """Final-exit logits of a raw input batch."""
        return self.head(self.encoder(x))

    def forward_exits(self, z: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Final and auxiliary logits of a preprocessed batch."""
        emb, feats = self.encoder.forward_intermediates(z)
        return self.head(emb), [head(f) for head, f in zip(self.aux_heads, feats)]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        target = self.lookup_pseudo_labels(batch["index"])
        (z,) = make_views(self.encoder, batch, self.augment, 1)
        final, aux = self.forward_exits(z)
        loss, parts = self.loss(final, aux, target)
        check_finite(loss, self, self.global_step)
        self.log("train/loss", loss, prog_bar=True)
        self.log_dict({f"train/{k}": v for k, v in parts.items()})
        self.log("train/pseudo_acc", (final.argmax(1) == target).float().mean())
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        return build_optimizer(self, self.parameters(), name=hp.optimizer, lr=hp.lr, weight_decay=hp.weight_decay,
                               momentum=hp.momentum, warmup_fraction=hp.warmup_fraction)
