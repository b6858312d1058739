"""Fill a module's per-sample pseudo-label table by clustering teacher embeddings with faiss."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn

from fewlabel.callbacks.progress import task_bar
from fewlabel.plugins.arguments import check_int, is_count
from fewlabel.plugins.clustering import (
    KMEANS_MAX_TRAIN_ROWS,
    PCA_DIM_CANDIDATES,
    check_keep_fraction,
    check_max_train_rows,
    cluster_embeddings,
    keep_confident,
    select_pca_dim,
)
from fewlabel.plugins.distributed import on_rank_zero_then_broadcast, shard_dataloader
from fewlabel.plugins.encoders import build_encoder
from fewlabel.plugins.evaluation import clustering_metrics
from fewlabel.plugins.gather import Embeddings, dataset_positions, gather_embeddings

__all__ = ["PseudoLabeler"]

_Loader = Iterable[dict[str, Any]]
#: The datamodule loader each loader argument falls back to when it is ``None``: ``(method, keyword arguments)``.
_FALLBACKS: dict[str, tuple[str, dict[str, Any]]] = {
    "dataloader": ("unlabeled_dataloader", {"train": False}),
    "val_dataloader": ("val_dataloader", {}),
}


def _length(loader: Any) -> int | None:
    """A loader's number of batches, or ``None`` when it has no ``len()``."""
    try:
        return len(loader)
    except TypeError:
        return None


def _table_size(emb: Embeddings, *loaders: Any) -> int:
    """Length of the pseudo-label table: it covers every position the labelled rows or the loaders' datasets
    reach (a labelling loader may show part of the training set, or a view whose indices reach further)."""
    return max([int(emb.indices.max()) + 1, *(dataset_positions(loader) or 0 for loader in loaders)])


class PseudoLabeler(L.Callback):
    """k-means pseudo-labels for the unlabeled pool, written into ``pl_module.pseudo_labels``.

    Embeds the unlabeled pool (no augmentation) with a teacher encoder, reduces it with PCA to
    ``pca_dim`` dimensions with whitening, L2-normalises and runs faiss k-means (DeepCluster, Caron et
    al. 2018, arXiv 1807.05520; stage 2 of UnFuSeD, 2023, arXiv 2303.05668). Sample ``i`` of the
    dataset gets label ``pseudo_labels[i]``; samples the loader did not yield keep ``-1``.

    Contract with the LightningModule: a ``pseudo_labels`` tensor buffer and ``set_pseudo_labels``
    (:class:`fewlabel.plugins.methods.pseudo_labels.PseudoLabelMixin`), and ``.encoder`` when no
    ``teacher`` is given (self-labelling). Checked in ``on_fit_start``.

    When: once before the first training epoch (``on_train_start``, after a checkpoint has been
    fully restored), and with ``recluster_every_n_epochs=n`` again at the start of every epoch that
    is a multiple of ``n``. Resuming from a checkpoint keeps the stored labels bit-identical and
    does not recluster, except on an epoch where the uninterrupted run would have. Note that the
    sanity-check validation runs before the first clustering.

    Multi-process: every rank gathers (the gather all-gathers and merges by index), rank 0 runs
    k-means and the labels are broadcast with ``trainer.strategy.broadcast``.

    Args:
        num_clusters: k; ``None`` takes ``trainer.datamodule.num_classes``.
        teacher: an encoder ``(batch input) -> (B, D)``, moved to the module's device. It runs in eval
            mode without gradients while it embeds the pool; its ``requires_grad`` and train/eval
            flags are left as they were (the callback does not own it). ``None`` uses ``pl_module.encoder``.
            An encoder spec with a ``checkpoint`` builds the trained teacher from a config
            (``{name: small_cnn, width: 32, checkpoint: runs/unfused/teacher/final.ckpt}``; see
            :func:`~fewlabel.plugins.encoders.build_encoder`).
        dataloader: a DataLoader, or a zero-argument callable returning one; ``None`` uses
            ``trainer.datamodule.unlabeled_dataloader(train=False)``.
        pca_dim: PCA dimension (``None`` = no PCA), or ``"auto"``: chosen at every clustering among
            ``pca_dim_candidates`` on a labeled validation split by
            :func:`~fewlabel.plugins.clustering.select_pca_dim` (the pool and the validation samples
            are clustered together, unlabeled; the dimension whose clusters agree best with the
            validation labels, by NMI, wins). The choice and every score are in :attr:`chosen` and
            logged as ``pseudo_labels/pca_dim``.
        pca_dim_candidates: The dimensions ``pca_dim="auto"`` tries (those up to the embedding width).
        val_dataloader: ``pca_dim="auto"``'s labeled validation loader (labels under ``"label"``), or a
            zero-argument callable returning one; ``None`` uses ``trainer.datamodule.val_dataloader()``.
        whiten: whiten the PCA components.
        niter: k-means iterations.
        nredo: k-means restarts (best objective kept); 1 as in UnFuSeD.
        max_train_rows: k-means trains on every row up to this many (a seeded sample beyond); ``None`` =
            every row, as UnFuSeD does. The default trains on every row of pools up to 262,144 samples.
        seed: k-means seed (>= 0).
        recluster_every_n_epochs: ``None`` = cluster once; ``n`` = also at epochs ``n, 2n, ...``.
        keep_fraction: ``1.0`` labels every sample (UnFuSeD). Below 1, only the most confident
            ``keep_fraction`` of each cluster keep their label (by assignment margin, see
            :func:`~fewlabel.plugins.clustering.keep_confident`); the rest get ``-1``, which
            :class:`~fewlabel.plugins.methods.SelfDistillation` leaves out of its loss. Logged:
            ``pseudo_labels/kept_fraction`` and, with true labels, ``pseudo_labels/kept_accuracy``.
        label_key: batch key of the true labels, used only for the logged metrics (``-1`` = unknown).

    Example:
        >>> cb = PseudoLabeler(num_clusters=10, recluster_every_n_epochs=5)
        >>> cb.should_recluster(10), cb.should_recluster(11)
        (True, False)
    """

    def __init__(
        self,
        *,
        num_clusters: int | None = None,
        teacher: nn.Module | Mapping[str, Any] | None = None,
        dataloader: _Loader | Callable[[], _Loader] | None = None,
        pca_dim: int | str | None = 128,
        pca_dim_candidates: Sequence[int] = PCA_DIM_CANDIDATES,
        val_dataloader: _Loader | Callable[[], _Loader] | None = None,
        whiten: bool = True,
        niter: int = 20,
        nredo: int = 1,
        max_train_rows: int | None = KMEANS_MAX_TRAIN_ROWS,
        seed: int = 0,
        recluster_every_n_epochs: int | None = None,
        keep_fraction: float = 1.0,
        label_key: str = "target",
    ) -> None:
        super().__init__()
        owner = "PseudoLabeler"
        check_int("num_clusters", num_clusters, 1, "None (use trainer.datamodule.num_classes)", owner=owner)
        if pca_dim != "auto":
            check_int("pca_dim", pca_dim, 1, "None (no PCA) or 'auto' (chosen on a validation split)", owner=owner)
        if not pca_dim_candidates or not all(is_count(d, 1) for d in pca_dim_candidates):
            raise ValueError(f"pca_dim_candidates must be a non-empty list of ints >= 1, got {pca_dim_candidates!r}")
        check_int("niter", niter, 1, owner=owner)
        check_int("nredo", nredo, 1, owner=owner)
        check_max_train_rows(max_train_rows)
        check_int(
            "recluster_every_n_epochs", recluster_every_n_epochs, 1, "None (cluster once at fit start)", owner=owner
        )
        check_int("seed", seed, 0, owner=owner)
        check_keep_fraction(keep_fraction, owner)
        if not isinstance(whiten, bool):
            raise ValueError(f"whiten must be True or False, got {whiten!r}")
        if isinstance(teacher, Mapping) and "name" in teacher:
            teacher = build_encoder(teacher)
        if teacher is not None and not isinstance(teacher, nn.Module):
            raise ValueError(f"teacher must be an nn.Module encoder, an encoder spec or None (use pl_module.encoder), "
                             f"got {type(teacher).__name__}")
        for name, given, default in (("dataloader", dataloader, "unlabeled_dataloader(train=False)"),
                                     ("val_dataloader", val_dataloader, "val_dataloader()")):
            if given is not None and not (callable(given) or hasattr(given, "__iter__")):
                raise ValueError(
                    f"{name} must be a DataLoader, a zero-argument callable returning one, or None "
                    f"(use trainer.datamodule.{default}); got {type(given).__name__}"
                )
        if not isinstance(label_key, str) or not label_key:
            raise ValueError(f"label_key must be a non-empty string, got {label_key!r}")
        self.num_clusters = num_clusters
        self.teacher = teacher
        self.dataloader = dataloader
        self.pca_dim = pca_dim
        self.pca_dim_candidates = tuple(int(d) for d in pca_dim_candidates)
        self.val_dataloader = val_dataloader
        self.whiten = whiten
        self.niter = niter
        self.nredo = nredo
        self.max_train_rows = max_train_rows
        self.seed = seed
        self.recluster_every_n_epochs = recluster_every_n_epochs
        self.keep_fraction = float(keep_fraction)
        self.label_key = label_key
        self.metrics: dict[str, float] = {}
        #: What ``pca_dim="auto"`` chose at the last clustering: ``{"pca_dim": d, "val_nmi": {d: score}}``.
        self.chosen: dict[str, Any] = {}
        self.last_clustered_epoch: int | None = None

    # ------------------------------------------------------------------ extension points
    def should_recluster(self, epoch: int) -> bool:
        """Whether to recluster at the start of ``epoch`` (the first clustering always happens)."""
        n = self.recluster_every_n_epochs
        return n is not None and epoch % n == 0

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        missing = []
        if not isinstance(getattr(pl_module, "pseudo_labels", None), Tensor):
            missing.append("a `pseudo_labels` tensor buffer")
        if not callable(getattr(pl_module, "set_pseudo_labels", None)):
            missing.append("a `set_pseudo_labels(tensor)` method")
        if self.teacher is None and not isinstance(getattr(pl_module, "encoder", None), nn.Module):
            missing.append("an `encoder` nn.Module (or pass PseudoLabeler(teacher=...))")
        if missing:
            raise AttributeError(
                f"PseudoLabeler needs {type(pl_module).__name__} to have " + " and ".join(missing)
                + "; use fewlabel.plugins.methods.pseudo_labels.PseudoLabelMixin and call init_pseudo_labels()"
            )
        self._num_clusters(trainer)  # fail before training if k is unavailable
        if self.teacher is not None:
            self.teacher.to(pl_module.device)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        resumed = trainer.ckpt_path is not None and self.last_clustered_epoch is not None
        if resumed and pl_module.pseudo_labels.numel() > 0:
            rank_zero_info(
                f"PseudoLabeler: keeping the pseudo-labels restored from the checkpoint "
                f"(clustered at epoch {self.last_clustered_epoch})"
            )
            return
        self.run_clustering(trainer, pl_module)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if self.last_clustered_epoch != epoch and self.should_recluster(epoch):
            self.run_clustering(trainer, pl_module)

    # ------------------------------------------------------------------ clustering
    def run_clustering(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Embed the pool, cluster on rank 0, broadcast, and write ``pl_module.pseudo_labels``."""
        k = self._num_clusters(trainer)
        loader = shard_dataloader(self._loader("dataloader", trainer), trainer.world_size, trainer.global_rank)
        encoder = self.teacher if self.teacher is not None else pl_module.encoder
        if self.teacher is not None:
            self.teacher.to(pl_module.device)
        val_loader = None
        if self.pca_dim == "auto":
            val_loader = shard_dataloader(self._loader("val_dataloader", trainer),
                                          trainer.world_size, trainer.global_rank)
        batches = [_length(loader), 0 if val_loader is None else _length(val_loader)]
        total = None if None in batches else sum(batches) + 1  # + 1: the clustering
        with task_bar(trainer, "pseudo-labels", total) as bar:
            bar.set_postfix_str("teacher embeddings", refresh=False)
            emb = gather_embeddings(encoder, loader, device=pl_module.device, label_key=self.label_key,
                                    strategy=trainer.strategy, progress=bar.update)
            if k > len(emb):  # checked on every rank so none waits on a failed rank 0
                raise ValueError(f"PseudoLabeler: cannot make num_clusters={k} clusters from only {len(emb)} samples")
            val = None
            if val_loader is not None:
                val = gather_embeddings(encoder, val_loader, device=pl_module.device, label_key="label",
                                        strategy=trainer.strategy, progress=bar.update)
            size = _table_size(emb, loader, trainer.train_dataloader)
            bar.set_postfix_str(f"k-means (k={k})")
            table, metrics, chosen = on_rank_zero_then_broadcast(
                trainer.strategy, lambda: self._cluster(emb, k, size, val), what="PseudoLabeler: clustering"
            )
            bar.set_postfix_str("done", refresh=False)
            bar.update(1)
        pl_module.set_pseudo_labels(torch.from_numpy(np.asarray(table, dtype=np.int64)))
        self.metrics, self.chosen = dict(metrics), dict(chosen)
        self.last_clustered_epoch = trainer.current_epoch
        for logger in trainer.loggers:
            logger.log_metrics(self.metrics, step=trainer.global_step)
        summary = ", ".join(f"{key.split('/')[-1]}={value:.4g}" for key, value in self.metrics.items())
        rank_zero_info(f"PseudoLabeler: epoch {trainer.current_epoch}, k={k}, {len(emb)} samples: {summary}")

    def _cluster(self, emb: Embeddings, k: int, size: int,
                 val: Embeddings | None) -> tuple[np.ndarray, dict[str, float], dict[str, Any]]:
        settings = {"whiten": self.whiten, "niter": self.niter, "nredo": self.nredo,
                    "max_train_rows": self.max_train_rows, "seed": self.seed}
        pca_dim, chosen = self.pca_dim, {}
        if val is not None:
            known = val.labels >= 0
            if not known.any():
                raise ValueError("PseudoLabeler(pca_dim='auto') needs a labeled validation split: the validation "
                                 "loader gave no labels (set a validation split, e.g. val_fraction > 0)")
            pca_dim, scores = select_pca_dim(emb.embeddings, val.embeddings[known], val.labels[known], k,
                                             self.pca_dim_candidates, **settings)
            chosen = {"pca_dim": pca_dim, "val_nmi": {str(d): s for d, s in scores.items()}}
        result = cluster_embeddings(emb.embeddings, k, pca_dim=pca_dim, **settings)
        filtered = self.keep_fraction < 1
        kept = (keep_confident(result.labels, result.margins, self.keep_fraction) if filtered
                else np.ones(len(result.labels), dtype=bool))
        table = np.full(size, -1, dtype=np.int64)
        table[emb.indices[kept]] = result.labels[kept]
        metrics: dict[str, float] = {}
        if (emb.labels >= 0).any():
            scores = clustering_metrics(result.labels, emb.labels)
            metrics.update({f"pseudo_labels/{name}": value for name, value in scores.items()})
            if filtered and (emb.labels[kept] >= 0).any():
                kept_scores = clustering_metrics(result.labels[kept], emb.labels[kept])
                metrics["pseudo_labels/kept_accuracy"] = kept_scores["accuracy"]
        if filtered:
            metrics["pseudo_labels/kept_fraction"] = float(kept.mean())
        metrics["pseudo_labels/cluster_size_min"] = float(result.sizes.min())
        metrics["pseudo_labels/cluster_size_max"] = float(result.sizes.max())
        metrics["pseudo_labels/empty_clusters"] = float(result.num_empty)
        if chosen:
            metrics["pseudo_labels/pca_dim"] = float(pca_dim)
        return table, metrics, chosen

    def _num_clusters(self, trainer: L.Trainer) -> int:
        if self.num_clusters is not None:
            return self.num_clusters
        k = getattr(trainer.datamodule, "num_classes", None)
        if not is_count(k, 1):
            raise ValueError(
                "PseudoLabeler(num_clusters=None) takes k from trainer.datamodule.num_classes, but the trainer has "
                f"{'no datamodule' if trainer.datamodule is None else f'num_classes={k!r}'}; pass num_clusters=<int>"
            )
        return k

    def _loader(self, name: str, trainer: L.Trainer) -> _Loader:
        """The loader argument ``name`` (a loader, or a callable returning one), else its datamodule fallback."""
        given = getattr(self, name)
        if given is not None:
            return given if hasattr(given, "__iter__") else given()
        method, kwargs = _FALLBACKS[name]
        make = getattr(trainer.datamodule, method, None)
        call = f"{method}({', '.join(f'{key}={value}' for key, value in kwargs.items())})"
        problem = ValueError(f"PseudoLabeler({name}=None) needs trainer.datamodule.{call}; "
                             f"pass {name}=<DataLoader or zero-argument callable>")
        if make is None:
            raise problem
        try:
            return make(**kwargs)
        except MisconfigurationException as err:  # a LightningDataModule without that loader
            raise problem from err

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"last_clustered_epoch": self.last_clustered_epoch, "metrics": dict(self.metrics),
                "chosen": dict(self.chosen)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_clustered_epoch = state_dict.get("last_clustered_epoch")
        self.metrics = dict(state_dict.get("metrics", {}))
        self.chosen = dict(state_dict.get("chosen", {}))
