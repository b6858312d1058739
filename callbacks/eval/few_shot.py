"""Few-shot episode accuracy of the encoder during training, with its 95 % confidence interval."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L

from fewlabel.callbacks.eval.base import EmbeddingEvaluator, _LoaderArg
from fewlabel.plugins.distributed import on_rank_zero_then_broadcast
from fewlabel.plugins.evaluation.few_shot import FewShotResult, check_episode_args, evaluate_episodes
from fewlabel.plugins.heads.registry import create_few_shot_head

__all__ = ["FewShotEvaluator"]


class FewShotEvaluator(EmbeddingEvaluator):
    """Mean N-way K-shot accuracy of a few-shot head on ``pl_module.encoder``'s embeddings, with its 95 % CI.

    The few-shot protocol of :func:`fewlabel.plugins.evaluation.evaluate_episodes`: the evaluation
    set is embedded, ``num_episodes`` episodes of ``n_way`` classes with ``k_shot`` support and
    ``n_query`` query samples each are drawn from it with ``seed`` (the same episodes at every
    evaluation, so successive values are paired), the ``head`` (a registered few-shot head:
    ``protonet``, ``simpleshot``, ``gda``, ``logistic``, ``bd_cspn``) is fitted on each support, and
    the mean query accuracy is logged as ``metric_name`` with the half-width of its 95 % confidence
    interval (``1.96 * std / sqrt(episodes)``) as ``metric_name + "_ci95"``.

    Contract with the LightningModule: ``.encoder``, an ``nn.Module`` mapping ``batch["input"]`` to a
    ``(B, D)`` embedding, with ``embed_dim`` (checked in ``on_fit_start``). Nothing else is used, so
    a user's own LightningModule works. The encoder runs in eval mode without gradients while it
    embeds (:func:`fewlabel.plugins.gather.gather_embeddings`); its train/eval flags are restored.

    When: at the end of every ``every_n_epochs``-th training epoch, and with ``eval_on_fit_end`` once
    more when fitting ends. The metric can be monitored like ``KNNEvaluator``'s (see there).

    Multi-process: each rank embeds its shard of the evaluation set and the embeddings are
    all-gathered; rank 0 runs the episodes and broadcasts the result, so every rank logs the same value.

    Resuming: the latest figures and the step they were computed at are in :meth:`state_dict`.

    Args:
        head: the few-shot head's registered name (``fewlabel.plugins.heads.list_few_shot_heads()``).
        head_kwargs: its keyword arguments (e.g. ``{"shrinkage": 0.1}`` for ``gda``).
        n_way: classes per episode.
        k_shot: support samples per class.
        n_query: query samples per class; each class of the evaluation set needs ``k_shot + n_query``
            samples to be drawn (smaller classes are left out, and fewer than ``n_way`` usable classes
            is an error at the first evaluation).
        num_episodes: episodes per evaluation.
        seed: seed of the episode draws.
        eval_dataloader: the labeled evaluation set: a DataLoader, or a zero-argument callable
            returning one; ``None`` uses ``trainer.datamodule.val_dataloader()``. Rows with label
            ``-1`` are dropped.
        every_n_epochs: evaluate after every ``n``-th training epoch; ``None`` = only when fitting
            ends (with ``eval_on_fit_end=True``).
        eval_on_fit_end: evaluate once more when fitting ends (logged to ``trainer.loggers``).
        label_key: batch key of the labels.
        metric_name: the logged name; ``None`` = ``"eval/fewshot_<head>_<n_way>way<k_shot>shot_acc"``.

    Raises:
        ValueError: an unknown head or bad head arguments, bad episode counts, schedule or loader.

    Example:
        >>> cb = FewShotEvaluator(head="protonet", n_way=5, k_shot=1, every_n_epochs=2)
        >>> cb.metric_name, cb.ci_metric_name, cb.should_evaluate(1)
        ('eval/fewshot_protonet_5way1shot_acc', 'eval/fewshot_protonet_5way1shot_acc_ci95', True)
    """

    def __init__(
        self,
        *,
        head: str = "protonet",
        head_kwargs: Mapping[str, Any] | None = None,
        n_way: int = 5,
        k_shot: int = 1,
        n_query: int = 15,
        num_episodes: int = 600,
        seed: int = 0,
        eval_dataloader: _LoaderArg = None,
        every_n_epochs: int | None = 1,
        eval_on_fit_end: bool = False,
        label_key: str = "label",
        metric_name: str | None = None,
    ) -> None:
        try:
            check_episode_args(n_way, k_shot, n_query, num_episodes)
            if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
                raise ValueError(f"seed must be an int >= 0, got {seed!r}")
            if head_kwargs is not None and not isinstance(head_kwargs, Mapping):
                raise ValueError(f"head_kwargs must be a mapping of keyword arguments, "
                                 f"got {type(head_kwargs).__name__}")
            create_few_shot_head(head, **dict(head_kwargs or {}))  # a bad name or argument fails here
        except (ValueError, TypeError) as err:
            raise ValueError(f"{self._name}: {err}") from None
        if metric_name is None:
            metric_name = f"eval/fewshot_{head}_{n_way}way{k_shot}shot_acc"
        super().__init__(metric_name=metric_name, eval_dataloader=eval_dataloader,
                         eval_dataloader_arg="eval_dataloader", every_n_epochs=every_n_epochs,
                         eval_on_fit_end=eval_on_fit_end, label_key=label_key)
        self.head = head
        self.head_kwargs = dict(head_kwargs or {})
        self.n_way, self.k_shot, self.n_query = n_way, k_shot, n_query
        self.num_episodes = num_episodes
        self.seed = seed
        self.result: FewShotResult | None = None
        self._ci_to_log: float | None = None

    @property
    def ci_metric_name(self) -> str:
        """The logged name of the 95 % confidence interval's half-width."""
        return f"{self.metric_name}_ci95"

    @property
    def state_key(self) -> str:
        return self._generate_state_key(metric_name=self.metric_name, head=self.head, n_way=self.n_way,
                                        k_shot=self.k_shot, n_query=self.n_query, num_episodes=self.num_episodes,
                                        seed=self.seed)

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> float:
        emb = self.gather(trainer, pl_module, self.resolve_eval_dataloader(trainer), "eval_dataloader")
        self.result = on_rank_zero_then_broadcast(
            trainer.strategy,
            lambda: evaluate_episodes(self.head, emb.embeddings, emb.labels, self.n_way, self.k_shot, self.n_query,
                                      self.num_episodes, self.seed, head_kwargs=self.head_kwargs),
            what=f"{self._name}: few-shot episodes",
        )
        self._ci_to_log = self.result.ci95
        return self.result.mean

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> float | None:
        value = super()._run(trainer, pl_module)
        if value is not None and self.result is not None:
            self.metrics[self.ci_metric_name] = float(self.result.ci95)
        return value

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._ci_to_log is not None:
            pl_module.log(self.ci_metric_name, self._ci_to_log, on_step=False, on_epoch=True, sync_dist=False)
            self._ci_to_log = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_fit_end(trainer, pl_module)
        if self._ci_to_log is not None:
            for logger in trainer.loggers:
                logger.log_metrics({self.ci_metric_name: self._ci_to_log}, step=trainer.global_step)
            self._ci_to_log = None
