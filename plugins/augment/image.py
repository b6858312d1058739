"""Batch-wise image augmentation on the device, with independent random parameters per sample."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewlabel.plugins.augment.sampling import check_probability, check_range, uniform

#: ITU-R BT.601 luma weights (R, G, B), the ones of ``PIL.Image.convert("L")`` and torchvision.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)

# RGB -> YIQ (NTSC); Y uses the luma weights above. The inverse is computed in float64 once.
_RGB_TO_YIQ = torch.tensor(
    [list(LUMA_WEIGHTS), [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]], dtype=torch.float64
)
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


def rgb_to_gray(x: Tensor) -> Tensor:
    """Luminance ``0.299 R + 0.587 G + 0.114 B`` of a ``(B, 3, H, W)`` batch, shape ``(B, 1, H, W)``."""
    w = torch.tensor(LUMA_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    """Blend each RGB image with its grayscale: ``gray + factor * (x - gray)``, ``factor`` of shape ``(B,)``.

    ``factor`` 0 gives the grayscale image (on 3 channels), 1 the input, >1 over-saturates.
    """
    gray = rgb_to_gray(x)
    return gray + factor.view(-1, 1, 1, 1).to(x.dtype) * (x - gray)


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the hue of each RGB image by ``shift`` (shape ``(B,)``, fraction of a full turn).

    Implemented as a rotation of the chroma plane (I, Q) in YIQ space: linear, so it keeps luminance
    exactly, needs no clamping and costs one batched 3x3 matrix product (no RGB->HSV round trip).
    It approximates, but does not equal, torchvision's HSV hue shift.
    """
    angle = shift.to(torch.float64) * (2.0 * math.pi)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.zeros(shift.shape[0], 3, 3, dtype=torch.float64, device=shift.device)
    rot[:, 0, 0] = 1.0
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    to_yiq, to_rgb = _RGB_TO_YIQ.to(shift.device), _YIQ_TO_RGB.to(shift.device)
    matrix = (to_rgb @ rot @ to_yiq).to(x.dtype)  # (B, 3, 3)
    return torch.einsum("bij,bjhw->bihw", matrix, x)


#: Pixels at or above this value are inverted by :func:`solarize` (inputs in [0, 1], as in BYOL).
SOLARIZE_THRESHOLD = 0.5


def blur_kernel_size(height: int, width: int) -> int:
    """Side of the Gaussian blur kernel for an image: 10% of its smaller side, odd, at least 3.

    BYOL and SimCLR blur 224-pixel crops with a 23-pixel kernel (10% of the side, made odd).

    Example:
        >>> blur_kernel_size(224, 224), blur_kernel_size(8, 8), blur_kernel_size(64, 96)
        (23, 3, 7)
    """
    size = max(3, int(0.1 * min(height, width)))
    return size if size % 2 else size + 1


def gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Blur each image of ``x`` with its own isotropic Gaussian of standard deviation ``sigma[i]``.

    The kernel is the one of ``torchvision.transforms.v2.functional.gaussian_blur`` (taps at integer
    offsets from the centre, normalised to sum 1) with reflect padding; it is separable, so two
    grouped convolutions (one group per sample and channel) blur the whole batch at once.

    Args:
        x: Images ``(B, C, H, W)`` with ``H, W > kernel_size // 2``.
        sigma: Positive standard deviations in pixels, shape ``(B,)``.
        kernel_size: Odd kernel side (see :func:`blur_kernel_size`).

    Returns:
        The blurred batch, same shape and dtype as ``x``.

    Raises:
        ValueError: ``kernel_size`` is not an odd int >= 1, or ``sigma`` is not one value per sample.

    Example:
        >>> gaussian_blur(torch.rand(2, 3, 8, 8), torch.tensor([0.5, 2.0]), 3).shape
        torch.Size([2, 3, 8, 8])
    """
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be an odd int >= 1, got {kernel_size!r}")
    b, c, h, w = x.shape
    if sigma.shape != (b,):
        raise ValueError(f"sigma must hold one value per sample, shape ({b},), got {tuple(sigma.shape)}")
    offsets = torch.arange(kernel_size, dtype=x.dtype, device=x.device) - (kernel_size - 1) / 2
    kernel = torch.softmax(-(offsets / sigma.to(x).view(b, 1)).pow(2) / 2, dim=1)  # (B, k), rows sum to 1
    kernel = kernel.repeat_interleave(c, dim=0).view(b * c, 1, kernel_size)
    pad = kernel_size // 2
    out = F.pad(x.reshape(1, b * c, h, w), [pad, pad, pad, pad], mode="reflect")
    out = F.conv2d(out, kernel.unsqueeze(2), groups=b * c)  # along the width
    out = F.conv2d(out, kernel.unsqueeze(3), groups=b * c)  # along the height
    return out.view(b, c, h, w)


def solarize(x: Tensor, threshold: float = SOLARIZE_THRESHOLD) -> Tensor:
    """Invert the pixels at or above ``threshold``: ``1 - x`` there, ``x`` elsewhere (torchvision's rule).

    Example:
        >>> solarize(torch.tensor([0.25, 0.5, 0.75])).tolist()
        [0.25, 0.5, 0.25]
    """
    return torch.where(x >= threshold, 1.0 - x, x)


class BatchImageAugment(nn.Module):
    """Random affine (scale, rotation, translation, flip), colour jitter, grayscale, blur, solarization
    and noise, per sample.

    One ``affine_grid`` + ``grid_sample`` call warps the whole batch, so a view costs one kernel on
    the device instead of a Python loop over samples; every colour op is likewise one batched tensor op
    with a random factor per sample. Numerics run in float32 (autocast off); the output has the
    input's dtype.

    Order: affine warp, then colour jitter (contrast, brightness, saturation, hue; applied to a sample
    with probability ``jitter_prob``, otherwise that sample keeps identity factors), then random
    grayscale, Gaussian blur (:func:`gaussian_blur`, kernel :func:`blur_kernel_size`, ``sigma`` uniform
    in ``blur_sigma``), solarization (:func:`solarize` at 0.5), then noise: the order of BYOL's and
    SimCLR's pipelines. Inputs are expected in roughly [0, 1]; nothing is clamped.

    Saturation, hue and grayscale only act on 3-channel (RGB) input; on 1-channel (or other channel
    counts) they are a no-op and draw no random numbers. Hue is a rotation of the chroma plane in YIQ
    space (see :func:`adjust_hue`), grayscale uses the luma weights (0.299, 0.587, 0.114) copied to
    the three channels. With the defaults (all colour parameters 0, ``jitter_prob`` 1, ``blur_prob``
    and ``solarize_prob`` 0) the behaviour and the random stream are those of the class without
    these options: an option that is off draws no random numbers.

    Args:
        scale: Range of the zoom factor (``>1`` zooms in, i.e. a random-resized-crop).
        rotation: Maximum absolute rotation in degrees.
        translate: Maximum absolute shift as a fraction of the image size.
        hflip: Probability of a horizontal flip (0 for digits and text).
        brightness: Maximum absolute additive brightness change.
        contrast: Maximum relative contrast change.
        noise: Standard deviation of additive Gaussian noise.
        saturation: Saturation factor drawn in ``[max(0, 1 - saturation), 1 + saturation]`` (RGB only).
        hue: Maximum absolute hue rotation, as a fraction of a full turn, in ``[0, 0.5]`` (RGB only).
        jitter_prob: Probability that a sample gets the colour jitter (contrast, brightness,
            saturation, hue) at all, as ``RandomApply(ColorJitter, p)`` in SimCLR.
        grayscale: Probability of converting a sample to grayscale (RGB only; 3 equal channels).
        blur_prob: Probability that a sample is blurred (1.0 and 0.1 for BYOL's two views).
        blur_sigma: Range ``(lo, hi)``, ``0 < lo``, of the blur's standard deviation in pixels (BYOL: 0.1-2).
        solarize_prob: Probability that a sample is solarized (0.0 and 0.2 for BYOL's two views).

    Raises:
        ValueError: a negative magnitude, a probability outside [0, 1], or a bad range.

    Example:
        >>> aug = BatchImageAugment(rotation=10.0)
        >>> aug(torch.rand(4, 1, 8, 8)).shape
        torch.Size([4, 1, 8, 8])
        >>> aug = BatchImageAugment(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, jitter_prob=0.8,
        ...                         grayscale=0.2)
        >>> aug(torch.rand(4, 3, 8, 8)).shape
        torch.Size([4, 3, 8, 8])
        >>> BatchImageAugment(blur_prob=1.0, solarize_prob=0.2)(torch.rand(4, 3, 32, 32)).shape
        torch.Size([4, 3, 32, 32])
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
        saturation: float = 0.0,
        hue: float = 0.0,
        jitter_prob: float = 1.0,
        grayscale: float = 0.0,
        blur_prob: float = 0.0,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        solarize_prob: float = 0.0,
    ) -> None:
        super().__init__()
        scale = check_range("scale", scale, 0.0, strict_low=True)
        for name, value in [("rotation", rotation), ("translate", translate), ("brightness", brightness),
                            ("contrast", contrast), ("noise", noise), ("saturation", saturation)]:
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if not 0.0 <= hue <= 0.5:
            raise ValueError(f"hue is a fraction of a full turn in [0, 0.5], got {hue}")
        self.scale, self.rotation, self.translate = scale, rotation, translate
        self.hflip = check_probability("hflip", hflip)
        self.brightness, self.contrast, self.noise = brightness, contrast, noise
        self.saturation, self.hue = float(saturation), float(hue)
        self.jitter_prob = check_probability("jitter_prob", jitter_prob)
        self.grayscale = check_probability("grayscale", grayscale)
        self.blur_prob = check_probability("blur_prob", blur_prob)
        self.blur_sigma = check_range("blur_sigma", blur_sigma, 0.0, strict_low=True)
        self.solarize_prob = check_probability("solarize_prob", solarize_prob)

    def forward(self, x: Tensor) -> Tensor:
        """Augment a ``(B, C, H, W)`` batch; returns the input's shape and dtype.

        Raises:
            ValueError: ``x`` is not 4-d.
        """
        if x.ndim != 4:
            raise ValueError(f"BatchImageAugment expects (B, C, H, W) images, got shape {tuple(x.shape)}")
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self._augment(x.float()).to(x.dtype)

    def _augment(self, x: Tensor) -> Tensor:
        n, device = x.shape[0], x.device
        rgb = x.shape[1] == 3
        zoom = uniform(n, *self.scale, device)
        angle = uniform(n, -self.rotation, self.rotation, device) * (math.pi / 180.0)
        shift = uniform(2 * n, -self.translate, self.translate, device).view(n, 2) * 2.0
        flip = torch.where(torch.rand(n, device=device) < self.hflip, -1.0, 1.0)
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.stack(
            [torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1
        )
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        # Per-sample gate of the colour jitter; drawn only when it can be off (keeps the default stream).
        jitter = torch.rand(n, device=device) < self.jitter_prob if self.jitter_prob < 1.0 else None
        if self.contrast > 0:
            factor = uniform(n, 1 - self.contrast, 1 + self.contrast, device)
            factor = factor if jitter is None else torch.where(jitter, factor, 1.0)
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * factor.view(n, 1, 1, 1) + mean
        if self.brightness > 0:
            offset = uniform(n, -self.brightness, self.brightness, device)
            offset = offset if jitter is None else torch.where(jitter, offset, 0.0)
            x = x + offset.view(n, 1, 1, 1)
        if rgb and self.saturation > 0:
            factor = uniform(n, max(0.0, 1 - self.saturation), 1 + self.saturation, device)
            factor = factor if jitter is None else torch.where(jitter, factor, 1.0)
            x = adjust_saturation(x, factor)
        if rgb and self.hue > 0:
            turn = uniform(n, -self.hue, self.hue, device)
            turn = turn if jitter is None else torch.where(jitter, turn, 0.0)
            x = adjust_hue(x, turn)
        if rgb and self.grayscale > 0:
            gray = (torch.rand(n, device=device) < self.grayscale).view(n, 1, 1, 1)
            x = torch.where(gray, rgb_to_gray(x).expand_as(x), x)
        if self.blur_prob > 0:
            blur = (torch.rand(n, device=device) < self.blur_prob).view(n, 1, 1, 1)
            sigma = uniform(n, *self.blur_sigma, device)
            x = torch.where(blur, gaussian_blur(x, sigma, blur_kernel_size(x.shape[2], x.shape[3])), x)
        if self.solarize_prob > 0:
            solar = (torch.rand(n, device=device) < self.solarize_prob).view(n, 1, 1, 1)
            x = torch.where(solar, solarize(x), x)
        if self.noise > 0:
            x = x + self.noise * torch.randn_like(x)
        return x

