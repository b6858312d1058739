"""Pseudo-labelling 1,000,000 x 128 embeddings with k = 1000 (UnFuSeD defaults): time and peak memory.

Runs ``cluster_embeddings`` with its defaults (PCA 128 with whitening, L2 normalisation, k-means with
20 iterations) on a synthetic float32 Gaussian mixture. Memory is read psutil-free: the RSS before the
data exist is the baseline, ``ru_maxrss`` the peak; the ratio is (peak - baseline) / embedding bytes,
so the embedding matrix itself counts as 1.0.

    python benchmarks/pseudo_label_1m.py            # full size (targets: < 60 s, ratio < 1.5)
    python benchmarks/pseudo_label_1m.py --quick    # 20,000 x 32, k = 50, in seconds
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import current_rss_bytes, gaussian_mixture, mib, peak_rss_bytes  # noqa: E402

from fewlabel.plugins.clustering import cluster_embeddings, clustering_metrics  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced size, runs in seconds")
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--dim", type=int, default=None)
    parser.add_argument("--k", type=int, default=None)
    args = parser.parse_args()
    n = args.n or (20_000 if args.quick else 1_000_000)
    d = args.dim or (32 if args.quick else 128)
    k = args.k or (50 if args.quick else 1000)

    baseline = current_rss_bytes()
    x, y = gaussian_mixture(n, d, k, seed=0)
    after_data = peak_rss_bytes()
    start, cpu_start = time.perf_counter(), time.process_time()
    res = cluster_embeddings(x, k)  # UnFuSeD defaults: pca_dim=128, whiten, L2, niter=20
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    peak = peak_rss_bytes()
    increase = peak - baseline
    nmi = clustering_metrics(res.labels, y)["nmi"]

    print(f"pseudo_label_1m: N={n:,} D={d} k={k} (PCA {min(128, d)} whitening, L2, k-means 20 iters), "
          f"{os.cpu_count()} CPUs")
    print(f"wall_time_s: {wall:.2f}  (process CPU time {cpu:.1f} s: wall x cores if the machine were idle)")
    print(f"embeddings: {mib(x.nbytes)}")
    print(f"peak_rss: {mib(peak)} (baseline before data {mib(baseline)}, peak after data {mib(after_data)})")
    print(f"peak_rss_increase: {mib(increase)}")
    print(f"peak_increase_over_embeddings: {increase / x.nbytes:.2f}x")
    print(f"empty_clusters: {res.num_empty}  inertia: {res.inertia:.4g}  nmi_vs_mixture: {nmi:.3f}")


if __name__ == "__main__":
    main()
