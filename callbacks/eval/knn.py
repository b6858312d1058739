"""Weighted kNN accuracy of the encoder during training, logged as a monitorable metric."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn

from fewlabel.callbacks.eval.base import EmbeddingEvaluator, _Loader, _LoaderArg
from fewlabel.plugins.evaluation.knn import check_knn_args, knn_accuracy

__all__ = ["KNNEvaluator"]

class KNNEvaluator(EmbeddingEvaluator):
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
