"""Weighted kNN accuracy of the encoder during training, logged as a monitorable metric."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from fewlabel.plugins.distributed import shard_dataloader
from fewlabel.plugins.encoders.base import check_encoder
from fewlabel.plugins.evaluation.knn import check_knn_args, knn_accuracy
from fewlabel.plugins.gather import Embeddings, gather_embeddings

__all__ = ["KNNEvaluator"]

_Loader = Iterable[dict[str, Any]]
_LoaderArg = _Loader | Callable[[], _Loader] | None


class _EvalLoader:
    """Iterate ``loader`` with ``batch["input"]`` converted by the trainer's precision plugin.

    Under a true-half precision (``"bf16-true"``) the encoder's weights are half and the input must be
    too; the mixed precisions leave the input alone and autocast instead. ``dataset`` is the wrapped
    loader's, so :func:`gather_embeddings` sizes its buffer as it would for the loader itself.
    """

    def __init__(self, loader: _Loader, precision: Any) -> None:
        self.loader = loader
        self.precision = precision
        self.dataset = getattr(loader, "dataset", None)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.loader:
            yield {**batch, "input": self.precision.convert_input(batch["input"])}


class _EmbeddingEvaluator(L.Callback):
    """The skeleton of an evaluator of ``pl_module.encoder``: when, which loaders, gather, log, state.

    Subclasses implement :meth:`evaluate`, returning the metric. It runs at the end of every
    ``every_n_epochs``-th training epoch (:meth:`should_evaluate`) and is logged with
    ``pl_module.log(metric_name, value, on_epoch=True, sync_dist=False)`` on every rank: every rank
    computes the same value from the same all-gathered embeddings, so no collective is needed and
    ``ModelCheckpoint`` / ``EarlyStopping`` find the metric on every rank (Lightning's generic
    advice to log epoch-level values with ``sync_dist=True`` does not apply: the value is already
    global, and ``rank_zero_only=True`` would hide it from the other ranks' callbacks, which decide
    together). With ``eval_on_fit_end``
    it also runs once when fitting ends (unless it already ran at that step), logged to
    ``trainer.loggers`` (Lightning forbids ``self.log`` in ``on_fit_end``).
    """

    def __init__(
        self,
        *,
        metric_name: str,
        eval_dataloader: _LoaderArg,
        eval_dataloader_arg: str,
        every_n_epochs: int,
        eval_on_fit_end: bool,
        label_key: str,
    ) -> None:
        super().__init__()
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"{self._name}: every_n_epochs must be an int >= 1, got {every_n_epochs!r}")
        if not isinstance(eval_on_fit_end, bool):
            raise ValueError(f"{self._name}: eval_on_fit_end must be True or False, got {eval_on_fit_end!r}")
        for arg, value in (("metric_name", metric_name), ("label_key", label_key)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{self._name}: {arg} must be a non-empty string, got {value!r}")
        self._check_loader_arg(eval_dataloader_arg, eval_dataloader, "trainer.datamodule.val_dataloader()")
        self.metric_name = metric_name
        self.eval_dataloader = eval_dataloader
        self._eval_dataloader_arg = eval_dataloader_arg
        self.every_n_epochs = every_n_epochs
        self.eval_on_fit_end = eval_on_fit_end
        self.label_key = label_key
        self.metrics: dict[str, float] = {}
        self.last_evaluated_step: int | None = None

    @property
    def _name(self) -> str:
        return type(self).__name__

    @property
    def state_key(self) -> str:
        return self._generate_state_key(metric_name=self.metric_name)

    # ------------------------------------------------------------------ extension points
    def should_evaluate(self, epoch: int) -> bool:
        """Whether to evaluate at the end of training epoch ``epoch`` (0-based)."""
        return (epoch + 1) % self.every_n_epochs == 0

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> float:
        """The metric for the encoder as it is now; every rank must call it (it gathers)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check_contract(pl_module)
        self.resolve_eval_dataloader(trainer)  # fail before training on a missing or misconfigured loader

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.should_evaluate(trainer.current_epoch):
            value = self._run(trainer, pl_module)
            pl_module.log(self.metric_name, value, on_step=False, on_epoch=True, sync_dist=False)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.eval_on_fit_end and self.last_evaluated_step != trainer.global_step:
            value = self._run(trainer, pl_module)
            for logger in trainer.loggers:
                logger.log_metrics({self.metric_name: value}, step=trainer.global_step)

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> float:
        value = float(self.evaluate(trainer, pl_module))
        self.metrics = {self.metric_name: value}
        self.last_evaluated_step = trainer.global_step
        rank_zero_info(f"{self._name}: epoch {trainer.current_epoch}, step {trainer.global_step}: "
                       f"{self.metric_name}={value:.4f}")
        return value

    # ------------------------------------------------------------------ contract, loaders, gather
    def check_contract(self, pl_module: L.LightningModule) -> int:
        """Check that ``pl_module.encoder`` honours the encoder contract; return its ``embed_dim``.

        Raises:
            AttributeError: the module has no ``encoder`` ``nn.Module``.
            TypeError: the encoder has no ``embed_dim``.
        """
        encoder = getattr(pl_module, "encoder", None)
        if not isinstance(encoder, nn.Module):
            raise AttributeError(
                f"{self._name} needs {type(pl_module).__name__} to have an `encoder` nn.Module mapping "
                "batch['input'] to a (B, D) embedding, with `embed_dim`"
            )
        return check_encoder(encoder)

    def _check_loader_arg(self, arg: str, value: Any, default: str) -> None:
        if value is not None and not (callable(value) or hasattr(value, "__iter__")):
            raise ValueError(
                f"{self._name}: {arg} must be a DataLoader, a zero-argument callable returning one, or None "
                f"(use {default}); got {type(value).__name__}"
            )

    def resolve_eval_dataloader(self, trainer: L.Trainer) -> _Loader:
        """The evaluation loader: the one given, or ``trainer.datamodule.val_dataloader()``."""
        return self._resolve(trainer, self.eval_dataloader, self._eval_dataloader_arg, "val_dataloader", {})

    def _resolve(self, trainer: L.Trainer, value: _LoaderArg, arg: str, method: str, kwargs: dict[str, Any]) -> _Loader:
        if value is not None:
            return value if hasattr(value, "__iter__") else value()  # type: ignore[operator,return-value]
        call = f"trainer.datamodule.{method}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
        fix = f"pass {self._name}({arg}=<DataLoader or zero-argument callable>)"
        make = getattr(trainer.datamodule, method, None)
        if not callable(make):
            raise ValueError(f"{self._name}({arg}=None) uses {call}, but the trainer has "
                             f"{'no datamodule' if trainer.datamodule is None else 'a datamodule without it'}; {fix}")
        try:
            params = inspect.signature(make).parameters
        except (TypeError, ValueError):  # a builtin or C callable: trust it
            params = None
        if params is not None and not all(k in params for k in kwargs):
            raise ValueError(
                f"{self._name}({arg}=None) uses {call} (a sequential, unaugmented pass), but "
                f"{type(trainer.datamodule).__name__}.{method}() takes no {sorted(kwargs)} argument; {fix}"
            )
        return make(**kwargs)

    def gather(self, trainer: L.Trainer, pl_module: L.LightningModule, loader: _Loader, arg: str) -> Embeddings:
        """Embed ``loader`` with ``pl_module.encoder`` on every rank; keep the rows with a label ``>= 0``.

        The loader is sharded across ranks (:func:`shard_dataloader`), run in the trainer's precision,
        and all-gathered by :func:`gather_embeddings`, which leaves the encoder's train/eval flags as
        they were.

        Raises:
            ValueError: the loader is empty, or none of its rows has a label ``>= 0``.
        """
        dataset = getattr(loader, "dataset", None)
        if dataset is not None and hasattr(dataset, "__len__") and len(dataset) == 0:
            raise ValueError(f"{self._name}: the {arg} loader has no samples; pass {arg}=<a non-empty loader>")
        loader = shard_dataloader(loader, trainer.world_size, trainer.global_rank)
        precision = trainer.precision_plugin
        with precision.forward_context():
            emb = gather_embeddings(pl_module.encoder, _EvalLoader(loader, precision), device=pl_module.device,
                                    label_key=self.label_key, strategy=trainer.strategy)
        keep = emb.labels >= 0
        if not keep.any():
            raise ValueError(
                f"{self._name}: no sample of the {arg} loader has a label (batch[{self.label_key!r}] >= 0)"
            )
        if keep.all():
            return emb
        return Embeddings(embeddings=emb.embeddings[keep], labels=emb.labels[keep], indices=emb.indices[keep])

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"metrics": dict(self.metrics), "last_evaluated_step": self.last_evaluated_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.metrics = dict(state_dict.get("metrics", {}))
        self.last_evaluated_step = state_dict.get("last_evaluated_step")


class KNNEvaluator(_EmbeddingEvaluator):
    """Weighted kNN accuracy of ``pl_module.encoder``'s embeddings, logged as ``eval/knn_acc``.

    The protocol of InstDisc (Wu et al., 2018, arXiv 1805.01978) and DINO (Caron et al., 2021,
    arXiv 2104.14294), :func:`fewlabel.plugins.evaluation.knn_accuracy`: the bank is the labeled
    training set, the queries are the validation set, cosine similarity, ``k = 20`` neighbours
    weighted by ``exp(s / T)`` with ``T = 0.07``. With few labels the bank is the labeled draw, so
    the metric measures what a classifier could read off the embedding with the labels the run
    really has; the validation split, which every label draw shares, is the query set.

    Contract with the LightningModule: ``.encoder``, an ``nn.Module`` mapping ``batch["input"]`` to a
    ``(B, D)`` embedding, with ``embed_dim`` (checked in ``on_fit_start``). Nothing else is used, so
    a user's own LightningModule works. The encoder runs in eval mode without gradients while it
    embeds (:func:`fewlabel.plugins.gather.gather_embeddings`); its train/eval flags are restored.

    When: at the end of every ``every_n_epochs``-th training epoch, and with ``eval_on_fit_end`` once
    more when fitting ends. ``ModelCheckpoint(monitor="eval/knn_acc", mode="max")`` and
    ``EarlyStopping`` can monitor the metric when they act at the end of the training epoch, which
    Lightning's ``ModelCheckpoint`` does when validation runs once per epoch or not at all (else pass
    ``save_on_train_epoch_end=True``; ``EarlyStopping(check_on_train_epoch_end=True)``). On epochs
    without an evaluation the metric is not logged.

    Multi-process: each rank embeds its shard of both loaders, the embeddings are all-gathered, and
    every rank computes the same accuracy from the same arrays.

    Args:
        k: neighbours per query; when the bank has fewer labeled rows than ``k`` (a tiny label draw),
            all of them are used and a warning says so.
        temperature: ``T`` of the vote weights ``exp(s / T)``.
        bank: the labeled bank: a DataLoader, or a zero-argument callable returning one; ``None`` uses
            ``trainer.datamodule.labeled_dataloader(train=False)`` (the labeled draw, sequential and
            unaugmented). Rows with label ``-1`` are dropped.
        queries: the evaluation set, likewise; ``None`` uses ``trainer.datamodule.val_dataloader()``.
            Rows with label ``-1`` are dropped.
        every_n_epochs: evaluate after every ``n``-th training epoch.
        eval_on_fit_end: evaluate once more when fitting ends (logged to ``trainer.loggers``).
        label_key: batch key of the labels of both loaders.
        metric_name: the logged name.

    Both loaders should be sequential and unaugmented: the embeddings are matched by ``"index"``, so
    order does not matter, but an augmentation would make the metric noisy.

    Example:
        >>> cb = KNNEvaluator(k=10, every_n_epochs=5)
        >>> cb.should_evaluate(4), cb.should_evaluate(5)
        (True, False)
    """

    def __init__(
        self,
        *,
        k: int = 20,
        temperature: float = 0.07,
        bank: _LoaderArg = None,
        queries: _LoaderArg = None,
        every_n_epochs: int = 1,
        eval_on_fit_end: bool = False,
        label_key: str = "label",
        metric_name: str = "eval/knn_acc",
    ) -> None:
        try:
            check_knn_args(k, temperature)
        except ValueError as err:
            raise ValueError(f"{self._name}: {err}") from None
        super().__init__(metric_name=metric_name, eval_dataloader=queries, eval_dataloader_arg="queries",
                         every_n_epochs=every_n_epochs, eval_on_fit_end=eval_on_fit_end, label_key=label_key)
        self._check_loader_arg("bank", bank, "trainer.datamodule.labeled_dataloader(train=False)")
        self.k = k
        self.temperature = float(temperature)
        self.bank = bank

    @property
    def state_key(self) -> str:
        return self._generate_state_key(metric_name=self.metric_name, k=self.k, temperature=self.temperature)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        self.resolve_bank(trainer)

    def resolve_bank(self, trainer: L.Trainer) -> _Loader:
        """The bank loader: the one given, or ``trainer.datamodule.labeled_dataloader(train=False)``."""
        return self._resolve(trainer, self.bank, "bank", "labeled_dataloader", {"train": False})

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> float:
        bank = self.gather(trainer, pl_module, self.resolve_bank(trainer), "bank")
        queries = self.gather(trainer, pl_module, self.resolve_eval_dataloader(trainer), "queries")
        k = self.k
        if k > len(bank):
            rank_zero_warn(
                f"{self._name}: k={k} but the bank has only {len(bank)} labeled samples; using k={len(bank)}"
            )
            k = len(bank)
        return knn_accuracy(bank.embeddings, bank.labels, queries.embeddings, queries.labels, k, self.temperature)
