"""A small CNN for tiny images such as scikit-learn's 8x8 handwritten digits."""

from __future__ import annotations

from torch import Tensor, nn

from fewlabel.plugins.encoders.base import Encoder, check_input
from fewlabel.plugins.encoders.registry import register_encoder


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


@register_encoder("small_cnn")
class SmallCNN(Encoder):
    """Three VGG-style blocks (widths ``w, 2w, 4w``) with max-pooling between them.

    Built for 8x8 inputs (the digits data) but works for any size >= 4x4. The embedding is the
    global average of the last block (``embed_dim = 4 * width``); each block's spatial mean is an
    intermediate feature for multi-exit heads.

    Args:
        in_chans: Input channels.
        width: Channels of the first block.

    Example:
        >>> import torch
        >>> enc = SmallCNN(width=8)
        >>> enc(torch.rand(2, 1, 8, 8)).shape
        torch.Size([2, 32])
    """

    def __init__(self, in_chans: int = 1, width: int = 32) -> None:
        super().__init__()
        if width < 1 or in_chans < 1:
            raise ValueError(f"width and in_chans must be >= 1, got width={width}, in_chans={in_chans}")
        self.in_chans = in_chans
        w = width
        self.blocks = nn.ModuleList(
            [
                nn.Sequential(*_conv_bn_relu(in_chans, w), *_conv_bn_relu(w, w)),
                nn.Sequential(nn.MaxPool2d(2), *_conv_bn_relu(w, 2 * w), *_conv_bn_relu(2 * w, 2 * w)),
                nn.Sequential(nn.MaxPool2d(2), *_conv_bn_relu(2 * w, 4 * w)),
            ]
        )
        self.embed_dim = 4 * w
        self.intermediate_dims = [w, 2 * w]

    def forward_intermediates(self, z: Tensor) -> tuple[Tensor, list[Tensor]]:
        check_input(z, (4,), type(self).__name__)
        if z.shape[1] != self.in_chans:
            raise ValueError(f"{type(self).__name__} expects {self.in_chans} input channels, got shape {tuple(z.shape)}")
        feats = []
        for block in self.blocks:
            z = block(z)
            feats.append(z.mean(dim=(2, 3)))
        return feats[-1], feats[:-1]
