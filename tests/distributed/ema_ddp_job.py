"""A script run by ``tests/callbacks/test_ema_teacher.py``: ``python ema_ddp_job.py OUT``.

Fits BYOL with :class:`EMATeacher` for three optimizer steps under two-process CPU DDP (gloo).
Lightning's ``strategy="ddp"`` relaunches this script once per extra rank, so everything here runs on
every rank; each rank writes ``OUT/ema_rank<r>.pt`` with its online and target weights.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import lightning as L
import torch

from fewlabel.callbacks import EMATeacher
from fewlabel.datamodules import DigitsDataModule
from fewlabel.plugins import BatchImageAugment
from fewlabel.plugins.methods import BYOL


def main() -> None:
    out = Path(sys.argv[1])
    dm = DigitsDataModule(batch_size=32, train_split="unlabeled")
    dm.setup("fit")
    L.seed_everything(0, verbose=False)
    module = BYOL({"name": "small_cnn", "width": 4}, augment=BatchImageAugment(), hidden_dim=16, out_dim=8)
    initial = {k: v.detach().clone() for k, v in module.target_encoder.state_dict().items()}
    L.seed_everything(1 + int(os.environ.get("LOCAL_RANK", 0)), verbose=False)  # other augmentations per rank
    ema = EMATeacher(base_momentum=0.9, final_momentum=0.9)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=3, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        limit_val_batches=0, callbacks=[ema])
    trainer.fit(module, datamodule=dm)
    payload = {
        "world_size": trainer.world_size,
        "global_step": trainer.global_step,
        "ema_steps": ema.last_step,
        "initial_target": initial,
        "target_encoder": {k: v.cpu() for k, v in module.target_encoder.state_dict().items()},
        "target_projector": {k: v.cpu() for k, v in module.target_projector.state_dict().items()},
        "encoder": {k: v.cpu() for k, v in module.encoder.state_dict().items()},
        "target_encoder_params": [name for name, _ in module.target_encoder.named_parameters()],
    }
    torch.save(payload, out / f"ema_rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main()
