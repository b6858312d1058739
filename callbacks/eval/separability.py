"""A label-free class-separability estimate of the encoder's embeddings, logged as a monitorable metric."""

from __future__ import annotations

import lightning as L

from fewlabel.callbacks.eval.base import EmbeddingEvaluator, _LoaderArg
from fewlabel.plugins.arguments import check_int, is_count
from fewlabel.plugins.evaluation.separability import (
    SEPARABILITY_MAX_ROWS,
    check_separability_args,
    separability_score,
)

__all__ = ["SeparabilityMonitor"]


class SeparabilityMonitor(EmbeddingEvaluator):
    """How separable the classes of the unlabeled pool are in ``pl_module.encoder``'s embedding, without
    labels, logged as ``eval/separability`` (higher = more separable).

    The estimate is :func:`fewlabel.plugins.evaluation.separability_score` (after Ghalyan et al.,
    2023, arXiv 2305.15016, who monitor the topology of the embedding manifold to decide, without
    labels, when fine-tuning stops improving class separability): how close the symmetric k-NN graph
    of the L2-normalised embeddings is to ``num_clusters`` disconnected parts, ``mean(mu_2..mu_C)`` of
    its normalised adjacency. Read it as a trend over one run; its module docstring lists its limits.

    Use it where labels are too few for a trustworthy kNN or probe accuracy, e.g. to stop SSL
    pretraining or to keep the best checkpoint:
    ``EarlyStopping(monitor="eval/separability", mode="max")`` or
    ``ModelCheckpoint(monitor="eval/separability", mode="max")``. Both act at the end of the
    training epoch after this callback has logged (Lightning runs its monitoring callbacks' epoch-end
    hooks last), when validation runs once per epoch or not at all (else pass
    ``EarlyStopping(check_on_train_epoch_end=True)`` / ``ModelCheckpoint(save_on_train_epoch_end=True)``).
    On epochs without an evaluation the metric is not logged.

    Contract with the LightningModule: ``.encoder``, an ``nn.Module`` mapping ``batch["input"]`` to a
    ``(B, D)`` embedding, with ``embed_dim`` (checked in ``on_fit_start``). The encoder runs in eval
    mode without gradients while it embeds; its train/eval flags are restored.

    Multi-process: each rank embeds its shard of the loader, the embeddings are all-gathered, and
    every rank computes the same (deterministic) score from the same arrays.

    Args:
        k: neighbours per row of the k-NN graph.
        num_clusters: the expected number of classes ``C``; ``None`` takes
            ``trainer.datamodule.num_classes``.
        max_rows: score a seeded sample of this many rows of a larger pool; ``None`` = every row.
        seed: seed of that sample and of the eigen-solver's start vector.
        dataloader: the rows to score: a DataLoader, or a zero-argument callable returning one;
            ``None`` uses ``trainer.datamodule.unlabeled_dataloader(train=False)`` (the whole pool,
            sequential and unaugmented). Labels are not read.
        every_n_epochs: evaluate after every ``n``-th training epoch; ``None`` = only when fitting ends.
        eval_on_fit_end: evaluate once more when fitting ends (logged to ``trainer.loggers``).
        metric_name: the logged name.

    Raises:
        ValueError: an invalid argument, naming the valid values.

    Example:
        >>> cb = SeparabilityMonitor(k=10, num_clusters=10, every_n_epochs=2)
        >>> cb.metric_name, cb.should_evaluate(1), cb.should_evaluate(2)
        ('eval/separability', True, False)
    """

    def __init__(
        self,
        *,
        k: int = 10,
        num_clusters: int | None = None,
        max_rows: int | None = SEPARABILITY_MAX_ROWS,
        seed: int = 0,
        dataloader: _LoaderArg = None,
        every_n_epochs: int | None = 1,
        eval_on_fit_end: bool = False,
        metric_name: str = "eval/separability",
    ) -> None:
        try:
            check_separability_args(k, 2 if num_clusters is None else num_clusters, max_rows)
        except ValueError as err:
            raise ValueError(f"{self._name}: {err}") from None
        check_int("seed", seed, 0, owner=self._name)
        super().__init__(metric_name=metric_name, eval_dataloader=dataloader, eval_dataloader_arg="dataloader",
                         every_n_epochs=every_n_epochs, eval_on_fit_end=eval_on_fit_end, label_key="label",
                         eval_dataloader_method="unlabeled_dataloader", eval_dataloader_kwargs={"train": False})
        self.k = k
        self.num_clusters = num_clusters
        self.max_rows = max_rows
        self.seed = seed
        self._clusters: int | None = num_clusters

    @property
    def state_key(self) -> str:
        return self._generate_state_key(metric_name=self.metric_name, k=self.k, num_clusters=self.num_clusters)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        self._clusters = self.resolve_num_clusters(trainer)

    def resolve_num_clusters(self, trainer: L.Trainer) -> int:
        """``num_clusters``, or ``trainer.datamodule.num_classes`` when it is ``None``.

        Raises:
            ValueError: ``num_clusters`` is ``None`` and the datamodule has no ``num_classes >= 2``.
        """
        if self.num_clusters is not None:
            return self.num_clusters
        classes = getattr(trainer.datamodule, "num_classes", None)
        if not is_count(classes, 2):
            found = "no datamodule" if trainer.datamodule is None else f"num_classes={classes!r}"
            raise ValueError(f"{self._name}(num_clusters=None) takes the number of classes from "
                             f"trainer.datamodule.num_classes, but the trainer has {found}; pass num_clusters=<int>")
        return classes

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> float:
        emb = self.gather(trainer, pl_module, self.resolve_eval_dataloader(trainer), "dataloader", labeled_only=False)
        clusters = self._clusters if self._clusters is not None else self.resolve_num_clusters(trainer)
        try:
            return separability_score(emb.embeddings, self.k, clusters, max_rows=self.max_rows, seed=self.seed)
        except ValueError as err:
            raise ValueError(f"{self._name}: {err} (the dataloader gave {len(emb)} rows)") from None
