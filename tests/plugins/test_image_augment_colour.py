"""BatchImageAugment colour jitter (saturation, hue, jitter_prob) and random grayscale."""

from __future__ import annotations

import pytest
import torch

from fewlabel.plugins import BatchImageAugment
from fewlabel.plugins.augment.image import adjust_hue, adjust_saturation, rgb_to_gray

NO_AFFINE = {"scale": (1.0, 1.0), "rotation": 0.0, "translate": 0.0}


def test_colour_identity_when_all_zero() -> None:
    x = torch.rand(4, 3, 8, 8)
    aug = BatchImageAugment(**NO_AFFINE, saturation=0.0, hue=0.0, jitter_prob=1.0, grayscale=0.0)
    assert torch.allclose(aug(x), x, atol=1e-5)
    # jitter with nothing to jitter is still the identity
    assert torch.allclose(BatchImageAugment(**NO_AFFINE, jitter_prob=0.5)(x), x, atol=1e-5)


def test_defaults_keep_the_random_stream() -> None:
    x = torch.rand(4, 3, 8, 8)
    torch.manual_seed(0)
    a = BatchImageAugment(rotation=20.0, brightness=0.2, contrast=0.3, noise=0.05)(x)
    torch.manual_seed(0)
    b = BatchImageAugment(rotation=20.0, brightness=0.2, contrast=0.3, noise=0.05, saturation=0.0, hue=0.0,
                          jitter_prob=1.0, grayscale=0.0)(x)
    assert torch.equal(a, b)


def test_grayscale_p1_luminance() -> None:
    x = torch.rand(3, 3, 6, 6)
    y = BatchImageAugment(**NO_AFFINE, grayscale=1.0)(x)
    expected = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    for c in range(3):
        assert torch.allclose(y[:, c], expected, atol=1e-6)
    assert torch.allclose(rgb_to_gray(x)[:, 0], expected, atol=1e-6)


def test_saturation_zero_equals_grayscale() -> None:
    x = torch.rand(3, 3, 6, 6)
    gray = BatchImageAugment(**NO_AFFINE, grayscale=1.0)(x)
    assert torch.allclose(adjust_saturation(x, torch.zeros(3)), gray, atol=1e-6)
    assert torch.allclose(adjust_saturation(x, torch.ones(3)), x, atol=1e-6)


def test_hue_zero_identity_and_per_sample_factors() -> None:
    x = torch.rand(1, 3, 8, 8).repeat(4, 1, 1, 1)
    assert torch.allclose(adjust_hue(x, torch.zeros(4)), x, atol=1e-5)
    assert torch.allclose(adjust_hue(x, torch.ones(4)), x, atol=1e-5)  # a full turn
    shifted = adjust_hue(x, torch.full((4,), 0.25))
    assert not torch.allclose(shifted, x, atol=1e-2)
    assert torch.allclose(rgb_to_gray(shifted), rgb_to_gray(x), atol=1e-5)  # YIQ rotation keeps luminance
    torch.manual_seed(0)
    y = BatchImageAugment(**NO_AFFINE, hue=0.5)(x)
    assert not torch.allclose(y[0], y[1], atol=1e-3)
    torch.manual_seed(0)
    z = BatchImageAugment(**NO_AFFINE, saturation=0.8)(x)
    assert not torch.allclose(z[0], z[1], atol=1e-3)


def test_jitter_prob_zero_skips_colour_jitter() -> None:
    x = torch.rand(4, 3, 8, 8)
    aug = BatchImageAugment(**NO_AFFINE, brightness=0.4, contrast=0.4, saturation=0.8, hue=0.5, jitter_prob=0.0)
    assert torch.allclose(aug(x), x, atol=1e-5)


def test_dtype_preserved() -> None:
    x = torch.rand(4, 3, 8, 8).bfloat16()
    aug = BatchImageAugment(brightness=0.4, contrast=0.4, saturation=0.8, hue=0.1, jitter_prob=0.8, grayscale=0.2)
    y = aug(x)
    assert y.shape == x.shape and y.dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"saturation": -0.1}, "saturation"),
        ({"hue": 0.6}, "hue"),
        ({"hue": -0.1}, "hue"),
        ({"jitter_prob": 1.5}, "jitter_prob"),
        ({"jitter_prob": -0.1}, "jitter_prob"),
        ({"grayscale": 2.0}, "grayscale"),
        ({"grayscale": -0.5}, "grayscale"),
    ],
)
def test_bad_ranges_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BatchImageAugment(**kwargs)


def test_single_channel_unaffected_by_colour_ops() -> None:
    x = torch.rand(4, 1, 8, 8)
    assert torch.allclose(BatchImageAugment(**NO_AFFINE, saturation=0.8, hue=0.5, grayscale=1.0)(x), x, atol=1e-5)
    torch.manual_seed(0)
    a = BatchImageAugment(rotation=20.0, brightness=0.2, noise=0.05)(x)
    torch.manual_seed(0)
    b = BatchImageAugment(rotation=20.0, brightness=0.2, noise=0.05, saturation=0.8, hue=0.5, grayscale=1.0)(x)
    assert torch.equal(a, b)
