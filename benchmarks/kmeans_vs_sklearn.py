"""fewlabel's k-means vs scikit-learn's and raw faiss on the same data, in the same run.

200,000 x 128 float32 (a Gaussian mixture), k = 1000, 20 Lloyd iterations, one initialisation.
All three start from random rows (faiss' initialisation; scikit-learn ``init="random"``), run exactly
20 iterations (scikit-learn ``tol=0``, ``algorithm="lloyd"``) and are scored with the same function:
the k-means objective (inertia, sum of squared distances to the nearest centroid) over all rows.
fewlabel's ``kmeans`` and raw faiss train on all rows here (N <= ``KMEANS_MAX_TRAIN_ROWS`` = 262,144
and N <= faiss' default k * max_points_per_centroid = 256,000).

    python benchmarks/kmeans_vs_sklearn.py           # full size
    python benchmarks/kmeans_vs_sklearn.py --quick   # 5,000 x 32, k = 20, in seconds
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import faiss  # noqa: E402
import numpy as np  # noqa: E402
from _common import gaussian_mixture  # noqa: E402
from sklearn.cluster import KMeans  # noqa: E402

from fewlabel.plugins.clustering import kmeans  # noqa: E402


def inertia(x: np.ndarray, centroids: np.ndarray) -> float:
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    dist, _ = index.search(x, 1)
    return float(dist.sum(dtype=np.float64))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced size, runs in seconds")
    args = parser.parse_args()
    n, d, k = (5_000, 32, 20) if args.quick else (200_000, 128, 1000)
    niter = 20
    x, _ = gaussian_mixture(n, d, k, seed=0)
    print(f"kmeans_vs_sklearn: N={n:,} D={d} k={k}, {niter} iterations, 1 init (random rows), "
          f"{os.cpu_count()} CPUs, faiss threads {faiss.omp_get_max_threads()}")

    start = time.perf_counter()
    km = faiss.Kmeans(d, k, niter=niter, seed=0, min_points_per_centroid=1, verbose=False)
    km.train(x)
    km.index.search(x, 1)
    t_faiss = time.perf_counter() - start
    obj_faiss = inertia(x, km.centroids)

    start = time.perf_counter()
    _, centroids = kmeans(x, k, niter=niter, seed=0)
    t_fewlabel = time.perf_counter() - start
    obj_fewlabel = inertia(x, centroids)

    start = time.perf_counter()
    sk = KMeans(n_clusters=k, n_init=1, max_iter=niter, tol=0.0, init="random", algorithm="lloyd", random_state=0)
    sk.fit(x)
    t_sklearn = time.perf_counter() - start
    obj_sklearn = inertia(x, sk.cluster_centers_)

    print(f"{'method':<28}{'wall_s':>10}{'inertia':>16}")
    print(f"{'faiss.Kmeans (raw)':<28}{t_faiss:>10.2f}{obj_faiss:>16.6g}")
    print(f"{'fewlabel kmeans':<28}{t_fewlabel:>10.2f}{obj_fewlabel:>16.6g}")
    print(f"{'sklearn KMeans init=random':<28}{t_sklearn:>10.2f}{obj_sklearn:>16.6g}  (n_iter_={sk.n_iter_})")
    print(f"speedup_sklearn_over_fewlabel: {t_sklearn / t_fewlabel:.1f}x")
    print(f"speedup_sklearn_over_faiss: {t_sklearn / t_faiss:.1f}x")
    print(f"fewlabel_overhead_vs_faiss: {t_fewlabel / t_faiss:.2f}x")
    print(f"inertia_ratio_fewlabel_over_sklearn: {obj_fewlabel / obj_sklearn:.4f}")


if __name__ == "__main__":
    main()
