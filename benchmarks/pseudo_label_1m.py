"""Pseudo-labelling 1,000,000 x 128 embeddings with k = 1000 (UnFuSeD defaults): time and peak memory.

Runs ``cluster_embeddings`` with its defaults (PCA 128 with whitening, L2 normalisation, k-means with
20 iterations on every row up to ``KMEANS_MAX_TRAIN_ROWS``, a seeded sample beyond) on a synthetic
float32 Gaussian mixture. Memory is read psutil-free: the RSS before the data exist is the baseline,
``ru_maxrss`` the peak; the ratio is (peak - baseline) / embedding bytes, so the embedding matrix itself
counts as 1.0. Then raw faiss does the same work (``PCAMatrix`` whitening, ``normalize_L2`` on the
whole projected matrix, ``faiss.Kmeans`` on as many rows, one search over all rows) for the time ratio.

    python benchmarks/pseudo_label_1m.py            # full size (targets: < 60 s, ratio < 1.5)
    python benchmarks/pseudo_label_1m.py --quick    # 20,000 x 32, k = 50, in seconds
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import faiss  # noqa: E402
import numpy as np  # noqa: E402
from _common import current_rss_bytes, gaussian_mixture, mib, peak_rss_bytes  # noqa: E402

from fewlabel.plugins.clustering import KMEANS_MAX_TRAIN_ROWS, cluster_embeddings  # noqa: E402
from fewlabel.plugins.evaluation import clustering_metrics  # noqa: E402


def raw_faiss(x: np.ndarray, k: int, dim: int, train_rows: int) -> np.ndarray:
    """PCA-whitening, L2 normalisation and k-means (20 iterations) on ``train_rows`` rows, in plain faiss."""
    pca = faiss.PCAMatrix(x.shape[1], dim, -0.5)
    pca.train(x)
    y = pca.apply_py(x)
    faiss.normalize_L2(y)
    km = faiss.Kmeans(dim, k, niter=20, seed=0, max_points_per_centroid=-(-train_rows // k),
                      min_points_per_centroid=1, verbose=False)
    km.train(y)
    return km.index.search(y, 1)[1][:, 0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced size, runs in seconds")
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--dim", type=int, default=None)
    parser.add_argument("--k", type=int, default=None)
    parser.add_argument("--max-train-rows", type=int, default=KMEANS_MAX_TRAIN_ROWS,
                        help="k-means training rows (0 = every row)")
    args = parser.parse_args()
    n = args.n or (20_000 if args.quick else 1_000_000)
    d = args.dim or (32 if args.quick else 128)
    k = args.k or (50 if args.quick else 1000)

    baseline = current_rss_bytes()
    x, y = gaussian_mixture(n, d, k, seed=0)
    after_data = peak_rss_bytes()
    start, cpu_start = time.perf_counter(), time.process_time()
    max_train_rows = args.max_train_rows or None
    res = cluster_embeddings(x, k, max_train_rows=max_train_rows)  # defaults: pca_dim=128, whiten, L2, niter=20
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    peak = peak_rss_bytes()
    increase = peak - baseline
    nmi = clustering_metrics(res.labels, y)["nmi"]
    train_rows = min(n, max_train_rows or n)
    start = time.perf_counter()
    raw_labels = raw_faiss(x, k, min(128, d), train_rows)
    raw_wall = time.perf_counter() - start
    raw_nmi = clustering_metrics(raw_labels, y)["nmi"]

    print(f"pseudo_label_1m: N={n:,} D={d} k={k} (PCA {min(128, d)} whitening, L2, k-means 20 iters on "
          f"{train_rows:,} rows), {os.cpu_count()} CPUs, 1-min load average {os.getloadavg()[0]:.1f} "
          "(this run included)")
    print(f"wall_time_s: {wall:.2f}  (process CPU time {cpu:.1f} s: wall x cores if the machine were idle)")
    print(f"embeddings: {mib(x.nbytes)}")
    print(f"peak_rss: {mib(peak)} (baseline before data {mib(baseline)}, peak after data {mib(after_data)})")
    print(f"peak_rss_increase: {mib(increase)}")
    print(f"peak_increase_over_embeddings: {increase / x.nbytes:.2f}x")
    print(f"empty_clusters: {res.num_empty}  inertia: {res.inertia:.4g}  nmi_vs_mixture: {nmi:.3f}")
    print(f"raw_faiss_wall_time_s: {raw_wall:.2f}  (nmi_vs_mixture {raw_nmi:.3f})")
    print(f"ratio_vs_raw_faiss: {wall / raw_wall:.2f}x")


if __name__ == "__main__":
    main()
