"""BYOL self-supervised pretraining, and BYOL-A (BYOL with audio views).

Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning", NeurIPS 2020,
arXiv 2006.07733; Niizumi et al., "BYOL for Audio: Self-Supervised Learning for General-Purpose Audio
Representation", IJCNN 2021, arXiv 2103.06695.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from fewlabel.plugins.augment.byola import ByolaAugment
from fewlabel.plugins.encoders.base import embed
from fewlabel.plugins.heads.projection import projection_mlp
from fewlabel.plugins.losses.negative_cosine import NegativeCosineSimilarity
from fewlabel.plugins.methods.base import Method
from fewlabel.plugins.methods.registry import register_method

__all__ = ["BYOL", "BYOLA"]


@register_method("byol")
class BYOL(Method):
    """An online network predicts a momentum target network's projection of another view.

    Online network: ``encoder -> projector -> predictor``; target network: copies of ``encoder`` and
    ``projector`` (``target_encoder``, ``target_projector``), made in the constructor with
    ``requires_grad=False``, so they are in the state dict and every checkpoint. For two views
    ``v1, v2`` of a batch, with ``p_i`` the online prediction of ``v_i`` and ``z'_i`` the target
    projection of ``v_i`` (computed under ``torch.no_grad``), the loss is::

        loss = NegativeCosineSimilarity()(p1, z'2) + NegativeCosineSimilarity()(p2, z'1)
             = -mean cos(p1, z'2) - mean cos(p2, z'1),   in [-2, 2]; -2 when the predictions match.

    The paper's symmetrised loss is ``(2 - 2 cos(p1, z'2)) + (2 - 2 cos(p2, z'1)) = 4 + 2 * loss``:
    the same minimiser and half its gradient (lightly's BYOL example averages the two terms, a
    quarter of it). Each view goes through the networks on its own, so BatchNorm normalises each
    view's batch as in the reference code. Logs ``train/loss``.

    Methods with a momentum teacher expose their (student, teacher) module pairs through
    :meth:`momentum_pairs`; here ``[(encoder, target_encoder), (projector, target_projector)]``. The
    method does not update its target itself: :class:`fewlabel.callbacks.EMATeacher` does, after every
    optimizer step (``target = m * target + (1 - m) * online`` on the parameters; buffers such as
    BatchNorm running statistics are copied from the online network), and ``fit`` fails at the start
    without it. The paper's schedule is ``EMATeacher(base_momentum=0.996, final_momentum=1.0)``.

    The target network runs in the module's mode, i.e. in train mode while fitting (BatchNorm with
    batch statistics, dropout on), as BYOL's reference code applies it with ``is_training=True``:
    :meth:`Method.on_fit_start` calls ``self.train()``, which includes the target modules, and this
    class keeps it that way. ``self.encoder`` (the online encoder) is the learnt representation.

    Args:
        encoder: A fewlabel encoder (``nn.Module`` with ``embed_dim``) or a registry spec
            ``{"name": ..., **kwargs}``.
        augment: Batch-wise augmentation applied after the encoder's front end to make each view;
            ignored when batches carry ``"views"``. ``None`` with no ``"views"`` gives two identical views.
        hidden_dim: Hidden width of the projector and of the predictor (4096 in the paper; 512 here,
            small enough for CPU runs and the digits/audio encoders of this library).
        out_dim: Output width of the projector and predictor (256 in the paper; 128 here).
        optimizer, lr, weight_decay, momentum, warmup_fraction: Optimiser and warm-up + cosine
            schedule over the online network's parameters. The paper uses LARS (lr 0.2 x batch/256,
            weight decay 1.5e-6); the default here is SGD lr 0.05, momentum 0.9, weight decay 1e-4, a
            10% warm-up, as for the library's other methods.

    Raises:
        ValueError: ``hidden_dim`` or ``out_dim`` below 1, or a bad optimiser setting.

    Example:
        >>> import lightning as L
        >>> from fewlabel.callbacks import EMATeacher
        >>> model = BYOL({"name": "small_cnn", "width": 8}, hidden_dim=64, out_dim=32)
        >>> trainer = L.Trainer(max_epochs=10, callbacks=[EMATeacher(base_momentum=0.996)])
        >>> trainer.fit(model, datamodule=datamodule)  # doctest: +SKIP
    """

    def __init__(
        self,
        encoder: nn.Module | Mapping[str, Any],
        augment: nn.Module | None = None,
        *,
        hidden_dim: int = 512,
        out_dim: int = 128,
        optimizer: str = "sgd",
        lr: float = 0.05,
        weight_decay: float = 1e-4,
        momentum: float = 0.9,
        warmup_fraction: float = 0.1,
    ) -> None:
        super().__init__(encoder, augment, optimizer=optimizer, lr=lr, weight_decay=weight_decay, momentum=momentum,
                         warmup_fraction=warmup_fraction)
        if hidden_dim < 1 or out_dim < 1:
            raise ValueError(f"hidden_dim and out_dim must be >= 1, got {hidden_dim} and {out_dim}")
        self.save_hyperparameters(ignore=["encoder", "augment"])
        self.projector = projection_mlp([self.embed_dim, hidden_dim, out_dim])
        self.predictor = projection_mlp([out_dim, hidden_dim, out_dim])
        self.target_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.criterion = NegativeCosineSimilarity()

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """The ``(online, target)`` module pairs that :class:`fewlabel.callbacks.EMATeacher` averages."""
        return [(self.encoder, self.target_encoder), (self.projector, self.target_projector)]

    def predict_online(self, z: Tensor) -> Tensor:
        """Online prediction ``predictor(projector(encoder(z)))`` of a preprocessed view."""
        return self.predictor(self.projector(self.embed(z)))

    @torch.no_grad()
    def project_target(self, z: Tensor) -> Tensor:
        """Target projection ``target_projector(target_encoder(z))`` of a preprocessed view (no gradient)."""
        return self.target_projector(embed(self.target_encoder, z))

    def loss(self, predictions: tuple[Tensor, Tensor], targets: tuple[Tensor, Tensor]) -> Tensor:
        """The symmetric cross-view loss ``-cos(p1, z'2) - cos(p2, z'1)`` (float32, in ``[-2, 2]``)."""
        return self.criterion(predictions[0], targets[1]) + self.criterion(predictions[1], targets[0])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        v1, v2 = self.views(batch, 2)
        predictions = (self.predict_online(v1), self.predict_online(v2))
        targets = (self.project_target(v1), self.project_target(v2))
        loss = self.loss(predictions, targets)
        self.log_train("train/loss", loss, prog_bar=True)
        return loss



@register_method("byola")
class BYOLA(BYOL):
    """BYOL with BYOL-A's audio views, for audio encoders such as :class:`~fewlabel.plugins.AudioNTT`.

    Only the defaults differ from :class:`BYOL`: the views come from :class:`ByolaAugment`
    (log-mixup-exp, then random resize crop of the normalised log-mel spectrogram) and the optimiser
    is BYOL-A's Adam at lr 3e-4 without weight decay (BYOL-A keeps that rate constant; here the
    skeleton's warm-up + cosine schedule applies). BYOL-A's target uses a constant EMA decay of 0.99:
    ``EMATeacher(base_momentum=0.99, final_momentum=0.99)``. BYOL-A's heads are 4096 wide with 256
    outputs; the defaults here stay at :class:`BYOL`'s CPU-friendly 512 / 128.

    Args:
        encoder: An audio encoder taking raw waveforms (e.g. ``{"name": "audio_ntt"}``).
        augment: View augmentation after the log-mel front end; ``None`` = ``ByolaAugment()``.
        hidden_dim, out_dim, optimizer, lr, weight_decay, momentum, warmup_fraction: See :class:`BYOL`.

    Example:
        >>> model = BYOLA({"name": "small_cnn", "width": 4}, hidden_dim=32, out_dim=16)
        >>> model.encoder.embed_dim
        16
    """

    def __init__(
        self,
        encoder: nn.Module | Mapping[str, Any],
        augment: nn.Module | None = None,
        *,
        hidden_dim: int = 512,
        out_dim: int = 128,
        optimizer: str = "adam",
        lr: float = 3e-4,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        warmup_fraction: float = 0.1,
    ) -> None:
        super().__init__(encoder, ByolaAugment() if augment is None else augment, hidden_dim=hidden_dim,
                         out_dim=out_dim, optimizer=optimizer, lr=lr, weight_decay=weight_decay, momentum=momentum,
                         warmup_fraction=warmup_fraction)
