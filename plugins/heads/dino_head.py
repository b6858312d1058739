"""DINO's projection head: MLP -> L2 normalisation -> weight-normalised linear layer.

Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", 2021, arXiv 2104.14294.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from fewlabel.plugins.arguments import check_int

__all__ = ["DINOHead"]


class DINOHead(nn.Module):
    """``num_layers`` linear layers with GELU (hidden width, then a bottleneck), L2 normalisation, then
    a bias-free weight-normalised linear layer to ``out_dim``.

    As in the DINO reference head: the MLP's linear weights start from a truncated normal with std
    0.02 and zero biases; the last layer keeps PyTorch's default initialisation for its direction
    and its magnitude ``g`` starts at 1; with ``norm_last_layer=True`` (the reference default) ``g``
    is frozen at 1 (``requires_grad=False``), so every row of the last layer's weight has unit norm
    and the outputs are cosine similarities between the normalised bottleneck feature and ``out_dim``
    directions. The weight normalisation is ``torch.nn.utils.parametrizations.weight_norm``: ``g``
    is ``last_layer.parametrizations.weight.original0`` and the direction ``original1``.

    The normalisation and the last layer run in float32 with autocast disabled: the outputs are
    cosines that the DINO loss divides by temperatures of 0.04-0.1, which would magnify bf16's
    rounding (about 0.004 near 1) into logit errors of ~0.1.

    The defaults are sized for a CPU and small encoders; the reference uses ``hidden_dim=2048``,
    ``bottleneck_dim=256`` and ``out_dim=65536``.

    Args:
        in_dim: Input (embedding) dimension.
        out_dim: Output dimension ``K`` (the number of "prototypes" the loss softmaxes over).
        hidden_dim: Width of the hidden layers.
        bottleneck_dim: Width of the MLP's output, before the L2 normalisation.
        num_layers: Linear layers of the MLP (>= 1; 1 = a single linear layer to the bottleneck).
        batch_norm: BatchNorm after each hidden linear layer (the reference's ``use_bn_in_head``, off).
        norm_last_layer: Freeze the last layer's magnitude at 1.

    Raises:
        ValueError: a dimension or ``num_layers`` that is not an int >= 1.

    Example:
        >>> head = DINOHead(32, out_dim=128)
        >>> head(torch.randn(4, 32)).shape
        torch.Size([4, 128])
    """

    def __init__(self, in_dim: int, out_dim: int = 1024, hidden_dim: int = 512, bottleneck_dim: int = 64,
                 num_layers: int = 3, batch_norm: bool = False, norm_last_layer: bool = True) -> None:
        super().__init__()
        sizes = {"in_dim": in_dim, "out_dim": out_dim, "hidden_dim": hidden_dim, "bottleneck_dim": bottleneck_dim,
                 "num_layers": num_layers}
        for name, value in sizes.items():
            check_int(name, value, 1, owner="DINOHead")
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(d_in, d_out))
            if i < num_layers - 1:
                if batch_norm:
                    layers.append(nn.BatchNorm1d(d_out))
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for module in self.mlp.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        magnitude = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            magnitude.fill_(1.0)
        magnitude.requires_grad_(not norm_last_layer)
        self.in_dim, self.out_dim = in_dim, out_dim
        self.norm_last_layer = norm_last_layer

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_dim) -> (B, out_dim)`` float32 scores."""
        x = self.mlp(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = F.normalize(x.float(), dim=-1)
            return self.last_layer(x)
