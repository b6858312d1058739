"""A script run by the DDP tests: ``python ddp_job.py MODE OUT [WEIGHTS]``.

Lightning's ``strategy="ddp"`` relaunches this script once per extra rank, so everything here runs on
every rank; each rank writes its own result file ``OUT/<mode>_rank<r>.pt`` for the test to compare.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch

from fewlabel.callbacks import PseudoLabeler
from fewlabel.datamodules import DigitsDataModule
from fewlabel.plugins import BatchImageAugment, DeepClusterV2, SelfDistillation, SmallCNN, gather_embeddings
from fewlabel.plugins.distributed import shard_dataloader


class GatherProbe(L.Callback):
    """At train start, gather the teacher's embeddings of the pool through the sharded loader."""

    def __init__(self, teacher: torch.nn.Module) -> None:
        self.teacher = teacher
        self.result: Any = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loader = shard_dataloader(trainer.datamodule.unlabeled_dataloader(train=False), trainer.world_size,
                                  trainer.global_rank)
        self.result = gather_embeddings(self.teacher, loader, label_key="target", strategy=trainer.strategy)


def main() -> None:
    mode, out = sys.argv[1], Path(sys.argv[2])
    dm = DigitsDataModule(batch_size=64)
    dm.setup("fit")
    dm.train_split = "unlabeled"
    kwargs: dict[str, Any] = dict(accelerator="cpu", devices=2, strategy="ddp", logger=False,
                                  enable_progress_bar=False, enable_model_summary=False,
                                  enable_checkpointing=False, limit_val_batches=0)
    L.seed_everything(0, verbose=False)
    if mode == "pseudo_labels":
        teacher = SmallCNN(width=8)
        teacher.load_state_dict(torch.load(sys.argv[3], weights_only=True))
        student = SelfDistillation({"name": "small_cnn", "width": 4}, num_classes=10, aux_hidden_dim=8)
        probe = GatherProbe(teacher)
        labeler = PseudoLabeler(teacher=teacher, pca_dim=16, nredo=3)
        trainer = L.Trainer(max_epochs=1, limit_train_batches=2, callbacks=[labeler, probe], **kwargs)
        trainer.fit(student, datamodule=dm)
        payload = {"labels": student.pseudo_labels.cpu(), "embeddings": torch.from_numpy(probe.result.embeddings),
                   "indices": torch.from_numpy(probe.result.indices), "targets": torch.from_numpy(probe.result.labels),
                   "metrics": labeler.metrics, "world_size": trainer.world_size}
    elif mode == "deepcluster":
        module = DeepClusterV2({"name": "small_cnn", "width": 4}, num_samples=dm.num_unlabeled,
                               augment=BatchImageAugment(), num_prototypes=[10, 20], hidden_dim=16, feat_dim=8)
        trainer = L.Trainer(max_epochs=3, **kwargs)
        trainer.fit(module, datamodule=dm)
        payload = {"memory": module.memory.cpu(), "assignments": module.assignments.cpu(),
                   "prototypes": module.prototypes_1.cpu(), "weight": module.encoder.blocks[0][0].weight.detach().cpu(),
                   "world_size": trainer.world_size}
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    torch.save(payload, out / f"{mode}_rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main()
