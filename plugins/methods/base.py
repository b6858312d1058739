"""The one LightningModule skeleton every fewlabel method builds on."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
from torch import Tensor, nn

from fewlabel.plugins.augment.views import make_views
from fewlabel.plugins.encoders.base import build_encoder, check_encoder, embed
from fewlabel.plugins.optim.optimizers import build_optimizer, check_optimizer

__all__ = ["Method"]


class Method(L.LightningModule):
    """Encoder + contract check, views, optimizer and schedule, and logging, for every method.

    A method file holds its heads and its ``training_step``; everything else is here:

    * ``self.encoder`` is built from a module or a registry spec and checked once (``embed_dim``, and
      the multi-exit attributes when ``intermediates``); :meth:`embed` is the only way methods embed
      a preprocessed batch, so a plain ``nn.Module`` with ``embed_dim`` works wherever the check passed.
    * :meth:`views` makes a batch's preprocessed views (``batch["views"]`` or ``augment`` on the device).
    * :meth:`configure_optimizers` builds the named optimizer over :meth:`parameter_groups` with a
      warm-up + cosine schedule stepped per optimizer step.
    * :meth:`on_fit_start` enters train mode: Lightning keeps the mode a module arrives in, and an
      encoder handed over by another stage may arrive in eval mode.

    Losses run in float32 inside the loss functions; a non-finite loss is caught by
    :class:`fewlabel.callbacks.FiniteLossGuard` when the trainer has it.

    Args:
        encoder: A fewlabel encoder (``nn.Module`` with ``embed_dim``) or a spec ``{"name": ..., **kwargs}``.
        augment: Batch-wise augmentation applied after the encoder's front end to make each view, or a
            :class:`~fewlabel.plugins.augment.ViewPipelines` with one pipeline per view (asymmetric views,
            optionally with a stage before the front end).
        optimizer: ``"sgd"``, ``"adam"`` or ``"adamw"`` (see ``fewlabel.plugins.optim``).
        lr, weight_decay, momentum, warmup_fraction: Optimiser settings; the schedule warms up over
            ``warmup_fraction`` of the steps, then decays to 0 on a cosine.
        intermediates: The method needs the encoder's block features (multi-exit heads).

    Example:
        >>> from fewlabel.plugins import SimCLR
        >>> model = SimCLR({"name": "small_cnn", "width": 4})
        >>> isinstance(model, Method), model.encoder.embed_dim
        (True, 16)
    """

    def __init__(
        self,
        encoder: nn.Module | Mapping[str, Any],
        augment: nn.Module | None = None,
        *,
        optimizer: str = "sgd",
        lr: float = 0.05,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        warmup_fraction: float = 0.0,
        intermediates: bool = False,
    ) -> None:
        super().__init__()
        check_optimizer(optimizer, lr, weight_decay, warmup_fraction)
        self.optimizer_settings = {"name": optimizer, "lr": lr, "weight_decay": weight_decay, "momentum": momentum,
                                   "warmup_fraction": warmup_fraction}
        self.encoder = build_encoder(encoder)
        self.embed_dim = check_encoder(self.encoder, intermediates=intermediates)
        self.augment = augment
        self._log_window: dict[str, tuple[Tensor | float, int]] = {}

    def forward(self, x: Tensor) -> Tensor:
        """The encoder's ``(B, D)`` embedding of a raw input batch."""
        return self.encoder(x)

    def embed(self, z: Tensor) -> Tensor:
        """The ``(B, D)`` embedding of a preprocessed batch (a view)."""
        return embed(self.encoder, z)

    def views(self, batch: Mapping[str, Any], num_views: int) -> list[Tensor]:
        """``num_views`` preprocessed views of ``batch``.

        Raises:
            ValueError: the batch carries ``"views"`` but not ``num_views`` of them, or ``augment`` is a
                ``ViewPipelines`` with another number of pipelines.
        """
        views = make_views(self.encoder, batch, self.augment, num_views)
        if len(views) != num_views:
            raise ValueError(f"{type(self).__name__} needs {num_views} views per sample, the batch carries {len(views)}")
        return views

    #: How the error for a missing momentum driver spells the callback to add (see :meth:`on_fit_start`).
    ema_callback_hint = "EMATeacher()"

    def on_fit_start(self) -> None:
        """Enter train mode; a method with ``momentum_pairs()`` also checks that a callback drives them.

        Raises:
            RuntimeError: the method has momentum teachers and no callback in ``trainer.callbacks`` has
                ``updates_momentum_pairs = True`` (such as :class:`fewlabel.callbacks.EMATeacher`).
        """
        self.train()
        if callable(getattr(self, "momentum_pairs", None)) and not any(
                getattr(callback, "updates_momentum_pairs", False) is True for callback in self.trainer.callbacks):
            raise RuntimeError(
                f"{type(self).__name__}'s teacher is an EMA of the student and nothing updates it: add "
                f"fewlabel.callbacks.{self.ema_callback_hint} to the Trainer's callbacks"
            )

    def log_train(self, name: str, value: Tensor | float, prog_bar: bool = False) -> None:
        """Log a per-step training value as its mean over the steps since it was last logged.

        Lightning's ``self.log`` costs ~0.4-0.7 ms per call on a CPU (it moves its result record to the
        value's device on every call, measured with ``benchmarks/loop_overhead.py``), several percent of
        a small model's step. So the value is summed on its device every step (detached, float32, no
        host synchronisation) and handed to ``self.log`` only on the steps the logger writes (every
        ``Trainer(log_every_n_steps=...)`` optimizer steps), at the last batch of every epoch and at
        ``max_steps`` (never on a batch that only accumulates gradients, so a window spans whole
        optimizer steps). ``trainer.callback_metrics[name]`` therefore holds the mean over the latest
        window, and at the end of every epoch and of ``fit`` it is up to date. Outside a Trainer's
        training loop this is plain ``self.log``.
        """
        trainer = self._trainer
        if trainer is None or not trainer.training:
            self.log(name, value, prog_bar=prog_bar)
            return
        value = value.detach().float() if isinstance(value, Tensor) else float(value)
        total, count = self._log_window.get(name, (0.0, 0))
        self._log_window[name] = (total + value, count + 1)
        if self._log_now(trainer):
            total, count = self._log_window.pop(name)
            self.log(name, total / count, prog_bar=prog_bar)

    @staticmethod
    def _log_now(trainer: L.Trainer) -> bool:
        """Whether this training batch is one whose logged values reach the logger or end a window."""
        step = trainer.global_step + 1
        last_batch = trainer.is_last_batch or (0 < trainer.max_steps <= step)
        accumulating = (trainer.fit_loop.epoch_loop.batch_idx + 1) % trainer.accumulate_grad_batches != 0
        if accumulating and not last_batch:  # the optimizer step (and the logger's write) comes later
            return False
        return step % max(1, trainer.log_every_n_steps) == 0 or last_batch or trainer.should_stop

    def on_train_epoch_start(self) -> None:
        """Start each epoch with empty logging windows (see :meth:`log_train`)."""
        self._log_window.clear()

    def parameter_groups(self) -> Any:
        """What the optimizer trains: every parameter with ``requires_grad`` (override for groups)."""
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self) -> dict[str, Any]:
        settings = dict(self.optimizer_settings)
        return build_optimizer(self, self.parameter_groups(), **settings)
