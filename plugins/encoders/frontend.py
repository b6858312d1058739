"""Log-mel spectrogram front end for audio encoders.

The settings follow BYOL-A (Niizumi et al., "BYOL for Audio: Self-Supervised Learning for
General-Purpose Audio Representation", 2021, arXiv 2103.06695), which UnFuSeD (Ghosh et al.,
"UnFuSeD: UNsupervised Finetuning Using SElf supervised Distillation", 2023, arXiv 2303.05668)
reuses: 16 kHz mono, STFT with n_fft 1024 and a 1024-sample Hann window, hop 160 (10 ms), 64 mel bins
between 60 and 7800 Hz, power spectrum, ``log(x + eps)``, then normalisation with the running mean
and standard deviation of the training data seen so far (BYOL-A's ``RunningNorm``).
"""

from __future__ import annotations

import torch
import torchaudio
from torch import Tensor, nn

from fewlabel.plugins.encoders.base import check_input

#: The per-clip level normalisations of :class:`LogMelFrontend` (``level=...``).
LEVELS = (None, "rms", "mel_mean")
#: ``eps`` added before the log; BYOL-A's ``torch.finfo(torch.float).eps`` (about 1.19e-7).
DEFAULT_LOG_EPS: float = float(torch.finfo(torch.float32).eps)


class RunningNorm(nn.Module):
    """Normalise with the running mean and standard deviation of all training values seen.

    In training mode a call first folds the batch into the running estimates, then returns
    ``(x - mean) / std`` with the updated estimates; in eval mode it uses the stored estimates and
    changes nothing. The mean and std are scalars over every value seen, as in BYOL-A's
    ``RunningNorm`` (arXiv 2103.06695), which UnFuSeD (arXiv 2303.05668) uses: batches are
    normalised with statistics of the data seen so far, not with their own.

    With ``momentum=None`` the estimates are the exact mean and (population) variance of all values
    seen, combined batch by batch in float64 (the parallel update of Chan et al., 1979). A float
    ``momentum`` gives exponential averages, ``stat = (1 - momentum) * stat + momentum * batch_stat``,
    started from the first batch's statistics. ``std`` is clamped to at least float32 ``eps``, as in
    BYOL-A. Before any training batch the estimates are mean 0 and variance 1 (the identity).

    The state is three buffers saved in the ``state_dict``: ``running_mean`` and ``running_var``
    (float64 scalars) and ``num_values`` (int64, the number of values folded in).

    Args:
        momentum: ``None`` for the cumulative average, else the exponential-average weight in (0, 1].

    Example:
        >>> norm = RunningNorm()
        >>> a, b = torch.randn(2, 1, 4, 5), torch.randn(3, 1, 4, 5)
        >>> _ = norm(a)
        >>> out = norm(b)  # normalised with the statistics of a and b together
    """

    running_mean: Tensor
    running_var: Tensor
    num_values: Tensor

    def __init__(self, momentum: float | None = None) -> None:
        super().__init__()
        if momentum is not None and not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum must be None (cumulative average) or in (0, 1], got {momentum}")
        self.momentum = momentum
        self.register_buffer("running_mean", torch.zeros((), dtype=torch.float64))
        self.register_buffer("running_var", torch.ones((), dtype=torch.float64))
        self.register_buffer("num_values", torch.zeros((), dtype=torch.int64))

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        """Fold the values of ``x`` into the running estimates."""
        var, mean = torch.var_mean(x.detach().double(), correction=0)
        n = x.numel()
        if self.momentum is None:
            seen = self.num_values.double()
            total = seen + n
            delta = mean - self.running_mean
            new_mean = self.running_mean + delta * (n / total)
            new_var = (seen * self.running_var + n * var + delta.square() * seen * (n / total)) / total
        else:
            first = self.num_values == 0
            m = self.momentum
            new_mean = torch.where(first, mean, (1 - m) * self.running_mean + m * mean)
            new_var = torch.where(first, var, (1 - m) * self.running_var + m * var)
        self.running_mean.copy_(new_mean)
        self.running_var.copy_(new_var)
        self.num_values.add_(n)

    def forward(self, x: Tensor) -> Tensor:
        """Update the estimates (training mode only), then normalise ``x`` with them.

        Args:
            x: A floating-point tensor of any shape.

        Returns:
            ``(x - running_mean) / running_std`` in the dtype of ``x``.
        """
        if self.training:
            self.update(x)
        std = self.running_var.sqrt().clamp_min(torch.finfo(torch.float32).eps)
        return (x - self.running_mean.to(x.dtype)) / std.to(x.dtype)

    def extra_repr(self) -> str:
        return f"momentum={self.momentum}"


class LogMelFrontend(nn.Module):
    """Waveform ``(B, T)`` or ``(B, 1, T)`` -> normalised log-mel spectrogram ``(B, 1, n_mels, frames)``.

    The mel spectrogram is :class:`torchaudio.transforms.MelSpectrogram` (HTK mel scale, no filter-bank
    normalisation, centred reflect-padded frames, so ``frames = T // hop_length + 1``; 101 frames for
    one second at 16 kHz). The log is ``log(mel + eps)``.

    Normalisation (``normalize=True``) is a :class:`RunningNorm` (``self.norm``): in training mode it
    folds the batch into running estimates of the mean and variance of all log-mel values seen, then
    normalises the batch with the updated estimates; in eval mode it uses the stored estimates. With
    ``norm_momentum=None`` (the default) the estimates are the exact cumulative mean and variance over
    all training batches, i.e. the dataset statistics that BYOL-A and UnFuSeD normalise with.
    ``normalize=False`` returns the raw log-mel.

    The whole front end runs in float32 with autocast disabled, whatever the input dtype, so that
    the log and the normalisation are computed at full precision under mixed-precision training.

    Args:
        sample_rate: Sampling rate of the input waveform in Hz.
        n_fft: FFT size.
        win_length: Window length in samples (``None`` = ``n_fft``).
        hop_length: Hop between frames in samples.
        n_mels: Number of mel bins.
        f_min: Lowest mel filter frequency in Hz.
        f_max: Highest mel filter frequency in Hz.
        power: Exponent of the magnitude spectrogram (2 = power).
        eps: Added to the mel spectrogram before the log.
        normalize: Normalise with running mean/std (see above).
        norm_momentum: ``None`` = cumulative average of all values seen; a float in (0, 1] =
            exponential average with that weight on each new batch (see :class:`RunningNorm`).
        level: ``None`` keeps each clip's recording level and colour (BYOL-A, UnFuSeD). ``"rms"`` scales
            every clip to unit root-mean-square amplitude before the spectrogram (an all-zero clip stays
            zero), so the embedding cannot encode how loud a clip was recorded: a gain of ``g`` dB
            shifts every log-mel value of a clip by the same ``g * ln(10) / 10``, and where levels vary
            across the data (microphones, distances) that shift is the largest direction in the
            features, which a self-supervised teacher clusters by. ``"mel_mean"`` subtracts each clip's
            mean over time from every mel band of its log-mel (cepstral mean normalisation), which
            removes the level and any fixed colouring of the clip (microphone response, the tilt of
            a stationary background) as well.

    Example:
        >>> frontend = LogMelFrontend()
        >>> frontend(torch.randn(2, 16000)).shape
        torch.Size([2, 1, 64, 101])
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        n_fft: int = 1024,
        win_length: int | None = 1024,
        hop_length: int = 160,
        n_mels: int = 64,
        f_min: float = 60.0,
        f_max: float = 7800.0,
        power: float = 2.0,
        eps: float = DEFAULT_LOG_EPS,
        normalize: bool = True,
        norm_momentum: float | None = None,
        level: str | None = None,
    ) -> None:
        super().__init__()
        if level not in LEVELS:
            raise ValueError(f"level must be one of {sorted(LEVELS, key=str)}, got {level!r}")
        self.level = level
        if not 0 <= f_min < f_max <= sample_rate / 2:
            raise ValueError(f"need 0 <= f_min < f_max <= sample_rate / 2, got f_min={f_min}, f_max={f_max}, sample_rate={sample_rate}")
        if eps <= 0:
            raise ValueError(f"eps must be positive, got {eps}")
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.n_mels = n_mels
        self.eps = eps
        self.melspec = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate,
            n_fft=n_fft,
            win_length=win_length,
            hop_length=hop_length,
            f_min=f_min,
            f_max=f_max,
            n_mels=n_mels,
            power=power,
        )
        self.norm: nn.Module = RunningNorm(norm_momentum) if normalize else nn.Identity()

    def num_frames(self, num_samples: int) -> int:
        """Number of output frames for a waveform of ``num_samples`` samples (centred frames)."""
        return num_samples // self.hop_length + 1

    def forward(self, x: Tensor) -> Tensor:
        """Compute the normalised log-mel spectrogram.

        Args:
            x: Waveform of shape ``(B, T)`` or ``(B, 1, T)``.

        Returns:
            Float32 tensor of shape ``(B, 1, n_mels, T // hop_length + 1)``.

        Raises:
            ValueError: The input is not ``(B, T)`` / ``(B, 1, T)`` or is too short for reflect padding.
            TypeError: The input is not a floating-point tensor.
        """
        check_input(x, (2, 3), "LogMelFrontend")
        if x.ndim == 3:
            if x.shape[1] != 1:
                raise ValueError(f"LogMelFrontend expects mono audio (B, 1, T), got shape {tuple(x.shape)}")
            x = x[:, 0]
        if x.shape[-1] <= self.n_fft // 2:
            raise ValueError(
                f"LogMelFrontend needs more than n_fft // 2 = {self.n_fft // 2} samples, got shape {tuple(x.shape)}"
            )
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float()
            if self.level == "rms":
                rms = x.square().mean(dim=-1, keepdim=True).sqrt()
                x = x / torch.where(rms > 0, rms, torch.ones_like(rms))
            mel = self.melspec(x)
            logmel = torch.log(mel + self.eps).unsqueeze(1)
            if self.level == "mel_mean":
                logmel = logmel - logmel.mean(dim=-1, keepdim=True)
            return self.norm(logmel)
