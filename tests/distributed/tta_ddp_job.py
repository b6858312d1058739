"""A script run by ``tests/distributed/test_tta_ddp.py``: ``python tta_ddp_job.py OUT WEIGHTS``.

Tests a digits :class:`~fewlabel.plugins.Classifier` (weights from ``WEIGHTS``) with
:class:`TestTimeAdaptation` (Tent, continual, restore) under two-process CPU DDP (gloo). Lightning's
``strategy="ddp"`` relaunches this script once per extra rank, so everything here runs on every rank; each
rank writes ``OUT/tta_rank<r>.pt``: the sample indices of each batch it adapted on, the callback's state,
the module's weights after the run and the logged metrics.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch

from fewlabel.callbacks.tta import TestTimeAdaptation
from fewlabel.datamodules import DigitsDataModule
from fewlabel.plugins import Classifier

METHOD_KWARGS = {"lr": 1e-2}


class BatchRecorder(L.Callback):
    """Keeps the ``"index"`` of every test batch, in order."""

    def __init__(self) -> None:
        self.indices: list[torch.Tensor] = []

    def on_test_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int,
                            dataloader_idx: int = 0) -> None:
        self.indices.append(batch["index"].cpu().clone())


def main() -> None:
    out, weights = Path(sys.argv[1]), Path(sys.argv[2])
    dm = DigitsDataModule(eval_batch_size=64)
    module = Classifier({"name": "small_cnn", "width": 8}, num_classes=10)
    module.load_state_dict(torch.load(weights, weights_only=True))
    recorder = BatchRecorder()
    tta = TestTimeAdaptation("tent", method_kwargs=METHOD_KWARGS)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, inference_mode=False,
                        callbacks=[recorder, tta])
    results = trainer.test(module, datamodule=dm, verbose=False)
    payload = {
        "world_size": trainer.world_size,
        "indices": recorder.indices,
        "tta_state": tta.state_dict(),
        "weights_after": {k: v.cpu() for k, v in module.state_dict().items()},
        "results": results,
        "forward_patched": "forward" in vars(module),
    }
    torch.save(payload, out / f"tta_rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main()
