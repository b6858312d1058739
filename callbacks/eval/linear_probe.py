"""An online linear probe on the encoder's detached embeddings, trained alongside the module."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.nn import functional as F

from fewlabel.callbacks.eval.base import EmbeddingEvaluator, _Loader, _LoaderArg
from fewlabel.plugins.arguments import check_int, is_count
from fewlabel.plugins.optim.optimizers import check_optimizer, create_optimizer

__all__ = ["LinearProbeEvaluator"]

# Validation embeddings are scored in blocks of this many rows.
_EVAL_ROWS = 4096


class LinearProbeEvaluator(EmbeddingEvaluator):
    """An online linear probe: ``nn.Linear(embed_dim, num_classes)`` trained on the encoder's
    detached embeddings of the labeled samples while the module trains; its validation accuracy is
    logged as ``eval/linear_probe_acc``.

    The online probe of SimCLR's and BYOL's codebases and lightly's ``OnlineLinearClassifier``
    (monitoring "A Simple Framework for Contrastive Learning of Visual Representations", Chen et al.,
    2020, arXiv 2002.05709): after every training batch (``on_train_batch_end``, after the module's
    optimizer step) the encoder embeds the batch's labeled rows (``batch[label_key] >= 0``) in eval
    mode, without gradients, in the trainer's precision; the float32 embeddings train the probe with
    the mean cross-entropy and one step of the probe's own optimizer (constant learning rate; it
    steps every batch, also under gradient accumulation). Gradients never reach the encoder, and
    the encoder's train/eval flags are restored after each forward. The probe is the callback's own
    module, kept in float32 on the module's device and initialised to zero (a convex problem needs
    no random start, and the global random generators are not touched).

    SSL batches without labels: pass ``labeled_dataloader`` and the probe trains on one batch of it
    per training batch instead (a fresh pass each epoch, cycled when it runs out).

    Evaluation: at the end of every ``every_n_epochs``-th training epoch (and with
    ``eval_on_fit_end`` when fitting ends) the validation set is embedded with
    :func:`fewlabel.plugins.gather.gather_embeddings` and scored by the probe. The metric can be
    monitored like ``KNNEvaluator``'s (see there).

    Multi-process: each rank computes the summed loss gradient of its labeled rows; the gradients and
    the row count are summed over ranks in one ``trainer.strategy.reduce`` and divided by the total
    count, so every rank takes the same step (the gradient of the mean loss over every rank's rows,
    as one process would on the union) and the probe stays identical on every rank. A step without
    any labeled row on any rank is skipped. With ``labeled_dataloader``, give each rank its own
    shard (a ``DistributedSampler``) or every rank draws the same rows.

    Resuming: the probe's weights and its optimizer's state are in :meth:`state_dict`, so a run
    resumed from a checkpoint continues the same probe (with
    :class:`fewlabel.callbacks.RNGStateKeeper` the resumed run repeats the uninterrupted one).

    Contract with the LightningModule: ``.encoder`` with ``embed_dim`` (checked in ``setup``).

    Args:
        num_classes: probe outputs; ``None`` takes ``trainer.datamodule.num_classes``.
        optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"`` (``fewlabel.plugins.optim.list_optimizers()``).
        lr: the probe's learning rate.
        weight_decay: the probe's weight decay.
        momentum: SGD momentum (ignored by Adam/AdamW).
        labeled_dataloader: ``None`` trains on the labeled rows of each training batch; a DataLoader
            or zero-argument callable trains on its batches instead.
        val_dataloader: the evaluation set: a DataLoader or zero-argument callable; ``None`` uses
            ``trainer.datamodule.val_dataloader()``. Rows with label ``-1`` are dropped.
        every_n_epochs: evaluate after every ``n``-th training epoch.
        eval_on_fit_end: evaluate once more when fitting ends (logged to ``trainer.loggers``).
        label_key: batch key of the labels (``-1`` = unlabeled).
        metric_name: the logged name.

    Example:
        >>> cb = LinearProbeEvaluator(num_classes=10, lr=1e-3)
        >>> cb.probe is None  # built in setup(), when embed_dim is known
        True
    """

    def __init__(
        self,
        *,
        num_classes: int | None = None,
        optimizer: str = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        labeled_dataloader: _LoaderArg = None,
        val_dataloader: _LoaderArg = None,
        every_n_epochs: int = 1,
        eval_on_fit_end: bool = False,
        label_key: str = "label",
        metric_name: str = "eval/linear_probe_acc",
    ) -> None:
        super().__init__(metric_name=metric_name, eval_dataloader=val_dataloader, eval_dataloader_arg="val_dataloader",
                         every_n_epochs=every_n_epochs, eval_on_fit_end=eval_on_fit_end, label_key=label_key)
        check_int("num_classes", num_classes, 2, "None (use trainer.datamodule.num_classes)", owner=self._name)
        for arg, value in (("lr", lr), ("weight_decay", weight_decay), ("momentum", momentum)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{self._name}: {arg} must be a float, got {value!r}")
        if not 0 <= momentum < 1:
            raise ValueError(f"{self._name}: momentum must be in [0, 1), got {momentum!r}")
        try:
            check_optimizer(optimizer, lr, weight_decay)
        except ValueError as err:
            raise ValueError(f"{self._name}: {err}") from None
        self._check_loader_arg("labeled_dataloader", labeled_dataloader, "the training batches' labeled rows")
        self.num_classes = num_classes
        self.optimizer_name = optimizer
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.momentum = float(momentum)
        self.labeled_dataloader = labeled_dataloader
        self.probe: nn.Linear | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.steps = 0
        self._pending: dict[str, Any] | None = None
        self._labeled_loader: _Loader | None = None
        self._labeled_iter: Iterator[dict[str, Any]] | None = None

    # ------------------------------------------------------------------ building
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        embed_dim = self.check_contract(pl_module)
        shape = (self._num_classes(trainer), embed_dim)
        if self.probe is None or tuple(self.probe.weight.shape) != shape:
            self.probe = nn.Linear(shape[1], shape[0])
            nn.init.zeros_(self.probe.weight)
            nn.init.zeros_(self.probe.bias)
            self.optimizer = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        assert self.probe is not None, "setup('fit') builds the probe"
        self.probe.to(device=pl_module.device, dtype=torch.float32)
        if self.optimizer is None:
            self.optimizer = create_optimizer(self.optimizer_name, params=self.probe.parameters(), lr=self.lr,
                                              weight_decay=self.weight_decay, momentum=self.momentum)
        if self._pending is not None:  # restored from a checkpoint: load onto the device, state cast by torch
            self.probe.load_state_dict(self._pending["probe"])
            self.optimizer.load_state_dict(self._pending["optimizer"])
            self._pending = None
        given = self.labeled_dataloader
        if given is not None and not hasattr(given, "__iter__"):
            given = given()  # type: ignore[operator]
        self._labeled_loader = given

    def _num_classes(self, trainer: L.Trainer) -> int:
        if self.num_classes is not None:
            return self.num_classes
        k = getattr(trainer.datamodule, "num_classes", None)
        if not is_count(k, 2):
            raise ValueError(
                f"{self._name}(num_classes=None) takes the number of classes from trainer.datamodule.num_classes, "
                f"but the trainer has {'no datamodule' if trainer.datamodule is None else f'num_classes={k!r}'}; "
                "pass num_classes=<int>"
            )
        return k

    # ------------------------------------------------------------------ training
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._labeled_iter = None  # a fresh pass over labeled_dataloader every epoch

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._labeled_loader is not None:
            batch = move_data_to_device(self._next_labeled_batch(), pl_module.device)
        self.train_step(trainer, pl_module, batch)

    def _next_labeled_batch(self) -> dict[str, Any]:
        assert self._labeled_loader is not None
        for _ in range(2):
            if self._labeled_iter is None:
                self._labeled_iter = iter(self._labeled_loader)
            try:
                return next(self._labeled_iter)
            except StopIteration:
                self._labeled_iter = None
        raise ValueError(f"{self._name}: labeled_dataloader yielded no batches")

    def train_step(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: dict[str, Any]) -> None:
        """One optimizer step of the probe on the labeled rows of ``batch``; every rank must call it."""
        assert self.probe is not None and self.optimizer is not None
        device = self.probe.weight.device
        params = list(self.probe.parameters())
        if "input" not in batch:
            raise KeyError(
                f"{self._name} trains on batch['input'], but the batch has only {sorted(batch)}; "
                "pass labeled_dataloader=<a loader of {'input', 'label', 'index'} batches>"
            )
        raw = batch.get(self.label_key)
        labels = (torch.full((len(batch["input"]),), -1, dtype=torch.long, device=device) if raw is None
                  else torch.as_tensor(raw, device=device).reshape(-1).long())
        keep = labels >= 0
        count = int(keep.sum())
        flat = torch.zeros(sum(p.numel() for p in params) + 1, device=device, dtype=torch.float32)
        if count:
            targets = labels[keep]
            if int(targets.max()) >= self.probe.out_features:
                raise ValueError(f"{self._name}: label {int(targets.max())} in batch[{self.label_key!r}] is out of "
                                 f"range for num_classes={self.probe.out_features}")
            emb = _embed_batch(trainer, pl_module.encoder, batch["input"][keep.to(batch["input"].device)])
            if emb.shape != (count, self.probe.in_features):
                raise ValueError(f"{self._name}: the encoder returned {tuple(emb.shape)} for {count} rows, but its "
                                 f"embed_dim is {self.probe.in_features}")
            with torch.enable_grad():
                loss = F.cross_entropy(self.probe(emb), targets, reduction="sum")
                grads = torch.autograd.grad(loss, params)
            flat[:-1] = torch.cat([g.reshape(-1) for g in grads])
            flat[-1] = count
        flat = trainer.strategy.reduce(flat, reduce_op="sum")  # identity in a single process
        total = float(flat[-1])
        if total == 0:
            return
        offset = 0
        for p in params:
            p.grad = (flat[offset : offset + p.numel()] / total).view_as(p).clone()
            offset += p.numel()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> float:
        assert self.probe is not None
        if self.steps == 0:
            rank_zero_warn(f"{self._name}: the probe has not trained: no training batch had a "
                           f"{self.label_key!r} >= 0 (an unlabeled loader hides them), so its accuracy is a random "
                           "head's; train on labeled batches, or use KNNEvaluator / FewShotEvaluator")
        emb = self.gather(trainer, pl_module, self.resolve_eval_dataloader(trainer), self._eval_dataloader_arg)
        device = self.probe.weight.device
        correct = 0
        with torch.no_grad():
            for a in range(0, len(emb), _EVAL_ROWS):
                x = torch.from_numpy(np.asarray(emb.embeddings[a : a + _EVAL_ROWS], dtype=np.float32)).to(device)
                pred = self.probe(x).argmax(dim=1).cpu().numpy()
                correct += int(np.count_nonzero(pred == emb.labels[a : a + _EVAL_ROWS]))
        return correct / len(emb)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["steps"] = self.steps
        if self.probe is not None and self.optimizer is not None:
            state["probe"] = {k: v.detach().clone() for k, v in self.probe.state_dict().items()}
            state["optimizer"] = copy.deepcopy(self.optimizer.state_dict())
        elif self._pending is not None:
            state.update({k: self._pending[k] for k in ("probe", "optimizer")})
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.steps = int(state_dict.get("steps", 0))
        if "probe" in state_dict and "optimizer" in state_dict:  # applied in on_fit_start, on the device
            self._pending = {"probe": state_dict["probe"], "optimizer": state_dict["optimizer"]}


def _embed_batch(trainer: L.Trainer, encoder: nn.Module, inputs: Tensor) -> Tensor:
    """The encoder's float32 embedding of ``inputs``: eval mode, no gradients, the trainer's precision.

    Every submodule's train/eval flag is restored afterwards, also on error, so BatchNorm statistics
    and dropout of the module being trained are untouched.
    """
    modes = [(module, module.training) for module in encoder.modules()]
    encoder.eval()
    precision = trainer.precision_plugin
    try:
        with torch.no_grad(), precision.forward_context():
            out = encoder(precision.convert_input(inputs))
    finally:
        for module, training in modes:
            module.training = training
    return out.detach().float()
