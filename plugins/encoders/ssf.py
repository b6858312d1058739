"""SSF: learnable per-channel scale and shift after the layers of a frozen encoder.

From Lian et al., "Scaling & Shifting Your Features: A New Baseline for Efficient Model Tuning", 2022,
arXiv 2210.08823. Parameter-efficient fine-tuning: after every chosen operation of a pretrained
network, the output ``y`` becomes ``gamma * y + beta`` with one ``gamma``/``beta`` per output channel;
only those and the task head are trained. Because ``gamma * (W x + b) + beta = (gamma W) x + (gamma b +
beta)``, the scale and shift fold back into the layer's own weight and bias afterwards
(re-parameterisation), so inference costs exactly what the original network costs.

Here SSF works on any ``nn.Module`` (timm backbones, :class:`~fewlabel.plugins.encoders.SmallCNN`,
:class:`~fewlabel.plugins.encoders.AudioNTT`, a user's own): :func:`add_ssf` gives each chosen layer two
parameters, ``ssf_scale`` and ``ssf_shift``, and a forward hook that applies them to the layer's output.
The layer's own parameter names are untouched, so a checkpoint of the plain encoder still loads
(``strict=False``) and :func:`merge_ssf` gives back a network with the original structure.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from timm.layers.std_conv import ScaledStdConv2d, ScaledStdConv2dSame, StdConv2d, StdConv2dSame
from torch import Tensor, nn

__all__ = ["SSF_LAYER_KINDS", "add_ssf", "has_ssf", "merge_ssf", "ssf_parameters"]

#: The kinds of layer :func:`add_ssf` can follow with a scale and shift.
SSF_LAYER_KINDS = ("conv", "linear", "norm")
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)
# convolutions that standardise their weight in forward: a scale folded into the weight would be undone
_WEIGHT_STANDARDISED = (StdConv2d, StdConv2dSame, ScaledStdConv2d, ScaledStdConv2dSame)
_SCALE, _SHIFT, _DIM = "ssf_scale", "ssf_shift", "_ssf_channel_dim"


def _kind(layer: nn.Module) -> str | None:
    """``"conv"``, ``"linear"`` or ``"norm"`` for a layer whose output is affine in its weight and bias, else None.

    Left out: weight-standardised convolutions, norm layers with a non-identity child (timm's
    ``BatchNormAct2d``, ``LayerNormAct``: an activation follows the affine part) and layer norms over
    more than one axis.
    """
    if any(not isinstance(child, nn.Identity) for child in layer.children()):
        return None
    if isinstance(layer, _CONV) and not isinstance(layer, _WEIGHT_STANDARDISED):
        return "conv"
    if isinstance(layer, nn.Linear):
        return "linear"
    if isinstance(layer, nn.LayerNorm) and len(layer.normalized_shape) != 1:
        return None
    if isinstance(layer, _NORM):
        return "norm"
    return None


def _channels(layer: nn.Module) -> tuple[int, int]:
    """``(number of output channels, their axis in the output)``."""
    if isinstance(layer, nn.Linear):
        return layer.out_features, -1
    if isinstance(layer, _CONV):
        return layer.out_channels, 1
    if isinstance(layer, nn.LayerNorm):  # channels last, except timm's LayerNorm2d family on NCHW input
        return layer.normalized_shape[0], 1 if "2d" in type(layer).__name__.lower() else -1
    if isinstance(layer, nn.GroupNorm):
        return layer.num_channels, 1
    return layer.num_features, 1  # BatchNorm


def _ssf_hook(layer: nn.Module, args: Any, output: Tensor) -> Tensor:
    """Forward hook: ``output * ssf_scale + ssf_shift`` along the layer's channel axis."""
    dim = getattr(layer, _DIM)
    shape = (-1,) if dim == -1 or output.ndim == 2 else (-1,) + (1,) * (output.ndim - 2)
    scale = getattr(layer, _SCALE).to(output.dtype).view(shape)
    shift = getattr(layer, _SHIFT).to(output.dtype).view(shape)
    return output * scale + shift


def has_ssf(layer: nn.Module) -> bool:
    """Whether :func:`add_ssf` gave ``layer`` (itself, not its children) a scale and shift."""
    return hasattr(layer, _DIM) and _SCALE in layer._parameters


def ssf_parameters(module: nn.Module) -> Iterator[nn.Parameter]:
    """The SSF scales and shifts of ``module``'s layers, in module order (what an optimizer trains).

    Example:
        >>> enc = add_ssf(nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4)))
        >>> [tuple(p.shape) for p in ssf_parameters(enc)]
        [(4,), (4,), (4,), (4,)]
    """
    for layer in module.modules():
        if has_ssf(layer):
            yield getattr(layer, _SCALE)
            yield getattr(layer, _SHIFT)


def add_ssf(encoder: nn.Module, layers: Sequence[str] = SSF_LAYER_KINDS, *, init_std: float = 0.0,
            freeze: bool = True) -> nn.Module:
    """Insert a learnable per-channel scale and shift after the chosen layers of ``encoder`` (in place).

    Every ``nn.Linear``, ``nn.Conv1d/2d/3d`` and norm layer (``BatchNorm``, ``LayerNorm`` with one
    normalised axis, including timm's channels-first ``LayerNorm2d``, ``GroupNorm``) of a kind in
    ``layers`` gets parameters ``ssf_scale`` (ones) and ``ssf_shift`` (zeros) of its output-channel
    size and a forward hook computing ``output * ssf_scale + ssf_shift`` along its channel axis, as
    SSF inserts after each operation of the backbone (arXiv 2210.08823, Sec. 3.2: after the
    attention, MLP and layer-norm operations of a ViT; after convolutions and norms of a CNN). With
    ``init_std=0`` the encoder computes exactly what it computed before (``x * 1 + 0 == x`` in
    floating point). The authors' code draws scale ~ N(1, 0.02) and shift ~ N(0, 0.02) instead:
    ``init_std=0.02``. Layers whose output is not affine in their own weight and bias are skipped, so
    :func:`merge_ssf` can fold every inserted pair: weight-standardised convolutions (timm's
    ``StdConv2d``) and norm layers with an activation inside (timm's ``BatchNormAct2d``).

    Args:
        encoder: Any module; changed in place and returned.
        layers: Kinds of layer to follow with a scale and shift: a subset of ``("conv", "linear", "norm")``.
        init_std: Standard deviation of the initial scale (around 1) and shift (around 0); 0 = identity.
        freeze: Set ``requires_grad=False`` on every other parameter of ``encoder``, leaving only the
            SSF parameters trainable (SSF's setting). ``False`` leaves the other flags as they are.

    Returns:
        ``encoder`` itself.

    Raises:
        ValueError: an unknown kind in ``layers``, a negative ``init_std``, an encoder that already has
            SSF layers, or one with no layer of the chosen kinds.

    Example:
        >>> from fewlabel.plugins.encoders import SmallCNN
        >>> enc = add_ssf(SmallCNN(width=4))
        >>> sorted({p.requires_grad for p in enc.parameters()}), sum(p.numel() for p in ssf_parameters(enc))
        ([False, True], 160)
    """
    kinds = (layers,) if isinstance(layers, str) else tuple(layers)
    unknown = [k for k in kinds if k not in SSF_LAYER_KINDS]
    if unknown or not kinds:
        raise ValueError(f"layers must be a non-empty subset of {SSF_LAYER_KINDS}, got {list(kinds)}")
    if not init_std >= 0:
        raise ValueError(f"init_std must be >= 0, got {init_std!r}")
    if any(has_ssf(layer) for layer in encoder.modules()):
        raise ValueError(f"{type(encoder).__name__} already has SSF layers; merge_ssf them first or add them once")
    targets = [layer for layer in encoder.modules() if _kind(layer) in kinds]
    if not targets:
        raise ValueError(f"{type(encoder).__name__} has no {' / '.join(kinds)} layer to follow with a scale and shift")
    if freeze:
        encoder.requires_grad_(False)
    for layer in targets:
        channels, dim = _channels(layer)
        # the layer's own weight sets device and dtype (a layer without one: any tensor of the encoder)
        reference = next(itertools.chain(layer.parameters(), encoder.parameters(), encoder.buffers()), None)
        factory = {"device": reference.device if reference is not None else None,
                   "dtype": reference.dtype if reference is not None and reference.is_floating_point() else None}
        scale, shift = torch.ones(channels, **factory), torch.zeros(channels, **factory)
        if init_std > 0:
            nn.init.normal_(scale, mean=1.0, std=init_std)
            nn.init.normal_(shift, mean=0.0, std=init_std)
        layer.register_parameter(_SCALE, nn.Parameter(scale))
        layer.register_parameter(_SHIFT, nn.Parameter(shift))
        setattr(layer, _DIM, dim)
        layer.register_forward_hook(_ssf_hook)
    return encoder


def _fold(layer: nn.Module, scale: Tensor, shift: Tensor) -> None:
    """``weight <- scale * weight`` per output channel, ``bias <- scale * bias + shift`` (bias created if absent)."""
    weight, bias = getattr(layer, "weight", None), getattr(layer, "bias", None)
    grad = any(p.requires_grad for p in (weight, bias) if p is not None)
    if weight is None:  # a norm layer without affine parameters: they become the scale itself
        layer.weight = nn.Parameter(scale.clone(), requires_grad=grad)
    else:
        shape = (-1,) + (1,) * (weight.ndim - 1) if _kind(layer) in ("conv", "linear") else (-1,)
        weight.mul_(scale.to(weight.dtype).view(shape))
    if bias is None:
        layer.bias = nn.Parameter(shift.clone(), requires_grad=grad)
    else:
        bias.mul_(scale.to(bias.dtype)).add_(shift.to(bias.dtype))


@torch.no_grad()
def merge_ssf(encoder: nn.Module) -> nn.Module:
    """Fold every SSF scale and shift into the weight and bias of the layer it follows (in place).

    SSF's re-parameterisation (arXiv 2210.08823, Sec. 3.3): ``gamma * (W x + b) + beta`` equals a
    layer with weight ``gamma W`` (scaled per output channel) and bias ``gamma b + beta``; for a norm
    layer the same holds for its affine weight and bias. A layer without a bias (``bias=False``
    convolutions) or without affine parameters (``BatchNorm(affine=False)``) gets them. Afterwards the
    hooks and the ``ssf_*`` parameters are gone and the encoder computes the same function (up to
    floating-point rounding) in train and eval mode alike, at the cost of the original network. New
    parameters take the ``requires_grad`` of the layer's existing ones.

    Args:
        encoder: A module prepared with :func:`add_ssf`; changed in place and returned.

    Returns:
        ``encoder`` itself.

    Raises:
        ValueError: ``encoder`` has no SSF layer.

    Example:
        >>> enc = add_ssf(nn.Sequential(nn.Linear(3, 4)))
        >>> _ = enc[0].ssf_shift.data.fill_(1.0)
        >>> merge_ssf(enc)[0].bias.shape, has_ssf(enc[0])
        (torch.Size([4]), False)
    """
    layers = [layer for layer in encoder.modules() if has_ssf(layer)]
    if not layers:
        raise ValueError(f"{type(encoder).__name__} has no SSF layers to merge (see add_ssf)")
    for layer in layers:
        _fold(layer, getattr(layer, _SCALE).detach(), getattr(layer, _SHIFT).detach())
        delattr(layer, _SCALE)
        delattr(layer, _SHIFT)
        delattr(layer, _DIM)
        for key in [key for key, hook in layer._forward_hooks.items() if hook is _ssf_hook]:
            del layer._forward_hooks[key]
            layer._forward_hooks_with_kwargs.pop(key, None)
            layer._forward_hooks_always_called.pop(key, None)
    return encoder
