"""Reader for class-per-subfolder image trees (``imagefolder:DIR``).

Kept apart from :mod:`lpsd_search.data.readers` because it needs torchvision and Pillow: the
splits module imports it only when an image folder is loaded, so ``import lpsd_search`` and the
other data sets never pay for them.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from PIL import Image
from torchvision import transforms
from torchvision.datasets import ImageFolder

from lpsd_search.errors import UserInputError


def _load_image(path: str, mode: str) -> Image.Image:
    with Image.open(path) as image:
        return image.convert(mode)


class _SharedClassImageFolder(ImageFolder):
    """An ImageFolder whose class list is given, so every split maps names to the same index."""

    def __init__(self, root: Path, classes: list[str], **kwargs: Any) -> None:
        self._shared_classes = classes
        super().__init__(str(root), allow_empty=True, **kwargs)

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        return list(self._shared_classes), {name: i for i, name in enumerate(self._shared_classes)}


def _class_dirs(root: Path) -> list[str]:
    return sorted(entry.name for entry in root.iterdir() if entry.is_dir())


def read_image_folders(
    directory: Path, split_names: tuple[str, ...], image_size: tuple[int, int] | None
) -> tuple[dict[str, ImageFolder], tuple[int, int], int]:
    """Open class-per-subfolder trees as datasets yielding ``(uint8 CxHxW tensor, class index)``.

    Args:
        directory: the data set root.
        split_names: subfolders to open (``("train", "val")``, say), or ``("",)`` for the
            root itself.
        image_size: ``(H, W)`` every image is resized to; ``None`` takes the first image's.

    Returns:
        The datasets by split name, the common ``(H, W)`` and the number of channels (1 when
        the first image is greyscale, else 3, and every image is converted to match).
    """
    first_root = directory / split_names[0]
    classes = _class_dirs(first_root)
    if not classes:
        raise UserInputError(f"image folder '{first_root}' has no class subfolders")
    for name in split_names[1:]:
        extra = sorted(set(_class_dirs(directory / name)) - set(classes))
        if extra:
            raise UserInputError(
                f"class folder '{extra[0]}' in '{directory / name}' is not in '{first_root}'"
            )
    folders = {name: _SharedClassImageFolder(directory / name, classes) for name in split_names}
    first = folders[split_names[0]]
    if len(first) == 0:
        raise UserInputError(f"image folder '{first_root}' holds no readable image files")
    try:
        with Image.open(first.samples[0][0]) as image:
            width, height = image.size
            mode = "L" if image.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB"
    except OSError as exc:
        raise UserInputError(f"cannot read image '{first.samples[0][0]}': {exc}") from None
    size = image_size or (height, width)
    transform = transforms.Compose([transforms.Resize(size), transforms.PILToTensor()])
    for folder in folders.values():
        folder.loader = functools.partial(_load_image, mode=mode)
        folder.transform = transform
    return dict(folders), size, 1 if mode == "L" else 3
