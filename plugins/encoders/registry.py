"""A name -> constructor registry for encoders, so that a YAML config can name them (as timm does)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

_ENCODERS: dict[str, Callable[..., nn.Module]] = {}


def register_encoder(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator that registers an encoder constructor under ``name``.

    Example:
        >>> @register_encoder("my_encoder")  # doctest: +SKIP
        ... class MyEncoder(Encoder): ...
    """

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _ENCODERS:
            raise ValueError(f"encoder {name!r} is already registered")
        _ENCODERS[name] = fn
        return fn

    return decorator


def list_encoders() -> list[str]:
    """Sorted names of the registered encoders."""
    return sorted(_ENCODERS)


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


def encoder_constructor(name: str) -> Callable[..., nn.Module]:
    """The constructor :func:`create_encoder` calls for ``name`` (the timm wrapper for ``"timm:<model>"``).

    Raises:
        ValueError: ``name`` is not registered; the message lists the valid names.
    """
    key = "timm" if name.startswith("timm:") else name
    if key not in _ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; choose one of {list_encoders()} or 'timm:<model name>'")
    return _ENCODERS[key]
