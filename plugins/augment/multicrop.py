"""Batch-wise multi-crop on the device: global and local random resized crops of an image batch.

The multi-crop scheme of SwAV (Caron et al., "Unsupervised Learning of Visual Features by Contrasting
Cluster Assignments", 2020, arXiv 2006.09882) as DINO uses it (Caron et al., "Emerging Properties in
Self-Supervised Vision Transformers", 2021, arXiv 2104.14294).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewlabel.plugins.arguments import is_count
from fewlabel.plugins.augment.sampling import check_range
from fewlabel.plugins.augment.views import ViewPipelines

__all__ = ["MultiCrop"]

#: Attempts per sample before falling back to a central crop, as in torchvision's RandomResizedCrop.
_ATTEMPTS = 10
#: Local crops default to this fraction of the input size (96 / 224 in DINO), at least ``_MIN_LOCAL`` pixels.
_LOCAL_FRACTION = 3.0 / 7.0
_MIN_LOCAL = 4
_INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


def _check_size(name: str, size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(is_count(s, 1) for s in pair):
        raise ValueError(f"{name} must be None, an int >= 1 or a pair (height, width) of ints >= 1, got {size!r}")
    return int(pair[0]), int(pair[1])


def _check_augment(name: str, augment: nn.Module | None) -> nn.Module | None:
    if augment is not None and (not isinstance(augment, nn.Module) or isinstance(augment, ViewPipelines)):
        raise ValueError(f"{name} must be an nn.Module applied to every crop (e.g. BatchImageAugment; not "
                         f"ViewPipelines) or None, got {type(augment).__name__}")
    return augment


class MultiCrop(nn.Module):
    """``num_global`` large and ``num_local`` small random resized crops of every image, each view augmented.

    Each view draws one crop box per sample as torchvision's ``RandomResizedCrop`` does: an area
    fraction uniform in ``scale`` and an aspect ratio log-uniform in ``ratio``, up to 10 attempts
    until the box fits in the image, else a central crop (the whole image when its aspect ratio is
    within ``ratio``); the box's position is uniform. Unlike torchvision, box sides and positions are
    continuous (sub-pixel) rather than rounded to whole pixels. One ``affine_grid`` + ``grid_sample``
    resamples the whole batch to the view's size (edge pixels repeated, no antialiasing), so a view
    costs one kernel on the device; the random numbers come from torch's global generator of the
    input's device. Numerics run in float32; views have the input's dtype.

    Views come back globals first, then locals, each passed through its augmentation module (e.g.
    :class:`~fewlabel.plugins.augment.BatchImageAugment`) when one is given.

    Args:
        num_global: Number of global views (2 in DINO).
        num_local: Number of local views (8 in DINO; 0 disables multi-crop).
        global_scale: Range of the global crops' area, as a fraction of the image (DINO: 0.4-1).
        local_scale: Range of the local crops' area (DINO: 0.05-0.4).
        global_size: Output size ``(H, W)`` (or one int) of the global views; ``None`` = the input's size.
        local_size: Output size of the local views; ``None`` = 3/7 of the input's size per side (DINO's
            96 / 224), rounded, at least 4 pixels (so 8x8 digits give 4x4 local views).
        ratio: Range of the crops' aspect ratio (width / height).
        interpolation: ``"bilinear"``, ``"bicubic"`` (DINO's choice) or ``"nearest"``.
        global_augment: Module applied to each global view after the crop, or ``None``.
        local_augment: Module applied to each local view after the crop, or ``None``.

    Raises:
        ValueError: on a negative view count, no global view, a scale outside ``(0, 1]``, an empty or
            non-positive ratio, a bad size or interpolation, or an augmentation that is not a module.

    Example:
        >>> crops = MultiCrop(num_global=2, num_local=3)
        >>> [tuple(v.shape) for v in crops(torch.rand(5, 1, 8, 8))]
        [(5, 1, 8, 8), (5, 1, 8, 8), (5, 1, 4, 4), (5, 1, 4, 4), (5, 1, 4, 4)]
    """

    def __init__(
        self,
        num_global: int = 2,
        num_local: int = 2,
        global_scale: Sequence[float] = (0.4, 1.0),
        local_scale: Sequence[float] = (0.05, 0.4),
        global_size: int | Sequence[int] | None = None,
        local_size: int | Sequence[int] | None = None,
        ratio: Sequence[float] = (3.0 / 4.0, 4.0 / 3.0),
        interpolation: str = "bilinear",
        global_augment: nn.Module | None = None,
        local_augment: nn.Module | None = None,
    ) -> None:
        super().__init__()
        for name, value, low, why in (("num_global", num_global, 1, "the teacher sees the global views"),
                                      ("num_local", num_local, 0, "0 disables the local views")):
            if not is_count(value, low):
                raise ValueError(f"{name} must be an int >= {low} ({why}), got {value!r}")
        if interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {list(_INTERPOLATIONS)}, got {interpolation!r}")
        self.num_global, self.num_local = int(num_global), int(num_local)
        self.global_scale = check_range("global_scale", global_scale, 0.0, 1.0, strict_low=True)
        self.local_scale = check_range("local_scale", local_scale, 0.0, 1.0, strict_low=True)
        self.ratio = check_range("ratio", ratio, 0.0, strict_low=True)
        self.global_size = _check_size("global_size", global_size)
        self.local_size = _check_size("local_size", local_size)
        self.interpolation = interpolation
        self.global_augment = _check_augment("global_augment", global_augment)
        self.local_augment = _check_augment("local_augment", local_augment)

    @property
    def num_views(self) -> int:
        """Views per call: ``num_global + num_local``."""
        return self.num_global + self.num_local

    def output_sizes(self, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """``(global (H, W), local (H, W))`` output sizes for an input of ``height x width``."""
        global_size = self.global_size or (height, width)
        local_size = self.local_size or tuple(max(_MIN_LOCAL, round(s * _LOCAL_FRACTION)) for s in (height, width))
        return global_size, local_size  # type: ignore[return-value]

    def sample_boxes(self, n: int, height: int, width: int, scale: tuple[float, float],
                     device: torch.device | str = "cpu") -> Tensor:
        """Draw one crop box per sample, as fractions of the image: ``(n, 4)`` rows ``(left, top, w, h)``.

        ``left + w <= 1`` and ``top + h <= 1``; the area ``w * h`` lies in ``scale`` and the pixel aspect
        ratio ``(w * width) / (h * height)`` in ``ratio``, except for the central fallback crop.
        """
        area = torch.empty(n, _ATTEMPTS, device=device).uniform_(*scale) * (height * width)
        log_ratio = torch.empty(n, _ATTEMPTS, device=device).uniform_(math.log(self.ratio[0]), math.log(self.ratio[1]))
        aspect = torch.exp(log_ratio)
        w = torch.sqrt(area * aspect) / width
        h = torch.sqrt(area / aspect) / height
        fits = (w <= 1) & (h <= 1)
        first = fits.float().argmax(dim=1, keepdim=True)  # first attempt that fits (0 when none does)
        w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
        fallback_w, fallback_h = self._central_box(height, width)
        none_fits = ~fits.any(dim=1)
        w = torch.where(none_fits, fallback_w, w)
        h = torch.where(none_fits, fallback_h, h)
        left = torch.rand(n, device=device) * (1 - w)
        top = torch.rand(n, device=device) * (1 - h)
        return torch.stack([left, top, w, h], dim=1)

    def _central_box(self, height: int, width: int) -> tuple[float, float]:
        """torchvision's fallback: the largest centred box whose aspect ratio is clipped to ``ratio``."""
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            return 1.0, min(1.0, width / self.ratio[0] / height)
        if in_ratio > self.ratio[1]:
            return min(1.0, height * self.ratio[1] / width), 1.0
        return 1.0, 1.0

    def resized_crop(self, x: Tensor, boxes: Tensor, size: tuple[int, int]) -> Tensor:
        """Resample each image's box ``(left, top, w, h)`` (fractions, see :meth:`sample_boxes`) to ``size``."""
        left, top, w, h = boxes.to(x.dtype).unbind(dim=1)
        # affine_grid maps output coordinates in [-1, 1] to input coordinates in [-1, 1] (pixel edges,
        # align_corners=False): a box spanning [left, left + w] of the width has scale w, centre 2 left + w - 1.
        zero = torch.zeros_like(w)
        theta = torch.stack([torch.stack([w, zero, 2 * left + w - 1], dim=1),
                             torch.stack([zero, h, 2 * top + h - 1], dim=1)], dim=1)
        grid = F.affine_grid(theta, [x.shape[0], x.shape[1], *size], align_corners=False)
        return F.grid_sample(x, grid, mode=self.interpolation, padding_mode="border", align_corners=False)

    def _view(self, x: Tensor, scale: tuple[float, float], size: tuple[int, int], augment: nn.Module | None) -> Tensor:
        boxes = self.sample_boxes(x.shape[0], x.shape[2], x.shape[3], scale, device=x.device)
        view = self.resized_crop(x, boxes, size)
        return view if augment is None else augment(view)

    def forward(self, x: Tensor) -> list[Tensor]:
        """``num_global`` global views, then ``num_local`` local views, of a ``(B, C, H, W)`` batch."""
        if x.ndim != 4 or not x.is_floating_point():
            raise ValueError(f"MultiCrop expects a floating (B, C, H, W) image batch, got {x.dtype} {tuple(x.shape)}")
        dtype = x.dtype
        x = x.float()
        global_size, local_size = self.output_sizes(x.shape[2], x.shape[3])
        views = [self._view(x, self.global_scale, global_size, self.global_augment) for _ in range(self.num_global)]
        views += [self._view(x, self.local_scale, local_size, self.local_augment) for _ in range(self.num_local)]
        return [v.to(dtype) for v in views]

    def extra_repr(self) -> str:
        return (f"num_global={self.num_global}, num_local={self.num_local}, global_scale={self.global_scale}, "
                f"local_scale={self.local_scale}, global_size={self.global_size}, local_size={self.local_size}, "
                f"interpolation={self.interpolation!r}")
