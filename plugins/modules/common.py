"""Small helpers shared by the fewlabel LightningModules."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from fewlabel.plugins.encoders.registry import create_encoder


def build_encoder(encoder: nn.Module | Mapping[str, Any]) -> nn.Module:
    """Return ``encoder`` itself, or build it from a spec ``{"name": ..., **kwargs}`` via the registry."""
    if isinstance(encoder, nn.Module):
        return encoder
    if isinstance(encoder, Mapping) and "name" in encoder:
        spec = dict(encoder)
        return create_encoder(spec.pop("name"), **spec)
    raise TypeError(f"encoder must be an nn.Module or a spec dict with a 'name' key, got {type(encoder).__name__}")


def check_encoder(encoder: nn.Module, *, intermediates: bool = False) -> int:
    """Check the encoder contract and return its ``embed_dim``; raise naming what is missing."""
    missing = [a for a in ("embed_dim",) if not hasattr(encoder, a)]
    if intermediates:
        missing += [a for a in ("forward_intermediates", "intermediate_dims", "preprocess") if not hasattr(encoder, a)]
    if missing:
        raise TypeError(
            f"{type(encoder).__name__} does not honour the fewlabel encoder contract: missing {missing} "
            "(subclass fewlabel.plugins.encoders.Encoder)"
        )
    return int(encoder.embed_dim)


def make_views(encoder: nn.Module, batch: Mapping[str, Any], augment: nn.Module | None, num_views: int) -> list[Tensor]:
    """Preprocessed views of a batch: ``batch["views"]`` if the datamodule made them, else ``augment`` runs
    ``num_views`` times on the device after the encoder's front end."""
    preprocess = getattr(encoder, "preprocess", lambda x: x)
    if "views" in batch:
        return [preprocess(v) for v in batch["views"]]
    if "input" not in batch:
        raise KeyError(f"batch needs an 'input' or a 'views' key, got keys {sorted(batch)}")
    z = preprocess(batch["input"])
    if augment is None:
        return [z] * num_views
    return [augment(z) for _ in range(num_views)]


def check_finite(loss: Tensor, module: nn.Module, step: int) -> None:
    """Stop with a clear message instead of letting a non-finite loss corrupt the weights."""
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"{type(module).__name__}: non-finite loss ({loss.item()}) at global step {step}; "
            "lower the learning rate or check the input data"
        )
