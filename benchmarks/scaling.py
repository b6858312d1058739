"""Wall time of ``cluster_embeddings`` as N grows, k fixed: near-linear in N.

N = 1e4, 3e4, 1e5, 3e5, 1e6 rows of a 128-dim float32 Gaussian mixture (prefixes of one array),
k = 100 fixed, UnFuSeD defaults (PCA 128 whitening, L2, k-means 20 iterations). k-means trains on every
row up to ``KMEANS_MAX_TRAIN_ROWS`` = 262,144 (a seeded sample beyond) and PCA statistics use at most
262,144 rows, so up to that size time grows linearly with N, and beyond it only the chunked projection +
assignment grows: time / N falls and levels off.

    python benchmarks/scaling.py           # full size
    python benchmarks/scaling.py --quick   # N up to 20,000, D = 32, in seconds
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import gaussian_mixture  # noqa: E402

from fewlabel.plugins.clustering import cluster_embeddings  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced size, runs in seconds")
    parser.add_argument("--k", type=int, default=100)
    args = parser.parse_args()
    sizes = [2_000, 6_000, 20_000] if args.quick else [10_000, 30_000, 100_000, 300_000, 1_000_000]
    d = 32 if args.quick else 128
    x, _ = gaussian_mixture(max(sizes), d, args.k, seed=0)
    print(f"scaling: cluster_embeddings, D={d}, k={args.k} fixed, PCA {min(d, 128)} whitening, L2, 20 iters, "
          f"{os.cpu_count()} CPUs")
    print(f"{'N':>10}{'wall_s':>10}{'us_per_row':>12}{'time_ratio':>12}{'N_ratio':>10}")
    first = None
    for n in sizes:
        start = time.perf_counter()
        cluster_embeddings(x[:n], args.k)
        wall = time.perf_counter() - start
        first = first or (wall, n)
        print(f"{n:>10,}{wall:>10.2f}{1e6 * wall / n:>12.2f}{wall / first[0]:>12.1f}{n / first[1]:>10.0f}")


if __name__ == "__main__":
    main()
