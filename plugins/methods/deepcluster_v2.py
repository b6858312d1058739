"""DeepCluster-v2 self-supervised pretraining (UnFuSeD stage 1).

Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments",
NeurIPS 2020, arXiv 2006.09882 (DeepCluster-v2 is introduced there).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewlabel.plugins.clustering import KMEANS_MAX_TRAIN_ROWS, check_max_train_rows, kmeans
from fewlabel.plugins.distributed import on_rank_zero_then_broadcast
from fewlabel.plugins.losses.deepcluster import deepcluster_v2_loss
from fewlabel.plugins.heads.projection import projection_mlp
from fewlabel.plugins.methods.base import Method
from fewlabel.plugins.methods.registry import register_method


@register_method("deepcluster_v2")
class DeepClusterV2(Method):
    """Spherical k-means prototypes each epoch + cross-entropy on the assignments.

    A memory bank keeps the latest projected, L2-normalised embedding of every sample for each
    view, and ``memory_written`` marks the samples whose row has been written; before the first
    epoch one pass over the training loader fills it (SwAV's ``init_memory``). At the start of every
    epoch each prototype head runs faiss spherical k-means on one view's written rows, its
    prototypes are set to the centroids, and every written sample gets the index of its nearest
    centroid; samples never written (those of the last partial batch a ``drop_last`` loader drops)
    get ``-1``, which the loss ignores, as SwAV does. Training then minimises
    ``CE(cos(z, prototypes) / T, assignment)`` for all views, with the scores in float32. Prototypes
    are fixed between clusterings. In multi-process runs every step's projections and indices are
    all-gathered so each rank holds the whole bank, and k-means runs on rank 0 and is broadcast.

    Args:
        encoder: A fewlabel encoder (``nn.Module``) or a registry spec ``{"name": ..., **kwargs}``.
        num_samples: Size of the training set (``datamodule.num_unlabeled``); batches must carry
            ``"index"`` in ``[0, num_samples)``.
        augment: Batch-wise augmentation applied after the encoder's front end to make each view;
            ignored when batches carry ``"views"``.
        num_prototypes: Number of clusters of each prototype head.
        hidden_dim: Hidden width of the projection head.
        feat_dim: Output dimension of the projection head.
        temperature: Softmax temperature.
        kmeans_iters: Spherical k-means iterations per epoch.
        num_views: Views per sample.
        max_train_rows: k-means trains on every written bank row up to this many (a seeded sample
            beyond); ``None`` = every row, as SwAV does.
        init_memory_train_mode: Fill the first memory bank in train mode (BatchNorm batch statistics,
            dropout on), as SwAV's ``init_memory`` does; ``False`` = eval mode. On the digits recipe
            (80-epoch teacher, stage-2 pseudo-labels vs the pool's hidden labels, seeds 0-4) the two
            are indistinguishable: accuracy 0.958 +- 0.013 (train) vs 0.961 +- 0.008 (eval), NMI
            0.927 vs 0.929, paired difference -0.003 +- 0.008 (s.e.); ``benchmarks/dcv2_init_memory.py``.
        optimizer, lr, weight_decay, momentum, warmup_fraction: Optimiser and warm-up + cosine schedule.
        seed: Seed of the k-means.

    Example:
        >>> model = DeepClusterV2({"name": "small_cnn", "width": 4}, num_samples=100, hidden_dim=32, feat_dim=16)
        >>> list(model.hparams.num_prototypes), model.encoder.embed_dim
        ([30, 30, 30], 16)
    """

    def __init__(
        self,
        encoder: nn.Module | Mapping[str, Any],
        num_samples: int,
        augment: nn.Module | None = None,
        num_prototypes: Sequence[int] = (30, 30, 30),
        hidden_dim: int = 512,
        feat_dim: int = 128,
        temperature: float = 0.1,
        kmeans_iters: int = 10,
        num_views: int = 2,
        max_train_rows: int | None = KMEANS_MAX_TRAIN_ROWS,
        init_memory_train_mode: bool = True,
        optimizer: str = "sgd",
        lr: float = 0.05,
        weight_decay: float = 1e-4,
        momentum: float = 0.9,
        warmup_fraction: float = 0.1,
        seed: int = 0,
    ) -> None:
        super().__init__(encoder, augment, optimizer=optimizer, lr=lr, weight_decay=weight_decay, momentum=momentum,
                         warmup_fraction=warmup_fraction)
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if not num_prototypes or min(num_prototypes) < 2:
            raise ValueError(f"num_prototypes needs one or more heads of >= 2 prototypes, got {list(num_prototypes)}")
        if max(num_prototypes) > num_samples:
            raise ValueError(f"num_prototypes {list(num_prototypes)} exceeds the {num_samples} training samples")
        if num_views < 1 or temperature <= 0 or kmeans_iters < 1:
            raise ValueError("num_views, kmeans_iters must be >= 1 and temperature > 0")
        check_max_train_rows(max_train_rows, max(num_prototypes))
        if not isinstance(init_memory_train_mode, bool):
            raise ValueError(f"init_memory_train_mode must be True or False, got {init_memory_train_mode!r}")
        self.save_hyperparameters(ignore=["encoder", "augment"])
        self.projector = projection_mlp([self.embed_dim, hidden_dim, feat_dim])
        self.num_prototypes = list(num_prototypes)
        for h, k in enumerate(self.num_prototypes):
            self.register_buffer(f"prototypes_{h}", F.normalize(torch.randn(k, feat_dim), dim=1))
        self.register_buffer("memory", torch.zeros(num_views, num_samples, feat_dim))
        self.register_buffer("memory_written", torch.zeros(num_samples, dtype=torch.bool))
        self.register_buffer("assignments", torch.full((len(self.num_prototypes), num_samples), -1, dtype=torch.long))
        self.register_buffer("memory_ready", torch.tensor(False))

    def project(self, z: Tensor) -> Tensor:
        """L2-normalised projection (float32) of preprocessed views."""
        return F.normalize(self.projector(self.embed(z)).float(), dim=1)

    def prototype_scores(self, z: Tensor, head: int) -> Tensor:
        """Cosine scores ``z @ prototypes_head.T`` of L2-normalised projections ``(B, feat_dim)``.

        Computed in float32 with autocast disabled: bf16 keeps 8 significant bits (cosines near 1 are
        0.004 apart), and dividing by the temperature (0.1) magnifies that rounding tenfold.
        """
        prototypes = getattr(self, f"prototypes_{head}")
        with torch.autocast(device_type=z.device.type, enabled=False):
            return z.float() @ prototypes.float().T

    def _sync(self, z: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        """All-gather a step's embeddings and indices across ranks so every rank's bank is complete."""
        if self.trainer.world_size > 1:
            z = self.all_gather(z).reshape(-1, *z.shape[1:])
            index = self.all_gather(index).reshape(-1)
        return z, index

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        index = batch["index"]
        views = self.views(batch, self.hparams.num_views)
        z = self.project(torch.cat(views)).view(len(views), -1, self.hparams.feat_dim)
        self._remember(z.detach(), index)
        flat = z.reshape(-1, z.shape[-1])
        scores = [self.prototype_scores(flat, h) for h in range(len(self.num_prototypes))]
        targets = [self.assignments[h, index].repeat(len(views)) for h in range(len(self.num_prototypes))]
        loss = deepcluster_v2_loss(scores, targets, self.hparams.temperature)
        self.log_train("train/loss", loss, prog_bar=True)
        return loss

    def _remember(self, z: Tensor, index: Tensor) -> None:
        """Write ``(views, B, feat_dim)`` projections into the memory bank (gathered from all ranks)."""
        bank_z, bank_index = self._sync(z.transpose(0, 1), index)
        self.memory[:, bank_index] = bank_z.transpose(0, 1).to(self.memory.dtype)
        self.memory_written[bank_index] = True

    def on_train_epoch_start(self) -> None:
        if not bool(self.memory_ready):
            self.init_memory()
        self.cluster_memory()

    @torch.no_grad()
    def init_memory(self) -> None:
        """Fill the memory bank with one pass over the training loader before the first epoch (SwAV's
        ``init_memory``), in train mode (BatchNorm batch statistics, which also update the running
        ones) or, with ``init_memory_train_mode=False``, in eval mode; each submodule's mode is
        restored after."""
        modes = {module: module.training for module in self.modules()}
        self.train(self.hparams.init_memory_train_mode)
        for batch in self.trainer.train_dataloader:
            batch = self.trainer.strategy.batch_to_device(batch)
            views = self.views(batch, self.hparams.num_views)
            z = self.project(torch.cat(views)).view(len(views), -1, self.hparams.feat_dim)
            self._remember(z, batch["index"])
        for module, training in modes.items():
            module.training = training
        self.memory_ready.fill_(True)

    @torch.no_grad()
    def cluster_memory(self) -> None:
        """Spherical k-means of the written bank rows for each head (faiss, on rank 0), then broadcast.

        Unwritten rows are left out and get assignment ``-1``.

        Raises:
            RuntimeError: fewer rows were written than a head has prototypes, or (multi-process) k-means
                failed on rank 0.
        """
        written = self.memory_written.nonzero().squeeze(1)  # identical on every rank: the bank is all-gathered
        if written.numel() < max(self.num_prototypes):
            raise RuntimeError(
                f"DeepClusterV2: only {written.numel()} of {self.memory_written.numel()} memory-bank rows were "
                f"written, fewer than the {max(self.num_prototypes)} prototypes to fit; the train loader yields too "
                "few samples (check num_samples, the batch size and drop_last)"
            )
        self.assignments.fill_(-1)
        for h, k in enumerate(self.num_prototypes):
            bank = self.memory[h % self.hparams.num_views, written]
            centroids = on_rank_zero_then_broadcast(
                self.trainer.strategy, partial(self._kmeans_centroids, bank, k, h), what="DeepClusterV2: k-means"
            ).to(bank.device)
            getattr(self, f"prototypes_{h}").copy_(F.normalize(centroids, dim=1))
            self.assignments[h, written] = self.prototype_scores(bank, h).argmax(dim=1)
        sizes = torch.bincount(self.assignments[0, written], minlength=self.num_prototypes[0])
        self.log("train/empty_clusters", float((sizes == 0).sum()), on_epoch=True, on_step=False)

    def _kmeans_centroids(self, bank: Tensor, k: int, head: int) -> Tensor:
        """faiss spherical k-means of one head's bank rows: the ``(k, feat_dim)`` float32 CPU centroids."""
        _, centroids = kmeans(bank.float().cpu().numpy(), k, niter=self.hparams.kmeans_iters, spherical=True,
                              max_train_rows=self.hparams.max_train_rows,
                              seed=self.hparams.seed + 1000 * self.current_epoch + head)
        return torch.from_numpy(centroids)
