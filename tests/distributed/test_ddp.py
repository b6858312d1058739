"""Real two-process DDP on CPU (gloo): gather, pseudo-labels and DeepCluster-v2 agree across ranks and
with a single-process run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from fewlabel.datamodules import DigitsDataModule
from fewlabel.plugins import SmallCNN, cluster_embeddings, gather_embeddings

SCRIPT = Path(__file__).with_name("ddp_job.py")


def _run(mode: str, out: Path, *args: str) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, str(SCRIPT), mode, str(out), *args], capture_output=True, text=True,
                          env=env, timeout=300, cwd=out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [torch.load(out / f"{mode}_rank{r}.pt", weights_only=False) for r in (0, 1)]


def test_gather_and_pseudo_labels_match_single_process(tmp_path: Path) -> None:
    torch.manual_seed(0)
    teacher = SmallCNN(width=8)
    torch.save(teacher.state_dict(), tmp_path / "teacher.pt")
    rank0, rank1 = _run("pseudo_labels", tmp_path, str(tmp_path / "teacher.pt"))
    assert rank0["world_size"] == 2

    dm = DigitsDataModule()
    dm.setup("fit")
    single = gather_embeddings(teacher, dm.unlabeled_dataloader(train=False), label_key="target")
    for rank in (rank0, rank1):  # every rank holds the whole, de-duplicated, ordered set
        assert np.array_equal(rank["indices"].numpy(), np.arange(dm.num_unlabeled))
        assert rank["embeddings"].dtype == torch.float32
        np.testing.assert_allclose(rank["embeddings"].numpy(), single.embeddings, rtol=1e-5, atol=1e-5)
        assert np.array_equal(rank["targets"].numpy(), dm.pool_targets)
    # rank 0 clustered and broadcast: both ranks agree, and agree with clustering the single-process gather
    assert torch.equal(rank0["labels"], rank1["labels"])
    expected = cluster_embeddings(single.embeddings, 10, pca_dim=16, nredo=3, seed=0).labels
    assert np.array_equal(rank0["labels"].numpy(), expected)
    assert rank0["metrics"] == rank1["metrics"]


def test_deepcluster_v2_ranks_agree(tmp_path: Path) -> None:
    rank0, rank1 = _run("deepcluster", tmp_path)
    assert rank0["world_size"] == 2
    # the memory bank is all-gathered every step, k-means runs on rank 0 and is broadcast
    assert torch.equal(rank0["memory"], rank1["memory"])
    assert torch.equal(rank0["assignments"], rank1["assignments"])
    assert torch.equal(rank0["prototypes"], rank1["prototypes"])
    assert torch.allclose(rank0["weight"], rank1["weight"])  # DDP keeps the replicas in sync
    assert bool((rank0["memory"].norm(dim=-1) > 0.99).all())  # every sample was seen by some rank
