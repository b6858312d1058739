"""Tests for the BYOL-A spectrogram augmentations (arXiv 2103.06695)."""

from __future__ import annotations

import pytest
import torch

import fewlabel.plugins.augment as augment
from fewlabel.plugins.augment import ByolaAugment, MixupBYOLA, RandomLinearFader, RandomResizeCrop


def test_public_surface() -> None:
    assert {"ByolaAugment", "MixupBYOLA", "RandomLinearFader", "RandomResizeCrop"} <= set(augment.__all__)
    assert augment.__all__ == sorted(augment.__all__)
    assert all(hasattr(augment, name) for name in augment.__all__)


# ---------------------------------------------------------------- mixup


def test_mixup_ratio_zero_is_identity() -> None:
    torch.manual_seed(0)
    mix = MixupBYOLA(ratio=0.0, memory_size=16)
    for _ in range(3):  # first batch (unmixed) and later ones (memory)
        x = torch.randn(4, 1, 8, 10)
        torch.testing.assert_close(mix(x), x, rtol=0, atol=0)


def test_mixup_of_identical_inputs_is_identity() -> None:
    torch.manual_seed(0)
    mix = MixupBYOLA(ratio=1.0, memory_size=16)
    x = torch.randn(1, 1, 8, 10).expand(4, 1, 8, 10).contiguous()
    torch.testing.assert_close(mix(x), x)  # first batch: unmixed
    torch.testing.assert_close(mix(x), x)  # from memory, which holds the same x: log((1-l)e^x + l e^x) = x


def test_mixup_returns_a_batch_unmixed_while_the_memory_is_empty() -> None:
    # BYOL-A: with an empty memory the input is returned as is, then stored.
    torch.manual_seed(0)
    mix = MixupBYOLA(ratio=1.0, memory_size=16)
    x = torch.randn(8, 1, 4, 6)
    torch.testing.assert_close(mix(x), x, rtol=0, atol=0)
    assert mix._count == 8 and torch.equal(mix.memory[:8], x)
    y = torch.randn(8, 1, 4, 6)
    assert not torch.allclose(mix(y), y)  # the next batch is mixed with the memory
    z = torch.randn(3, 1, 5, 6)  # another shape empties the memory: unmixed again, then stored
    torch.testing.assert_close(mix(z), z, rtol=0, atol=0)
    assert mix._count == 3 and torch.equal(mix.memory[:3], z)


def test_mixup_hand_computed_with_memory() -> None:
    torch.manual_seed(0)
    mix = MixupBYOLA(ratio=0.4, memory_size=16)
    mix(torch.full((3, 1, 4, 5), 0.0))  # memory now holds zeros
    out = mix(torch.full((3, 1, 4, 5), 2.0))
    # per sample: log((1 - l) e^2 + l e^0) with l in [0, 0.4], constant over (F, T)
    lam = (torch.exp(torch.tensor(2.0)) - out.exp()) / (torch.exp(torch.tensor(2.0)) - 1.0)
    assert (lam >= -1e-6).all() and (lam <= 0.4 + 1e-6).all()
    assert torch.allclose(out, out[:, :, :1, :1].expand_as(out))
    assert out.dtype == torch.float32


def test_mixup_memory_is_fifo_and_not_persistent() -> None:
    mix = MixupBYOLA(memory_size=3)
    mix(torch.stack([torch.full((1, 2, 2), float(i)) for i in range(2)]))
    mix(torch.stack([torch.full((1, 2, 2), float(i)) for i in range(2, 4)]))
    assert mix._count == 3
    assert sorted(mix.memory[:, 0, 0, 0].tolist()) == [1.0, 2.0, 3.0]
    assert "memory" not in mix.state_dict()
    mix(torch.randn(2, 1, 3, 3))  # a new shape resets the memory
    assert mix._count == 2 and mix.memory.shape == (3, 1, 3, 3)
    mix.reset()
    assert mix._count == 0


def test_mixup_is_seedable_and_detaches_memory() -> None:
    x = torch.randn(4, 1, 8, 10, requires_grad=True)
    outs = []
    for _ in range(2):
        torch.manual_seed(1)
        mix = MixupBYOLA()
        mix(torch.randn(4, 1, 8, 10))  # fills the memory
        outs.append(mix(x))
    torch.testing.assert_close(outs[0], outs[1])
    assert not mix.memory.requires_grad
    outs[0].sum().backward()
    assert x.grad is not None


# ---------------------------------------------------------------- random resize crop


def test_rrc_identity_when_scales_are_one() -> None:
    rrc = RandomResizeCrop(virtual_crop_scale=(1.0, 1.0), freq_scale=(1.0, 1.0), time_scale=(1.0, 1.0))
    x = torch.randn(3, 1, 16, 24)
    torch.testing.assert_close(rrc(x), x, atol=1e-4, rtol=0)


def test_rrc_crop_of_a_time_ramp_is_a_resized_window() -> None:
    # Crop half the frames at a random integer offset, resize with linear interpolation:
    # a ramp x[t] = t becomes start + t * (w - 1) / (T - 1) with w = T / 2.
    torch.manual_seed(0)
    t_len = 21
    rrc = RandomResizeCrop((1.0, 1.0), (1.0, 1.0), (0.5, 0.5), interpolation="bilinear")
    x = torch.arange(t_len, dtype=torch.float32).expand(8, 1, 6, t_len)
    out = rrc(x)
    w = int(0.5 * t_len)
    slope = (w - 1) / (t_len - 1)
    starts = out[:, 0, 0, 0]
    torch.testing.assert_close(starts, starts.round(), atol=1e-4, rtol=0)
    assert ((starts >= 0) & (starts <= t_len - w)).all()
    expected = starts.view(-1, 1, 1, 1) + slope * torch.arange(t_len).float()
    torch.testing.assert_close(out, expected.expand_as(out), atol=1e-4, rtol=0)


def test_rrc_virtual_crop_pads_with_zeros() -> None:
    # The canvas is 2x wider than the input; a full-canvas crop squeezes the input into the middle
    # half and fills the sides with zeros.
    rrc = RandomResizeCrop((1.0, 2.0), (1.0, 1.0), (2.0, 2.0), interpolation="bilinear")
    out = rrc(torch.ones(2, 1, 4, 33))
    torch.testing.assert_close(out[..., :7], torch.zeros(2, 1, 4, 7))
    torch.testing.assert_close(out[..., 9:24], torch.ones(2, 1, 4, 15))


def test_rrc_shapes_and_per_sample_params() -> None:
    torch.manual_seed(0)
    rrc = RandomResizeCrop()
    x = torch.randn(16, 1, 64, 96)
    out = rrc(x)
    assert out.shape == x.shape and out.dtype == torch.float32
    theta = rrc.get_theta(16, (64, 96), torch.device("cpu"))
    assert theta.shape == (16, 2, 3)
    assert theta[:, 0, 0].unique().numel() > 1  # per-sample time scales


def test_rrc_bf16_input_gives_float32() -> None:
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = RandomResizeCrop()(torch.randn(2, 1, 16, 20).bfloat16())
    assert out.dtype == torch.float32


# ---------------------------------------------------------------- linear fader (BYOL-A v2)


def test_fader_adds_one_linear_time_ramp_per_sample_within_gain() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 2, 5, 7)
    ramp = RandomLinearFader(gain=0.5)(x) - x
    assert torch.allclose(ramp, ramp[:, :1, :1].expand_as(ramp), atol=1e-6)  # same for every channel and band
    steps = ramp[:, 0, 0].diff(dim=1)
    torch.testing.assert_close(steps, steps[:, :1].expand_as(steps), atol=1e-6, rtol=0)  # linear in time
    ends = ramp[:, 0, 0, [0, -1]]
    assert ends.abs().max() <= 0.5 and ends.abs().max() > 0.3  # U(-gain, gain) at both ends
    assert ends.std(dim=0).min() > 0.1  # a ramp of its own per sample
    torch.manual_seed(0)
    torch.randn(64, 2, 5, 7)
    head, tail = (torch.rand(128) * 1.0 - 0.5).view(64, 2).unbind(1)  # one U(-0.5, 0.5) draw per end, head first
    torch.testing.assert_close(ends, torch.stack([head, tail], dim=1))


def test_fader_off_is_identity_and_output_is_float32() -> None:
    x = torch.randn(2, 1, 4, 5).to(torch.bfloat16)
    y = RandomLinearFader(gain=0.0)(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, x.float(), rtol=0, atol=0)


def test_byola_augment_fader_is_opt_in_and_comes_last() -> None:
    assert ByolaAugment().fader is None  # BYOL-A v1, as UnFuSeD uses it
    z = torch.randn(4, 1, 16, 20)
    plain, faded = ByolaAugment(memory_size=8), ByolaAugment(memory_size=8, fader_gain=1.0)
    plain(z), faded(z)  # fill the memories: the next calls mix
    torch.manual_seed(0)
    v1 = plain(z)
    torch.manual_seed(0)
    ramp = faded(z) - v1  # same mixup and crop draws, then the fader's ramp on top
    steps = ramp[:, 0, 0].diff(dim=1)
    torch.testing.assert_close(steps, steps[:, :1].expand_as(steps), atol=1e-5, rtol=0)
    assert ramp.abs().max() > 0


# ---------------------------------------------------------------- composed + errors


def test_byola_augment_two_views() -> None:
    torch.manual_seed(0)
    aug = ByolaAugment(memory_size=32)
    z = torch.randn(4, 1, 64, 96)
    v1, v2 = aug(z), aug(z)
    assert v1.shape == v2.shape == z.shape
    assert not torch.allclose(v1, v2)
    assert aug.mixup._count == 8


@pytest.mark.parametrize("module", [MixupBYOLA(), RandomResizeCrop(), ByolaAugment(), RandomLinearFader()])
def test_wrong_input_dims_raise(module: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match="4 dims"):
        module(torch.randn(2, 64, 96))


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="ratio"):
        MixupBYOLA(ratio=1.5)
    with pytest.raises(ValueError, match="interpolation"):
        RandomResizeCrop(interpolation="area")
    with pytest.raises(ValueError, match="virtual_crop_scale"):
        RandomResizeCrop(virtual_crop_scale=(0.5, 1.0))
    with pytest.raises(ValueError, match=r"time_scale must be a range \(lo, hi\) with 0 <= lo <= hi"):
        RandomResizeCrop(time_scale=(1.5, 0.6))
    with pytest.raises(ValueError, match="MixupBYOLA: memory_size must be an int >= 1, got 2.5"):
        MixupBYOLA(memory_size=2.5)
    with pytest.raises(ValueError, match="ratio is the largest mixing weight, in \\[0, 1\\]"):
        MixupBYOLA(ratio=-0.1)
    with pytest.raises(ValueError, match="gain is the largest ramp-end gain, a number >= 0, got -1"):
        RandomLinearFader(gain=-1)
    with pytest.raises(ValueError, match="gain is the largest ramp-end gain"):
        ByolaAugment(fader_gain=True)
