"""The augmentation registry, so that a YAML config can name an augmentation."""

from __future__ import annotations

from typing import Any

from torch import nn

from fewlabel.plugins.augment.byola import ByolaAugment
from fewlabel.plugins.augment.image import BatchImageAugment
from fewlabel.plugins.registry import Registry

AUGMENTS: Registry[nn.Module] = Registry("augment")
AUGMENTS.register("byola")(ByolaAugment)
AUGMENTS.register("image")(BatchImageAugment)


def create_augment(name: str | None, **kwargs: Any) -> nn.Module | None:
    """Build the augmentation called ``name`` (``"image"``, ``"byola"``); ``None``/``"none"`` gives ``None``.

    Raises:
        ValueError: Unknown name; the message lists the valid ones.
    """
    if name is None or name == "none":
        return None
    try:
        return AUGMENTS.create(name, **kwargs)
    except ValueError as err:
        if name in AUGMENTS:
            raise
        raise ValueError(f"{err} or 'none'") from None
