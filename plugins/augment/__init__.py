"""Batch-wise augmentations that run on the device, inside a module (after an encoder's front end)."""

from __future__ import annotations

from fewlabel.plugins.augment.byola import ByolaAugment, MixupBYOLA, RandomResizeCrop
from fewlabel.plugins.augment.factory import AUGMENTS, create_augment
from fewlabel.plugins.augment.image import BatchImageAugment

__all__ = ["AUGMENTS", "BatchImageAugment", "ByolaAugment", "MixupBYOLA", "RandomResizeCrop", "create_augment"]
