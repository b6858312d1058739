"""DeepCluster-v2 self-supervised pretraining (UnFuSeD stage 1).

Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments",
NeurIPS 2020, arXiv 2006.09882 (DeepCluster-v2 is introduced there).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewlabel.plugins.clustering import kmeans
from fewlabel.plugins.losses.deepcluster import deepcluster_v2_loss
from fewlabel.plugins.modules.common import build_encoder, check_encoder, check_finite, make_views
from fewlabel.plugins.modules.optim import build_optimizer, check_optimizer


class DeepClusterV2(L.LightningModule):
    """Spherical k-means prototypes each epoch + cross-entropy on the assignments.

    A memory bank keeps the latest projected, L2-normalised embedding of every sample for each
    view; before the first epoch one pass over the data fills it (SwAV's ``init_memory``). At the
    start of every epoch each prototype head runs faiss spherical k-means on one view's bank, its
    prototypes are set to the centroids, and every sample gets the index of its nearest centroid.
    Training then minimises ``CE(cos(z, prototypes) / T, assignment)`` for all views. Prototypes are
    fixed between clusterings. In multi-process runs every step's projections are all-gathered so
    each rank holds the whole bank, and k-means runs on rank 0 and is broadcast.

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
        optimizer, lr, weight_decay, momentum, warmup_fraction: Optimiser and warm-up + cosine schedule.
        seed: Seed of the k-means.
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
        optimizer: str = "sgd",
        lr: float = 0.05,
        weight_decay: float = 1e-4,
        momentum: float = 0.9,
        warmup_fraction: float = 0.1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if not num_prototypes or min(num_prototypes) < 2:
            raise ValueError(f"num_prototypes needs one or more heads of >= 2 prototypes, got {list(num_prototypes)}")
        if max(num_prototypes) > num_samples:
            raise ValueError(f"num_prototypes {list(num_prototypes)} exceeds the {num_samples} training samples")
        if num_views < 1 or temperature <= 0 or kmeans_iters < 1:
            raise ValueError("num_views, kmeans_iters must be >= 1 and temperature > 0")
        check_optimizer(optimizer)
        self.save_hyperparameters(ignore=["encoder", "augment"])
        self.encoder = build_encoder(encoder)
        embed_dim = check_encoder(self.encoder)
        self.augment = augment
        self.projector = nn.Sequential(
            nn.Linear(embed_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, feat_dim),
        )
        self.num_prototypes = list(num_prototypes)
        for h, k in enumerate(self.num_prototypes):
            self.register_buffer(f"prototypes_{h}", F.normalize(torch.randn(k, feat_dim), dim=1))
        self.register_buffer("memory", torch.zeros(num_views, num_samples, feat_dim))
        self.register_buffer("assignments", torch.full((len(self.num_prototypes), num_samples), -1, dtype=torch.long))
        self.register_buffer("memory_ready", torch.tensor(False))

    def forward(self, x: Tensor) -> Tensor:
        """The encoder's embedding of a raw input batch."""
        return self.encoder(x)

    def project(self, z: Tensor) -> Tensor:
        """L2-normalised projection (float32) of preprocessed views."""
        return F.normalize(self.projector(self.encoder.forward_embed(z)).float(), dim=1)

    def _sync(self, z: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        """All-gather a step's embeddings and indices across ranks so every rank's bank is complete."""
        if self.trainer.world_size > 1:
            z = self.all_gather(z).reshape(-1, *z.shape[1:])
            index = self.all_gather(index).reshape(-1)
        return z, index

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        index = batch["index"]
        views = make_views(self.encoder, batch, self.augment, self.hparams.num_views)
        z = self.project(torch.cat(views)).view(len(views), -1, self.hparams.feat_dim)
        self._remember(z.detach(), index)
        scores, targets = [], []
        for h in range(len(self.num_prototypes)):
            protos = getattr(self, f"prototypes_{h}")
            scores.append(z.reshape(-1, z.shape[-1]) @ protos.T)
            targets.append(self.assignments[h, index].repeat(len(views)))
        loss = deepcluster_v2_loss(scores, targets, self.hparams.temperature)
        check_finite(loss, self, self.global_step)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def _remember(self, z: Tensor, index: Tensor) -> None:
        """Write ``(views, B, feat_dim)`` projections into the memory bank (gathered from all ranks)."""
        bank_z, bank_index = self._sync(z.transpose(0, 1), index)
        self.memory[:, bank_index] = bank_z.transpose(0, 1).to(self.memory.dtype)

    def on_train_epoch_start(self) -> None:
        if not bool(self.memory_ready):
            self.init_memory()
        self.cluster_memory()

    @torch.no_grad()
    def init_memory(self) -> None:
        """Fill the memory bank with one pass over the training data before the first epoch (SwAV's
        ``init_memory``); the encoder runs in eval mode so BatchNorm statistics are left alone."""
        was_training = self.training
        self.eval()
        for batch in self.trainer.train_dataloader:
            batch = self.trainer.strategy.batch_to_device(batch)
            views = make_views(self.encoder, batch, self.augment, self.hparams.num_views)
            z = self.project(torch.cat(views)).view(len(views), -1, self.hparams.feat_dim)
            self._remember(z, batch["index"])
        self.train(was_training)
        self.memory_ready.fill_(True)

    @torch.no_grad()
    def cluster_memory(self) -> None:
        """Spherical k-means of the memory bank for each head (faiss, on rank 0), then broadcast."""
        for h, k in enumerate(self.num_prototypes):
            bank = self.memory[h % self.hparams.num_views]
            centroids = torch.zeros(k, bank.shape[1])
            if self.trainer.is_global_zero:
                _, c = kmeans(bank.float().cpu().numpy(), k, niter=self.hparams.kmeans_iters, spherical=True,
                              seed=self.hparams.seed + 1000 * self.current_epoch + h)
                centroids = torch.from_numpy(c)
            centroids = self.trainer.strategy.broadcast(centroids, src=0).to(bank.device)
            centroids = F.normalize(centroids, dim=1)
            getattr(self, f"prototypes_{h}").copy_(centroids)
            self.assignments[h] = (bank.float() @ centroids.T).argmax(dim=1)
        sizes = torch.bincount(self.assignments[0], minlength=self.num_prototypes[0])
        self.log("train/empty_clusters", float((sizes == 0).sum()), on_epoch=True, on_step=False)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        return build_optimizer(self, params, name=hp.optimizer, lr=hp.lr, weight_decay=hp.weight_decay,
                               momentum=hp.momentum, warmup_fraction=hp.warmup_fraction)
