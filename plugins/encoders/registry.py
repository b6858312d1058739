"""The encoder registry, so that a YAML config can name an encoder (as timm does)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from fewlabel.plugins.registry import Registry

ENCODERS: Registry[nn.Module] = Registry("encoder")

#: Decorator that registers an encoder constructor: ``@register_encoder("my_encoder")``.
register_encoder = ENCODERS.register


def list_encoders() -> list[str]:
    """Sorted names of the registered encoders (``"timm"`` stands for ``"timm:<model>"``)."""
    return ENCODERS.names()


def encoder_constructor(name: str) -> Callable[..., nn.Module]:
    """The constructor :func:`create_encoder` calls for ``name`` (the timm wrapper for ``"timm:<model>"``).

    Raises:
        ValueError: ``name`` is not registered; the message lists the valid names.
    """
    if name.startswith("timm:"):
        return ENCODERS.get("timm")
    try:
        return ENCODERS.get(name)
    except ValueError as err:
        raise ValueError(f"{err} or 'timm:<model name>'") from None


def create_encoder(name: str, **kwargs: Any) -> nn.Module:
    """Build the encoder registered under ``name`` with ``kwargs``.

    ``"timm:<model>"`` builds any timm model as an image encoder (``timm.create_model(model,
    num_classes=0, **kwargs)``).

    Raises:
        ValueError: ``name`` is not registered; the message lists the valid names.
    """
    constructor = encoder_constructor(name)
    if name.startswith("timm:"):
        return constructor(model_name=name.split(":", 1)[1], **kwargs)
    return constructor(**kwargs)
