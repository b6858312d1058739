"""Knowledge distillation of a fine-tuned teacher into a fresh student (SimCLRv2's third step).

Chen, Kornblith, Swersky, Norouzi & Hinton, "Big Self-Supervised Models are Strong Semi-Supervised
Learners", NeurIPS 2020, arXiv 2006.10029, section 2 ("Self-training / knowledge distillation via
unlabeled examples").
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewlabel.plugins.encoders.base import Encoder, embed, load_checkpoint_weights
from fewlabel.plugins.losses.distillation import DistillationLoss
from fewlabel.plugins.methods.classifier import Classifier

__all__ = ["KnowledgeDistillation"]

_BATCH_KEYS = ("input", "label", "index")


def _has_frontend(encoder: nn.Module) -> bool:
    """Whether ``encoder.preprocess`` is more than the identity (a log-mel front end, say)."""
    preprocess = getattr(type(encoder), "preprocess", None)
    return callable(preprocess) and preprocess is not Encoder.preprocess


class KnowledgeDistillation(Classifier):
    """A student (encoder + linear head) learns a frozen teacher's softened predictions.

    SimCLRv2's distillation step: the teacher is the fine-tuned network (input -> class logits); the
    student minimises the cross-entropy from ``softmax(teacher / T)`` to ``softmax(student / T)``
    (:class:`~fewlabel.plugins.losses.DistillationLoss`, eq. 2) on unlabeled examples, no labels
    needed. The paper distils on the unlabeled examples alone; ``label_weight > 0`` adds
    ``label_weight * CE(student, label)`` over the batch's labeled samples (``label >= 0``), the
    weighted combination of its eq. 3 (there ``(1 - a) * CE + a * distillation``; here the
    distillation keeps weight 1, so ``label_weight = (1 - a) / a``).

    **The teacher** is never changed: the module keeps a frozen copy (``requires_grad=False``,
    always in eval mode, run under ``no_grad``); the module passed in keeps its weights and flags. It
    is a submodule, so it follows the student to the device and into checkpoints, but it is left out
    of the optimizer and of ``hparams``. It sees the student's augmented view, as in the paper (one
    augmented image, two networks): a module with ``.encoder`` and ``.head`` (a fewlabel
    :class:`Classifier`) gets ``head(embed(encoder, view))``, the view being already preprocessed by
    the student encoder's front end (for audio the two front ends must agree); any other module gets
    the view as its input, which is right when the student's front end is the identity (images).

    Everything else is :class:`Classifier`'s: ``forward`` gives the student's logits, ``val/acc``
    and ``test/acc`` are the student's accuracy, ``.encoder`` is the student's encoder. Logged in
    training: ``train/loss``, ``train/distill``, ``train/teacher_agreement`` (the share of the batch
    where the student's top class is the teacher's) and, with ``label_weight``, ``train/ce``.

    Several dataloaders in one fit (``trainer.fit(module, [pool_loader, labeled_loader])``) give a
    list of batches per step; they are concatenated into one batch (keys ``input``, ``label``,
    ``index``).

    Args:
        teacher: The fine-tuned network, ``input -> (B, num_classes)`` logits (copied, then frozen).
        encoder: The student's encoder: a fewlabel encoder or a registry spec (a fresh one, usually
            smaller than the teacher's).
        num_classes: Number of classes (the teacher's outputs).
        augment: Batch-wise augmentation after the student encoder's front end: the view both networks see.
        teacher_checkpoint: A checkpoint of the teacher (its whole ``state_dict``, e.g. the Lightning checkpoint
            of a fine-tuned :class:`Classifier`), loaded exactly into the teacher before it is frozen, so a
            config can name the trained teacher (``teacher: {class_path: fewlabel.plugins.Classifier, ...}``).
            ``None``: the teacher's weights as given.
        temperature: Softmax temperature ``T`` of the distillation loss (1.0 in the paper).
        label_weight: Weight of the cross-entropy on labeled samples (0: distillation only, the paper's setting).
        optimizer, lr, weight_decay, warmup_fraction: Optimiser (momentum 0.9 for SGD) and warm-up +
            cosine schedule; the paper distils with momentum SGD / LARS and weight decay 1e-4.

    Raises:
        ValueError: ``temperature <= 0``, ``label_weight < 0``, ``num_classes < 2``, a teacher
            without ``.encoder`` / ``.head`` for a student whose encoder has a front end, or a
            ``teacher_checkpoint`` whose weights do not fit the teacher.
        FileNotFoundError: ``teacher_checkpoint`` does not exist.

    Example:
        >>> teacher = Classifier({"name": "small_cnn", "width": 8}, num_classes=3)
        >>> student = KnowledgeDistillation(teacher, {"name": "small_cnn", "width": 4}, num_classes=3)
        >>> student.teacher is teacher, student.teacher.training, "teacher" in student.hparams
        (False, False, False)
        >>> student.student_parameters() < sum(p.numel() for p in teacher.parameters())
        True
    """

    module_arguments = ("encoder", "augment", "teacher")

    def __init__(
        self,
        teacher: nn.Module,
        encoder: nn.Module | Mapping[str, Any],
        num_classes: int,
        augment: nn.Module | None = None,
        teacher_checkpoint: str | None = None,
        temperature: float = 1.0,
        label_weight: float = 0.0,
        optimizer: str = "sgd",
        lr: float = 0.05,
        weight_decay: float = 1e-4,
        warmup_fraction: float = 0.0,
    ) -> None:
        if not isinstance(teacher, nn.Module):
            raise TypeError(f"teacher must be an nn.Module mapping an input batch to logits, "
                            f"got {type(teacher).__name__}")
        if isinstance(label_weight, bool) or not isinstance(label_weight, (int, float)) or label_weight < 0:
            raise ValueError(f"label_weight must be a number >= 0, got {label_weight!r}")
        super().__init__(encoder, num_classes, augment=augment, optimizer=optimizer, lr=lr,
                         weight_decay=weight_decay, warmup_fraction=warmup_fraction)
        self.loss = DistillationLoss(temperature)
        self.teacher = copy.deepcopy(teacher).requires_grad_(False).eval()
        if teacher_checkpoint is not None:
            load_checkpoint_weights(self.teacher, teacher_checkpoint, "", f"the teacher {type(teacher).__name__}")
        self._teacher_runs_view = hasattr(self.teacher, "encoder") and hasattr(self.teacher, "head")
        if not self._teacher_runs_view and _has_frontend(self.encoder):
            name = type(self.encoder).__name__
            raise ValueError(f"the student's {name} has a front end ({name}.preprocess), so its views are not "
                             "inputs a plain teacher takes: pass a teacher with `.encoder` and `.head` (a fewlabel "
                             "Classifier), which runs on the preprocessed view")

    def train(self, mode: bool = True) -> KnowledgeDistillation:
        """The student enters ``mode``; the teacher stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    @torch.no_grad()
    def teacher_logits(self, view: Tensor) -> Tensor:
        """The frozen teacher's logits of a preprocessed, augmented view (eval mode, no gradient)."""
        self.teacher.eval()  # Lightning may set sub-modules' modes directly
        if self._teacher_runs_view:
            return self.teacher.head(embed(self.teacher.encoder, view))
        return self.teacher(view)

    def training_step(self, batch: dict[str, Any] | Sequence[dict[str, Any]], batch_idx: int) -> Tensor:
        if not isinstance(batch, Mapping):  # one batch per dataloader
            batch = {key: torch.cat([part[key] for part in batch]) for key in _BATCH_KEYS}
        self._hold_encoder_modes()
        (view,) = self.views(batch, 1)
        teacher = self.teacher_logits(view)
        logits = self.head(self.embed(view))
        loss = distill = self.loss(logits, teacher)
        if self.hparams.label_weight:
            labels = batch["label"]
            ce = F.cross_entropy(logits.float(), labels, ignore_index=-1, reduction="sum")
            ce = ce / (labels >= 0).sum().clamp(min=1)  # no labeled sample in the batch: 0, not NaN
            loss = distill + self.hparams.label_weight * ce
            self.log_train("train/ce", ce)
        self.log_train("train/loss", loss, prog_bar=True)
        self.log_train("train/distill", distill)
        self.log_train("train/teacher_agreement", (logits.argmax(-1) == teacher.argmax(-1)).float().mean())
        return loss

    def student_parameters(self) -> int:
        """Number of the student's parameters (encoder + head; the frozen teacher not counted)."""
        return sum(p.numel() for module in (self.encoder, self.head) for p in module.parameters())
