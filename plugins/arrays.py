"""``(N, D)`` arrays read in row chunks: validation, chunk sizes and float32 reads.

Clustering, kNN and the linear probe accept float16/32/64 arrays and memmaps of any size and read
them chunk by chunk, so every temporary is chunk-sized; the gather primitive blocks its copies and
all-gathers with :func:`chunk_rows` too, under its own byte budget.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fewlabel.plugins.arguments import is_count

__all__ = ["CHUNK_BYTES", "as_matrix", "chunk_rows", "read_rows"]

# Rows are streamed in chunks of about this many bytes of float32 (32,768 rows of 128 dims): every
# temporary is chunk-sized, so the extra memory stays bounded whatever N is.
CHUNK_BYTES = 16 << 20


def chunk_rows(d: int, chunk_size: int | None = None, *, chunk_bytes: int = CHUNK_BYTES, min_rows: int = 256) -> int:
    """Rows per chunk of ``d`` float32 columns: ``chunk_size`` when given, else about ``chunk_bytes``.

    Args:
        d: columns per row.
        chunk_size: an explicit number of rows (``>= 1``), or ``None`` for the byte budget.
        chunk_bytes: the byte budget of a chunk of float32 rows.
        min_rows: the fewest rows a budgeted chunk holds (wide rows exceed the budget rather than
            shrink below it).

    Raises:
        ValueError: ``chunk_size`` is neither ``None`` nor an integer ``>= 1``.

    Example:
        >>> chunk_rows(128), chunk_rows(128, 1000), chunk_rows(3, chunk_bytes=24, min_rows=1)
        (32768, 1000, 2)
    """
    if chunk_size is None:
        return max(min_rows, chunk_bytes // (4 * max(d, 1)))
    if not is_count(chunk_size, 1):
        raise ValueError(f"chunk_size must be an int >= 1 (rows) or None, got {chunk_size!r}")
    return int(chunk_size)


def as_matrix(x: Any, name: str = "x", chunk_size: int | None = None) -> np.ndarray:
    """Validate ``x`` as a finite ``(N, D)`` array without copying it (float16, float64 and memmaps stay).

    The non-finite count is taken chunk by chunk after casting to float32, the type faiss sees.

    Raises:
        ValueError: not 2-D, empty, not real numbers, or non-finite values (with their count); the
            message names ``name``.
    """
    x = x if isinstance(x, np.ndarray) else np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, D) array, got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {x.shape}")
    if x.dtype.kind not in "fiub":
        raise ValueError(f"{name} must hold real numbers, got dtype {x.dtype}")
    if x.dtype.kind == "f":
        rows, bad = chunk_rows(x.shape[1], chunk_size), 0
        for a in range(0, x.shape[0], rows):
            block = np.asarray(x[a : a + rows], dtype=np.float32)
            bad += block.size - int(np.count_nonzero(np.isfinite(block)))
        if bad:
            raise ValueError(f"{name} has {bad} non-finite values (NaN/inf, after casting to float32)")
    return x


def read_rows(x: np.ndarray, a: int, b: int, sample: np.ndarray | None, fresh: bool) -> np.ndarray:
    """Rows ``a:b`` (of ``sample`` when given) as C-contiguous float32; ``fresh`` = never a view of ``x``."""
    block = np.asarray(x[a:b] if sample is None else x[sample[a:b]])
    if block.dtype == np.float32 and block.flags.c_contiguous:
        return block.copy() if fresh and sample is None else block
    return np.array(block, dtype=np.float32, order="C")
