"""Select a batch augmentation by name, so a YAML config can name it."""

from __future__ import annotations

from typing import Any

from torch import nn

from fewlabel.plugins.augment.byola import ByolaAugment
from fewlabel.plugins.augment.image import BatchImageAugment

AUGMENTS: dict[str, type[nn.Module]] = {"byola": ByolaAugment, "image": BatchImageAugment}


def create_augment(name: str | None, **kwargs: Any) -> nn.Module | None:
    """Build the augmentation called ``name`` (``"image"``, ``"byola"``); ``None``/``"none"`` gives ``None``.

    Raises:
        ValueError: Unknown name; the message lists the valid ones.
    """
    if name is None or name == "none":
        return None
    if name not in AUGMENTS:
        raise ValueError(f"unknown augment {name!r}; choose one of {sorted(AUGMENTS)} or 'none'")
    return AUGMENTS[name](**kwargs)
