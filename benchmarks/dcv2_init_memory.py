"""DeepCluster-v2's first memory bank filled in train mode (SwAV) vs eval mode: pseudo-label quality.

For each seed and mode, runs the UnFuSeD recipe's teacher stage exactly as configured in the packaged
``unfused_digits.yaml`` (``run_teacher``: DeepCluster-v2, SmallCNN width 32, 80 epochs), with only
``teacher.module.init_memory_train_mode`` changed, then pseudo-labels the unlabeled training pool as
stage 2 does (teacher encoder in eval mode, no augmentation, the config's ``pseudo_labels`` section:
PCA whitening to the width ``pca_dim: auto`` picks on the validation split (a fixed 16 when the figures
in benchmarks/README.md were measured), L2, k-means 20 iterations, 20 restarts) and scores the pseudo-labels against the
pool's hidden true labels (the unlabeled training pool, not the test split). One torch thread.

    python benchmarks/dcv2_init_memory.py                  # seeds 0 1 2, both modes (~30 s per teacher)
    python benchmarks/dcv2_init_memory.py --quick          # 2 epochs, seed 0, in seconds
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from fewlabel.plugins.clustering import cluster_embeddings, select_pca_dim
from fewlabel.plugins.evaluation import clustering_metrics
from fewlabel.plugins.gather import gather_embeddings
from fewlabel.plugins.recipes.build import make_datamodule
from fewlabel.plugins.recipes.config import load_config, merge
from fewlabel.plugins.recipes.unfused import run_teacher


def pseudo_label_metrics(config: dict, train_mode: bool, output: Path) -> tuple[dict[str, float], int]:
    """Teacher stage with the given init-memory mode, then stage-2 pseudo-labels scored on the pool."""
    config = merge(config, {"teacher": {"module": {"init_memory_train_mode": train_mode}}})
    dm = make_datamodule(config["data"])
    dm.setup("fit")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # progress bars
        encoder = run_teacher(config, dm, output, "none").encoder.eval()
    emb = gather_embeddings(encoder, dm.unlabeled_dataloader(train=False), label_key="target")
    pl_cfg = {key: value for key, value in (config.get("pseudo_labels") or {}).items() if key != "num_clusters"}
    if pl_cfg.get("pca_dim") == "auto":  # as PseudoLabeler: chosen on the labeled validation split
        val = gather_embeddings(encoder, dm.val_dataloader())
        settings = {key: value for key, value in pl_cfg.items() if key != "pca_dim"}
        pl_cfg["pca_dim"], _ = select_pca_dim(emb.embeddings, val.embeddings, val.labels, dm.num_classes,
                                              seed=config.get("seed", 0), **settings)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = cluster_embeddings(emb.embeddings, dm.num_classes, seed=config.get("seed", 0), **pl_cfg)
    degenerate = sum("degenerate" in str(w.message) for w in caught)
    return clustering_metrics(result.labels, emb.labels), degenerate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 epochs, seed 0")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--epochs", type=int, default=None, help="teacher epochs (default: the config's)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    config = load_config("unfused")
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    epochs = args.epochs or (2 if args.quick else None)
    if epochs is not None:
        config = merge(config, {"teacher": {"trainer": {"max_epochs": epochs}}})
    print(f"dcv2_init_memory: digits, teacher {config['teacher']['trainer']['max_epochs']} epochs, "
          f"pseudo_labels {config['pseudo_labels']}, seeds {seeds}")
    print(f"{'mode':<8}{'seed':>6}{'accuracy':>10}{'nmi':>8}{'ari':>8}{'degenerate_warnings':>21}{'seconds':>9}")
    results: dict[str, list[dict[str, float]]] = {"train": [], "eval": []}
    for seed in seeds:
        for mode in ("train", "eval"):
            start = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                metrics, degenerate = pseudo_label_metrics(merge(config, {"seed": seed}), mode == "train", Path(tmp))
            results[mode].append(metrics)
            print(f"{mode:<8}{seed:>6}{metrics['accuracy']:>10.4f}{metrics['nmi']:>8.4f}{metrics['ari']:>8.4f}"
                  f"{degenerate:>21}{time.perf_counter() - start:>9.1f}", flush=True)
    for mode, rows in results.items():
        mean = {key: float(np.mean([r[key] for r in rows])) for key in ("accuracy", "nmi", "ari")}
        print(f"mean_{mode}: accuracy {mean['accuracy']:.4f}  nmi {mean['nmi']:.4f}  ari {mean['ari']:.4f}")


if __name__ == "__main__":
    main()
