"""SpecAugment's frequency and time masking of a log-mel batch, with masks drawn per sample.

Park et al., "SpecAugment: A Simple Data Augmentation Method for Automatic Speech Recognition",
Interspeech 2019, arXiv 1904.08779 (time warping is left out, as in most audio SSL pipelines).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchaudio.transforms import FrequencyMasking, TimeMasking

from fewlabel.plugins.arguments import check_int
from fewlabel.plugins.encoders.base import check_input

__all__ = ["SpecAugment"]


class SpecAugment(nn.Module):
    """``num_freq_masks`` frequency masks, then ``num_time_masks`` time masks, each drawn per sample.

    Each mask covers ``[start, start + width)`` bins of its axis with ``width`` uniform in
    ``{0, ..., mask_param - 1}`` and ``start`` uniform over the positions where it fits, as
    :class:`torchaudio.transforms.FrequencyMasking` / :class:`~torchaudio.transforms.TimeMasking` draw
    them; with ``iid_masks=True`` every sample (and channel) of the batch gets its own masks. Masks
    may overlap. The random numbers come from torch's global generator of the input's device.

    Masked bins are set to ``mask_value``, 0 by default: the encoders' log-mel front end normalises
    with the running mean and standard deviation of the data, so 0 is the mean log-mel value, which
    is what SpecAugment sets masks to ("the log mel spectrograms are normalized to have zero mean
    value, and thus setting the masked value to zero is equivalent to setting it to the mean value").
    A per-batch mean instead would leak information across samples and change with the batch.

    Numerics run in float32; the output has the input's dtype.

    Args:
        freq_mask_param: Frequency masks are at most ``freq_mask_param - 1`` mel bins wide (SpecAugment's F).
        time_mask_param: Time masks are at most ``time_mask_param - 1`` frames wide (SpecAugment's T).
        num_freq_masks: Number of frequency masks per sample (SpecAugment's m_F).
        num_time_masks: Number of time masks per sample (SpecAugment's m_T).
        mask_value: Value of the masked bins.

    Raises:
        ValueError: a mask parameter or count is not an int >= 0.

    Example:
        >>> aug = SpecAugment(freq_mask_param=8, time_mask_param=20)
        >>> aug(torch.randn(4, 1, 64, 101)).shape
        torch.Size([4, 1, 64, 101])
    """

    def __init__(
        self,
        freq_mask_param: int = 8,
        time_mask_param: int = 20,
        num_freq_masks: int = 2,
        num_time_masks: int = 2,
        mask_value: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value in (("freq_mask_param", freq_mask_param), ("time_mask_param", time_mask_param),
                            ("num_freq_masks", num_freq_masks), ("num_time_masks", num_time_masks)):
            check_int(name, value, 0, owner="SpecAugment")
        self.num_freq_masks, self.num_time_masks = int(num_freq_masks), int(num_time_masks)
        self.mask_value = float(mask_value)
        self.freq_mask = FrequencyMasking(int(freq_mask_param), iid_masks=True)
        self.time_mask = TimeMasking(int(time_mask_param), iid_masks=True)

    def forward(self, x: Tensor) -> Tensor:
        """Mask a log-mel batch.

        Args:
            x: Log-mel spectrograms ``(B, C, F, T)`` (``C = 1`` for the audio front end).

        Returns:
            The masked batch, same shape and dtype.

        Raises:
            ValueError: ``x`` is not 4-d.
            TypeError: ``x`` is not a floating tensor.
        """
        check_input(x, (4,), "SpecAugment")
        with torch.autocast(device_type=x.device.type, enabled=False):
            z = x.float()
            for _ in range(self.num_freq_masks):
                z = self.freq_mask(z, self.mask_value)
            for _ in range(self.num_time_masks):
                z = self.time_mask(z, self.mask_value)
            return z.to(x.dtype)

    def extra_repr(self) -> str:
        return (f"freq_mask_param={self.freq_mask.mask_param}, time_mask_param={self.time_mask.mask_param}, "
                f"num_freq_masks={self.num_freq_masks}, num_time_masks={self.num_time_masks}, "
                f"mask_value={self.mask_value}")
