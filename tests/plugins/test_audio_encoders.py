"""Tests for the log-mel front end, the BYOL-A AudioNTT encoder and the timm encoder."""

from __future__ import annotations

import math

import pytest
import torch
import torchaudio

from fewlabel.plugins.encoders import (
    AudioNTT,
    Encoder,
    LogMelFrontend,
    RunningNorm,
    TimmEncoder,
    create_encoder,
    list_encoders,
)


def _hz_to_mel(f: float) -> float:
    return 2595.0 * math.log10(1.0 + f / 700.0)


def _mel_to_hz(m: float) -> float:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


# ---------------------------------------------------------------- front end


def test_frontend_shape_one_second() -> None:
    fe = LogMelFrontend()
    out = fe(torch.randn(2, 16000))
    assert out.shape == (2, 1, 64, 101)
    assert fe.num_frames(16000) == 101
    assert fe(torch.randn(2, 1, 16000)).shape == (2, 1, 64, 101)


def test_frontend_eval_is_deterministic_and_uses_running_stats() -> None:
    torch.manual_seed(0)
    fe = LogMelFrontend()
    for _ in range(3):
        fe(torch.randn(4, 8000))
    assert fe.norm.num_values.item() == 3 * 4 * 64 * fe.num_frames(8000)
    fe.eval()
    x = torch.randn(2, 8000)
    a, b = fe(x), fe(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # eval output depends only on the sample, not on the rest of the batch
    torch.testing.assert_close(fe(x[:1]), a[:1])


def test_frontend_normalises_with_running_stats_of_all_values_seen() -> None:
    # BYOL-A / UnFuSeD normalise with running statistics of the data seen, not per batch.
    torch.manual_seed(0)
    fe, raw = LogMelFrontend(), LogMelFrontend(normalize=False)
    xa, xb = torch.randn(3, 8000), 0.01 * torch.randn(2, 8000)
    fe(xa)
    out_b = fe(xb)
    la, lb = raw(xa).double(), raw(xb).double()
    seen = torch.cat([la.flatten(), lb.flatten()])
    mean, std = seen.mean(), seen.std(correction=0)
    torch.testing.assert_close(out_b, ((lb - mean) / std).float(), rtol=1e-5, atol=1e-5)
    # eval mode: the stored estimates, left unchanged
    fe.eval()
    state = {k: v.clone() for k, v in fe.state_dict().items()}
    torch.testing.assert_close(fe(xa), ((la - mean) / std).float(), rtol=1e-5, atol=1e-5)
    assert all(torch.equal(v, state[k]) for k, v in fe.state_dict().items())


def test_running_norm_is_the_exact_cumulative_average_in_float64() -> None:
    torch.manual_seed(0)
    norm = RunningNorm()
    batches = [1000.0 + (i + 1) * torch.randn(n, 1, 4, 5) for i, n in enumerate([3, 1, 7, 2, 5])]
    for x in batches:
        norm(x)
    seen = torch.cat([x.flatten() for x in batches]).double()
    assert norm.running_mean.dtype == norm.running_var.dtype == torch.float64
    torch.testing.assert_close(norm.running_mean, seen.mean(), rtol=1e-12, atol=0)
    torch.testing.assert_close(norm.running_var, seen.var(correction=0), rtol=1e-10, atol=0)
    assert norm.num_values.item() == seen.numel()


def test_running_norm_exponential_momentum_and_validation() -> None:
    torch.manual_seed(0)
    norm = RunningNorm(momentum=0.25)
    a, b = torch.randn(4, 1, 3, 5).double(), 2 + 3 * torch.randn(2, 1, 3, 5).double()
    norm(a)  # the first batch sets the estimates
    torch.testing.assert_close(norm.running_mean, a.mean())
    out = norm(b)
    mean = 0.75 * a.mean() + 0.25 * b.mean()
    var = 0.75 * a.var(correction=0) + 0.25 * b.var(correction=0)
    torch.testing.assert_close(norm.running_mean, mean)
    torch.testing.assert_close(norm.running_var, var)
    torch.testing.assert_close(out, (b - mean) / var.sqrt())
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="momentum"):
            RunningNorm(momentum=bad)


def test_running_norm_state_is_checkpointed() -> None:
    torch.manual_seed(0)
    fe = LogMelFrontend(norm_momentum=None)
    fe(torch.randn(2, 8000))
    assert {"norm.running_mean", "norm.running_var", "norm.num_values"} <= set(fe.state_dict())
    fresh = LogMelFrontend()
    fresh.load_state_dict(fe.state_dict())
    x = torch.randn(2, 8000)
    torch.testing.assert_close(fresh.eval()(x), fe.eval()(x), rtol=0, atol=0)


def test_frontend_unnormalised_is_log_mel() -> None:
    fe = LogMelFrontend(normalize=False)
    x = torch.randn(1, 4000)
    mel = torchaudio.transforms.MelSpectrogram(16000, 1024, 1024, 160, 60.0, 7800.0, n_mels=64)(x)
    torch.testing.assert_close(fe(x)[:, 0], torch.log(mel + torch.finfo(torch.float32).eps))


def test_frontend_rms_level_removes_the_recording_gain() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 16000) * torch.tensor([[0.01], [0.3], [2.0]])
    plain, levelled = LogMelFrontend(normalize=False), LogMelFrontend(normalize=False, level="rms")
    # a gain shifts every log-mel value of a clip by the same amount ...
    shift = plain(5.0 * x) - plain(x)
    torch.testing.assert_close(shift, torch.full_like(shift, 2 * math.log(5.0)), atol=1e-4, rtol=0)
    # ... which level="rms" removes: every clip is at unit RMS before the spectrogram
    torch.testing.assert_close(levelled(5.0 * x), levelled(x), atol=1e-4, rtol=0)
    unit = x / x.square().mean(-1, keepdim=True).sqrt()
    torch.testing.assert_close(levelled(x), plain(unit), atol=1e-4, rtol=0)
    silent = levelled(torch.zeros(1, 16000))
    torch.testing.assert_close(silent, plain(torch.zeros(1, 16000)))
    with pytest.raises(ValueError, match="level must be one of"):
        LogMelFrontend(level="peak")


def test_frontend_mel_mean_level_removes_each_bands_clip_mean() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 8000)
    plain, centred = LogMelFrontend(normalize=False), LogMelFrontend(normalize=False, level="mel_mean")
    out = centred(x)
    torch.testing.assert_close(out, plain(x) - plain(x).mean(dim=-1, keepdim=True))
    torch.testing.assert_close(out.mean(dim=-1), torch.zeros(2, 1, 64), atol=1e-5, rtol=0)
    torch.testing.assert_close(centred(0.2 * x), out, atol=1e-4, rtol=0)  # the gain is gone too


def test_pure_tone_peaks_in_the_right_mel_bin() -> None:
    # Hand-computed HTK mel centres: 66 equally spaced mel points between 60 and 7800 Hz.
    lo, hi = _hz_to_mel(60.0), _hz_to_mel(7800.0)
    centres = [_mel_to_hz(lo + (hi - lo) * k / 65) for k in range(1, 65)]
    # torchaudio's filter bank has its peaks at those centres (up to the STFT bin spacing).
    fb = torchaudio.functional.melscale_fbanks(513, 60.0, 7800.0, 64, 16000)
    bin_hz = 16000 / 1024
    peak_hz = fb.argmax(dim=0).float() * bin_hz
    assert torch.allclose(peak_hz, torch.tensor(centres), atol=bin_hz)

    fe = LogMelFrontend(normalize=False)
    t = torch.arange(16000) / 16000
    for k in (10, 30, 50):
        tone = torch.sin(2 * math.pi * centres[k] * t).unsqueeze(0)
        spectrum = fe(tone)[0, 0].mean(dim=-1)
        assert spectrum.argmax().item() == k


def test_frontend_autocast_bf16_gives_float32() -> None:
    fe, reference = LogMelFrontend(), LogMelFrontend()
    x = torch.randn(2, 16000).bfloat16()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = fe(x)
    assert out.dtype == torch.float32
    assert fe.norm.running_mean.dtype == fe.norm.running_var.dtype == torch.float64
    torch.testing.assert_close(out, reference(x.float()), rtol=0, atol=0)
    torch.testing.assert_close(fe.norm.running_var, reference.norm.running_var, rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(16000,), (2, 2, 16000), (2, 1, 1, 16000)])
def test_frontend_rejects_wrong_shapes(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="LogMelFrontend"):
        LogMelFrontend()(torch.randn(*shape))


def test_frontend_rejects_short_and_integer_input() -> None:
    with pytest.raises(ValueError, match="n_fft"):
        LogMelFrontend()(torch.randn(2, 100))
    with pytest.raises(TypeError):
        LogMelFrontend()(torch.zeros(2, 16000, dtype=torch.int16))


# ---------------------------------------------------------------- AudioNTT


def test_audio_ntt_default_dims() -> None:
    enc = AudioNTT()
    assert isinstance(enc, Encoder)
    assert enc.embed_dim == enc.num_features == 2048
    assert enc.intermediate_dims == [64 * 32, 64 * 16, 64 * 8]  # mel x channel, as in UnFuSeD
    assert enc.fc[0].in_features == 64 * 8  # (B, T, 64 * 8 = 512), as in BYOL-A


def test_audio_ntt_forward_and_intermediates() -> None:
    torch.manual_seed(0)
    enc = AudioNTT(channels=8, embed_dim=32).eval()
    x = torch.randn(3, 16000)
    z = enc.preprocess(x)
    assert z.shape == (3, 1, 64, 101)
    emb, feats = enc.forward_intermediates(z)
    assert emb.shape == (3, 32)
    assert [f.shape for f in feats] == [(3, 8 * 32), (3, 8 * 16), (3, 8 * 8)]
    torch.testing.assert_close(enc(x), enc.forward_embed(enc.preprocess(x)))
    torch.testing.assert_close(enc(x), emb)
    # embedding = max + mean over time of non-negative (ReLU) frame features
    assert (emb >= 0).all()


def test_audio_ntt_intermediates_are_block_outputs_averaged_over_time() -> None:
    torch.manual_seed(0)
    enc = AudioNTT(channels=8, embed_dim=32).eval()
    z = torch.randn(3, 1, 64, 37)
    _, feats = enc.forward_intermediates(z)
    assert [f.shape[1] for f in feats] == enc.intermediate_dims == [8 * 32, 8 * 16, 8 * 8]
    h = z
    for i, feat in enumerate(feats):
        h = enc.features[4 * i : 4 * i + 4](h)  # block i after pooling: (B, C, F_i, T_i)
        b, c, mels, t = h.shape
        # UnFuSeD: (B, C, F, T) -> (B, T, F, C) -> (B, T, F * C) -> mean over time
        torch.testing.assert_close(feat, h.permute(0, 3, 2, 1).reshape(b, t, mels * c).mean(dim=1))
        # mel-major, channel-minor: mel m, channel k sits at m * C + k
        torch.testing.assert_close(feat[1, 5 * c + 3], h[1, 3, 5].sum() / t)


def test_audio_ntt_time_freq_pooling_option() -> None:
    torch.manual_seed(0)
    enc = AudioNTT(channels=8, embed_dim=32, intermediate_pool="time_freq").eval()
    assert enc.intermediate_dims == [8, 8, 8]
    z = torch.randn(2, 1, 64, 20)
    _, feats = enc.forward_intermediates(z)
    torch.testing.assert_close(feats[0], enc.features[:4](z).mean(dim=(2, 3)))
    with pytest.raises(ValueError, match="intermediate_pool"):
        AudioNTT(intermediate_pool="freq")


@pytest.mark.parametrize("frames", [8, 13, 96])
def test_audio_ntt_any_number_of_frames(frames: int) -> None:
    enc = AudioNTT(channels=4, embed_dim=16)
    assert enc.forward_embed(torch.randn(2, 1, 64, frames)).shape == (2, 16)


def test_audio_ntt_rejects_wrong_input() -> None:
    enc = AudioNTT(channels=4, embed_dim=16)
    with pytest.raises(ValueError, match="frames >= 8"):
        enc.forward_embed(torch.randn(2, 1, 64, 7))
    with pytest.raises(ValueError, match="AudioNTT"):
        enc.forward_embed(torch.randn(2, 1, 32, 50))
    with pytest.raises(ValueError, match="n_mels"):
        AudioNTT(n_mels=64, frontend={"n_mels": 32})


def test_audio_ntt_small_n_mels_config() -> None:
    enc = AudioNTT(n_mels=32, channels=4, embed_dim=16)
    assert enc(torch.randn(2, 8000)).shape == (2, 16)


def test_registry_audio_ntt() -> None:
    assert {"audio_ntt", "timm"} <= set(list_encoders())
    enc = create_encoder("audio_ntt", channels=16, embed_dim=64)
    assert isinstance(enc, AudioNTT)
    assert enc.embed_dim == 64 and enc.intermediate_dims == [16 * 32, 16 * 16, 16 * 8]


# ---------------------------------------------------------------- timm


def test_timm_resnet10t_with_intermediates() -> None:
    enc = create_encoder("timm:resnet10t", in_chans=1)
    assert isinstance(enc, TimmEncoder)
    assert enc.embed_dim == 512
    assert enc.intermediate_dims == [64, 64, 128, 256, 512]
    enc.eval()
    x = torch.randn(2, 1, 32, 32)
    emb, feats = enc.forward_intermediates(x)
    assert emb.shape == (2, 512)
    assert [f.shape[1] for f in feats] == enc.intermediate_dims
    assert all(f.shape[0] == 2 and f.ndim == 2 for f in feats)
    torch.testing.assert_close(enc(x), emb)


def test_timm_intermediate_indices() -> None:
    assert TimmEncoder("resnet10t", intermediate_indices=2).intermediate_dims == [256, 512]
    enc = TimmEncoder("resnet10t", intermediate_indices=[1, -1])
    assert enc.intermediate_dims == [64, 512]
    _, feats = enc.eval().forward_intermediates(torch.randn(1, 3, 32, 32))
    assert [f.shape[1] for f in feats] == [64, 512]
    with pytest.raises(ValueError, match="out of range"):
        TimmEncoder("resnet10t", intermediate_indices=[7])


def test_timm_with_log_mel_frontend() -> None:
    enc = create_encoder("timm:resnet10t", frontend={}).eval()
    assert enc.in_chans == 1
    x = torch.randn(2, 16000)
    z = enc.preprocess(x)
    assert z.shape == (2, 1, 64, 101)
    emb, feats = enc.forward_intermediates(z)
    assert emb.shape == (2, enc.embed_dim)
    assert len(feats) == len(enc.intermediate_dims)
    torch.testing.assert_close(enc(x), emb)
    with pytest.raises(ValueError, match="in_chans"):
        TimmEncoder("resnet10t", frontend={}, in_chans=3)


def test_timm_rejects_wrong_channels() -> None:
    enc = TimmEncoder("resnet10t")
    with pytest.raises(ValueError, match="channels"):
        enc.forward_intermediates(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="4 dims"):
        enc(torch.randn(3, 32, 32))


def test_timm_embed_dim_matches_pre_logits_head() -> None:
    # MobileNetV3 has a conv_head after its features: num_features 288 but a 1024-d embedding.
    enc = create_encoder("timm:mobilenetv3_small_050", frontend={}).eval()
    assert enc.embed_dim == 1024
    assert enc(torch.randn(1, 16000)).shape == (1, 1024)
