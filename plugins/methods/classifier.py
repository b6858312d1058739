"""Supervised fine-tuning on the labeled few (UnFuSeD stage 4, the supervised baseline, LP-FT and SSF)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from lightning.fabric.utilities.data import AttributeDict
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from fewlabel.plugins.encoders import RunningNorm
from fewlabel.plugins.encoders.ssf import add_ssf, ssf_parameters
from fewlabel.plugins.methods.base import Method
from fewlabel.plugins.optim.optimizers import create_optimizer
from fewlabel.plugins.optim.schedules import cosine_schedule

#: Parameter-efficient fine-tuning schemes ``Classifier(peft=...)`` accepts (``None``: full fine-tuning).
PEFT_METHODS = ("ssf",)


def _check_lp_steps(lp_steps: int | float) -> None:
    if isinstance(lp_steps, bool) or not isinstance(lp_steps, (int, float)):
        raise ValueError(f"lp_steps must be an int >= 0 or a float in (0, 1), got {lp_steps!r}")
    if isinstance(lp_steps, int) and lp_steps < 0:
        raise ValueError(f"lp_steps must be an int >= 0 (optimizer steps) or a float in (0, 1), got {lp_steps!r}")
    if isinstance(lp_steps, float) and not 0.0 < lp_steps < 1.0:
        raise ValueError(f"lp_steps as a float is a fraction of the fit's optimizer steps and must be in (0, 1), "
                         f"got {lp_steps!r}; give an int for a number of steps")


class Classifier(Method):
    """Encoder + linear head trained with cross-entropy on labeled samples (label ``-1`` is ignored).

    ``freeze_encoder=True`` is linear evaluation: the encoder stays in eval mode without gradients.
    Otherwise the whole network is fine-tuned, the encoder at ``lr * encoder_lr_scale``. The
    constructor sets the encoder's ``requires_grad`` from ``freeze_encoder`` and fitting starts in
    train mode, whatever flags the encoder arrived with.
    Logs ``val/acc`` and ``test/acc`` (torchmetrics, synchronised across ranks).

    **LP-FT** (``lp_steps > 0``; Kumar et al., "Fine-Tuning can Distort Pretrained Features and
    Underperform Out-of-Distribution", 2022, arXiv 2202.10054): the first ``lp_steps`` optimizer
    steps of the fit are a linear probe (only the head learns, on features of the encoder in eval mode
    without gradients, exactly as with ``freeze_encoder=True``), the rest fine-tune the network starting
    from that head, so the features are not distorted by the gradients of a random head. The linear
    probe is trained inside the same fit rather than by a separate L-BFGS logistic regression on
    extracted embeddings (what the authors' code does): it sees the same augmented batches, sampler,
    precision and devices as the fine-tuning, needs no extra pass over the data or gather across
    ranks, and a checkpoint at any step of either phase resumes exactly (the phase is a function of
    ``trainer.global_step``); with a few labels, a few dozen steps on a linear head converge. The
    learning-rate schedule (warm-up + cosine, as :meth:`Method.configure_optimizers`) runs once over the
    probe's steps and restarts over the fine-tuning steps, and the head's optimizer state is cleared
    when fine-tuning begins (a fresh optimizer, as in the paper), so the head after the probe equals
    the head of a ``freeze_encoder=True`` classifier fitted for ``lp_steps`` steps with the same seed.

    **SSF** (``peft="ssf"``; Lian et al., "Scaling & Shifting Your Features: A New Baseline for
    Efficient Model Tuning", 2022, arXiv 2210.08823): :func:`~fewlabel.plugins.encoders.add_ssf` puts
    a per-channel scale and shift (identity at first) after every conv, linear and norm layer of the
    encoder and freezes the rest; only those and the head train, the SSF parameters at
    ``lr * encoder_lr_scale``. The encoder's BatchNorm layers (and a log-mel front end's running
    normaliser) stay in eval mode, their statistics being part of the frozen backbone. Fold the trained
    scales into the weights with :func:`~fewlabel.plugins.encoders.merge_ssf` for inference.

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
        lp_steps: LP-FT: the first ``lp_steps`` optimizer steps (an int) or that fraction of the fit's
            optimizer steps (a float in ``(0, 1)``) train the head alone; ``0`` is plain fine-tuning.
        peft: ``"ssf"``: train only SSF scales and shifts + the head; ``None``: every encoder parameter.

    Raises:
        ValueError: ``num_classes < 2``; a bad ``lp_steps`` or ``peft``; ``freeze_encoder=True`` with
            ``lp_steps`` or ``peft`` (there is nothing to fine-tune). At fit time: ``lp_steps`` leaves
            no fine-tuning steps.

    Example:
        >>> clf = Classifier({"name": "small_cnn", "width": 4}, num_classes=10, lp_steps=0.5, peft="ssf")
        >>> sorted({n.split(".")[0] for n, p in clf.named_parameters() if p.requires_grad})
        ['encoder', 'head']
        >>> all("ssf_" in n for n, p in clf.encoder.named_parameters() if p.requires_grad)
        True
    """

    #: Constructor arguments that are modules, not hyperparameters (left out of ``hparams``; a subclass
    #: that takes another module, such as a teacher, adds its name).
    module_arguments: tuple[str, ...] = ("encoder", "augment")

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
        lp_steps: int | float = 0,
        peft: str | None = None,
    ) -> None:
        super().__init__(encoder, augment, optimizer=optimizer, lr=lr, weight_decay=weight_decay,
                         warmup_fraction=warmup_fraction)
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        _check_lp_steps(lp_steps)
        if peft is not None and peft not in PEFT_METHODS:
            raise ValueError(f"peft must be None (full fine-tuning) or one of {list(PEFT_METHODS)}, got {peft!r}")
        if freeze_encoder and (lp_steps or peft is not None):
            raise ValueError("freeze_encoder=True trains the head alone (linear evaluation); lp_steps and peft "
                             "need an encoder that is fine-tuned: drop freeze_encoder or them")
        self.save_hyperparameters(ignore=list(self.module_arguments))
        #: The Classifier's own settings, read by its steps. Not ``hparams``: under LightningCLI those are the
        #: config's init_args, which for a subclass (KnowledgeDistillation) lack the arguments it does not take.
        self.settings = AttributeDict(
            num_classes=num_classes, freeze_encoder=freeze_encoder, lr=lr, encoder_lr_scale=encoder_lr_scale,
            label_smoothing=label_smoothing, bn_eval=bn_eval, lp_steps=lp_steps, peft=peft)
        self.head = nn.Linear(self.embed_dim, num_classes)
        # set, never assume: an encoder handed over by another stage may arrive frozen or in eval mode
        self.encoder.requires_grad_(not freeze_encoder)
        if peft == "ssf":
            add_ssf(self.encoder)  # freezes everything but the scales and shifts
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self._lp_end: int | None = None  # the step where LP-FT's fine-tuning begins (set by configure_optimizers)
        self._probing = False  # the encoder is in eval mode for LP-FT's linear probe

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        if mode:
            self._hold_encoder_modes()
        return self

    def in_linear_probe(self) -> bool:
        """Whether the fit is in LP-FT's linear-probe phase (before step ``lp_steps``)."""
        trainer = self._trainer
        return (self._lp_end is not None and trainer is not None and trainer.training
                and trainer.global_step < self._lp_end)

    def _hold_encoder_modes(self) -> None:
        """A frozen encoder (or one being probed) stays in eval mode; with ``bn_eval`` or SSF its
        running-statistics layers do."""
        if self.settings.freeze_encoder or self.in_linear_probe():
            self.encoder.eval()
            self._probing = not self.settings.freeze_encoder
            return
        if self._probing:  # LP-FT's fine-tuning has begun (or resumed): back to train mode
            self.encoder.train()
            self._probing = False
        if self.settings.bn_eval or self.settings.peft is not None:
            for layer in self.encoder.modules():
                if isinstance(layer, (nn.modules.batchnorm._BatchNorm, RunningNorm)):
                    layer.eval()

    def forward(self, x: Tensor) -> Tensor:
        """Class logits of a raw input batch."""
        return self.head(self.encoder(x))

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """LP-FT: when fine-tuning begins, clear the head's optimizer state (a fresh optimizer, as in the paper)."""
        if self._lp_end is not None and self.trainer.global_step == self._lp_end:
            for optimizer in self.trainer.optimizers:
                for p in self.head.parameters():
                    optimizer.state.pop(p, None)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        self._hold_encoder_modes()  # Lightning may switch sub-modules to train mode directly
        frozen = self.settings.freeze_encoder or self.in_linear_probe()
        (z,) = self.views(batch, 1)
        with torch.set_grad_enabled(not frozen):
            emb = self.embed(z)
        logits = self.head(emb.float() if frozen else emb)
        loss = F.cross_entropy(logits.float(), batch["label"], ignore_index=-1,
                               label_smoothing=self.settings.label_smoothing)
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
        """The head at ``lr``; the encoder (unless frozen; only its SSF parameters with ``peft="ssf"``)
        at ``lr * encoder_lr_scale``."""
        hp = self.settings
        groups: list[dict[str, Any]] = [{"params": self.head.parameters()}]
        if hp.peft == "ssf":
            groups.append({"params": list(ssf_parameters(self.encoder)), "lr": hp.lr * hp.encoder_lr_scale})
        elif not hp.freeze_encoder:
            groups.append({"params": self.encoder.parameters(), "lr": hp.lr * hp.encoder_lr_scale})
        return groups

    def configure_optimizers(self) -> dict[str, Any]:
        """:meth:`Method.configure_optimizers`; with LP-FT the schedule restarts when fine-tuning begins.

        Raises:
            ValueError: ``lp_steps`` covers every optimizer step of the fit.
        """
        lp_steps = self.settings.lp_steps
        if not lp_steps:
            self._lp_end = None
            return super().configure_optimizers()
        settings = dict(self.optimizer_settings)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        lp_end = int(lp_steps) if isinstance(lp_steps, int) else max(1, round(lp_steps * total))
        if lp_end >= total:
            raise ValueError(f"lp_steps={lp_steps} leaves no fine-tuning: the fit has {total} optimizer steps "
                             f"(max_epochs / max_steps) and the linear probe takes {lp_end}")
        self._lp_end = lp_end
        warmup = settings.pop("warmup_fraction")
        optimizer = create_optimizer(settings.pop("name"), params=self.parameter_groups(), **settings)

        def factor(step: int) -> float:
            if step < lp_end:  # the probe's own warm-up + cosine ...
                return cosine_schedule(step, lp_end, 1.0, 0.0, warmup_steps=int(warmup * lp_end))
            ft = total - lp_end  # ... then the fine-tuning's, from the start
            return cosine_schedule(step - lp_end, ft, 1.0, 0.0, warmup_steps=int(warmup * ft))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
