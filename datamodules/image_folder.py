"""Folder-per-class images as fixed-size ``float32`` tensors."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile
from torch import Tensor

from fewlabel.datamodules.budget import _check_int
from fewlabel.datamodules.dataset import _unit_float
from fewlabel.datamodules.folder import FileDataset, FolderDataModule

__all__ = ["ImageFileDataset", "ImageFolderDataModule", "image_to_tensor"]

PIL_MODES = {1: "L", 3: "RGB"}
SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")  # integer grayscale, read as 16-bit data


def _pil_extensions() -> tuple[str, ...]:
    """Extensions of the formats PIL can open and decode (not save-only formats, not stubs)."""
    extensions = Image.registered_extensions()  # loads every plugin, filling Image.OPEN
    decodable = {
        name
        for name, (factory, _) in Image.OPEN.items()
        if not (isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile))
    }
    return tuple(sorted(ext for ext, name in extensions.items() if name in decodable))


IMAGE_EXTENSIONS = _pil_extensions()


def image_to_tensor(image: Image.Image, image_size: int, channels: int) -> Tensor:
    """A PIL image as a ``(channels, image_size, image_size)`` tensor: ``uint8`` for 8-bit images,
    ``float32`` in ``[0, 1]`` for 16-bit grayscale ones (PIL modes ``I;16*`` and ``I``).

    Any mode is converted to ``channels`` (1: PIL ``"L"``, 3: ``"RGB"``; transparent images through
    ``"RGBA"``); the image is resized bilinearly to a square.
    """
    size = (image_size, image_size)
    if image.mode in SIXTEEN_BIT_MODES:
        gray = Image.fromarray(np.asarray(image, dtype=np.float32) / 65535.0)  # mode "F"
        array = np.asarray(gray.resize(size, Image.Resampling.BILINEAR)).clip(0.0, 1.0)
        array = np.repeat(array[:, :, None], channels, axis=2)
    else:
        if image.mode in ("P", "PA", "LA", "RGBA") or "transparency" in image.info:
            image = image.convert("RGBA")
        image = image.convert(PIL_MODES[channels]).resize(size, Image.Resampling.BILINEAR)
        array = np.array(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).contiguous()


class ImageFileDataset(FileDataset):
    """Image files decoded with PIL, converted to ``channels`` and resized to a square.

    Decoded 8-bit images are kept as ``uint8`` (a quarter of the memory); 16-bit
    grayscale images (PIL modes ``I;16*`` and ``I``) are scaled by ``1 / 65535`` and kept
    as ``float32``, so no precision is lost. Inputs are ``(channels, image_size,
    image_size)`` ``float32`` in ``[0, 1]``.

    Args:
        files: Image file paths.
        targets: Class id of each file.
        image_size: Side length of every input.
        channels: 1 (grayscale, PIL ``"L"``) or 3 (``"RGB"``); any input mode is converted.
        cache: Keep the decoded images in memory.

    Example:
        >>> import numpy as np
        >>> from PIL import Image
        >>> Image.new("RGB", (20, 10), (255, 0, 0)).save("red.png")
        >>> ds = ImageFileDataset(["red.png"], np.array([0]), image_size=8, channels=3)
        >>> x = ds.load(0, train=False)
        >>> x.shape, x[:, 0, 0]
        (torch.Size([3, 8, 8]), tensor([1., 0., 0.]))
    """

    def __init__(
        self,
        files: Sequence[Path],
        targets: np.ndarray,
        image_size: int = 32,
        channels: int = 3,
        cache: bool = True,
    ) -> None:
        self.image_size = image_size
        self.channels = channels
        super().__init__(files, targets, cache)

    def decode(self, path: Path) -> Tensor:
        """Return the image as a ``(channels, image_size, image_size)`` tensor.

        The tensor is ``uint8`` for 8-bit images and ``float32`` in ``[0, 1]`` for 16-bit ones.

        Raises:
            PIL.UnidentifiedImageError, OSError: If the file is not a readable image.
        """
        with Image.open(path) as image:
            return image_to_tensor(image, self.image_size, self.channels)

    def finish(self, value: Tensor, train: bool) -> Tensor:
        """Return a ``float32`` copy in ``[0, 1]`` (``uint8`` values are divided by 255)."""
        return _unit_float(value, copy=True).to(torch.float32)


class ImageFolderDataModule(FolderDataModule):
    """Image classification from ``root/CLASS/<image files>`` with a label budget.

    Every file type that PIL can decode is accepted (``.png``, ``.jpg``, ``.tif``,
    ``.webp``, ...; see ``ImageFolderDataModule.extensions``); other files in a class
    folder are ignored with one warning. Inputs are ``(channels, image_size,
    image_size)`` ``float32`` tensors in ``[0, 1]``; 16-bit images are scaled by their
    bit depth. Unreadable files are skipped at setup with one warning listing them.

    Args:
        root: The data folder (``root/CLASS/...`` or ``root/{train,test}/CLASS/...``).
        image_size: Side length the images are resized to.
        channels: 1 (grayscale) or 3 (RGB).
        test_fraction: Stratified test share when ``root`` has no ``train``/``test`` folders.
        cache: Decode once into memory.
        **kwargs: Arguments of :class:`~fewlabel.datamodules.FewLabelDataModule`.

    Raises:
        ValueError: On a non-positive ``image_size`` or ``channels`` other than 1 or 3.

    Example:
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> for name, colour in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
        ...     Path("images", name).mkdir(parents=True)
        ...     for i in range(4):
        ...         Image.new("RGB", (12, 12), colour).save(f"images/{name}/{i}.png")
        >>> dm = ImageFolderDataModule("images", image_size=8, labels_per_class=1, val_fraction=0.0, test_fraction=0.5)
        >>> dm.setup()
        >>> dm.class_names, dm.input_shape, dm.num_unlabeled
        (['blue', 'red'], (3, 8, 8), 4)
    """

    extensions = IMAGE_EXTENSIONS

    def __init__(
        self,
        root: str | Path,
        image_size: int = 32,
        channels: int = 3,
        test_fraction: float = 0.3,
        cache: bool = True,
        **kwargs: object,
    ) -> None:
        super().__init__(root, test_fraction=test_fraction, cache=cache, **kwargs)
        _check_int("image_size", image_size, 1)
        if channels not in PIL_MODES:
            raise ValueError(f"channels must be one of {sorted(PIL_MODES)}, got {channels!r}")
        self.image_size = image_size
        self.channels = channels

    def make_dataset(self, files: list[Path], targets: np.ndarray) -> ImageFileDataset:
        """Decode the image files (see :class:`ImageFileDataset`)."""
        return ImageFileDataset(files, targets, self.image_size, self.channels, self.cache)
