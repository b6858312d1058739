"""Any timm model as a fewlabel encoder, on images or (with a log-mel front end) on audio.

Built with ``timm.create_model(name, num_classes=0)`` (Wightman, "PyTorch Image Models", 2019), so
the embedding is timm's own pooled feature. With ``frontend=...`` a :class:`LogMelFrontend` (BYOL-A
settings, arXiv 2103.06695) turns the waveform into a one-channel spectrogram first, so any timm CNN
serves as an audio encoder, as in UnFuSeD (arXiv 2303.05668).
"""

from __future__ import annotations

from typing import Any

import timm
import torch
from timm.data import resolve_model_data_config
from torch import Tensor, nn

from fewlabel.plugins.encoders.base import Encoder, check_input
from fewlabel.plugins.encoders.frontend import LogMelFrontend
from fewlabel.plugins.encoders.registry import register_encoder


def _pool(feature: Tensor) -> Tensor:
    """Mean-pool a block feature to ``(B, C)``: NCHW over space, NLC over tokens."""
    if feature.ndim == 4:
        return feature.mean(dim=(2, 3))
    if feature.ndim == 3:
        return feature.mean(dim=1)
    return feature


@register_encoder("timm")
class TimmEncoder(Encoder):
    """A timm model built with ``num_classes=0`` and ``pretrained=False``.

    ``embed_dim`` is ``model.num_features`` (``model.head_hidden_size`` where a model has a pre-logits
    layer, e.g. MobileNetV3), the size of timm's pooled embedding. Intermediate features come from timm's
    ``forward_intermediates`` where the model supports it, each mean-pooled to ``(B, C_i)``, with
    ``intermediate_dims`` read from ``model.feature_info``; otherwise there are none
    (``intermediate_dims == []``).

    Args:
        model_name: timm model name, e.g. ``"resnet18"``.
        in_chans: Input channels; ``None`` = 1 with a front end, else 3. Must be 1 with a front end.
        frontend: Keyword arguments for a :class:`LogMelFrontend` placed in front of the model (the
            input is then a waveform); ``None`` = no front end (the input is an image batch).
        intermediate_indices: Which blocks ``forward_intermediates`` returns, as timm takes them:
            ``None`` = all, ``n`` = the last ``n``, a list = those indices (negative allowed).
        normalize: Standardise image inputs in ``[0, 1]`` with the backbone's own data config
            (``timm.data.resolve_model_data_config``: its ``mean`` and ``std``, averaged over the three
            colours for one channel), after augmentation, in every forward pass. Off by default: the
            recipes' backbones train from scratch on ``[0, 1]`` inputs (their figures were measured so);
            turn it on for weights trained with that normalisation. Not with a front end.
        **kwargs: Passed to ``timm.create_model`` (e.g. ``drop_path_rate``, ``img_size``).

    Raises:
        ValueError: ``in_chans`` is not 1 with a front end, or bad ``intermediate_indices``.

    Example:
        >>> enc = TimmEncoder("resnet10t", frontend={})  # doctest: +SKIP
        >>> enc(torch.randn(2, 16000)).shape  # doctest: +SKIP
        torch.Size([2, 512])
    """

    def __init__(
        self,
        model_name: str,
        in_chans: int | None = None,
        frontend: dict[str, Any] | None = None,
        intermediate_indices: int | list[int] | None = None,
        normalize: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if in_chans is None:
            in_chans = 1 if frontend is not None else 3
        if frontend is not None and in_chans != 1:
            raise ValueError(f"a log-mel front end gives one channel, so in_chans must be 1, got {in_chans}")
        self.model_name = model_name
        self.in_chans = in_chans
        self.frontend: nn.Module | None = LogMelFrontend(**frontend) if frontend is not None else None
        self.model = timm.create_model(model_name, num_classes=0, pretrained=False, in_chans=in_chans, **kwargs)
        # Size of forward_head(pre_logits=True): num_features, or the head's hidden size where the
        # model has a pre-logits layer after its features (e.g. MobileNetV3's conv_head).
        self.embed_dim = int(getattr(self.model, "head_hidden_size", None) or self.model.num_features)
        if normalize and frontend is not None:
            raise ValueError("normalize standardises images in [0, 1]; a log-mel front end's output is not one")
        self.normalize = bool(normalize)
        config = resolve_model_data_config(self.model)
        mean, std = torch.tensor(config["mean"]), torch.tensor(config["std"])
        if in_chans != len(mean):
            mean, std = mean.mean().repeat(in_chans), std.mean().repeat(in_chans)
        self.register_buffer("input_mean", mean.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("input_std", std.view(1, -1, 1, 1), persistent=False)
        feature_info = getattr(self.model, "feature_info", None)
        self.supports_intermediates = hasattr(self.model, "forward_intermediates") and bool(feature_info)
        self._indices: list[int] = []
        self.intermediate_dims = []
        if self.supports_intermediates:
            dims = [int(info["num_chs"]) for info in feature_info]
            self._indices = self._resolve_indices(intermediate_indices, len(dims))
            self.intermediate_dims = [dims[i] for i in self._indices]

    @staticmethod
    def _resolve_indices(indices: int | list[int] | None, n: int) -> list[int]:
        if indices is None:
            return list(range(n))
        if isinstance(indices, int):
            if not 0 < indices <= n:
                raise ValueError(f"intermediate_indices={indices} must be in [1, {n}] (the last n blocks)")
            return list(range(n - indices, n))
        resolved = [i + n if i < 0 else i for i in indices]
        if any(not 0 <= i < n for i in resolved):
            raise ValueError(f"intermediate_indices {indices} out of range for a model with {n} feature blocks")
        return resolved

    def preprocess(self, x: Tensor) -> Tensor:
        """The log-mel front end if there is one, else the identity."""
        return self.frontend(x) if self.frontend is not None else x

    def forward_intermediates(self, z: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Embed a preprocessed batch.

        Args:
            z: Image-like batch ``(B, in_chans, H, W)`` (a log-mel ``(B, 1, n_mels, frames)`` with a
                front end).

        Returns:
            ``(embedding (B, embed_dim), [pooled block features (B, C_i)])``; the list is empty when
            the model has no ``forward_intermediates``.

        Raises:
            ValueError: ``z`` is not a 4-d batch with ``in_chans`` channels.
        """
        check_input(z, (4,), f"TimmEncoder({self.model_name})")
        if z.shape[1] != self.in_chans:
            raise ValueError(f"TimmEncoder({self.model_name}) expects {self.in_chans} channels, got shape {tuple(z.shape)}")
        z = self._standardise(z)
        if not self.supports_intermediates:
            return self.model(z), []
        final, intermediates = self.model.forward_intermediates(z, indices=self._indices)
        embedding = self.model.forward_head(final, pre_logits=True)
        return embedding, [_pool(f) for f in intermediates]

    def forward_embed(self, z: Tensor) -> Tensor:
        """Embedding only, through timm's ordinary forward (no intermediates kept)."""
        check_input(z, (4,), f"TimmEncoder({self.model_name})")
        return self.model(self._standardise(z))

    def _standardise(self, z: Tensor) -> Tensor:
        """``(z - mean) / std`` with the backbone's data config when ``normalize``, else ``z``."""
        if not self.normalize:
            return z
        return (z - self.input_mean.to(z.dtype)) / self.input_std.to(z.dtype)
