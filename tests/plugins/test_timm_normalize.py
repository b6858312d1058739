"""TimmEncoder(normalize=True) standardises inputs with the backbone's own timm data config."""

from __future__ import annotations

import pytest
import torch
from timm.data import resolve_model_data_config

from fewlabel.plugins.encoders.timm_encoder import TimmEncoder


@pytest.mark.parametrize("in_chans", [3, 1])
def test_normalize_uses_the_backbones_data_config(in_chans: int) -> None:
    torch.manual_seed(0)
    plain = TimmEncoder("resnet10t", in_chans=in_chans).eval()
    scaled = TimmEncoder("resnet10t", in_chans=in_chans, normalize=True).eval()
    scaled.load_state_dict(plain.state_dict())  # the statistics are not in the state dict
    config = resolve_model_data_config(plain.model)
    mean, std = torch.tensor(config["mean"]), torch.tensor(config["std"])
    if in_chans == 1:
        mean, std = mean.mean().view(1), std.mean().view(1)
    assert torch.allclose(scaled.input_mean.flatten(), mean) and torch.allclose(scaled.input_std.flatten(), std)
    x = torch.rand(2, in_chans, 32, 32)
    expected = plain((x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1))
    with torch.no_grad():
        assert torch.allclose(scaled(x), expected, atol=1e-5)
        assert torch.allclose(scaled.forward_intermediates(x)[0], expected, atol=1e-5)  # both paths standardise
        assert not torch.allclose(plain(x), expected, atol=1e-3)  # off by default
    assert "input_mean" not in scaled.state_dict()


def test_normalize_refuses_a_front_end() -> None:
    with pytest.raises(ValueError, match="log-mel front end"):
        TimmEncoder("resnet10t", frontend={}, normalize=True)
