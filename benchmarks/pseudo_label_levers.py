"""How accurate are the pseudo-labels, and which lever makes them better? (stage 2 of UnFuSeD)

Takes a finished UnFuSeD run folder (``--run DIR``; its teacher and student are reused, not
retrained), embeds the unlabeled pool with each encoder (no augmentation) and scores, against the
pool's hidden labels (which only score, never shape a label), these ways of labelling the pool:

* ``k-means k=C`` (the recipe): PCA-whitening to the dimension chosen on the validation split,
  L2 normalisation, faiss k-means with k = the number of classes C; Hungarian-matched accuracy
  (the best one-to-one map of clusters to classes, which no label-free recipe can know, so it is an
  upper bound of what the student learns), and NMI.
* ``k-means restarts``: the same with 1 and 20 k-means restarts (the best objective kept).
* ``confident q``: the run's clusters, only the fraction ``q`` of each cluster with the largest
  margin between nearest and second-nearest centroid (what ``pseudo_labels.keep_fraction: q`` keeps):
  Hungarian accuracy on the kept part.
* Levers that use the draw's few labels (per label budget, mean over the run's draws; only the
  draw's labeled pool samples are used, as fine-tuning would):

  - ``map k=mC``: over-clustering, k = m x C, each cluster mapped to a class by the labeled samples
    it holds (majority), or, when it holds none, to the class whose labeled mean is nearest to its
    centroid; accuracy of the mapped labels (``m = 1`` is the recipe's clusters mapped this way);
  - ``seeded k-means``: k-means with k = C initialised at the class means of the labeled samples
    (cluster j is class j), accuracy;
  - ``nearest class mean``: no k-means, every sample gets its nearest labeled class mean (the
    SimpleShot few-shot head on the same features): the reference for what the labels alone give.

Every feature space is the recipe's (same PCA dimension, whitening, L2 normalisation), per encoder.

    fewlabel run unfused --output runs/unfused
    python benchmarks/pseudo_label_levers.py --run runs/unfused
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from fewlabel.plugins.clustering import keep_confident, pca_whiten, select_pca_dim
from fewlabel.plugins.evaluation import clustering_metrics
from fewlabel.plugins.gather import gather_embeddings
from fewlabel.plugins.recipes.config import load_config

from finetune_sweep import load  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

QUANTILES = (0.5, 0.75, 0.9)
MULTIPLES = (1, 2, 3, 5)


def features(pool: np.ndarray, dim: int) -> np.ndarray:
    """The recipe's clustering space: PCA-whitening to ``dim``, then L2 normalisation."""
    z = pca_whiten(pool, dim)
    faiss.normalize_L2(z)
    return z


def kmeans(z: np.ndarray, k: int, init: np.ndarray | None = None, nredo: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """faiss k-means as the recipe runs it (20 iterations, seed 0), optionally from given centroids.

    Returns the two nearest centroids of each row and their squared distances.
    """
    km = faiss.Kmeans(z.shape[1], k, niter=20, seed=0, nredo=nredo if init is None else 1,
                      max_points_per_centroid=len(z), min_points_per_centroid=1, verbose=False)
    km.train(z, init_centroids=None if init is None else np.ascontiguousarray(init, dtype=np.float32))
    dist, assign = km.index.search(z, 2)
    return assign, dist


def class_means(z: np.ndarray, idx: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    means = np.stack([z[idx[labels[idx] == c]].mean(axis=0) for c in range(num_classes)]).astype(np.float32)
    faiss.normalize_L2(means)
    return means


def map_clusters(assign: np.ndarray, centroids: np.ndarray, means: np.ndarray, idx: np.ndarray,
                 labels: np.ndarray) -> np.ndarray:
    """Class of each cluster: majority of its labeled samples, else the nearest labeled class mean."""
    k = centroids.shape[0]
    out = np.argmax(centroids @ means.T, axis=1)
    votes = np.zeros((k, means.shape[0]), dtype=np.int64)
    np.add.at(votes, (assign[idx], labels[idx]), 1)
    held = votes.sum(axis=1) > 0
    out[held] = np.argmax(votes[held], axis=1)
    return out[assign]


def score_encoder(name: str, pool: np.ndarray, val: np.ndarray, val_labels: np.ndarray, truth: np.ndarray,
                  draws: dict[int, list[np.ndarray]], num_classes: int, nredo: int) -> dict[str, Any]:
    c = num_classes
    dim, val_nmi = select_pca_dim(pool, val, val_labels, c, nredo=nredo)
    z = features(pool, dim)
    row: dict[str, Any] = {"pca_dim": dim, "val_nmi": val_nmi}
    for restarts in sorted({nredo, 1, 20}):
        a, d = kmeans(z, c, nredo=restarts)
        row[f"kmeans nredo={restarts}"] = clustering_metrics(a[:, 0], truth)
        if restarts == nredo:  # the run's own clusters: what a confidence filter would keep of them
            assign, margin = a[:, 0], d[:, 1] - d[:, 0]
    for q in QUANTILES:
        kept = keep_confident(assign, margin, q)
        row[f"confident {q}"] = clustering_metrics(assign[kept], truth[kept])["accuracy"]
    for m in MULTIPLES:
        a, _ = kmeans(z, m * c, nredo=nredo)
        km_centroids = np.stack([z[a[:, 0] == j].mean(axis=0) if (a[:, 0] == j).any() else np.zeros(z.shape[1])
                                 for j in range(m * c)]).astype(np.float32)
        row[f"map k={m}C"] = {
            b: float(np.mean([(map_clusters(a[:, 0], km_centroids, class_means(z, idx, truth, c), idx, truth)
                               == truth).mean() for idx in runs])) for b, runs in draws.items()}
    row["seeded k-means"], row["nearest class mean"] = {}, {}
    for b, runs in draws.items():
        seeded, ncm = [], []
        for idx in runs:
            means = class_means(z, idx, truth, c)
            seeded.append((kmeans(z, c, init=means)[0][:, 0] == truth).mean())
            ncm.append((np.argmax(z @ means.T, axis=1) == truth).mean())
        row["seeded k-means"][b], row["nearest class mean"][b] = float(np.mean(seeded)), float(np.mean(ncm))
    print(f"\n{name}: pca_dim {dim} (validation NMI {', '.join(f'{d}: {s:.2f}' for d, s in val_nmi.items())})")
    for restarts in sorted({nredo, 1, 20}):
        got = row[f"kmeans nredo={restarts}"]
        print(f"  k-means k=C, {restarts} restart(s): accuracy {got['accuracy']:.3f} (Hungarian), NMI {got['nmi']:.3f}"
              + ("  <- the run's setting" if restarts == nredo else ""))
    print("  confident part: " + ", ".join(f"{q:.0%} kept {row[f'confident {q}']:.3f}" for q in QUANTILES))
    budgets = list(draws)
    print(f"  {'with the draw labels':<22}" + "".join(f"{f'{b} per class':>14}" for b in budgets))
    for key in [f"map k={m}C" for m in MULTIPLES] + ["seeded k-means", "nearest class mean"]:
        print(f"  {key:<22}" + "".join(f"{row[key][b]:>14.3f}" for b in budgets))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=Path("runs/unfused"), help="a finished UnFuSeD run folder")
    parser.add_argument("--teacher-only", action="store_true",
                        help="score the teacher alone (no finished student needed)")
    parser.add_argument("--output", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    stored = args.run / "config.yaml"
    if not stored.exists():
        raise SystemExit(f"{stored} not found: --run must be a finished UnFuSeD run folder (fewlabel run unfused)")
    config = load_config("unfused", stored, [])
    if config.get("num_threads"):
        torch.set_num_threads(int(config["num_threads"]))
    dm, encoders = load(config, args.run, student=not args.teacher_only)
    truth = dm.pool_targets
    ft = config["finetune"]
    draws = {b: [dm.with_labels(b, s).labeled_indices for s in ft["seeds"]] for b in ft["labels_per_class"]}
    print(f"run {args.run}: pool {len(truth)}, {dm.num_classes} classes, draws {ft['seeds']} at {list(draws)} labels "
          "per class")
    nredo = int((config.get("pseudo_labels") or {}).get("nredo", 1))
    figures = {}
    for name, encoder in encoders.items():
        pool = gather_embeddings(encoder, dm.unlabeled_dataloader(train=False)).embeddings
        val = gather_embeddings(encoder, dm.val_dataloader())
        figures[name] = score_encoder(name, pool, val.embeddings, val.labels, truth, draws, dm.num_classes, nredo)
    if args.output:
        args.output.write_text(json.dumps(figures, indent=1, default=str))


if __name__ == "__main__":
    main()
