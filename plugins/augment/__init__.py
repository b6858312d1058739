"""Batch-wise augmentations that run on the device, inside a module (after an encoder's front end)."""

from __future__ import annotations

from fewlabel.plugins.augment.byola import ByolaAugment, MixupBYOLA, RandomResizeCrop
from fewlabel.plugins.augment.factory import AUGMENTS, create_augment
from fewlabel.plugins.augment.image import BatchImageAugment
from fewlabel.plugins.augment.multicrop import MultiCrop
from fewlabel.plugins.augment.rotation import NUM_ROTATIONS, rotate_batch, rotate_by

__all__ = [
    "AUGMENTS",
    "BatchImageAugment",
    "ByolaAugment",
    "MixupBYOLA",
    "MultiCrop",
    "NUM_ROTATIONS",
    "RandomResizeCrop",
    "create_augment",
    "rotate_batch",
    "rotate_by",
]
