"""Folder-per-class audio clips as fixed-length mono waveforms."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from torch import Tensor

from fewlabel.datamodules.budget import _check_int
from fewlabel.datamodules.folder import FileDataset, FolderDataModule

__all__ = ["AudioFileDataset", "AudioFolderDataModule", "crop_or_pad", "mono_waveform"]

AUDIO_ALIASES = {".aif": "AIFF", ".oga": "OGG", ".snd": "AU", ".sph": "NIST"}


def _soundfile_extensions() -> tuple[str, ...]:
    """Extensions of the formats this libsndfile reads (``.mp3`` from libsndfile 1.1 on).

    Each format's name (``".wav"``, ``".flac"``, ...), a few common aliases, and
    ``.opus`` where Ogg Opus is supported; not ``RAW``, whose files have no header.
    """
    formats = set(sf.available_formats()) - {"RAW"}
    extensions = {f".{name.lower()}" for name in formats}
    extensions |= {alias for alias, name in AUDIO_ALIASES.items() if name in formats}
    if "OGG" in formats and "OPUS" in sf.available_subtypes("OGG"):
        extensions.add(".opus")
    return tuple(sorted(extensions))


AUDIO_EXTENSIONS = _soundfile_extensions()


def crop_or_pad(wave: Tensor, num_samples: int, train: bool) -> Tensor:
    """Cut a waveform to exactly ``num_samples`` samples.

    Longer clips are cropped at a random offset (``train=True``, drawn with torch's RNG so
    that DataLoader workers differ) or at the centre (``train=False``); shorter clips are
    zero-padded at the end.

    Args:
        wave: ``(T,)`` waveform.
        num_samples: Output length.
        train: Random rather than centre crop.

    Returns:
        ``(num_samples,)`` waveform.
    """
    length = wave.shape[-1]
    if length < num_samples:
        return torch.nn.functional.pad(wave, (0, num_samples - length))
    if length == num_samples:
        return wave
    excess = length - num_samples
    start = int(torch.randint(0, excess + 1, ())) if train else excess // 2
    return wave[start : start + num_samples]


def _clip_samples(sample_rate: int, clip_seconds: float) -> int:
    """Samples in a ``clip_seconds`` clip at ``sample_rate`` (at least 1), after checking both.

    Raises:
        ValueError: ``sample_rate`` is not an int >= 1 or ``clip_seconds`` not a positive number.
    """
    _check_int("sample_rate", sample_rate, 1)
    if isinstance(clip_seconds, bool) or not isinstance(clip_seconds, (int, float)) or clip_seconds <= 0:
        raise ValueError(f"clip_seconds must be a positive number, got {clip_seconds!r}")
    return max(1, round(clip_seconds * sample_rate))


def mono_waveform(data: np.ndarray, rate: int, sample_rate: int) -> Tensor:
    """``(frames, channels)`` (or ``(frames,)``) samples at ``rate`` as a mono ``float32`` waveform at
    ``sample_rate``: channels averaged, resampled with :func:`torchaudio.functional.resample`."""
    data = np.asarray(data, dtype=np.float32)
    mono = data.mean(axis=1, dtype=np.float32) if data.ndim == 2 else data
    wave = torch.from_numpy(np.ascontiguousarray(mono))
    if rate != sample_rate:
        wave = AF.resample(wave, orig_freq=int(rate), new_freq=sample_rate)
    return wave.contiguous()


class AudioFileDataset(FileDataset):
    """Audio files decoded with ``soundfile`` into mono waveforms at ``sample_rate``.

    Channels are averaged; files at another rate are resampled with
    :func:`torchaudio.functional.resample`; inputs are ``(num_samples,)`` ``float32``
    crops (see :func:`crop_or_pad`).

    Args:
        files: Audio file paths.
        targets: Class id of each file.
        sample_rate: Target sample rate in Hz.
        num_samples: Length of every input.
        cache: Keep the full decoded waveforms in memory.

    Example:
        >>> import numpy as np, soundfile as sf
        >>> sf.write("clip.wav", np.zeros(8000, dtype=np.float32), 8000)  # 1 s at 8 kHz
        >>> ds = AudioFileDataset(["clip.wav"], np.array([0]), sample_rate=16000, num_samples=4000)
        >>> ds.load(0, train=False).shape  # resampled to 16 kHz, centre-cropped to 4000 samples
        torch.Size([4000])
    """

    def __init__(
        self,
        files: Sequence[Path],
        targets: np.ndarray,
        sample_rate: int = 16000,
        num_samples: int = 16000,
        cache: bool = True,
    ) -> None:
        self.sample_rate = sample_rate
        self.num_samples = num_samples
        super().__init__(files, targets, cache)

    def decode(self, path: Path) -> Tensor:
        """Return the whole clip as a mono ``float32`` waveform at ``sample_rate``.

        Raises:
            ValueError: If the file has no audio frames.
            soundfile.LibsndfileError: If the file cannot be read.
        """
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
        if data.shape[0] == 0:
            raise ValueError("file has no audio frames")
        return mono_waveform(data, int(rate), self.sample_rate)

    def finish(self, value: Tensor, train: bool) -> Tensor:
        """Random (train) or centre crop, or zero-pad, to ``num_samples``."""
        return crop_or_pad(value, self.num_samples, train)


class AudioFolderDataModule(FolderDataModule):
    """Audio classification from ``root/CLASS/<audio files>`` with a label budget.

    Every file type that ``soundfile`` reads is accepted (``.wav``, ``.flac``, ``.ogg``,
    ``.mp3``, ``.aiff``, ...; see ``AudioFolderDataModule.extensions``); other files in a
    class folder are ignored with one warning.

    Inputs are ``(T,)`` ``float32`` mono waveforms with ``T = round(clip_seconds *
    sample_rate)``: random crops for the training loaders, centre crops for the rest.
    Unreadable and empty files are skipped at setup with one warning listing them.

    Args:
        root: The data folder (``root/CLASS/...`` or ``root/{train,test}/CLASS/...``).
        sample_rate: Sample rate of the inputs in Hz; other rates are resampled.
        clip_seconds: Length of every input in seconds.
        test_fraction: Stratified test share when ``root`` has no ``train``/``test`` folders.
        cache: Decode once into memory.
        **kwargs: Arguments of :class:`~fewlabel.datamodules.FewLabelDataModule`.

    Raises:
        ValueError: On a non-positive ``sample_rate`` or ``clip_seconds``.

    Example:
        >>> dm = AudioFolderDataModule("data/esc10", labels_per_class=5)  # doctest: +SKIP
        >>> dm.setup(); next(iter(dm.train_dataloader()))["input"].shape  # doctest: +SKIP
        torch.Size([5, 16000])
    """

    extensions = AUDIO_EXTENSIONS

    def __init__(
        self,
        root: str | Path,
        sample_rate: int = 16000,
        clip_seconds: float = 1.0,
        test_fraction: float = 0.3,
        cache: bool = True,
        **kwargs: object,
    ) -> None:
        super().__init__(root, test_fraction=test_fraction, cache=cache, **kwargs)
        self.num_samples = _clip_samples(sample_rate, clip_seconds)
        self.sample_rate = sample_rate
        self.clip_seconds = float(clip_seconds)

    def make_dataset(self, files: list[Path], targets: np.ndarray) -> AudioFileDataset:
        """Decode the audio files (see :class:`AudioFileDataset`)."""
        return AudioFileDataset(files, targets, self.sample_rate, self.num_samples, self.cache)
