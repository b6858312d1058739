"""Shared helpers of the benchmark scripts: synthetic embeddings and psutil-free memory readings."""

from __future__ import annotations

import resource
import sys

import numpy as np


def current_rss_bytes() -> int:
    """Resident set size now, from ``/proc/self/statm`` (Linux); falls back to the peak elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * resource.getpagesize()
    except OSError:
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def gaussian_mixture(n: int, d: int, components: int, *, seed: int = 0, spread: float = 1.0,
                     chunk: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
    """``(n, d)`` float32 rows from ``components`` Gaussians, written chunk by chunk (no full-size temporary).

    Component means are ``N(0, 1)`` and the within-component noise is ``N(0, spread / sqrt(d))``
    per dimension, with a random per-dimension scale so the spectrum is not flat.
    """
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((components, d), dtype=np.float32)
    dim_scale = np.geomspace(1.0, 0.05, d).astype(np.float32)
    x = np.empty((n, d), dtype=np.float32)
    y = rng.integers(0, components, size=n, dtype=np.int32)
    noise = np.float32(spread / np.sqrt(d))
    for a in range(0, n, chunk):
        block = x[a : a + chunk]
        rng.standard_normal(block.shape, dtype=np.float32, out=block)
        block *= noise
        block += means[y[a : a + chunk]]
        block *= dim_scale
    return x, y


def mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:,.0f} MiB"
