"""fewlabel.datamodules: LightningDataModules with an explicit label budget, and their datasets.

Every datamodule serves dict batches ``{"input", "label", "index"}`` from a labeled draw of
``labels_per_class`` samples per class and from the whole unlabeled pool; see
:class:`FewLabelDataModule`.
"""

from __future__ import annotations

from fewlabel.datamodules.audio_folder import AudioFileDataset, AudioFolderDataModule, crop_or_pad, mono_waveform
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
from fewlabel.datamodules.huggingface import HuggingFaceDataModule, WaveformDataset
from fewlabel.datamodules.image_folder import ImageFileDataset, ImageFolderDataModule, image_to_tensor
from fewlabel.datamodules.public import (
    CIFAR10DataModule,
    ESC50DataModule,
    SpeechCommandsDataModule,
    STL10DataModule,
)

__all__ = [
    "AUDIO_CORRUPTIONS",
    "AudioFileDataset",
    "AudioFolderDataModule",
    "CIFAR10DataModule",
    "CorruptedDataModule",
    "CorruptedDataset",
    "CorruptedView",
    "Corruption",
    "DatasetSplits",
    "DigitsDataModule",
    "ESC50DataModule",
    "EpisodeSampler",
    "FewLabelDataModule",
    "FewLabelDataset",
    "FileDataset",
    "FolderDataModule",
    "HuggingFaceDataModule",
    "IMAGE_CORRUPTIONS",
    "ImageFileDataset",
    "ImageFolderDataModule",
    "InMemoryDataset",
    "SEVERITIES",
    "STL10DataModule",
    "SampleView",
    "SeededShuffle",
    "SpeechCommandsDataModule",
    "SubsetDataset",
    "WaveformDataset",
    "collate_dict",
    "crop_or_pad",
    "image_to_tensor",
    "label_budget_split",
    "mono_waveform",
    "scan_class_folders",
    "stratified_split",
]
