"""DINO self-distillation with a momentum teacher and multi-crop.

Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", 2021, arXiv 2104.14294.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from fewlabel.plugins.arguments import check_int
from fewlabel.plugins.augment.multicrop import MultiCrop
from fewlabel.plugins.augment.views import make_views
from fewlabel.plugins.encoders.base import embed, preprocess
from fewlabel.plugins.heads.dino_head import DINOHead
from fewlabel.plugins.losses.dino import DINOLoss
from fewlabel.plugins.methods.base import Method
from fewlabel.plugins.methods.registry import register_method

#: DINO distils from exactly two global views.
NUM_GLOBAL = 2


@register_method("dino")
class DINO(Method):
    """A student (encoder + :class:`DINOHead`) learns to match a momentum teacher's centred, sharpened
    outputs across crops.

    Each step makes ``2 + num_local`` views of the preprocessed batch with :class:`MultiCrop` (two
    global crops, then the local crops, each followed by ``augment``); when batches carry
    ``"views"`` (made by the datamodule) those are used instead, the first two being the global ones.
    The teacher embeds only the two global views, without gradients; the student embeds all views,
    its encoder once per run of consecutive views of equal size (so BatchNorm statistics are those of
    one resolution) and its head once on all of them, as the reference's ``MultiCropWrapper`` does.
    :class:`DINOLoss` takes the cross-entropy from each teacher view to every other student view, with
    the teacher temperature of the current epoch (linear warm-up), and updates its centre (a
    checkpointed buffer) after every step.

    **Momentum-pair contract.** The teacher is a deep copy of the student made here, with
    ``requires_grad=False``, and part of the state dict (checkpointed); :meth:`momentum_pairs`
    returns ``[(encoder, teacher_encoder), (head, teacher_head)]``. This module never updates the
    teacher itself: :class:`fewlabel.callbacks.EMATeacher` (DINO: ``base_momentum=0.996`` rising to 1)
    averages each pair after every optimizer step, and :meth:`on_fit_start` raises if the Trainer has
    no callback with ``updates_momentum_pairs = True``.

    ``self.encoder`` (what callbacks and ``forward`` use) is the student's; the reference evaluates the
    teacher's backbone, which is ``self.teacher_encoder`` here.

    **Teacher mode.** The teacher runs in train mode, as in the reference (``main_dino.py`` never puts
    the teacher in eval mode), so its BatchNorm layers normalise with the global crops' batch statistics.

    **Frozen last layer.** For the first ``freeze_last_layer_epochs`` epochs the gradients of the
    student head's last layer are dropped (set to ``None`` after each backward, so neither the
    optimizer's update nor its weight decay moves it), as the reference's
    ``cancel_gradients_last_layer`` does.

    **Optimisation.** The parameters are split as in the reference's ``get_params_groups``: biases
    and 1-d parameters (normalisation weights) get no weight decay. The defaults are sized for a CPU
    and tiny images: AdamW at ``lr=1e-3`` with weight decay 0.04 (the reference uses 0.04 rising to 0.4
    on a cosine, and ``5e-4 * batch / 256``), warm-up over 10% of the steps then cosine decay; the
    reference's per-parameter gradient clipping (3.0) is left to ``Trainer(gradient_clip_val=...)``.

    Args:
        encoder: A fewlabel encoder (``nn.Module`` with ``embed_dim``) or a registry spec ``{"name": ..., **kwargs}``.
        augment: Batch-wise augmentation applied to each crop (e.g. ``BatchImageAugment``), or ``None``.
        num_local: Local crops per sample (the reference uses 8; 2 keeps a CPU step cheap).
        global_scale: Area range of the global crops (reference 0.4-1).
        local_scale: Area range of the local crops (reference 0.05-0.4).
        global_size: Size of the global views; ``None`` = the input's size.
        local_size: Size of the local views; ``None`` = 3/7 of the input's size, at least 4 pixels.
        out_dim: Output dimension of the head (reference 65536).
        hidden_dim: Hidden width of the head (reference 2048).
        bottleneck_dim: Bottleneck width of the head (reference 256).
        head_layers: Linear layers of the head's MLP (reference 3).
        head_batch_norm: BatchNorm in the head's MLP (the reference's ``use_bn_in_head``, off by default
            there, for ViTs). On by default here, for the library's convolutional encoders: chosen on
            the digits validation split (``benchmarks/ssl_zoo_digits.py --methods dino --queries val``,
            kNN / linear-probe accuracy of the student): 30 epochs 0.675 / 0.849 with it vs 0.579 /
            0.794 without; 80 epochs 0.770 / 0.929 vs 0.579 / 0.762. Without it the loss barely left
            its collapsed start (ln out_dim) in 510 steps.
        norm_last_layer: Freeze the magnitude of the head's last layer at 1 (reference default ``True``).
        warmup_teacher_temp: Teacher temperature at epoch 0.
        teacher_temp: Teacher temperature after the warm-up (0.04; above 0.07 is unstable).
        warmup_teacher_temp_epochs: Epochs of the linear temperature warm-up (``main_dino.py``
            default 0; the published ViT-S/16 runs warm up from 0.04 to 0.07 over 30 epochs).
        student_temp: Student temperature (0.1).
        center_momentum: Momentum of the teacher-output centre (0.9).
        freeze_last_layer_epochs: Epochs during which the head's last layer is kept fixed (reference 1).
        optimizer, lr, weight_decay, momentum, warmup_fraction: Optimiser and warm-up + cosine schedule.

    Raises:
        ValueError: on a bad crop, head or loss setting, or a negative ``freeze_last_layer_epochs``.

    Example:
        >>> module = DINO({"name": "small_cnn", "width": 4}, num_local=2)
        >>> [tuple(v.shape) for v in module.views({"input": torch.rand(3, 1, 8, 8)})]
        [(3, 1, 8, 8), (3, 1, 8, 8), (3, 1, 4, 4), (3, 1, 4, 4)]

        Train it with ``lightning.Trainer(callbacks=[fewlabel.callbacks.EMATeacher(base_momentum=0.996)])``.
    """

    ema_callback_hint = "EMATeacher(base_momentum=0.996)"

    def __init__(
        self,
        encoder: nn.Module | Mapping[str, Any],
        augment: nn.Module | None = None,
        num_local: int = 2,
        global_scale: Sequence[float] = (0.4, 1.0),
        local_scale: Sequence[float] = (0.05, 0.4),
        global_size: int | Sequence[int] | None = None,
        local_size: int | Sequence[int] | None = None,
        out_dim: int = 1024,
        hidden_dim: int = 512,
        bottleneck_dim: int = 64,
        head_layers: int = 3,
        head_batch_norm: bool = True,
        norm_last_layer: bool = True,
        warmup_teacher_temp: float = 0.04,
        teacher_temp: float = 0.04,
        warmup_teacher_temp_epochs: int = 0,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        freeze_last_layer_epochs: int = 1,
        optimizer: str = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 0.04,
        momentum: float = 0.9,
        warmup_fraction: float = 0.1,
    ) -> None:
        # The augmentation lives in the multi-crop pipeline, not in Method.augment (one copy in the state dict).
        super().__init__(encoder, None, optimizer=optimizer, lr=lr, weight_decay=weight_decay, momentum=momentum,
                         warmup_fraction=warmup_fraction)
        check_int("freeze_last_layer_epochs", freeze_last_layer_epochs, 0)
        self.save_hyperparameters(ignore=["encoder", "augment"])
        self.multicrop = MultiCrop(num_global=NUM_GLOBAL, num_local=num_local, global_scale=global_scale,
                                   local_scale=local_scale, global_size=global_size, local_size=local_size,
                                   global_augment=augment, local_augment=augment)
        self.head = DINOHead(self.embed_dim, out_dim=out_dim, hidden_dim=hidden_dim, bottleneck_dim=bottleneck_dim,
                             num_layers=head_layers, batch_norm=head_batch_norm, norm_last_layer=norm_last_layer)
        self.teacher_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.teacher_head = copy.deepcopy(self.head).requires_grad_(False)
        self.loss = DINOLoss(output_dim=out_dim, warmup_teacher_temp=warmup_teacher_temp, teacher_temp=teacher_temp,
                             warmup_teacher_temp_epochs=warmup_teacher_temp_epochs, student_temp=student_temp,
                             center_momentum=center_momentum)

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """``[(encoder, teacher_encoder), (head, teacher_head)]``: the teacher is an EMA of these students."""
        return [(self.encoder, self.teacher_encoder), (self.head, self.teacher_head)]

    def views(self, batch: Mapping[str, Any], num_views: int | None = None) -> list[Tensor]:
        """The preprocessed views, the two global ones first: ``batch["views"]``, else multi-crops of the input.

        Raises:
            KeyError: the batch has neither ``"views"`` nor ``"input"``.
            ValueError: ``num_views`` disagrees with the number of views made, or fewer than two views.
        """
        if "views" in batch:
            views = make_views(self.encoder, batch, None, len(batch["views"]))
        else:
            if "input" not in batch:
                raise KeyError(f"batch needs an 'input' or a 'views' key, got keys {sorted(batch)}")
            views = self.multicrop(preprocess(self.encoder, batch["input"]))
        if num_views is not None and num_views != len(views):
            raise ValueError(f"DINO makes {len(views)} views per batch, {num_views} were asked for")
        if len(views) < NUM_GLOBAL:
            raise ValueError(f"DINO needs at least {NUM_GLOBAL} views (the global ones first), got {len(views)}")
        return views

    def student(self, views: Sequence[Tensor]) -> list[Tensor]:
        """Student head outputs ``(B, out_dim)`` of every view.

        The encoder runs once per run of consecutive views of equal size, the head once on all
        embeddings, as the reference's ``MultiCropWrapper`` does.
        """
        embeddings: list[Tensor] = []
        start = 0
        while start < len(views):
            end = start + 1
            while end < len(views) and views[end].shape == views[start].shape:
                end += 1
            embeddings.append(self.embed(torch.cat(list(views[start:end]))))
            start = end
        return list(self.head(torch.cat(embeddings)).chunk(len(views)))

    @torch.no_grad()
    def teacher(self, global_views: Sequence[Tensor]) -> list[Tensor]:
        """Teacher head outputs ``(B, out_dim)`` of the global views, in one forward, without gradients."""
        out = self.teacher_head(embed(self.teacher_encoder, torch.cat(list(global_views))))
        return list(out.chunk(len(global_views)))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        views = self.views(batch)
        teacher_out = self.teacher(views[:NUM_GLOBAL])
        student_out = self.student(views)
        temperature = self.loss.teacher_temperature(self.current_epoch)
        loss = self.loss(teacher_out, student_out, teacher_temp=temperature)
        self.log_train("train/loss", loss, prog_bar=True)
        self.log("train/teacher_temp", temperature, on_step=False, on_epoch=True)
        return loss


    def on_after_backward(self) -> None:
        """Drop the gradients of the head's last layer during the first ``freeze_last_layer_epochs`` epochs."""
        if self.current_epoch < self.hparams.freeze_last_layer_epochs:
            for p in self.head.last_layer.parameters():
                p.grad = None

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters in two groups: weights with weight decay; biases and 1-d parameters without."""
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (no_decay if name.endswith(".bias") or p.ndim == 1 else decay).append(p)
        groups: list[dict[str, Any]] = [{"params": decay}]
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0})
        return groups
