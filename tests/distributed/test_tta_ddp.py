"""TestTimeAdaptation under real two-process CPU DDP (gloo): each rank adapts on its own shard exactly as a
single-process wrapper would, the logged accuracy covers both shards, and the module is restored."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from fewlabel.callbacks.tta import _EncoderHead
from fewlabel.datamodules import DigitsDataModule
from fewlabel.plugins import Classifier
from fewlabel.plugins.tta import create_tta

SCRIPT = Path(__file__).with_name("tta_ddp_job.py")
sys.path.insert(0, str(SCRIPT.parent))
from tta_ddp_job import METHOD_KWARGS  # noqa: E402


def test_tta_callback_under_ddp(tmp_path: Path) -> None:
    L.seed_everything(0, verbose=False)
    module = Classifier({"name": "small_cnn", "width": 8}, num_classes=10)
    dm = DigitsDataModule(eval_batch_size=64)
    dm.setup("fit")
    trainer = L.Trainer(accelerator="cpu", max_epochs=3, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=dm.labeled_dataloader())
    torch.save(module.state_dict(), tmp_path / "weights.pt")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), str(tmp_path / "weights.pt")],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"tta_rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert ranks[0]["world_size"] == 2

    test = dm.test_dataloader().dataset
    seen = torch.cat([torch.cat(rank["indices"]) for rank in ranks])
    assert sorted(seen.tolist()) == list(range(len(test)))  # 540 samples, split 270 / 270, no padding
    initial = torch.load(tmp_path / "weights.pt", weights_only=True)
    correct = 0
    for rank in ranks:
        # the module is restored on every rank, and its forward is the class's again
        assert all(torch.equal(initial[k], v) for k, v in rank["weights_after"].items())
        assert not rank["forward_patched"]
        # replay the rank's shard through a single-process wrapper: the same adapted state
        replica = Classifier({"name": "small_cnn", "width": 8}, num_classes=10)
        replica.load_state_dict(initial)
        replica.eval()
        wrapper = create_tta("tent", _EncoderHead(replica.encoder, replica.head), **METHOD_KWARGS)
        for indices in rank["indices"]:
            batch = [test[int(i)] for i in indices]
            x = torch.stack([b["input"] for b in batch])
            labels = torch.tensor([b["label"] for b in batch])
            correct += int((wrapper(x).argmax(1) == labels).sum())
        saved = rank["tta_state"]["state"]
        assert saved["batches"] == len(rank["indices"])
        expected = wrapper.adapted_state_dict()
        for key, value in saved["adapted"].items():
            if key != "_extra_state":
                torch.testing.assert_close(value, expected[key], atol=1e-6, rtol=1e-5)
    # each rank adapted on its own shard; the two models differ
    a, b = (rank["tta_state"]["state"]["adapted"] for rank in ranks)
    assert any(not torch.equal(a[k], b[k]) for k in a if k != "_extra_state")
    # test/acc is synchronised over both shards
    for rank in ranks:
        assert rank["results"][0]["test/acc"] == pytest.approx(correct / len(test), abs=1e-6)
