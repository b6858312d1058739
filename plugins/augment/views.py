"""Views of a batch for a method's training step, made on the device around the encoder's front end.

A plain augmentation module runs on the preprocessed batch once per view (symmetric views, as in
SimCLR). :class:`ViewPipelines` gives each view its own pipeline (asymmetric views, as in BYOL:
:func:`byol_views`), and each pipeline may start with a stage on the raw input, before the front end
(waveform ops for audio).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

from torch import Tensor, nn

from fewlabel.plugins.augment.image import BatchImageAugment
from fewlabel.plugins.encoders.base import preprocess
from fewlabel.plugins.registry import closest

__all__ = ["ViewPipeline", "ViewPipelines", "byol_views", "make_views"]


def _check_stage(name: str, stage: Any) -> nn.Module | None:
    if stage is not None and (not isinstance(stage, nn.Module) or isinstance(stage, ViewPipelines)):
        raise ValueError(f"{name} must be an nn.Module mapping a batch to a batch (not ViewPipelines) or None, "
                         f"got {type(stage).__name__}")
    return stage


class ViewPipeline(nn.Module):
    """One view's augmentation: ``raw`` on the raw input, the encoder's front end, then ``augment``.

    Args:
        augment: Module applied after the front end (image ops, SpecAugment, BYOL-A ops), or ``None``.
        raw: Module applied to the raw input before the front end (e.g.
            :class:`~fewlabel.plugins.augment.WaveformAugment` on audio), or ``None``.

    Raises:
        ValueError: a stage is neither ``None`` nor a module, or is a :class:`ViewPipelines`.

    Example:
        >>> import torch
        >>> pipeline = ViewPipeline(augment=nn.Identity())
        >>> pipeline(torch.ones(2, 3), frontend=lambda x: 2 * x).tolist()
        [[2.0, 2.0, 2.0], [2.0, 2.0, 2.0]]
    """

    def __init__(self, augment: nn.Module | None = None, raw: nn.Module | None = None) -> None:
        super().__init__()
        self.augment = _check_stage("augment", augment)
        self.raw = _check_stage("raw", raw)

    def finish(self, z: Tensor) -> Tensor:
        """Apply the post-front-end stage to a preprocessed batch ``z``."""
        return z if self.augment is None else self.augment(z)

    def forward(self, x: Tensor, frontend: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """The view of a raw batch ``x``: ``augment(frontend(raw(x)))``, skipping the stages that are ``None``."""
        x = x if self.raw is None else self.raw(x)
        return self.finish(x if frontend is None else frontend(x))


class ViewPipelines(nn.Module):
    """One pipeline per view: view ``i`` is made by pipeline ``i`` (asymmetric views).

    Given a raw batch and the encoder's front end, the front end runs once for all the pipelines
    without a raw stage (they share one preprocessed batch) and once more for each pipeline with a
    raw stage. Pipelines run in order, so a seeded run makes the same views. Note that a stateful
    front end in training mode (the log-mel front end's running normalisation) sees one batch per
    front-end run.

    Args:
        pipelines: One entry per view: a :class:`ViewPipeline`, a module (taken as the pipeline's
            post-front-end stage) or ``None`` (the view is the preprocessed batch itself).

    Raises:
        ValueError: no pipeline, or an entry that is neither a module nor ``None``.

    Example:
        >>> import torch
        >>> from fewlabel.plugins.augment import BatchImageAugment
        >>> views = ViewPipelines([None, BatchImageAugment(solarize_prob=1.0)])
        >>> [tuple(v.shape) for v in views(torch.rand(4, 3, 8, 8))]
        [(4, 3, 8, 8), (4, 3, 8, 8)]
    """

    def __init__(self, pipelines: Sequence[ViewPipeline | nn.Module | None]) -> None:
        super().__init__()
        if isinstance(pipelines, (nn.Module, str)) or not isinstance(pipelines, Sequence) or not pipelines:
            raise ValueError(f"pipelines must be a non-empty list with one pipeline per view, got {pipelines!r}")
        self.pipelines = nn.ModuleList(
            p if isinstance(p, ViewPipeline) else ViewPipeline(_check_stage(f"pipelines[{i}]", p))
            for i, p in enumerate(pipelines)
        )

    @property
    def num_views(self) -> int:
        """Views per call: one per pipeline."""
        return len(self.pipelines)

    def forward(self, x: Tensor, frontend: Callable[[Tensor], Tensor] | None = None) -> list[Tensor]:
        """The views of a raw batch ``x``, view ``i`` from pipeline ``i``.

        Args:
            x: The raw input batch.
            frontend: The encoder's front end (see :func:`make_views`); ``None`` = identity.

        Returns:
            ``num_views`` preprocessed, augmented views.
        """
        shared: Tensor | None = None
        views = []
        for pipeline in self.pipelines:
            if pipeline.raw is None:
                if shared is None:
                    shared = x if frontend is None else frontend(x)
                views.append(pipeline.finish(shared))
            else:
                views.append(pipeline(x, frontend))
        return views


def make_views(encoder: nn.Module, batch: Mapping[str, Any], augment: nn.Module | None, num_views: int) -> list[Tensor]:
    """Preprocessed views of a batch.

    ``batch["views"]`` (made by the datamodule) are preprocessed as they are. Otherwise, with a
    :class:`ViewPipelines` ``augment``, view ``i`` is pipeline ``i`` of the batch's ``"input"`` (raw
    stage, the encoder's front end, post-front-end stage); with any other module the ``"input"`` goes
    through the encoder's front end once and ``augment`` runs ``num_views`` times on the result
    (without ``augment`` the views are that one preprocessed batch).

    Args:
        encoder: The encoder whose front end (``preprocess``) makes the preprocessed batch.
        batch: A batch dict with ``"input"`` or ``"views"``.
        augment: A module, a :class:`ViewPipelines` or ``None``.
        num_views: Number of views wanted.

    Raises:
        KeyError: the batch has neither ``"views"`` nor ``"input"``.
        ValueError: ``augment`` is a :class:`ViewPipelines` with another number of pipelines than ``num_views``.

    Example:
        >>> import torch
        >>> make_views(nn.Identity(), {"input": torch.ones(2, 3)}, None, 2)[1].shape
        torch.Size([2, 3])
    """
    if "views" in batch:
        return [preprocess(encoder, v) for v in batch["views"]]
    if "input" not in batch:
        raise KeyError(f"batch needs an 'input' or a 'views' key, got keys {sorted(batch)}")
    if isinstance(augment, ViewPipelines):
        if augment.num_views != num_views:
            raise ValueError(f"{num_views} views were asked for, but the ViewPipelines augment has "
                             f"{augment.num_views} pipelines (one per view)")
        return augment(batch["input"], partial(preprocess, encoder))
    z = preprocess(encoder, batch["input"])
    if augment is None:
        return [z] * num_views
    return [augment(z) for _ in range(num_views)]


# The settings of BYOL's two image views that :class:`BatchImageAugment` expresses and both views
# share (Grill et al., "Bootstrap Your Own Latent", 2020, arXiv 2006.07733, table 6), but for the flip:
# off unless asked for, as every augmentation here that can change a class.
_BYOL_SHARED = {"hflip": 0.0, "brightness": 0.4, "contrast": 0.4, "saturation": 0.2, "hue": 0.1, "jitter_prob": 0.8,
               "grayscale": 0.2, "blur_sigma": (0.1, 2.0)}
# What differs between BYOL's two views (table 6): the probabilities of blur and solarization.
_BYOL_ASYMMETRIC = ({"blur_prob": 1.0, "solarize_prob": 0.0}, {"blur_prob": 0.1, "solarize_prob": 0.2})


def byol_views(**common_kwargs: Any) -> ViewPipelines:
    """BYOL's two asymmetric image views: two :class:`~fewlabel.plugins.augment.BatchImageAugment` pipelines.

    View 1 is always blurred and never solarized; view 2 is blurred with probability 0.1 and
    solarized with probability 0.2 (arXiv 2006.07733, table 6). Every other setting is shared: those
    of table 6 (colour jitter with probability 0.8 of brightness 0.4, contrast 0.4, saturation 0.2,
    hue 0.1; grayscale 0.2; blur sigma 0.1-2) updated with ``common_kwargs``. The paper also flips
    with probability 0.5; here flips are off unless ``hflip`` is given, since a mirror image changes
    the class of digits, letters and other chiral shapes (pass ``hflip=0.5`` for natural images).
    Unlike torchvision's ``ColorJitter``, brightness here is an additive offset, and the crop is
    :class:`BatchImageAugment`'s affine warp (pass ``scale``) rather than a ``RandomResizedCrop``.

    Args:
        common_kwargs: :class:`BatchImageAugment` arguments for both views (not ``blur_prob`` or
            ``solarize_prob``, which make the views differ).

    Returns:
        A :class:`ViewPipelines` of two pipelines.

    Raises:
        ValueError: ``common_kwargs`` sets ``blur_prob`` or ``solarize_prob``, names an unknown argument
            (the message gives the closest valid one), or an argument is bad.

    Example:
        >>> views = byol_views(hflip=0.5)
        >>> views.num_views, views.pipelines[1].augment.solarize_prob
        (2, 0.2)
    """
    fixed = sorted(set(common_kwargs) & {"blur_prob", "solarize_prob"})
    if fixed:
        raise ValueError(f"byol_views sets {fixed} per view (view 1: blur 1.0, solarize 0.0; view 2: blur 0.1, "
                         "solarize 0.2); build ViewPipelines([BatchImageAugment(...), ...]) for other values")
    valid = [name for name in inspect.signature(BatchImageAugment).parameters if name not in _BYOL_ASYMMETRIC[0]]
    for name in common_kwargs:
        if name not in valid:
            raise ValueError(f"byol_views: unknown BatchImageAugment argument {name!r}{closest(name, valid)}; "
                             f"choose from {valid}")
    shared = {**_BYOL_SHARED, **common_kwargs}
    return ViewPipelines([BatchImageAugment(**shared, **view) for view in _BYOL_ASYMMETRIC])
