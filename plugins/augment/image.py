"""Batch-wise image augmentation on the device, with independent random parameters per sample."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class BatchImageAugment(nn.Module):
    """Random affine (scale, rotation, translation, flip), brightness/contrast and noise, per sample.

    One ``affine_grid`` + ``grid_sample`` call warps the whole batch, so a view costs one kernel on
    the device instead of a Python loop over samples. Numerics run in float32.

    Args:
        scale: Range of the zoom factor (``>1`` zooms in, i.e. a random-resized-crop).
        rotation: Maximum absolute rotation in degrees.
        translate: Maximum absolute shift as a fraction of the image size.
        hflip: Probability of a horizontal flip (0 for digits and text).
        brightness: Maximum absolute additive brightness change.
        contrast: Maximum relative contrast change.
        noise: Standard deviation of additive Gaussian noise.

    Example:
        >>> aug = BatchImageAugment(rotation=10.0)
        >>> aug(torch.rand(4, 1, 8, 8)).shape
        torch.Size([4, 1, 8, 8])
    """

    def __init__(
        self,
        scale: tuple[float, float] = (0.9, 1.1),
        rotation: float = 10.0,
        translate: float = 0.1,
        hflip: float = 0.0,
        brightness: float = 0.0,
        contrast: float = 0.0,
        noise: float = 0.0,
    ) -> None:
        super().__init__()
        scale = (float(scale[0]), float(scale[1]))
        if not 0 < scale[0] <= scale[1]:
            raise ValueError(f"scale must be a range (lo, hi) with 0 < lo <= hi, got {scale}")
        for name, value in [("rotation", rotation), ("translate", translate), ("brightness", brightness),
                            ("contrast", contrast), ("noise", noise)]:
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if not 0.0 <= hflip <= 1.0:
            raise ValueError(f"hflip is a probability in [0, 1], got {hflip}")
        self.scale, self.rotation, self.translate, self.hflip = scale, rotation, translate, hflip
        self.brightness, self.contrast, self.noise = brightness, contrast, noise

    def _uniform(self, n: int, lo: float, hi: float, device: torch.device) -> Tensor:
        return torch.rand(n, device=device) * (hi - lo) + lo

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4:
            raise ValueError(f"BatchImageAugment expects (B, C, H, W) images, got shape {tuple(x.shape)}")
        dtype = x.dtype
        x = x.float()
        n, device = x.shape[0], x.device
        zoom = self._uniform(n, *self.scale, device)
        angle = self._uniform(n, -self.rotation, self.rotation, device) * (math.pi / 180.0)
        shift = self._uniform(2 * n, -self.translate, self.translate, device).view(n, 2) * 2.0
        flip = torch.where(torch.rand(n, device=device) < self.hflip, -1.0, 1.0)
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.stack(
            [torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1
        )
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if self.contrast > 0:
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * self._uniform(n, 1 - self.contrast, 1 + self.contrast, device).view(n, 1, 1, 1) + mean
        if self.brightness > 0:
            x = x + self._uniform(n, -self.brightness, self.brightness, device).view(n, 1, 1, 1)
        if self.noise > 0:
            x = x + self.noise * torch.randn_like(x)
        return x.to(dtype)
