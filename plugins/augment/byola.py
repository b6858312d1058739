"""BYOL-A spectrogram augmentations, batch-wise on the device.

From Niizumi et al., "BYOL for Audio: Self-Supervised Learning for General-Purpose Audio
Representation", 2021, arXiv 2103.06695 (Sec. 3.2): log-mixup-exp with a memory of past inputs, then a
random resize crop of the spectrogram; BYOL-A v2 (Niizumi et al., IEEE/ACM TASLP 31, 2023,
arXiv 2204.07402) adds a random linear fader after them. UnFuSeD (Ghosh et al., 2023,
arXiv 2303.05668) pretrains its teacher with the first two. BYOL-A applies them one sample at a time on the CPU; here they act on a whole
normalised log-mel batch ``(B, C, F, T)`` (``C = 1`` for audio) with per-sample random parameters,
drawn from torch's global RNG (seed with ``torch.manual_seed``). All numerics run in float32 with
autocast disabled.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewlabel.plugins.arguments import check_int
from fewlabel.plugins.augment.sampling import check_range, uniform
from fewlabel.plugins.encoders.base import check_input


class MixupBYOLA(nn.Module):
    """Log-mixup-exp with a FIFO memory of past inputs (BYOL-A, arXiv 2103.06695).

    ``x' = log((1 - lam) * exp(x) + lam * exp(m))`` with ``lam ~ U(0, ratio)`` drawn per sample and
    ``m`` a random entry of a FIFO memory holding the last ``memory_size`` (detached) input samples.
    The memory is filled after mixing, so a batch is mixed with earlier batches. While the memory is
    empty (the first batch, or one whose shape or device differs from the memory's), the batch is
    returned unmixed, as in BYOL-A, and becomes the memory's first content.
    The memory is a non-persistent buffer (not checkpointed). Each call pushes its input, so calling
    it twice on one batch (two views) stores the batch twice, as BYOL-A's per-sample transform does.

    Args:
        ratio: Upper bound of the mixing weight ``lam`` (0.4 in BYOL-A); 0 is the identity.
        memory_size: Number of past samples kept (2048 in BYOL-A).
        log_mixup_exp: Mix in the linear (exp) domain as above; ``False`` mixes the log-mel linearly.

    Raises:
        ValueError: ``ratio`` outside [0, 1] or ``memory_size`` not an int >= 1.

    Example:
        >>> mix = MixupBYOLA(ratio=0.4, memory_size=8)
        >>> mix(torch.randn(4, 1, 64, 96)).shape
        torch.Size([4, 1, 64, 96])
    """

    memory: Tensor

    def __init__(self, ratio: float = 0.4, memory_size: int = 2048, log_mixup_exp: bool = True) -> None:
        super().__init__()
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio <= 1.0:
            raise ValueError(f"ratio is the largest mixing weight, in [0, 1], got {ratio!r}")
        self.ratio = float(ratio)
        check_int("memory_size", memory_size, 1, owner="MixupBYOLA")
        self.memory_size = memory_size
        self.log_mixup_exp = log_mixup_exp
        # Scratch state, not a buffer: it is per process, never checkpointed, and changes size when the
        # first batch arrives, which buffer averaging (torch's AveragedModel, Lightning's WeightAveraging)
        # and DDP's buffer broadcast cannot handle. A batch on another device starts a new memory.
        self.memory = torch.empty(0)
        self._ptr = 0
        self._count = 0

    def reset(self) -> None:
        """Empty the memory."""
        self.memory = self.memory.new_empty(0)
        self._ptr = 0
        self._count = 0

    def _memory_matches(self, x: Tensor) -> bool:
        return self._count > 0 and self.memory.shape[1:] == x.shape[1:] and self.memory.device == x.device

    def _push(self, x: Tensor) -> None:
        if not self._memory_matches(x):
            self.memory = x.new_empty((self.memory_size, *x.shape[1:]))
            self._ptr = 0
            self._count = 0
        x = x[-self.memory_size :]
        n = x.shape[0]
        slots = (self._ptr + torch.arange(n, device=x.device)) % self.memory_size
        self.memory[slots] = x
        self._ptr = (self._ptr + n) % self.memory_size
        self._count = min(self._count + n, self.memory_size)

    def forward(self, x: Tensor) -> Tensor:
        """Mix each sample with a random background from the memory.

        Args:
            x: Normalised log-mel batch ``(B, C, F, T)``.

        Returns:
            The mixed batch (the input itself while the memory is empty), float32, same shape.

        Raises:
            ValueError: ``x`` is not 4-d.
        """
        check_input(x, (4,), "MixupBYOLA")
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float()
            if not self._memory_matches(x):
                self._push(x.detach())
                return x
            b = x.shape[0]
            background = self.memory[torch.randint(self._count, (b,), device=x.device)]
            lam = (self.ratio * torch.rand(b, device=x.device)).view(b, 1, 1, 1)
            if self.log_mixup_exp:
                # log((1 - lam) e^x + lam e^m), stably; lam = 0 gives exactly x.
                mixed = torch.logaddexp(x + torch.log1p(-lam), background + torch.log(lam))
            else:
                mixed = (1.0 - lam) * x + lam * background
            self._push(x.detach())
            return mixed


class RandomResizeCrop(nn.Module):
    """BYOL-A's random resize crop of a spectrogram, vectorised over the batch (arXiv 2103.06695).

    The ``(F, T)`` input sits at the centre of a zero-filled virtual canvas of size
    ``(int(F * virtual_crop_scale[0]), int(T * virtual_crop_scale[1]))``. Each sample takes a crop of
    ``(int(U(freq_scale) * F), int(U(time_scale) * T))`` bins (clipped to the canvas) at a uniformly
    random position in the canvas, resized back to ``(F, T)`` with ``align_corners=True``. One
    ``affine_grid`` + ``grid_sample`` does the whole batch; zero padding plays the canvas. Unlike
    BYOL-A's ``interpolate`` on the cut-out crop, bicubic taps at a crop's edge read the actual
    neighbours (or zero outside the input) instead of replicating the edge.

    Args:
        virtual_crop_scale: Canvas size relative to ``(F, T)``; each at least 1.
        freq_scale: Range of the crop height relative to ``F``.
        time_scale: Range of the crop width relative to ``T``.
        interpolation: ``"bicubic"`` (BYOL-A), ``"bilinear"`` or ``"nearest"``.

    Raises:
        ValueError: an unknown interpolation, a canvas factor below 1, or a scale that is not a range
            ``(lo, hi)`` with ``0 <= lo <= hi``.

    Example:
        >>> rrc = RandomResizeCrop()
        >>> rrc(torch.randn(4, 1, 64, 96)).shape
        torch.Size([4, 1, 64, 96])
    """

    _MODES = ("bicubic", "bilinear", "nearest")

    def __init__(
        self,
        virtual_crop_scale: tuple[float, float] = (1.0, 1.5),
        freq_scale: tuple[float, float] = (0.6, 1.5),
        time_scale: tuple[float, float] = (0.6, 1.5),
        interpolation: str = "bicubic",
    ) -> None:
        super().__init__()
        if interpolation not in self._MODES:
            raise ValueError(f"interpolation must be one of {self._MODES}, got {interpolation!r}")
        if len(virtual_crop_scale) != 2 or min(virtual_crop_scale) < 1.0:
            raise ValueError(f"virtual_crop_scale must be (freq, time) factors >= 1, got {virtual_crop_scale}")
        self.virtual_crop_scale = (float(virtual_crop_scale[0]), float(virtual_crop_scale[1]))
        self.freq_scale = check_range("freq_scale", freq_scale, 0.0)
        self.time_scale = check_range("time_scale", time_scale, 0.0)
        self.interpolation = interpolation

    @staticmethod
    def _axis(size: int, canvas: int, scale: tuple[float, float], n: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Per-sample scale and shift of one axis, in ``align_corners=True`` normalised coordinates."""
        length = (uniform(n, *scale, device) * size).floor().clamp(1, canvas)
        start = (torch.rand(n, device=device) * (canvas - length + 1)).floor()  # crop start in the canvas
        start = start - (canvas - size) // 2  # ... in input pixels
        denom = size - 1
        return (length - 1) / denom, (2 * start + length - 1) / denom - 1

    def get_theta(self, batch_size: int, size: tuple[int, int], device: torch.device) -> Tensor:
        """Draw the per-sample affine matrices ``(B, 2, 3)`` mapping output to input coordinates."""
        f, t = size
        canvas_f = int(f * self.virtual_crop_scale[0])
        canvas_t = int(t * self.virtual_crop_scale[1])
        sy, ty = self._axis(f, canvas_f, self.freq_scale, batch_size, device)
        sx, tx = self._axis(t, canvas_t, self.time_scale, batch_size, device)
        theta = torch.zeros(batch_size, 2, 3, device=device)
        theta[:, 0, 0], theta[:, 0, 2] = sx, tx
        theta[:, 1, 1], theta[:, 1, 2] = sy, ty
        return theta

    def forward(self, x: Tensor) -> Tensor:
        """Crop each sample at random and resize it back to ``(F, T)``.

        Args:
            x: Normalised log-mel batch ``(B, C, F, T)`` with ``F, T >= 2``.

        Returns:
            The cropped batch, float32, same shape.

        Raises:
            ValueError: ``x`` is not 4-d or ``F`` or ``T`` is below 2.
        """
        check_input(x, (4,), "RandomResizeCrop")
        if min(x.shape[-2:]) < 2:
            raise ValueError(f"RandomResizeCrop needs at least 2 frequency bins and 2 frames, got {tuple(x.shape)}")
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float()
            theta = self.get_theta(x.shape[0], (x.shape[2], x.shape[3]), x.device)
            grid = F.affine_grid(theta, list(x.shape), align_corners=True)
            return F.grid_sample(x, grid, mode=self.interpolation, padding_mode="zeros", align_corners=True)


class RandomLinearFader(nn.Module):
    """BYOL-A v2's random linear fader (Niizumi et al., 2023, arXiv 2204.07402).

    Adds to each log-mel sample a gain that moves linearly over time from ``head`` to ``tail``, both
    ``~ U(-gain, gain)`` in the normalised log-mel's units: the views of one clip then differ in
    loudness and its course, so an SSL objective cannot match them by their recording level. The two
    ends are drawn per sample from torch's global RNG; float32, autocast off.

    Args:
        gain: Largest ramp-end gain; BYOL-A v2 uses 1.0; 0 is the identity.

    Raises:
        ValueError: ``gain`` is negative or not a number.

    Example:
        >>> fader = RandomLinearFader(gain=1.0)
        >>> y = fader(torch.zeros(2, 1, 3, 5))
        >>> bool(torch.allclose(y[:, :, 0], y[:, :, 2]))  # the same gain in every mel band
        True
    """

    def __init__(self, gain: float = 1.0) -> None:
        super().__init__()
        if isinstance(gain, bool) or not isinstance(gain, (int, float)) or not gain >= 0.0:
            raise ValueError(f"gain is the largest ramp-end gain, a number >= 0, got {gain!r}")
        self.gain = float(gain)

    def forward(self, x: Tensor) -> Tensor:
        """Add each sample's random linear gain ramp over time.

        Args:
            x: Normalised log-mel batch ``(B, C, F, T)``.

        Returns:
            The faded batch, float32, same shape.

        Raises:
            ValueError: ``x`` is not 4-d.
        """
        check_input(x, (4,), "RandomLinearFader")
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float()
            b, t = x.shape[0], x.shape[3]
            ends = uniform(2 * b, -self.gain, self.gain, x.device).view(b, 2)  # (head, tail) per sample
            ramp = ends[:, :1] + (ends[:, 1:] - ends[:, :1]) * torch.linspace(0.0, 1.0, t, device=x.device)
            return x + ramp.view(b, 1, 1, t)

    def extra_repr(self) -> str:
        return f"gain={self.gain}"


class ByolaAugment(nn.Module):
    """BYOL-A's spectrogram augmentation: :class:`MixupBYOLA`, :class:`RandomResizeCrop`, then optionally
    :class:`RandomLinearFader`.

    Call it once per view; two calls on one batch give BYOL-A's two views (arXiv 2103.06695). With
    ``fader_gain=1.0`` it is BYOL-A v2's chain (arXiv 2204.07402); the defaults (no fader) are v1's,
    which UnFuSeD uses.

    Args:
        ratio: Mixup ratio (see :class:`MixupBYOLA`).
        memory_size: Mixup memory size.
        virtual_crop_scale: See :class:`RandomResizeCrop`.
        freq_scale: See :class:`RandomResizeCrop`.
        time_scale: See :class:`RandomResizeCrop`.
        interpolation: See :class:`RandomResizeCrop`.
        fader_gain: :class:`RandomLinearFader`'s ``gain``; 0 (default) = no fader.

    Raises:
        ValueError: a bad argument (see :class:`MixupBYOLA`, :class:`RandomResizeCrop` and
            :class:`RandomLinearFader`).

    Example:
        >>> aug = ByolaAugment(memory_size=16)
        >>> z = torch.randn(4, 1, 64, 96)
        >>> view1, view2 = aug(z), aug(z)
        >>> view1.shape
        torch.Size([4, 1, 64, 96])
    """

    def __init__(
        self,
        ratio: float = 0.4,
        memory_size: int = 2048,
        virtual_crop_scale: tuple[float, float] = (1.0, 1.5),
        freq_scale: tuple[float, float] = (0.6, 1.5),
        time_scale: tuple[float, float] = (0.6, 1.5),
        interpolation: str = "bicubic",
        fader_gain: float = 0.0,
    ) -> None:
        super().__init__()
        self.mixup = MixupBYOLA(ratio=ratio, memory_size=memory_size)
        self.crop = RandomResizeCrop(
            virtual_crop_scale=virtual_crop_scale, freq_scale=freq_scale, time_scale=time_scale, interpolation=interpolation
        )
        fader = RandomLinearFader(gain=fader_gain)
        self.fader = fader if fader.gain > 0.0 else None

    def forward(self, x: Tensor) -> Tensor:
        """Augment a normalised log-mel batch ``(B, C, F, T)``; returns float32 of the same shape."""
        x = self.crop(self.mixup(x))
        return x if self.fader is None else self.fader(x)
