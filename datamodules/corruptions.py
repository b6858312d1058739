"""Distribution-shift benchmarks from the data at hand: image and audio corruptions at five severities.

In the spirit of CIFAR-10-C / ImageNet-C (Hendrycks and Dietterich, "Benchmarking Neural Network
Robustness to Common Corruptions and Perturbations", ICLR 2019, arXiv 1903.12261), a
:class:`Corruption` maps one input to its corrupted version, the same every time for the same sample:
the random draws (noise, the sign of a rotation) come from a generator seeded by ``(seed, index)``,
``index`` being the sample's position in its dataset. Three ways to apply one:

* :class:`CorruptedDataset`: a :class:`~fewlabel.datamodules.FewLabelDataset` view of another one;
* :class:`CorruptedView`: a torch ``Dataset`` view of any dataset of dict samples ``{"input", "index", ...}``;
* :class:`CorruptedDataModule`: wraps any ``LightningDataModule`` and corrupts the loaders of the chosen
  splits (the test split by default); training stays clean.

Severity parameters (:data:`SEVERITIES`, severity 1 to 5):

================  =========================================  ======================================
corruption        parameter                                  severities 1-5
================  =========================================  ======================================
gaussian_noise    std of added N(0, std^2) noise, then clip  0.08, 0.12, 0.18, 0.26, 0.38 (ImageNet-C)
gaussian_blur     sigma in pixels (kernel 2 ceil(3 sigma)+1) 0.4, 0.6, 0.7, 0.8, 1.0 (CIFAR-10-C)
contrast          factor c: (x - mean) c + mean, then clip   0.75, 0.5, 0.4, 0.3, 0.15 (CIFAR-10-C)
rotation          angle in degrees, sign drawn per sample    10, 20, 30, 40, 50
additive_noise    SNR in dB of added white Gaussian noise    30, 20, 10, 5, 0
gain              gain in dB                                 -6, -12, -18, -24, -30
time_stretch      rate (phase vocoder; > 1 speeds up)        1.1, 1.2, 1.3, 1.4, 1.5
lowpass           cutoff in Hz (biquad, Q = 0.707)           4000, 2000, 1000, 500, 250
================  =========================================  ======================================

Images are ``(C, H, W)`` floats in ``[0, 1]`` (the noise and contrast results are clipped to it; the
contrast mean is per channel over the image, as in CIFAR-10-C; rotation is bilinear about the centre,
filling with 0; the blur pads by reflection and its kernel is at most ``2 min(H, W) - 1`` wide). Audio is a
``(T,)`` or ``(C, T)`` float waveform; every audio corruption keeps the length ``T`` (time-stretch
zero-pads or crops the stretched signal, computed with an STFT of 512 points, hop 128, Hann window).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
import torchaudio.functional as AF
import torchvision.transforms.v2.functional as TF
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from fewlabel.datamodules.dataset import FewLabelDataset

__all__ = [
    "AUDIO_CORRUPTIONS",
    "IMAGE_CORRUPTIONS",
    "SEVERITIES",
    "CorruptedDataModule",
    "CorruptedDataset",
    "CorruptedView",
    "Corruption",
]

#: The parameter of each corruption at severities 1..5 (see the module docstring for units).
SEVERITIES: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    "rotation": (10.0, 20.0, 30.0, 40.0, 50.0),
    "additive_noise": (30.0, 20.0, 10.0, 5.0, 0.0),
    "gain": (-6.0, -12.0, -18.0, -24.0, -30.0),
    "time_stretch": (1.1, 1.2, 1.3, 1.4, 1.5),
    "lowpass": (4000.0, 2000.0, 1000.0, 500.0, 250.0),
}
IMAGE_CORRUPTIONS: tuple[str, ...] = ("gaussian_noise", "gaussian_blur", "contrast", "rotation")
AUDIO_CORRUPTIONS: tuple[str, ...] = ("additive_noise", "gain", "time_stretch", "lowpass")
STRETCH_N_FFT, STRETCH_HOP = 512, 128
SPLITS = ("val", "test", "predict")


def _generator(seed: int, index: int) -> torch.Generator:
    """A CPU generator seeded from ``(seed, index)`` through numpy's SeedSequence (no collisions)."""
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class Corruption:
    """One corruption at one severity, deterministic per sample.

    Args:
        name: One of :data:`IMAGE_CORRUPTIONS` or :data:`AUDIO_CORRUPTIONS`.
        severity: 1 (mildest) to 5.
        seed: Base seed; the draws for sample ``index`` depend on ``(seed, index)`` only.
        sample_rate: Audio sample rate in Hz (``lowpass`` needs it; the cutoff must be below Nyquist).

    Raises:
        ValueError: unknown name (the message lists the valid ones), severity outside 1..5, or a
            low-pass cutoff at or above ``sample_rate / 2``.

    Example:
        >>> c = Corruption("gaussian_noise", severity=3)
        >>> c.param, c.kind
        (0.18, 'image')
        >>> x = torch.full((1, 8, 8), 0.5)
        >>> torch.equal(c(x, index=7), c(x, index=7)), torch.equal(c(x, index=7), c(x, index=8))
        (True, False)
    """

    def __init__(self, name: str, severity: int, seed: int = 0, sample_rate: int = 16000) -> None:
        if name not in SEVERITIES:
            raise ValueError(f"unknown corruption {name!r}; choose one of {sorted(SEVERITIES)}")
        if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or not 1 <= severity <= 5:
            raise ValueError(f"severity must be an int in 1..5, got {severity!r}")
        self.name = name
        self.severity = int(severity)
        self.seed = int(seed)
        self.sample_rate = int(sample_rate)
        self.param = SEVERITIES[name][self.severity - 1]
        self.kind = "image" if name in IMAGE_CORRUPTIONS else "audio"
        if name == "lowpass" and not self.param < self.sample_rate / 2:
            raise ValueError(f"lowpass cutoff {self.param} Hz must be below half the sample rate "
                             f"({self.sample_rate} Hz)")

    def __repr__(self) -> str:
        return f"Corruption({self.name!r}, severity={self.severity}, seed={self.seed})"

    def __call__(self, x: Tensor, index: int) -> Tensor:
        """The corrupted ``x`` (sample ``index``), same dtype and shape.

        Raises:
            ValueError: an image corruption on a tensor that is not ``(C, H, W)``, or an audio one on a
                tensor that is not ``(T,)`` or ``(C, T)``.
        """
        if self.kind == "image" and x.ndim != 3:
            raise ValueError(f"{self.name} expects a (C, H, W) image, got shape {tuple(x.shape)}")
        if self.kind == "audio" and x.ndim not in (1, 2):
            raise ValueError(f"{self.name} expects a (T,) or (C, T) waveform, got shape {tuple(x.shape)}")
        out = getattr(self, f"_{self.name}")(x.float(), index)
        return out.to(x.dtype)

    # images
    def _gaussian_noise(self, x: Tensor, index: int) -> Tensor:
        noise = torch.randn(x.shape, generator=_generator(self.seed, index)) * self.param
        return (x + noise.to(x.device)).clamp(0.0, 1.0)

    def _gaussian_blur(self, x: Tensor, index: int) -> Tensor:
        size = min(2 * math.ceil(3 * self.param) + 1, 2 * min(x.shape[-2:]) - 1)
        size -= 1 - size % 2  # odd
        return TF.gaussian_blur(x, [size, size], [self.param, self.param])

    def _contrast(self, x: Tensor, index: int) -> Tensor:
        mean = x.mean(dim=(-2, -1), keepdim=True)
        return ((x - mean) * self.param + mean).clamp(0.0, 1.0)

    def _rotation(self, x: Tensor, index: int) -> Tensor:
        sign = 1.0 if torch.rand((), generator=_generator(self.seed, index)) < 0.5 else -1.0
        return TF.rotate(x, sign * self.param, interpolation=TF.InterpolationMode.BILINEAR, fill=[0.0])

    # audio
    def _additive_noise(self, x: Tensor, index: int) -> Tensor:
        power = x.square().mean()
        scale = torch.sqrt(power / 10 ** (self.param / 10))
        noise = torch.randn(x.shape, generator=_generator(self.seed, index)).to(x.device)
        return x + noise * scale

    def _gain(self, x: Tensor, index: int) -> Tensor:
        return x * 10 ** (self.param / 20)

    def _time_stretch(self, x: Tensor, index: int) -> Tensor:
        wave = x.reshape(-1, x.shape[-1])
        length = wave.shape[-1]
        window = torch.hann_window(STRETCH_N_FFT, device=x.device)
        spec = torch.stft(wave, STRETCH_N_FFT, STRETCH_HOP, window=window, return_complex=True)
        advance = torch.linspace(0, math.pi * STRETCH_HOP, spec.shape[-2], device=x.device)[..., None]
        stretched = AF.phase_vocoder(spec, self.param, advance)
        out = torch.istft(stretched, STRETCH_N_FFT, STRETCH_HOP, window=window,
                          length=round(length / self.param))
        out = out[..., :length] if out.shape[-1] >= length else F.pad(out, (0, length - out.shape[-1]))
        return out.reshape(x.shape)

    def _lowpass(self, x: Tensor, index: int) -> Tensor:
        return AF.lowpass_biquad(x, self.sample_rate, self.param)


class CorruptedDataset(FewLabelDataset):
    """``source`` with every input corrupted: ``load(i, train) = corruption(source.load(i, train), i)``.

    Args:
        source: Any :class:`~fewlabel.datamodules.FewLabelDataset`; targets are shared.
        corruption: The corruption (seeded by the position ``i`` in ``source``).

    Example:
        >>> from fewlabel.datamodules import InMemoryDataset
        >>> clean = InMemoryDataset(torch.rand(4, 1, 8, 8), np.arange(4))
        >>> shifted = CorruptedDataset(clean, Corruption("contrast", 5))
        >>> float(shifted.load(0, train=False).std()) < float(clean.load(0, train=False).std())
        True
    """

    def __init__(self, source: FewLabelDataset, corruption: Corruption) -> None:
        self.source = source
        self.corruption = corruption
        self.targets = source.targets

    def load(self, index: int, train: bool) -> Tensor:
        """The corrupted input of sample ``index``."""
        return self.corruption(self.source.load(index, train), index)


class CorruptedView(Dataset[dict[str, Any]]):
    """Any dataset of dict samples with ``"input"`` corrupted, seeded by the sample's ``"index"``
    (its position in this dataset when the sample has none). Other keys pass through.

    Args:
        dataset: A map-style dataset whose items are dicts with an ``"input"`` tensor.
        corruption: The corruption.

    Example:
        >>> import numpy as np, torch
        >>> from fewlabel.datamodules import Corruption, InMemoryDataset, SampleView
        >>> clean = SampleView(InMemoryDataset(torch.full((2, 3, 8, 8), 0.5), np.array([0, 1])))
        >>> noisy = CorruptedView(clean, Corruption("gaussian_noise", severity=3))
        >>> noisy[0]["input"].shape, bool((noisy[0]["input"] != clean[0]["input"]).any())
        (torch.Size([3, 8, 8]), True)
    """

    def __init__(self, dataset: Dataset[dict[str, Any]], corruption: Corruption) -> None:
        self.dataset = dataset
        self.corruption = corruption

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample = dict(self.dataset[i])
        index = int(sample.get("index", i))
        sample["input"] = self.corruption(sample["input"], index)
        return sample


def _corrupt_loader(loader: Any, corruption: Corruption) -> Any:
    """The same loader (batching, sampler, collate, workers) over a :class:`CorruptedView` of its dataset."""
    if isinstance(loader, (list, tuple)):
        return type(loader)(_corrupt_loader(item, corruption) for item in loader)
    if isinstance(loader, dict):
        return {key: _corrupt_loader(item, corruption) for key, item in loader.items()}
    if not isinstance(loader, DataLoader):
        raise TypeError(f"CorruptedDataModule can corrupt DataLoaders, got {type(loader).__name__}")
    view = CorruptedView(loader.dataset, corruption)
    batching: dict[str, Any] = {"batch_sampler": loader.batch_sampler}
    if loader.batch_size is not None:
        batching = {"batch_size": loader.batch_size, "sampler": loader.sampler, "drop_last": loader.drop_last}
    return DataLoader(view, num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
                      persistent_workers=loader.persistent_workers, worker_init_fn=loader.worker_init_fn,
                      **batching)


class CorruptedDataModule(L.LightningDataModule):
    """Wrap a datamodule so that the loaders of some splits serve corrupted inputs.

    ``prepare_data`` and ``setup`` run the wrapped datamodule's; every loader is the wrapped datamodule's,
    and those of ``splits`` are rebuilt with the same batching over a :class:`CorruptedView` (seeded by the
    samples' ``"index"``). Attributes the wrapper lacks (``num_classes``, ``labeled_dataloader``, ...) are
    the wrapped datamodule's; those loaders stay clean.

    Args:
        datamodule: Any ``LightningDataModule`` whose loaders serve dict samples with ``"input"``.
        corruption: The corruption.
        splits: Which of ``"val"``, ``"test"``, ``"predict"`` to corrupt.

    Raises:
        ValueError: an unknown split.

    Example:
        >>> from fewlabel.datamodules import DigitsDataModule
        >>> dm = CorruptedDataModule(DigitsDataModule(), Corruption("rotation", 2))
        >>> dm.setup("test")
        >>> next(iter(dm.test_dataloader()))["input"].shape, dm.num_classes
        (torch.Size([256, 1, 8, 8]), 10)
    """

    def __init__(self, datamodule: L.LightningDataModule, corruption: Corruption,
                 splits: Sequence[str] = ("test",)) -> None:
        super().__init__()
        unknown = sorted(set(splits) - set(SPLITS))
        if unknown:
            raise ValueError(f"unknown splits {unknown}; choose among {list(SPLITS)}")
        self.datamodule = datamodule
        self.corruption = corruption
        self.splits = tuple(splits)

    def __getattr__(self, name: str) -> Any:
        inner = self.__dict__.get("datamodule")
        if inner is None or name.startswith("_"):
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")
        return getattr(inner, name)

    def prepare_data(self) -> None:
        self.datamodule.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        self.datamodule.setup(stage)

    def _loader(self, split: str) -> Any:
        loader = getattr(self.datamodule, f"{split}_dataloader")()
        return _corrupt_loader(loader, self.corruption) if split in self.splits else loader

    def train_dataloader(self) -> Any:
        return self.datamodule.train_dataloader()

    def val_dataloader(self) -> Any:
        return self._loader("val")

    def test_dataloader(self) -> Any:
        return self._loader("test")

    def predict_dataloader(self) -> Any:
        return self._loader("predict")
