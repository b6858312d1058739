"""Image rotations by multiples of 90 degrees, with the rotation as a label (RotNet's pretext task).

Gidaris, Singh & Komodakis, "Unsupervised Representation Learning by Predicting Image Rotations",
ICLR 2018, arXiv 1803.07728.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["NUM_ROTATIONS", "rotate_batch", "rotate_by"]

#: The four rotations 0, 90, 180 and 270 degrees; label ``k`` is ``k * 90`` degrees counter-clockwise.
NUM_ROTATIONS = 4


def _check_square_images(x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"expected a torch.Tensor of images, got {type(x).__name__}")
    if x.ndim != 4 or x.shape[-1] != x.shape[-2]:
        raise ValueError(
            f"rotations by 90 degrees need a (B, C, H, W) batch of square images (H == W), got shape "
            f"{tuple(x.shape)}; resize or crop the images to a square first"
        )


def rotate_by(x: Tensor, k: Tensor) -> Tensor:
    """Rotate sample ``i`` of ``x`` by ``k[i] * 90`` degrees counter-clockwise (``torch.rot90`` over H, W).

    Args:
        x: Square images ``(B, C, H, W)``.
        k: Rotation of each sample, integers ``(B,)``; any integer works (taken modulo 4), so
            ``rotate_by(rotate_by(x, k), -k)`` recovers ``x``.

    Returns:
        The rotated batch, same shape and dtype as ``x``.

    Raises:
        ValueError: ``x`` is not a 4-D batch of square images, or ``k`` is not one integer per sample.

    Example:
        >>> x = torch.arange(4.0).view(1, 1, 2, 2)
        >>> rotate_by(x, torch.tensor([1])).flatten().tolist()
        [1.0, 3.0, 0.0, 2.0]
    """
    _check_square_images(x)
    if k.shape != (x.shape[0],) or k.is_floating_point() or k.is_complex():
        raise ValueError(f"k must hold one integer rotation per sample, shape ({x.shape[0]},), got "
                         f"{k.dtype} of shape {tuple(k.shape)}")
    k = k.to(x.device).remainder(NUM_ROTATIONS)
    out = x.clone()
    for r in range(1, NUM_ROTATIONS):
        chosen = k == r
        out[chosen] = torch.rot90(x[chosen], r, dims=(2, 3))
    return out


def rotate_batch(x: Tensor, *, all_rotations: bool = True,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Rotated copies of a batch of square images and their rotation labels.

    With ``all_rotations`` (the paper's setting) every image appears in all four rotations, sample
    by sample: row ``4 * i + r`` is ``torch.rot90(x[i], r, dims=(1, 2))`` with label ``r``, a batch of
    ``4B``. Otherwise each sample gets one rotation drawn uniformly from the global torch RNG (or
    ``generator``), a batch of ``B``. No other randomness; ``x`` is not modified.

    Args:
        x: Square images ``(B, C, H, W)``.
        all_rotations: All four rotations of every image (``4B`` rows) instead of one random rotation each.
        generator: Source of the random rotations; ``None`` = the global RNG (seeded by ``seed_everything``).

    Returns:
        ``(rotated, labels)``: images ``(4B or B, C, H, W)`` and ``int64`` labels in ``{0, 1, 2, 3}``
        on ``x``'s device.

    Raises:
        ValueError: ``x`` is not a 4-D batch of square images.

    Example:
        >>> images, labels = rotate_batch(torch.rand(2, 1, 8, 8))
        >>> images.shape, labels.tolist()
        (torch.Size([8, 1, 8, 8]), [0, 1, 2, 3, 0, 1, 2, 3])
    """
    _check_square_images(x)
    if all_rotations:
        rotated = torch.stack([torch.rot90(x, r, dims=(2, 3)) for r in range(NUM_ROTATIONS)], dim=1)
        labels = torch.arange(NUM_ROTATIONS, device=x.device).repeat(x.shape[0])
        return rotated.flatten(0, 1), labels
    labels = torch.randint(NUM_ROTATIONS, (x.shape[0],), generator=generator,
                           device=generator.device if generator is not None else "cpu").to(x.device)
    return rotate_by(x, labels), labels
