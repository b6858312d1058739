"""Batch-wise augmentations that run on the device, inside a module, and the per-view pipelines built from them.

Most run after an encoder's front end (image ops, SpecAugment, BYOL-A ops); waveform ops run on the
raw input before it, as the ``raw`` stage of a :class:`ViewPipeline`. :class:`ViewPipelines` gives
each view its own pipeline (BYOL's asymmetric views: :func:`byol_views`).
"""

from __future__ import annotations

from fewlabel.plugins.augment.byola import ByolaAugment, MixupBYOLA, RandomLinearFader, RandomResizeCrop
from fewlabel.plugins.augment.factory import AUGMENTS, create_augment, list_augments, register_augment, view_pipelines
from fewlabel.plugins.augment.image import BatchImageAugment, gaussian_blur, solarize
from fewlabel.plugins.augment.multicrop import MultiCrop
from fewlabel.plugins.augment.rotation import NUM_ROTATIONS, rotate_batch, rotate_by
from fewlabel.plugins.augment.spec_augment import SpecAugment
from fewlabel.plugins.augment.torchvision_ops import TorchvisionAugment, build_v2_transform
from fewlabel.plugins.augment.views import ViewPipeline, ViewPipelines, byol_views, make_views
from fewlabel.plugins.augment.waveform import WaveformAugment

__all__ = [
    "AUGMENTS",
    "BatchImageAugment",
    "ByolaAugment",
    "MixupBYOLA",
    "MultiCrop",
    "NUM_ROTATIONS",
    "RandomLinearFader",
    "RandomResizeCrop",
    "SpecAugment",
    "TorchvisionAugment",
    "ViewPipeline",
    "ViewPipelines",
    "WaveformAugment",
    "build_v2_transform",
    "byol_views",
    "create_augment",
    "gaussian_blur",
    "list_augments",
    "make_views",
    "register_augment",
    "rotate_batch",
    "rotate_by",
    "solarize",
    "view_pipelines",
]
