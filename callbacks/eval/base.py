"""The skeleton every evaluator of ``pl_module.encoder`` builds on: when, which loaders, gather, log, state."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from fewlabel.plugins.arguments import check_int
from fewlabel.plugins.distributed import shard_dataloader
from fewlabel.plugins.encoders.base import check_encoder
from fewlabel.plugins.gather import Embeddings, gather_embeddings

__all__ = ["EmbeddingEvaluator"]

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


class EmbeddingEvaluator(L.Callback):
    """The skeleton of an evaluator of ``pl_module.encoder``: when, which loaders, gather, log, state.

    Subclasses implement :meth:`evaluate`, returning the metric (or ``None`` for an evaluator whose
    output is an artefact, such as :class:`~fewlabel.callbacks.EmbeddingProjector`'s image: nothing is
    logged then). It runs at the end of every ``every_n_epochs``-th training epoch
    (:meth:`should_evaluate`) and is logged with
    ``pl_module.log(metric_name, value, on_epoch=True, sync_dist=False)`` on every rank: every rank
    computes the same value from the same all-gathered embeddings, so no collective is needed and
    ``ModelCheckpoint`` / ``EarlyStopping`` find the metric on every rank (Lightning's generic
    advice to log epoch-level values with ``sync_dist=True`` does not apply: the value is already
    global, and ``rank_zero_only=True`` would hide it from the other ranks' callbacks, which decide
    together). With ``eval_on_fit_end`` it also runs once when fitting ends (unless it already ran at
    that step), logged to ``trainer.loggers`` (Lightning forbids ``self.log`` in ``on_fit_end``).

    The evaluation loader is the one given (a DataLoader, or a zero-argument callable returning one)
    or, with ``None``, ``trainer.datamodule.<eval_dataloader_method>(**eval_dataloader_kwargs)``;
    it is resolved in ``on_fit_start``, so a missing or misconfigured loader fails before training.
    :meth:`gather` embeds a loader on every rank and all-gathers it.

    Contract with the LightningModule: ``.encoder``, an ``nn.Module`` mapping ``batch["input"]`` to a
    ``(B, D)`` embedding, with ``embed_dim`` (checked in ``on_fit_start`` by :meth:`check_contract`).

    Args:
        metric_name: the logged name; also keys the callback's state.
        eval_dataloader: the evaluation loader, a zero-argument callable returning one, or ``None``.
        eval_dataloader_arg: how the subclass's constructor calls that argument, for error messages.
        every_n_epochs: evaluate after every ``n``-th training epoch; ``None`` = never during
            training (then ``eval_on_fit_end`` must be ``True``).
        eval_on_fit_end: evaluate once more when fitting ends (logged to ``trainer.loggers``).
        label_key: batch key of the labels (``-1`` = unlabeled).
        eval_dataloader_method: the datamodule method that makes the default loader.
        eval_dataloader_kwargs: its keyword arguments (e.g. ``{"train": False}``).

    Raises:
        ValueError: a bad schedule, name or loader argument, naming the valid values.

    Example:
        >>> from fewlabel.callbacks import KNNEvaluator
        >>> issubclass(KNNEvaluator, EmbeddingEvaluator)
        True
    """

    def __init__(
        self,
        *,
        metric_name: str,
        eval_dataloader: _LoaderArg,
        eval_dataloader_arg: str,
        every_n_epochs: int | None,
        eval_on_fit_end: bool,
        label_key: str,
        eval_dataloader_method: str = "val_dataloader",
        eval_dataloader_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        check_int("every_n_epochs", every_n_epochs, 1, "None (only when fitting ends, with eval_on_fit_end=True)",
                  owner=self._name)
        if not isinstance(eval_on_fit_end, bool):
            raise ValueError(f"{self._name}: eval_on_fit_end must be True or False, got {eval_on_fit_end!r}")
        if every_n_epochs is None and not eval_on_fit_end:
            raise ValueError(f"{self._name}: every_n_epochs=None and eval_on_fit_end=False would never evaluate; "
                             "pass every_n_epochs=<int> or eval_on_fit_end=True")
        for arg, value in (("metric_name", metric_name), ("label_key", label_key)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{self._name}: {arg} must be a non-empty string, got {value!r}")
        self._default_loader = (eval_dataloader_method, dict(eval_dataloader_kwargs or {}))
        self._check_loader_arg(eval_dataloader_arg, eval_dataloader, self._default_call(*self._default_loader))
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
        return self.every_n_epochs is not None and (epoch + 1) % self.every_n_epochs == 0

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> float | None:
        """The metric for the encoder as it is now (``None``: nothing to log); every rank must call it (it gathers)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check_contract(pl_module)
        self.resolve_eval_dataloader(trainer)  # fail before training on a missing or misconfigured loader

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.should_evaluate(trainer.current_epoch):
            value = self._run(trainer, pl_module)
            if value is not None:
                pl_module.log(self.metric_name, value, on_step=False, on_epoch=True, sync_dist=False)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.eval_on_fit_end and self.last_evaluated_step != trainer.global_step:
            value = self._run(trainer, pl_module)
            if value is not None:
                for logger in trainer.loggers:
                    logger.log_metrics({self.metric_name: value}, step=trainer.global_step)

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> float | None:
        result = self.evaluate(trainer, pl_module)
        self.last_evaluated_step = trainer.global_step
        if result is None:
            return None
        value = float(result)
        self.metrics = {self.metric_name: value}
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

    @staticmethod
    def _default_call(method: str, kwargs: Mapping[str, Any]) -> str:
        return f"trainer.datamodule.{method}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"

    def _check_loader_arg(self, arg: str, value: Any, default: str) -> None:
        if value is not None and not (callable(value) or hasattr(value, "__iter__")):
            raise ValueError(
                f"{self._name}: {arg} must be a DataLoader, a zero-argument callable returning one, or None "
                f"(use {default}); got {type(value).__name__}"
            )

    def resolve_eval_dataloader(self, trainer: L.Trainer) -> _Loader:
        """The evaluation loader: the one given, or the datamodule's default (``val_dataloader()`` unless set)."""
        method, kwargs = self._default_loader
        return self._resolve(trainer, self.eval_dataloader, self._eval_dataloader_arg, method, kwargs)

    def _resolve(self, trainer: L.Trainer, value: _LoaderArg, arg: str, method: str, kwargs: dict[str, Any]) -> _Loader:
        if value is not None:
            return value if hasattr(value, "__iter__") else value()  # type: ignore[operator,return-value]
        call = self._default_call(method, kwargs)
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

    def gather(self, trainer: L.Trainer, pl_module: L.LightningModule, loader: _Loader, arg: str, *,
               labeled_only: bool = True) -> Embeddings:
        """Embed ``loader`` with ``pl_module.encoder`` on every rank; keep the rows with a label ``>= 0``.

        The loader is sharded across ranks (:func:`shard_dataloader`), run in the trainer's precision,
        and all-gathered by :func:`gather_embeddings`, which leaves the encoder's train/eval flags as
        they were. With ``labeled_only=False`` every row is kept (labels ``-1`` included), for
        evaluators that need no labels.

        Raises:
            ValueError: the loader is empty, or (``labeled_only``) none of its rows has a label ``>= 0``.
        """
        dataset = getattr(loader, "dataset", None)
        if dataset is not None and hasattr(dataset, "__len__") and len(dataset) == 0:
            raise ValueError(f"{self._name}: the {arg} loader has no samples; pass {arg}=<a non-empty loader>")
        loader = shard_dataloader(loader, trainer.world_size, trainer.global_rank)
        precision = trainer.precision_plugin
        with precision.forward_context():
            emb = gather_embeddings(pl_module.encoder, _EvalLoader(loader, precision), device=pl_module.device,
                                    label_key=self.label_key, strategy=trainer.strategy)
        if not labeled_only:
            return emb
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
