"""Views of a batch for a method's training step, made on the device after the encoder's front end."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from fewlabel.plugins.encoders.base import preprocess


def make_views(encoder: nn.Module, batch: Mapping[str, Any], augment: nn.Module | None, num_views: int) -> list[Tensor]:
    """Preprocessed views of a batch.

    ``batch["views"]`` (made by the datamodule) are preprocessed as they are; otherwise the batch's
    ``"input"`` goes through the encoder's front end once and ``augment`` runs ``num_views`` times on
    the result (without ``augment`` the views are that one preprocessed batch).

    Raises:
        KeyError: the batch has neither ``"views"`` nor ``"input"``.
    """
    if "views" in batch:
        return [preprocess(encoder, v) for v in batch["views"]]
    if "input" not in batch:
        raise KeyError(f"batch needs an 'input' or a 'views' key, got keys {sorted(batch)}")
    z = preprocess(encoder, batch["input"])
    if augment is None:
        return [z] * num_views
    return [augment(z) for _ in range(num_views)]
