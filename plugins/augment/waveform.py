"""Raw-waveform augmentation, batch-wise on the device: random gain and additive noise at a random SNR.

These run on the raw input, before an audio encoder's log-mel front end: put them in the ``raw``
stage of a :class:`~fewlabel.plugins.augment.ViewPipeline`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torchaudio.functional as AF
from torch import Tensor, nn

from fewlabel.plugins.augment.sampling import check_range, uniform
from fewlabel.plugins.encoders.base import check_input

__all__ = ["WaveformAugment"]


class WaveformAugment(nn.Module):
    """Per-sample random gain in dB, then additive white Gaussian noise at a per-sample random SNR.

    Sample ``i`` is scaled by ``10 ** (g_i / 20)`` with ``g_i ~ U(gain_db)``, then
    :func:`torchaudio.functional.add_noise` adds standard Gaussian noise scaled so that the ratio of
    the (scaled) signal's energy to the noise's energy is exactly ``s_i ~ U(snr_db)`` dB over the
    sample (all its channels together). A silent sample stays silent (its noise is scaled to 0). The
    random numbers (gains, then SNRs, then the noise) come from torch's global generator of the
    input's device; an op that is off (``None``) draws none. Numerics run in float32; the output
    has the input's dtype.

    Args:
        gain_db: Range ``(lo, hi)`` of the gain in dB (``lo <= hi``), or ``None`` for no gain.
        snr_db: Range ``(lo, hi)`` of the signal-to-noise ratio in dB, or ``None`` for no noise.

    Raises:
        ValueError: a range is not a pair ``(lo, hi)`` of numbers with ``lo <= hi``.

    Example:
        >>> aug = WaveformAugment(gain_db=(-6.0, 6.0), snr_db=(10.0, 30.0))
        >>> aug(torch.randn(4, 16000)).shape
        torch.Size([4, 16000])
    """

    def __init__(self, gain_db: Sequence[float] | None = (-6.0, 6.0),
                 snr_db: Sequence[float] | None = (10.0, 40.0)) -> None:
        super().__init__()
        self.gain_db = None if gain_db is None else check_range("gain_db", gain_db)
        self.snr_db = None if snr_db is None else check_range("snr_db", snr_db)

    def forward(self, x: Tensor) -> Tensor:
        """Augment a waveform batch.

        Args:
            x: Waveforms ``(B, samples)`` or ``(B, C, samples)``.

        Returns:
            The augmented batch, same shape and dtype.

        Raises:
            ValueError: ``x`` is not 2-d or 3-d.
            TypeError: ``x`` is not a floating tensor.
        """
        check_input(x, (2, 3), "WaveformAugment")
        with torch.autocast(device_type=x.device.type, enabled=False):
            flat = x.float().reshape(x.shape[0], -1)  # one row per sample: energies over all channels
            n, device = flat.shape[0], flat.device
            if self.gain_db is not None:
                gain = uniform(n, *self.gain_db, device)
                flat = flat * torch.pow(10.0, gain / 20.0).unsqueeze(1)
            if self.snr_db is not None:
                snr = uniform(n, *self.snr_db, device)
                flat = AF.add_noise(flat, torch.randn_like(flat), snr)
            return flat.reshape(x.shape).to(x.dtype)

    def extra_repr(self) -> str:
        return f"gain_db={self.gain_db}, snr_db={self.snr_db}"
