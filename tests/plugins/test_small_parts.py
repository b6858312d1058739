"""SmallCNN, BatchImageAugment, schedules and the encoder registry."""

from __future__ import annotations

import pytest
import torch

from fewlabel.plugins import BatchImageAugment, SmallCNN, cosine_schedule, create_augment, create_encoder, list_encoders


def test_small_cnn_contract() -> None:
    enc = create_encoder("small_cnn", width=4)
    assert isinstance(enc, SmallCNN)
    x = torch.rand(3, 1, 8, 8)
    emb, feats = enc.forward_intermediates(enc.preprocess(x))
    assert emb.shape == (3, enc.embed_dim) == (3, 16)
    assert [f.shape[1] for f in feats] == enc.intermediate_dims == [4, 8]
    enc.eval()
    assert torch.equal(enc(x), enc.forward_embed(x))


def test_small_cnn_rejects_bad_input() -> None:
    enc = SmallCNN(width=4)
    with pytest.raises(ValueError, match="4 dims"):
        enc(torch.rand(1, 8, 8))
    with pytest.raises(ValueError, match="1 input channels"):
        enc(torch.rand(2, 3, 8, 8))
    with pytest.raises(TypeError, match="floating-point"):
        enc(torch.ones(2, 1, 8, 8, dtype=torch.long))


def test_registry_lists_and_rejects() -> None:
    assert {"audio_ntt", "small_cnn", "timm"} <= set(list_encoders())
    with pytest.raises(ValueError, match="choose one of"):
        create_encoder("nope")


def test_image_augment_identity_and_shapes() -> None:
    x = torch.rand(5, 1, 8, 8)
    identity = BatchImageAugment(scale=(1.0, 1.0), rotation=0.0, translate=0.0)
    assert torch.allclose(identity(x), x, atol=1e-5)
    flipped = BatchImageAugment(scale=(1.0, 1.0), rotation=0.0, translate=0.0, hflip=1.0)(x)
    assert torch.allclose(flipped, x.flip(-1), atol=1e-5)
    strong = BatchImageAugment(rotation=30.0, translate=0.2, brightness=0.1, contrast=0.2, noise=0.1)
    y = strong(x.bfloat16())
    assert y.shape == x.shape and y.dtype == torch.bfloat16


def test_image_augment_per_sample_parameters() -> None:
    torch.manual_seed(0)
    x = torch.rand(1, 1, 8, 8).repeat(4, 1, 1, 1)
    y = BatchImageAugment(rotation=30.0, translate=0.2)(x)
    assert not torch.allclose(y[0], y[1])


def test_image_augment_validation() -> None:
    with pytest.raises(ValueError, match="scale"):
        BatchImageAugment(scale=(1.2, 1.0))
    with pytest.raises(ValueError, match="hflip"):
        BatchImageAugment(hflip=2.0)
    with pytest.raises(ValueError, match="B, C, H, W"):
        BatchImageAugment()(torch.rand(8, 8))
    with pytest.raises(ValueError, match="choose one of"):
        create_augment("blur")
    assert create_augment("none") is None


def test_cosine_schedule_values() -> None:
    assert cosine_schedule(0, 10, 1.0, 0.0) == 1.0
    assert cosine_schedule(5, 10, 1.0, 0.0) == pytest.approx(0.5)
    assert cosine_schedule(10, 10, 1.0, 0.0) == 0.0
    assert cosine_schedule(1, 10, 1.0, 0.0, warmup_steps=2) == pytest.approx(0.5)
    assert cosine_schedule(2, 10, 1.0, 0.0, warmup_steps=2) == pytest.approx(1.0)
    assert isinstance(cosine_schedule(3, 10, 1.0, 0.0), float)
    with pytest.raises(ValueError):
        cosine_schedule(0, 0, 1.0, 0.0)
