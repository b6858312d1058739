"""Any ``torchvision.transforms.v2`` transform on a batch of image tensors, with parameters drawn per sample."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.transforms import v2

from fewlabel.plugins.encoders.base import check_input
from fewlabel.plugins.registry import closest

__all__ = ["TorchvisionAugment", "build_v2_transform"]


def _transform_names() -> list[str]:
    return sorted(name for name, value in vars(v2).items()
                  if isinstance(value, type) and issubclass(value, v2.Transform) and value is not v2.Transform)


def _is_spec(value: Any) -> bool:
    return isinstance(value, Mapping) and isinstance(value.get("name"), str)


def build_v2_transform(spec: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> nn.Module:
    """Build a ``torchvision.transforms.v2`` transform from its YAML form.

    A spec is ``{"name": "<v2 class name>", **kwargs}``; a list of specs is a ``v2.Compose``. An
    argument that is itself a list of specs (``RandomApply``'s ``transforms``) is built the same way.

    Args:
        spec: One spec or a list of them.

    Returns:
        The transform (an ``nn.Module``).

    Raises:
        ValueError: an unknown transform name (the message names the closest valid one), a spec
            without a name, or arguments the transform rejects.

    Example:
        >>> t = build_v2_transform([{"name": "RandomApply", "p": 0.8,
        ...                          "transforms": [{"name": "ColorJitter", "brightness": 0.4}]},
        ...                         {"name": "RandomGrayscale", "p": 0.2}])
        >>> type(t).__name__
        'Compose'
    """
    if not isinstance(spec, Mapping):
        if isinstance(spec, (str, bytes)) or not isinstance(spec, Sequence):
            raise ValueError(f"a torchvision transform spec is a {{'name': ...}} dict or a list of them, got {spec!r}")
        return v2.Compose([build_v2_transform(item) for item in spec])
    if not _is_spec(spec):
        raise ValueError(f"a torchvision transform spec needs a 'name' (a torchvision.transforms.v2 class), "
                         f"got {spec!r}")
    kwargs = dict(spec)
    name = kwargs.pop("name")
    names = _transform_names()
    if name not in names:
        raise ValueError(f"unknown torchvision.transforms.v2 transform {name!r}{closest(name, names)}; "
                         f"choose one of {names}")
    kwargs = {key: [build_v2_transform(v) for v in value]
              if isinstance(value, (list, tuple)) and value and all(_is_spec(v) for v in value) else value
              for key, value in kwargs.items()}
    try:
        return getattr(v2, name)(**kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"torchvision.transforms.v2.{name}({kwargs}): {err}") from None


class TorchvisionAugment(nn.Module):
    """Apply a ``torchvision.transforms.v2`` transform to each image of a ``(B, C, H, W)`` batch.

    A v2 transform draws its random parameters once per call, so applied to a batch tensor it would
    give every sample the same crop, flip or jitter. This module loops over the samples instead,
    calling the transform once per image, so each sample gets its own parameters, drawn from torch's
    global RNG (v2 draws most parameters on the CPU generator, whatever the input's device;
    ``torch.manual_seed`` / ``seed_everything`` seed it together with every device's). The images
    stay on their device; the cost is ``B`` calls per batch, so prefer
    :class:`~fewlabel.plugins.augment.BatchImageAugment` where it has the op.

    Numerics run in float32 (images in [0, 1], as v2 expects of float tensors); the output has the
    input's dtype. Every sample's output must have the same size (give crops a fixed ``size``).

    Args:
        transforms: A v2 transform (e.g. a ``v2.Compose``), or its YAML form: a list of
            ``{"name": "<v2 class name>", **kwargs}`` specs (see :func:`build_v2_transform`).

    Raises:
        ValueError: a bad spec (see :func:`build_v2_transform`) or a value that is neither a module nor specs.

    Example:
        >>> aug = TorchvisionAugment([{"name": "RandomResizedCrop", "size": 8, "scale": [0.5, 1.0]},
        ...                           {"name": "RandomHorizontalFlip"}])
        >>> aug(torch.rand(4, 3, 12, 12)).shape
        torch.Size([4, 3, 8, 8])
    """

    def __init__(self, transforms: nn.Module | Sequence[Mapping[str, Any]]) -> None:
        super().__init__()
        self.transform = transforms if isinstance(transforms, nn.Module) else build_v2_transform(transforms)

    def forward(self, x: Tensor) -> Tensor:
        """Transform each image of ``x`` with its own random parameters.

        Args:
            x: Floating images ``(B, C, H, W)``.

        Returns:
            The transformed images ``(B, C, H', W')`` in the input's dtype.

        Raises:
            ValueError: ``x`` is not 4-d, or the samples come out with different shapes.
            TypeError: ``x`` is not a floating tensor.
        """
        check_input(x, (4,), "TorchvisionAugment")
        with torch.autocast(device_type=x.device.type, enabled=False):
            out = [self.transform(image) for image in x.float()]
        shapes = sorted({tuple(o.shape) for o in out})
        if len(shapes) > 1:
            raise ValueError(f"the transform gave samples of different shapes {shapes}; give its crops or resizes "
                             "a fixed size so that the views stack into a batch")
        return torch.stack(out).to(x.dtype)
