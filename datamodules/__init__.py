"""fewlabel.datamodules: LightningDataModules with an explicit label budget, and their datasets.

Every datamodule serves dict batches ``{"input", "label", "index"}`` from a labeled draw of
``labels_per_class`` samples per class and from the whole unlabeled pool; see
:class:`FewLabelDataModule`.
"""

from __future__ import annotations

from fewlabel.datamodules.audio_folder import AudioFileDataset, AudioFolderDataModule, crop_or_pad
from fewlabel.datamodules.base import DatasetSplits, FewLabelDataModule, SeededShuffle
from fewlabel.datamodules.budget import label_budget_split, stratified_split
from fewlabel.datamodules.dataset import FewLabelDataset, InMemoryDataset, SampleView, SubsetDataset, collate_dict
from fewlabel.datamodules.corruptions import (
    AUDIO_CORRUPTIONS,
    IMAGE_CORRUPTIONS,
    SEVERITIES,
    CorruptedDataModule,
    CorruptedDataset,
    CorruptedView,
    Corruption,
)
from fewlabel.datamodules.digits import DigitsDataModule
from fewlabel.datamodules.episodes import EpisodeSampler
from fewlabel.datamodules.folder import FileDataset, FolderDataModule, scan_class_folders
from fewlabel.datamodules.image_folder import ImageFileDataset, ImageFolderDataModule

__all__ = [
    "AUDIO_CORRUPTIONS",
    "AudioFileDataset",
    "AudioFolderDataModule",
    "CorruptedDataModule",
    "CorruptedDataset",
    "CorruptedView",
    "Corruption",
    "DatasetSplits",
    "DigitsDataModule",
    "EpisodeSampler",
    "FewLabelDataModule",
    "FewLabelDataset",
    "FileDataset",
    "FolderDataModule",
    "IMAGE_CORRUPTIONS",
    "ImageFileDataset",
    "ImageFolderDataModule",
    "InMemoryDataset",
    "SEVERITIES",
    "SampleView",
    "SeededShuffle",
    "SubsetDataset",
    "collate_dict",
    "crop_or_pad",
    "label_budget_split",
    "scan_class_folders",
    "stratified_split",
]
