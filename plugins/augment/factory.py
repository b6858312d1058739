"""The augmentation registry, so that a YAML config can name an augmentation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from fewlabel.plugins.augment.byola import ByolaAugment
from fewlabel.plugins.augment.image import BatchImageAugment
from fewlabel.plugins.augment.spec_augment import SpecAugment
from fewlabel.plugins.augment.torchvision_ops import TorchvisionAugment
from fewlabel.plugins.augment.views import ViewPipeline, ViewPipelines, byol_views
from fewlabel.plugins.augment.waveform import WaveformAugment
from fewlabel.plugins.registry import Registry

AUGMENTS: Registry[nn.Module] = Registry("augment")
AUGMENTS.register("byola")(ByolaAugment)
AUGMENTS.register("image")(BatchImageAugment)
AUGMENTS.register("byol_image")(byol_views)
AUGMENTS.register("spec_augment")(SpecAugment)
AUGMENTS.register("torchvision")(TorchvisionAugment)
AUGMENTS.register("waveform")(WaveformAugment)

#: Decorator that registers an augmentation constructor: ``@register_augment("my_augment")``.
register_augment = AUGMENTS.register


def list_augments() -> list[str]:
    """Sorted names of the registered augmentations (``"none"`` also selects no augmentation)."""
    return AUGMENTS.names()


def create_augment(name: str | None, **kwargs: Any) -> nn.Module | None:
    """Build the augmentation called ``name`` (``"image"``, ``"views"``, ...); ``None``/``"none"`` gives ``None``.

    Raises:
        ValueError: Unknown name; the message lists the valid ones.

    Example:
        >>> create_augment("image", rotation=5.0).rotation, create_augment("none")
        (5.0, None)
    """
    if name is None or name == "none":
        return None
    try:
        return AUGMENTS.create(name, **kwargs)
    except ValueError as err:
        if name in AUGMENTS:
            raise
        raise ValueError(f"{err} or 'none'") from None


def _stage(where: str, spec: Mapping[str, Any] | nn.Module | None) -> nn.Module | None:
    if spec is None or isinstance(spec, nn.Module):
        return spec
    if not isinstance(spec, Mapping):
        raise ValueError(f"{where} must be an augment spec {{'name': ..., **kwargs}}, a module or None, got {spec!r}")
    kwargs = dict(spec)
    try:
        return create_augment(kwargs.pop("name", None), **kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from None


@AUGMENTS.register("views")
def view_pipelines(pipelines: Sequence[Mapping[str, Any] | nn.Module | None]) -> ViewPipelines:
    """Build :class:`ViewPipelines` (one pipeline per view) from augment specs, the form a YAML config uses.

    Each entry is ``None`` (the view is the preprocessed input), a module, or a spec
    ``{"name": <augment name>, **kwargs}`` for the stage after the encoder's front end, with an optional
    ``"raw"`` key holding the spec of the stage before it (``"name"`` may then be left out or ``"none"``).

    Args:
        pipelines: One entry per view.

    Returns:
        The pipelines.

    Raises:
        ValueError: an empty list, or an entry that does not build (the message names its position).

    Example:
        >>> views = create_augment("views", pipelines=[
        ...     {"name": "spec_augment", "raw": {"name": "waveform", "snr_db": [10, 30]}},
        ...     {"name": "spec_augment", "freq_mask_param": 16}])
        >>> views.num_views, type(views.pipelines[0].raw).__name__
        (2, 'WaveformAugment')
    """
    if isinstance(pipelines, (Mapping, str)) or not isinstance(pipelines, Sequence):
        raise ValueError(f"pipelines must be a list with one augment spec per view, got {pipelines!r}")
    built = []
    for i, spec in enumerate(pipelines):
        raw = None
        if isinstance(spec, Mapping) and "raw" in spec:
            spec = dict(spec)
            raw = _stage(f"pipelines[{i}].raw", spec.pop("raw"))
        built.append(ViewPipeline(_stage(f"pipelines[{i}]", spec), raw))
    return ViewPipelines(built)
