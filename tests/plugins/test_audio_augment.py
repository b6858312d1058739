"""SpecAugment on log-mel batches, waveform gain and noise, and raw-stage pipelines around an audio front end."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from fewlabel.plugins.augment import (
    SpecAugment, ViewPipeline, ViewPipelines, WaveformAugment, create_augment, make_views,
)
from fewlabel.plugins.encoders import create_encoder
from fewlabel.plugins.methods import BYOLA

AUDIO = {"name": "audio_ntt", "channels": 4, "embed_dim": 32, "n_mels": 16}


def _masked_span(masked: torch.Tensor) -> tuple[int, bool]:
    """Number of masked positions along one axis and whether they are one contiguous run."""
    where = masked.nonzero().flatten()
    if where.numel() == 0:
        return 0, True
    return where.numel(), bool(where[-1] - where[0] + 1 == where.numel())


# ---------------------------------------------------------------- SpecAugment


def test_spec_augment_masks_per_sample_within_the_mask_params() -> None:
    torch.manual_seed(0)
    x = torch.ones(32, 1, 20, 50)
    out = SpecAugment(freq_mask_param=6, time_mask_param=9, num_freq_masks=1, num_time_masks=1)(x)
    patterns = set()
    for sample in out[:, 0]:
        zero = sample == 0
        rows, cols = zero.all(dim=1), zero.all(dim=0)
        n_rows, rows_contiguous = _masked_span(rows)
        n_cols, cols_contiguous = _masked_span(cols)
        assert n_rows <= 5 and n_cols <= 8 and rows_contiguous and cols_contiguous  # widths < mask_param
        assert torch.equal(zero, rows[:, None] | cols[None, :])  # nothing but whole rows and columns
        assert bool((sample[~zero] == 1).all())
        patterns.add((tuple(rows.tolist()), tuple(cols.tolist())))
    assert len(patterns) > 16  # masks are drawn per sample


def test_spec_augment_counts_value_and_dtype() -> None:
    torch.manual_seed(0)
    x = torch.ones(64, 1, 30, 40)
    out = SpecAugment(freq_mask_param=5, time_mask_param=0, num_freq_masks=3, num_time_masks=2, mask_value=-1.0)(x)
    masked = out[:, 0] == -1
    assert bool((out[~masked.unsqueeze(1)] == 1).all())
    rows = masked.all(dim=2)
    assert int(rows.sum(dim=1).max()) <= 3 * 4 and int(rows.sum(dim=1).max()) > 4  # up to 3 masks of <= 4 rows
    assert not bool(masked.all(dim=1).any())  # time_mask_param 0: no time masks
    assert SpecAugment()(torch.randn(2, 1, 16, 30).bfloat16()).dtype == torch.bfloat16


def test_spec_augment_zero_params_is_identity_and_draws_nothing() -> None:
    x = torch.randn(4, 1, 16, 30)
    state = torch.get_rng_state()
    assert torch.equal(SpecAugment(freq_mask_param=0, time_mask_param=0)(x), x)
    assert torch.equal(torch.get_rng_state(), state)


def test_spec_augment_is_seeded() -> None:
    x = torch.randn(8, 1, 16, 30)
    aug = SpecAugment()
    torch.manual_seed(3)
    a = aug(x)
    torch.manual_seed(3)
    assert torch.equal(aug(x), a)
    torch.manual_seed(4)
    assert not torch.equal(aug(x), a)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"freq_mask_param": -1}, "SpecAugment: freq_mask_param must be an int >= 0, got -1"),
        ({"time_mask_param": 2.5}, "SpecAugment: time_mask_param must be an int >= 0, got 2.5"),
        ({"num_time_masks": True}, "num_time_masks must be an int >= 0"),
    ],
)
def test_spec_augment_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SpecAugment(**kwargs)


def test_spec_augment_needs_4d_input() -> None:
    with pytest.raises(ValueError, match="4 dims"):
        SpecAugment()(torch.randn(2, 16, 30))


# ---------------------------------------------------------------- waveform


def test_gain_is_exact_in_db() -> None:
    x = torch.randn(6, 1000)
    torch.manual_seed(0)
    out = WaveformAugment(gain_db=(-12.0, 12.0), snr_db=None)(x)
    torch.manual_seed(0)
    gain = torch.rand(6) * 24.0 - 12.0  # the module's one draw
    torch.testing.assert_close(out, x * 10 ** (gain[:, None] / 20), rtol=1e-6, atol=0)
    measured = 20 * torch.log10(out.norm(dim=1) / x.norm(dim=1))
    torch.testing.assert_close(measured, gain, rtol=0, atol=1e-4)
    fixed = WaveformAugment(gain_db=(6.0, 6.0), snr_db=None)(x)
    torch.testing.assert_close(fixed, x * 10 ** (6.0 / 20), rtol=1e-6, atol=0)


@pytest.mark.parametrize("snr", [0.0, 10.0, 35.0])
def test_noise_at_the_asked_snr(snr: float) -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 1, 8000) * torch.tensor([0.01, 0.1, 1.0, 3.0]).view(4, 1, 1)
    out = WaveformAugment(gain_db=None, snr_db=(snr, snr))(x)
    assert out.shape == x.shape
    noise = (out - x).flatten(1)
    measured = 10 * torch.log10(x.flatten(1).pow(2).sum(1) / noise.pow(2).sum(1))
    torch.testing.assert_close(measured, torch.full((4,), snr), rtol=0, atol=1e-2)
    assert noise.std(dim=1).min() > 0 and noise.mean(dim=1).abs().max() < 0.1 * noise.std(dim=1).max()


def test_waveform_per_sample_seeded_and_silence_stays_silent() -> None:
    x = torch.randn(1, 4000).repeat(8, 1)
    x[0] = 0.0
    aug = WaveformAugment(gain_db=(-6.0, 6.0), snr_db=(5.0, 30.0))
    torch.manual_seed(0)
    out = aug(x)
    assert torch.equal(out[0], x[0])
    # every sample its own gain (energies differ) and noise (the residual after undoing the gain differs)
    assert len({round(float(e), 3) for e in out[1:].norm(dim=1)}) == 7
    gain = (out[1:] * x[1:]).sum(1, keepdim=True) / x[1:].pow(2).sum(1, keepdim=True)
    residual = out[1:] - gain * x[1:]
    assert float((residual[0] - residual[1]).abs().max()) > 1e-3
    torch.manual_seed(0)
    assert torch.equal(aug(x), out)
    torch.manual_seed(1)
    assert not torch.equal(aug(x), out)


def test_waveform_dtypes_and_off_draws_nothing() -> None:
    x = torch.randn(3, 1, 2000)
    assert WaveformAugment()(x.bfloat16()).dtype == torch.bfloat16
    assert WaveformAugment()(x.double()).dtype == torch.float64
    state = torch.get_rng_state()
    assert torch.equal(WaveformAugment(gain_db=None, snr_db=None)(x), x)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"gain_db": (6.0, -6.0)}, r"gain_db must be a range \(lo, hi\) with lo <= hi, got \(6.0, -6.0\)"),
        ({"snr_db": "loud"}, "snr_db must be a range"),
        ({"snr_db": (1.0, 2.0, 3.0)}, "snr_db must be a range"),
    ],
)
def test_waveform_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        WaveformAugment(**kwargs)


def test_waveform_needs_2d_or_3d_input() -> None:
    with pytest.raises(ValueError, match="2 or 3 dims"):
        WaveformAugment()(torch.randn(4000))


# ---------------------------------------------------------------- raw stage around the audio front end


class Recorder(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape))
        return self.inner(x)


def test_raw_stage_runs_on_the_waveform_before_the_front_end() -> None:
    encoder = create_encoder("audio_ntt", channels=4, embed_dim=32, n_mels=16).eval()  # eval: a fixed front end
    waves = torch.randn(4, 16000) * 0.1
    raw = Recorder(WaveformAugment(gain_db=(-6.0, 6.0), snr_db=(10.0, 20.0)))
    spec = SpecAugment(freq_mask_param=4, time_mask_param=10)
    pipelines = ViewPipelines([ViewPipeline(spec, raw=raw), None])
    torch.manual_seed(0)
    first, second = make_views(encoder, {"input": waves}, pipelines, 2)
    assert raw.shapes == [(4, 16000)]  # the waveform, not a log-mel
    assert first.shape == second.shape == (4, 1, 16, 101)
    torch.manual_seed(0)
    expected = spec(encoder.preprocess(WaveformAugment(gain_db=(-6.0, 6.0), snr_db=(10.0, 20.0))(waves)))
    assert torch.equal(first, expected)
    assert torch.equal(second, encoder.preprocess(waves))


def test_audio_pipelines_from_the_registry_and_in_a_method() -> None:
    spec = {"name": "views", "pipelines": [
        {"name": "spec_augment", "freq_mask_param": 4, "raw": {"name": "waveform", "snr_db": [10, 30]}},
        {"name": "byola", "memory_size": 8},
    ]}
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    pipelines = create_augment(spec["name"], **kwargs)
    assert isinstance(pipelines, ViewPipelines)
    assert isinstance(pipelines.pipelines[0].raw, WaveformAugment) and pipelines.pipelines[0].raw.snr_db == (10.0, 30.0)
    assert isinstance(pipelines.pipelines[0].augment, SpecAugment) and pipelines.pipelines[1].raw is None
    module = BYOLA(AUDIO, augment=pipelines, hidden_dim=16, out_dim=8)
    torch.manual_seed(0)
    views = module.views({"input": torch.randn(4, 16000) * 0.1}, 2)
    assert [tuple(v.shape) for v in views] == [(4, 1, 16, 101)] * 2
    with pytest.raises(ValueError, match="1 views were asked for, but the ViewPipelines augment has 2"):
        module.views({"input": torch.randn(4, 16000)}, 1)
