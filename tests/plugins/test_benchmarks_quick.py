"""Each benchmark script runs with ``--quick`` and prints its figures (no assertion on time)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.parametrize(
    ("script", "figures"),
    [
        ("pseudo_label_1m.py", ["wall_time_s:", "peak_rss:", "peak_rss_increase:", "peak_increase_over_embeddings:"]),
        ("kmeans_vs_sklearn.py", ["faiss.Kmeans (raw)", "fewlabel kmeans", "sklearn KMeans", "speedup_sklearn_over_fewlabel:",
                                  "inertia_ratio_fewlabel_over_sklearn:"]),
        ("scaling.py", ["us_per_row", "20,000"]),
        ("dcv2_init_memory.py", ["mean_train: accuracy", "mean_eval: accuracy"]),
        ("ssl_zoo_digits.py", ["train_s", "knn_acc", "probe_acc", "simclr", "byol", "raw_pixels", "random_init",
                               "chance:"]),
        ("loop_overhead.py", ["fit_steps_per_s", "steady_steps_per_s", "throughput_ratio_fit:",
                              "throughput_ratio_steady:", "max_param_diff:"]),
        ("tta_digits.py", ["mean sev 3-5", "target_tent_eata_sar_improve_mean_sev3_5:", "wall_time_s:"]),
        ("finetune_variants.py", ["plain", "greedy-soup", "lp-ft", "ssf", "wall_time_s:"]),
    ],
)
def test_benchmark_runs_quick(script: str, figures: list[str]) -> None:
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick"], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    for figure in figures:
        assert figure in out.stdout, out.stdout
