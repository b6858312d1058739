"""The encoder contract every fewlabel encoder honours.

An encoder maps a raw input batch to a ``(B, D)`` embedding, like a timm model built with
``num_classes=0``. It is split in two so that augmentations can run between the halves, on the
device, batch-wise:

* :meth:`Encoder.preprocess` is the front end (a log-mel spectrogram for audio, identity for images);
* :meth:`Encoder.forward_embed` maps the preprocessed batch to the embedding;
* :meth:`Encoder.forward_intermediates` also returns one pooled ``(B, D_i)`` feature per block, for
  multi-exit heads (self-distillation).

``forward(x) == forward_embed(preprocess(x))``. Callbacks only ever call ``encoder(x)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fewlabel.plugins.encoders.registry import create_encoder


class Encoder(nn.Module):
    """Base class for fewlabel encoders.

    Subclasses set ``embed_dim`` and ``intermediate_dims`` and implement
    :meth:`forward_intermediates`; the rest follows.

    Attributes:
        embed_dim: Size ``D`` of the embedding returned by :meth:`forward`.
        num_features: Alias of ``embed_dim`` (timm's name).
        intermediate_dims: Sizes of the pooled block features from :meth:`forward_intermediates`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> class Flat(Encoder):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.net, self.embed_dim, self.intermediate_dims = nn.Linear(4, 2), 2, []
        ...     def forward_intermediates(self, z):
        ...         return self.net(z.flatten(1)), []
        >>> Flat()(torch.rand(3, 2, 2)).shape, Flat().num_features
        (torch.Size([3, 2]), 2)
    """

    embed_dim: int
    intermediate_dims: list[int]

    @property
    def num_features(self) -> int:
        return self.embed_dim

    def preprocess(self, x: Tensor) -> Tensor:
        """Front end applied before augmentation (identity unless overridden)."""
        return x

    def forward_intermediates(self, z: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Map a preprocessed batch to ``(embedding (B, D), [pooled block features (B, D_i)])``."""
        raise NotImplementedError

    def forward_embed(self, z: Tensor) -> Tensor:
        """Map a preprocessed batch to its ``(B, D)`` embedding."""
        return self.forward_intermediates(z)[0]

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_embed(self.preprocess(x))


def check_input(x: Tensor, ndim: tuple[int, ...], name: str) -> None:
    """Raise a clear ``ValueError`` unless ``x`` is a floating tensor with one of ``ndim`` dims."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} expects a torch.Tensor, got {type(x).__name__}")
    if x.ndim not in ndim:
        raise ValueError(f"{name} expects a tensor with {' or '.join(map(str, ndim))} dims, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} expects a floating-point tensor, got {x.dtype}")


def checkpoint_weights(checkpoint: str | Path, prefix: str = "encoder.") -> dict[str, Tensor]:
    """The weights under ``prefix`` (prefix removed) of a module's checkpoint; ``prefix=""`` gives them all.

    Args:
        checkpoint: a Lightning checkpoint (``{"state_dict": ...}``, e.g. a recipe stage's ``final.ckpt``) or a
            file holding a module's ``state_dict`` itself.
        prefix: which weights: ``"encoder."`` (a fewlabel module's encoder), ``""`` (the whole module).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file cannot be read, holds no state_dict, or no weights under ``prefix``.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise ValueError(f"checkpoint {path} could not be read: {err}") from err
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path} holds no state_dict")
    weights = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    if not weights:
        raise ValueError(f"checkpoint {path} holds no {prefix.rstrip('.') or 'module'} weights (no '{prefix}*' keys in "
                         f"its state_dict); pass a checkpoint of a fewlabel module, e.g. RUN/teacher/final.ckpt")
    return weights


def load_checkpoint_weights(module: nn.Module, checkpoint: str | Path, prefix: str, what: str) -> nn.Module:
    """Load ``module``'s weights, exactly (same keys and shapes), from the ``prefix`` weights of a checkpoint.

    Raises:
        FileNotFoundError, ValueError: see :func:`checkpoint_weights`; weights that do not fit ``module``
            (naming ``what`` and the first problem).
    """
    try:
        module.load_state_dict(checkpoint_weights(checkpoint, prefix))
    except RuntimeError as err:  # torch's first line only says where; the next one says what
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        raise ValueError(f"the weights of {checkpoint} do not fit {what}: {lines[min(1, len(lines) - 1)]}") from None
    return module


def build_encoder(encoder: nn.Module | Mapping[str, Any]) -> nn.Module:
    """Return ``encoder`` itself, or build it from a spec ``{"name": ..., **kwargs}`` via the registry.

    A spec may also name a ``checkpoint`` of a fewlabel module: the encoder is built from the spec, then takes
    that checkpoint's ``encoder.*`` weights (exactly: same keys and shapes), e.g. a recipe's trained teacher
    ``{name: small_cnn, width: 32, checkpoint: runs/unfused/teacher/final.ckpt}``.

    Raises:
        TypeError: ``encoder`` is neither a module nor a spec with a ``name``.
        ValueError: the checkpoint's encoder weights do not fit the spec (naming the spec and the first problem).

    Example:
        >>> build_encoder({"name": "small_cnn", "width": 4}).embed_dim
        16
    """
    if isinstance(encoder, nn.Module):
        return encoder
    if isinstance(encoder, Mapping) and "name" in encoder:
        spec = dict(encoder)
        checkpoint = spec.pop("checkpoint", None)
        built = create_encoder(spec.pop("name"), **spec)
        if checkpoint is not None:
            spec = {k: v for k, v in encoder.items() if k != "checkpoint"}
            load_checkpoint_weights(built, checkpoint, "encoder.", f"the encoder {spec}")
        return built
    raise TypeError(f"encoder must be an nn.Module or a spec dict with a 'name' key, got {type(encoder).__name__}")


def check_encoder(encoder: nn.Module, *, intermediates: bool = False) -> int:
    """Check the encoder contract and return its ``embed_dim``; raise naming what is missing.

    Any ``nn.Module`` with ``embed_dim`` embeds (``preprocess`` and ``forward_embed`` are optional, see
    :func:`preprocess` and :func:`embed`); multi-exit methods also need ``forward_intermediates``,
    ``intermediate_dims`` and ``preprocess``.

    Raises:
        TypeError: naming the missing attributes.
    """
    missing = [a for a in ("embed_dim",) if not hasattr(encoder, a)]
    if intermediates:
        missing += [a for a in ("forward_intermediates", "intermediate_dims", "preprocess") if not hasattr(encoder, a)]
    if missing:
        raise TypeError(
            f"{type(encoder).__name__} does not honour the fewlabel encoder contract: missing {missing} "
            "(subclass fewlabel.plugins.encoders.Encoder)"
        )
    return int(encoder.embed_dim)


def preprocess(encoder: nn.Module, x: Tensor) -> Tensor:
    """The encoder's front end (``encoder.preprocess``), or ``x`` itself for a plain module."""
    front = getattr(encoder, "preprocess", None)
    return front(x) if callable(front) else x


def embed(encoder: nn.Module, z: Tensor) -> Tensor:
    """The ``(B, D)`` embedding of a preprocessed batch: ``forward_embed`` if the encoder has one, else ``encoder(z)``."""
    forward_embed = getattr(encoder, "forward_embed", None)
    return forward_embed(z) if callable(forward_embed) else encoder(z)
