"""Corruptions: the exact severity parameters, hand-checked effects, determinism, and the wrappers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from fewlabel.datamodules import DigitsDataModule, InMemoryDataset, SampleView
from fewlabel.datamodules.corruptions import (
    AUDIO_CORRUPTIONS,
    IMAGE_CORRUPTIONS,
    SEVERITIES,
    CorruptedDataModule,
    CorruptedDataset,
    CorruptedView,
    Corruption,
    _generator,
)


def test_severity_parameters_are_exactly_the_documented_ones() -> None:
    assert SEVERITIES == {
        "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
        "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),
        "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
        "rotation": (10.0, 20.0, 30.0, 40.0, 50.0),
        "additive_noise": (30.0, 20.0, 10.0, 5.0, 0.0),
        "gain": (-6.0, -12.0, -18.0, -24.0, -30.0),
        "time_stretch": (1.1, 1.2, 1.3, 1.4, 1.5),
        "lowpass": (4000.0, 2000.0, 1000.0, 500.0, 250.0),
    }
    assert IMAGE_CORRUPTIONS == ("gaussian_noise", "gaussian_blur", "contrast", "rotation")
    assert AUDIO_CORRUPTIONS == ("additive_noise", "gain", "time_stretch", "lowpass")
    for name, values in SEVERITIES.items():
        assert [Corruption(name, s).param for s in range(1, 6)] == list(values)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="choose one of"):
        Corruption("fog", 1)
    for severity in (0, 6, 2.0, True):
        with pytest.raises(ValueError, match="severity"):
            Corruption("contrast", severity)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="below half the sample rate"):
        Corruption("lowpass", 1, sample_rate=8000)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        Corruption("contrast", 1)(torch.rand(8, 8), 0)
    with pytest.raises(ValueError, match="waveform"):
        Corruption("gain", 1)(torch.rand(1, 2, 8), 0)


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_gaussian_noise_by_hand(severity: int) -> None:
    x = torch.full((1, 6, 6), 0.5)
    std = SEVERITIES["gaussian_noise"][severity - 1]
    expected = (x + torch.randn(x.shape, generator=_generator(0, 11)) * std).clamp(0, 1)
    assert torch.equal(Corruption("gaussian_noise", severity)(x, 11), expected)
    big = Corruption("gaussian_noise", severity)(torch.full((1, 200, 200), 0.5), 3) - 0.5
    if std < 0.2:  # clipping at 0 and 1 hardly matters below 0.5 / 0.2 = 2.5 standard deviations
        assert float(big.std()) == pytest.approx(std, rel=0.05)
    assert float(big.abs().max()) <= 0.5


def test_contrast_by_hand() -> None:
    x = torch.tensor([[[0.0, 1.0], [1.0, 0.0]], [[0.2, 0.2], [0.6, 0.6]]])
    out = Corruption("contrast", 2)(x, 0)  # c = 0.5; per-channel means 0.5 and 0.4
    expected = torch.tensor([[[0.25, 0.75], [0.75, 0.25]], [[0.3, 0.3], [0.5, 0.5]]])
    torch.testing.assert_close(out, expected)


def test_gaussian_blur_kernel_by_hand() -> None:
    x = torch.zeros(1, 9, 9)
    x[0, 4, 4] = 1.0
    out = Corruption("gaussian_blur", 5)(x, 0)  # sigma 1, kernel 7
    g = torch.exp(-torch.arange(-3, 4, dtype=torch.float32) ** 2 / 2)
    g = g / g.sum()
    torch.testing.assert_close(out[0, 1:8, 1:8], torch.outer(g, g), atol=1e-6, rtol=0)
    assert float(out.sum()) == pytest.approx(1.0, abs=1e-6)
    tiny = Corruption("gaussian_blur", 5)(torch.rand(1, 3, 3), 0)  # kernel capped at 2 * 3 - 1 = 5
    assert tiny.shape == (1, 3, 3)


def test_rotation_angle_and_sign_per_sample() -> None:
    x = torch.rand(1, 8, 8)
    corruption = Corruption("rotation", 3)
    signs = set()
    for index in range(12):
        out = corruption(x, index)
        plus = TF.rotate(x, 30.0, interpolation=TF.InterpolationMode.BILINEAR, fill=[0.0])
        minus = TF.rotate(x, -30.0, interpolation=TF.InterpolationMode.BILINEAR, fill=[0.0])
        assert torch.equal(out, plus) or torch.equal(out, minus)
        signs.add(torch.equal(out, plus))
    assert signs == {True, False}


def test_audio_corruptions_by_hand() -> None:
    t = torch.arange(16000) / 16000
    wave = torch.sin(2 * math.pi * 440 * t)
    torch.testing.assert_close(Corruption("gain", 1)(wave, 0), wave * 10 ** (-6 / 20))
    for severity in range(1, 6):
        noisy = Corruption("additive_noise", severity)(wave, 5)
        noise = noisy - wave
        snr = 10 * math.log10(float(wave.square().mean() / noise.square().mean()))
        assert snr == pytest.approx(SEVERITIES["additive_noise"][severity - 1], abs=0.2)
    high = torch.sin(2 * math.pi * 6000 * t)
    low = torch.sin(2 * math.pi * 200 * t)
    lowpass = Corruption("lowpass", 1)  # 4 kHz
    assert float(lowpass(high, 0)[2000:].std()) < 0.5 * float(high.std())
    assert float(lowpass(low, 0)[2000:].std()) == pytest.approx(float(low.std()), rel=0.05)
    stretched = Corruption("time_stretch", 5)(wave.reshape(1, -1), 0)  # rate 1.5: 2/3 of the length, then zeros
    assert stretched.shape == (1, 16000)
    assert float(stretched[0, 11000:].abs().max()) == 0.0 and float(stretched[0, 1000:10000].std()) > 0.5
    spectrum = torch.fft.rfft(stretched[0, 1000:10000]).abs()
    assert int(spectrum.argmax()) * 16000 / 9000 == pytest.approx(440, abs=4)  # the pitch is kept


@pytest.mark.parametrize("name", list(SEVERITIES))
def test_deterministic_per_index_and_seed(name: str) -> None:
    x = torch.rand(3, 8, 8) if name in IMAGE_CORRUPTIONS else torch.randn(2, 4000)
    a, b = Corruption(name, 4, seed=1), Corruption(name, 4, seed=1)
    assert torch.equal(a(x, 17), b(x, 17))
    assert a(x, 17).shape == x.shape and a(x, 17).dtype == x.dtype
    if name in ("gaussian_noise", "additive_noise"):
        assert not torch.equal(a(x, 17), a(x, 18))
        assert not torch.equal(a(x, 17), Corruption(name, 4, seed=2)(x, 17))


def test_corrupted_dataset_and_view() -> None:
    inputs = torch.rand(5, 1, 8, 8)
    clean = InMemoryDataset(inputs, np.arange(5) % 2)
    corruption = Corruption("gaussian_noise", 2)
    shifted = CorruptedDataset(clean, corruption)
    assert np.array_equal(shifted.targets, clean.targets)
    for i in range(5):
        assert torch.equal(shifted.load(i, train=False), corruption(inputs[i], i))
    view = CorruptedView(SampleView(clean, positions=np.array([3, 1])), corruption)
    item = view[0]
    assert item["index"] == 3 and torch.equal(item["input"], corruption(inputs[3], 3))  # seeded by "index"


def test_corrupted_datamodule_corrupts_only_the_chosen_splits() -> None:
    dm = DigitsDataModule(eval_batch_size=100)
    corruption = Corruption("contrast", 3)
    wrapped = CorruptedDataModule(dm, corruption)
    wrapped.setup("fit")
    assert wrapped.num_classes == 10 and wrapped.class_names == dm.class_names
    batch = next(iter(wrapped.test_dataloader()))
    clean = next(iter(dm.test_dataloader()))
    assert torch.equal(batch["label"], clean["label"]) and torch.equal(batch["index"], clean["index"])
    expected = torch.stack([corruption(x, int(i)) for x, i in zip(clean["input"], clean["index"])])
    assert torch.equal(batch["input"], expected)
    assert torch.equal(next(iter(wrapped.val_dataloader()))["input"], next(iter(dm.val_dataloader()))["input"])
    assert wrapped.test_dataloader().batch_size == 100
    both = CorruptedDataModule(dm, corruption, splits=("val", "test"))
    val = next(iter(both.val_dataloader()))
    assert not torch.equal(val["input"], next(iter(dm.val_dataloader()))["input"])
    with pytest.raises(ValueError, match="unknown splits"):
        CorruptedDataModule(dm, corruption, splits=("train",))
