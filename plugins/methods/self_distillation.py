"""Multi-exit self-distillation of a fresh student on pseudo-labels (UnFuSeD stage 3).

UnFuSeD: Ghosh et al., "UnFuSeD: UNsupervised Finetuning Using SElf supervised Distillation",
2023, arXiv 2303.05668. Multi-exit scheme: Zhang et al., "Be Your Own Teacher", 2019, arXiv 1905.08094.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from fewlabel.plugins.heads.multi_exit import aux_head
from fewlabel.plugins.losses.multi_exit import MultiExitDistillationLoss
from fewlabel.plugins.methods.base import Method
from fewlabel.plugins.methods.pseudo_labels import PseudoLabelMixin


class SelfDistillation(PseudoLabelMixin, Method):
    """Train an encoder on per-sample pseudo-labels with a final exit and auxiliary exits.

    Needs ``self.pseudo_labels`` filled (e.g. by :class:`fewlabel.callbacks.PseudoLabeler` with
    the teacher's encoder). Samples whose pseudo-label is ``-1`` (left out by the labeler's
    ``keep_fraction``) still pass through the network, so BatchNorm sees the whole pool, but are left
    out of every loss term. The auxiliary heads exist only for training; use ``.encoder`` afterwards.

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

    Example:
        >>> student = SelfDistillation({"name": "small_cnn", "width": 4}, num_classes=10, num_samples=100)
        >>> student.pseudo_labels.shape, int(student.pseudo_labels[0])  # -1 until a PseudoLabeler fills them
        (torch.Size([100]), -1)
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
        super().__init__(encoder, augment, optimizer=optimizer, lr=lr, weight_decay=weight_decay, momentum=momentum,
                         warmup_fraction=warmup_fraction, intermediates=True)
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if aux_hidden_dim is not None and aux_hidden_dim < 1:
            raise ValueError(f"aux_hidden_dim must be None (= num_classes) or >= 1, got {aux_hidden_dim}")
        self.save_hyperparameters(ignore=["encoder", "augment"])
        self.head = nn.Linear(self.embed_dim, num_classes)
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
        target = self.lookup_pseudo_labels(batch["index"], allow_missing=True)
        (z,) = self.views(batch, 1)
        final, aux = self.forward_exits(z)
        kept = target >= 0
        if not bool(kept.all()):
            final, aux, target = final[kept], [a[kept] for a in aux], target[kept]
        if target.numel() == 0:  # every sample of this batch was left out: a zero loss that reaches every head
            loss = sum((out.sum() for out in [final, *aux]), final.new_zeros(())) * 0.0
            self.log_train("train/loss", loss, prog_bar=True)
            return loss
        loss, parts = self.loss(final, aux, target)
        self.log_train("train/loss", loss, prog_bar=True)
        for key, value in parts.items():
            self.log_train(f"train/{key}", value)
        self.log_train("train/pseudo_acc", (final.argmax(1) == target).float().mean())
        return loss
