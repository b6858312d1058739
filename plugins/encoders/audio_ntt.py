"""The BYOL-A audio encoder ("AudioNTT2020Task6") with a log-mel front end.

From Niizumi et al., "BYOL for Audio: Self-Supervised Learning for General-Purpose Audio
Representation", 2021, arXiv 2103.06695; used as teacher and student by UnFuSeD (Ghosh et al., 2023,
arXiv 2303.05668).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from fewlabel.plugins.encoders.base import Encoder, check_input
from fewlabel.plugins.encoders.frontend import LogMelFrontend
from fewlabel.plugins.encoders.registry import register_encoder

_NUM_BLOCKS = 3
_LAYERS_PER_BLOCK = 4  # Conv2d, BatchNorm2d, ReLU, MaxPool2d
_POOLS = ("time", "time_freq")


@register_encoder("audio_ntt")
class AudioNTT(Encoder):
    """BYOL-A's convolutional audio encoder on a normalised log-mel spectrogram.

    ``3 x [Conv2d 3x3 (C), BN, ReLU, MaxPool2d 2]`` -> reshape ``(B, C, F/8, T/8)`` to
    ``(B, T/8, F/8 * C)`` -> ``Linear, ReLU, Dropout, Linear, ReLU`` -> max over time + mean over
    time. The module names (``features``, ``fc``) and the flattening order (mel-major, channel-minor)
    are BYOL-A's, so its checkpoints load into ``features``/``fc`` unchanged.

    The intermediate features, for UnFuSeD's auxiliary exits, are each conv block's output (after
    pooling) averaged over time only and flattened in the same mel-major, channel-minor order:
    ``(B, F_i * C)`` with ``F_i = n_mels // 2**i`` for block ``i = 1, 2, 3``, i.e. 2048 / 1024 / 512
    dims for 64 mels and 64 channels, as in the UnFuSeD code. ``intermediate_pool="time_freq"``
    averages over frequency too, giving ``(B, C)`` per block.

    Args:
        n_mels: Mel bins of the spectrogram (also passed to the front end); at least 8.
        channels: Conv channels ``C`` (64 in BYOL-A).
        embed_dim: Embedding size ``d`` (2048 in BYOL-A; e.g. 512 for a small student).
        dropout: Dropout between the two linear layers.
        frontend: Keyword arguments for :class:`LogMelFrontend` (``None`` = its defaults).
        intermediate_pool: ``"time"`` (UnFuSeD) or ``"time_freq"``: the axes each block's
            intermediate feature is averaged over.

    Example:
        >>> enc = AudioNTT(channels=32, embed_dim=512)
        >>> enc(torch.randn(2, 16000)).shape  # doctest: +SKIP
        torch.Size([2, 512])
    """

    def __init__(
        self,
        n_mels: int = 64,
        channels: int = 64,
        embed_dim: int = 2048,
        dropout: float = 0.3,
        frontend: dict[str, Any] | None = None,
        intermediate_pool: str = "time",
    ) -> None:
        super().__init__()
        frontend = dict(frontend or {})
        if frontend.setdefault("n_mels", n_mels) != n_mels:
            raise ValueError(f"frontend n_mels={frontend['n_mels']} differs from the encoder's n_mels={n_mels}")
        if n_mels < 2**_NUM_BLOCKS:
            raise ValueError(f"n_mels must be at least {2**_NUM_BLOCKS}, got {n_mels}")
        if channels < 1 or embed_dim < 1:
            raise ValueError(f"channels and embed_dim must be positive, got {channels} and {embed_dim}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if intermediate_pool not in _POOLS:
            raise ValueError(f"intermediate_pool must be one of {_POOLS}, got {intermediate_pool!r}")
        self.n_mels = n_mels
        self.embed_dim = embed_dim
        self.intermediate_pool = intermediate_pool
        if intermediate_pool == "time":
            self.intermediate_dims = [channels * (n_mels // 2**i) for i in range(1, _NUM_BLOCKS + 1)]
        else:
            self.intermediate_dims = [channels] * _NUM_BLOCKS
        self.frontend = LogMelFrontend(**frontend)
        layers: list[nn.Module] = []
        in_ch = 1
        for _ in range(_NUM_BLOCKS):
            layers += [nn.Conv2d(in_ch, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(), nn.MaxPool2d(2)]
            in_ch = channels
        self.features = nn.Sequential(*layers)
        self.fc = nn.Sequential(
            nn.Linear(channels * (n_mels // 2**_NUM_BLOCKS), embed_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(embed_dim, embed_dim),
            nn.ReLU(),
        )

    def preprocess(self, x: Tensor) -> Tensor:
        """Waveform ``(B, T)`` / ``(B, 1, T)`` -> normalised log-mel ``(B, 1, n_mels, frames)``."""
        return self.frontend(x)

    def _pool(self, z: Tensor) -> Tensor:
        """Block output ``(B, C, F, T)`` -> its intermediate feature (see the class docstring)."""
        if self.intermediate_pool == "time_freq":
            return z.mean(dim=(2, 3))
        return z.mean(dim=3).transpose(1, 2).flatten(1)  # (B, F * C), mel-major like the fc input

    def forward_intermediates(self, z: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Embed a log-mel batch.

        Args:
            z: Log-mel spectrogram ``(B, 1, n_mels, frames)`` with ``frames >= 8``.

        Returns:
            ``(embedding (B, embed_dim), [block features (B, intermediate_dims[i])] * 3)``.

        Raises:
            ValueError: ``z`` has the wrong shape.
        """
        check_input(z, (4,), "AudioNTT")
        min_frames = 2**_NUM_BLOCKS
        if z.shape[1] != 1 or z.shape[2] != self.n_mels or z.shape[3] < min_frames:
            raise ValueError(
                f"AudioNTT expects a log-mel of shape (B, 1, {self.n_mels}, frames >= {min_frames}), got {tuple(z.shape)}"
            )
        block_features: list[Tensor] = []
        for i, layer in enumerate(self.features):
            z = layer(z)
            if i % _LAYERS_PER_BLOCK == _LAYERS_PER_BLOCK - 1:
                block_features.append(self._pool(z))
        z = z.permute(0, 3, 2, 1)  # (B, T', F', C), BYOL-A's order
        z = self.fc(z.flatten(2))  # (B, T', d)
        embedding = z.amax(dim=1) + z.mean(dim=1)
        return embedding, block_features
