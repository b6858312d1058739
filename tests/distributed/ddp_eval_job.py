"""A script run by the evaluator DDP test: ``python ddp_eval_job.py OUT WORLD_SIZE``.

Lightning's ``strategy="ddp"`` relaunches this script once per extra rank; each rank writes
``OUT/eval_rank<r>.pt``. The test also imports :func:`run` to make the single-process reference:
the global batch (``GLOBAL_BATCH`` rows, split evenly over the ranks) and the frozen encoder are
the same in both, so the kNN accuracy and the online probe must match.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from fewlabel.callbacks import KNNEvaluator, LinearProbeEvaluator

K, PER, DIM, GLOBAL_BATCH = 3, 20, 6, 20


class Rows(Dataset):
    """Rows ``positions`` of ``(x, y)``; ``"index"`` is the position in the whole pool."""

    def __init__(self, x: Tensor, y: Tensor, positions: np.ndarray) -> None:
        self.x, self.y, self.positions = x, y, positions

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        p = int(self.positions[i])
        return {"input": self.x[p], "label": self.y[p], "index": torch.tensor(p)}


def blobs(seed: int, noise: float) -> tuple[Tensor, Tensor]:
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(0).normal(0.0, 2.0, (K, DIM))
    x = np.concatenate([c + rng.normal(0.0, noise, (PER, DIM)) for c in centers])
    y = np.repeat(np.arange(K), PER)
    perm = rng.permutation(len(y))
    return torch.tensor(x[perm], dtype=torch.float32), torch.tensor(y[perm])


class FrozenEncoderModule(L.LightningModule):
    """A user's module: ``.encoder`` (fixed by the seed) and a head trained on detached embeddings."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Linear(DIM, DIM)
        self.encoder.embed_dim = DIM
        self.encoder.requires_grad_(False)
        self.head = nn.Linear(DIM, K)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return nn.functional.cross_entropy(self.head(self.encoder(batch["input"]).detach()), batch["label"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.head.parameters(), lr=0.1)


class Data(L.LightningDataModule):
    """Training rows in order, rank ``r`` taking rows ``r, r + W, ...``: step ``i`` of all ranks together is
    the single-process batch ``i`` (Lightning's own distributed sampler would shuffle)."""

    def __init__(self, train: Dataset) -> None:
        super().__init__()
        self.train = train

    def train_dataloader(self) -> DataLoader:
        world, rank = self.trainer.world_size, self.trainer.global_rank
        sampler = DistributedSampler(self.train, num_replicas=world, rank=rank, shuffle=False)
        return DataLoader(self.train, batch_size=GLOBAL_BATCH // world, sampler=sampler)


def run(**trainer_kwargs: Any) -> tuple[L.Trainer, KNNEvaluator, LinearProbeEvaluator]:
    x, y = blobs(1, 1.5)
    val_x, val_y = blobs(2, 1.5)
    train = Rows(x, y, np.arange(len(y)))
    labeled = Rows(x, y, np.arange(1, len(y), 3))  # indices beyond len(labeled): a labeled draw of a pool
    val = Rows(val_x, val_y, np.arange(len(val_y)))
    knn = KNNEvaluator(k=5, bank=lambda: DataLoader(labeled, batch_size=7), queries=DataLoader(val, batch_size=9))
    probe = LinearProbeEvaluator(num_classes=K, optimizer="sgd", lr=0.5,
                                 val_dataloader=lambda: DataLoader(val, batch_size=9))
    trainer = L.Trainer(max_epochs=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, callbacks=[knn, probe], use_distributed_sampler=False,
                        **trainer_kwargs)
    trainer.fit(FrozenEncoderModule(), datamodule=Data(train))
    return trainer, knn, probe


def main() -> None:
    out, world_size = Path(sys.argv[1]), int(sys.argv[2])
    trainer, knn, probe = run(accelerator="cpu", devices=world_size, strategy="ddp")
    assert probe.probe is not None
    payload = {"world_size": trainer.world_size, "knn": knn.metrics, "probe_metrics": probe.metrics,
               "callback_metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
               "probe": {k: v.detach().cpu() for k, v in probe.probe.state_dict().items()}, "steps": probe.steps}
    torch.save(payload, out / f"eval_rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main()
