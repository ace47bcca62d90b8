"""Load an image-classification data set into disjoint train/validation/test splits.

A data set is named by a one-string spec (the CLI's ``--data``)::

    digits                       scikit-learn's 8x8 digits, stratified 60/20/20
    fashion-mnist[:DIR]          IDX files; validation carved from the training file
    cifar10:DIR                  CIFAR-10 python batches; validation carved from training
    imagefolder:DIR              class-per-subfolder images (with or without train/val/test)

Every split is normalised with per-channel mean and standard deviation of the training split.

Example:
    >>> splits = load_data("digits", seed=0)
    >>> len(splits.train), len(splits.val), len(splits.test)
    (1079, 359, 359)
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Callable, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from lpsd_search.data.readers import (
    CIFAR10_CLASSES,
    FASHION_MNIST_CLASSES,
    read_cifar10,
    read_fashion_mnist,
)
from lpsd_search.errors import UserInputError
from lpsd_search.registry import Registry

logger = logging.getLogger(__name__)

DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
VALID_SPECS = "digits, fashion-mnist[:DIR], cifar10:DIR, imagefolder:DIR"
DEFAULT_VAL_SIZE = 5000
# Statistics of a lazily loaded image folder come from at most this many training images:
# enough for a mean/std good to three digits without decoding a large folder twice.
_STATS_SAMPLE = 5000

Sample = tuple[Tensor, int]


@dataclass(frozen=True)
class DataSplits:
    """Three disjoint splits of one data set, normalised with the training statistics.

    Attributes:
        spec: canonical spec, e.g. ``"digits"`` or ``"cifar10:/data/cifar"``.
        train: dataset yielding ``(float tensor CxHxW, int label)``.
        val: validation split (for search decisions and early stopping).
        test: held-out split (for final reporting only).
        in_channels: image channels ``C``.
        num_classes: number of classes; labels are ``0..num_classes-1``.
        input_size: image ``(H, W)``.
    """

    spec: str
    train: Dataset[Sample]
    val: Dataset[Sample]
    test: Dataset[Sample]
    in_channels: int
    num_classes: int
    input_size: tuple[int, int]


def _size(dataset: Dataset[Sample]) -> int:
    # torch's Dataset declares no __len__, though every dataset built here has one.
    return len(cast(Sized, dataset))


def _to_unit_range(images: Tensor) -> Tensor:
    return images.float() / 255.0 if images.dtype == torch.uint8 else images.float()


def _normalise(images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    return (_to_unit_range(images) - mean[:, None, None]) / std[:, None, None]


class ImageTensorDataset(Dataset[Sample]):
    """In-memory images (``uint8`` in 0..255 or float in 0..1), normalised when read.

    Keeping ``uint8`` storage makes CIFAR-10 take 150 MB instead of 600 MB.
    """

    def __init__(self, images: Tensor, labels: Tensor, mean: Tensor, std: Tensor) -> None:
        self.images, self.labels, self.mean, self.std = images, labels, mean, std

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Sample:
        return _normalise(self.images[index], self.mean, self.std), int(self.labels[index])

    def tensors(self) -> tuple[Tensor, Tensor]:
        """All images normalised as one float tensor ``(N, C, H, W)``, and the labels."""
        return _normalise(self.images, self.mean, self.std), self.labels

    def normaliser(self, device: torch.device) -> Callable[[Tensor], Tensor]:
        """Normalises rows of ``self.images`` moved to ``device`` as every read does; the
        statistics go to the device once, here, not with every batch (each such copy would
        make the host wait for the GPU)."""
        mean, std = self.mean.to(device), self.std.to(device)
        return lambda images: _normalise(images, mean, std)


class NormalisedDataset(Dataset[Sample]):
    """Wraps a dataset of raw ``uint8`` images and normalises each one when read."""

    def __init__(self, base: Dataset[tuple[Tensor, int]], mean: Tensor, std: Tensor) -> None:
        self.base, self.mean, self.std = base, mean, std

    def __len__(self) -> int:
        return _size(self.base)

    def __getitem__(self, index: int) -> Sample:
        image, label = self.base[index]
        return _normalise(image, self.mean, self.std), int(label)


def stratified_split(labels: np.ndarray, counts: Sequence[int], seed: int) -> list[np.ndarray]:
    """Split ``range(len(labels))`` into disjoint parts of exactly ``counts`` samples each.

    Each class is shuffled and spread evenly over a global order before cutting, so every part
    keeps the class proportions even when a class has fewer members than there are parts.
    """
    if sum(counts) != len(labels):
        raise ValueError(f"split sizes {list(counts)} do not add up to {len(labels)}")
    rng = np.random.default_rng(seed)
    position = np.empty(len(labels), dtype=np.float64)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        # Rank r of n sits at (r + u) / n: evenly spread, ties between classes broken at random.
        position[members] = (np.arange(len(members)) + rng.random(len(members))) / len(members)
    order = np.argsort(position, kind="stable")
    bounds = np.cumsum([0, *counts])
    return [np.sort(order[start:stop]) for start, stop in itertools.pairwise(bounds)]


def _fraction_counts(total: int, fractions: Sequence[float]) -> list[int]:
    """Sizes for the fractions after the first; the first split takes the remainder."""
    rest = [round(total * fraction) for fraction in fractions[1:]]
    return [total - sum(rest), *rest]


def channel_stats(images: Tensor, chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """Per-channel mean and standard deviation of ``(N, C, H, W)`` images scaled to 0..1."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, len(images), chunk):
        batch = _to_unit_range(images[start : start + chunk]).double()
        total += batch.sum(dim=(0, 2, 3))
        squares += batch.square().sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0.0).sqrt()
    # A constant channel (blank border pixels, say) would divide by zero.
    return mean.float(), torch.where(std > 1e-8, std, torch.ones_like(std)).float()


def _check_non_empty(spec: str, sizes: dict[str, int]) -> None:
    for name, size in sizes.items():
        if size == 0:
            raise UserInputError(
                f"the {name} split of data {spec!r} is empty (split sizes: {sizes}); "
                "add images or use a larger data set"
            )


def _check_classes(spec: str, labels: np.ndarray) -> None:
    """Refuse data with fewer than two classes: every model would score 100 % on it, and the
    search would report a meaningless front."""
    present = len(np.unique(labels))
    if present < 2:
        raise UserInputError(
            f"data {spec!r} holds images of {present} class{'' if present == 1 else 'es'}; "
            "valid: two classes or more (for imagefolder, one subfolder of images per class)"
        )


def _tensor_splits(
    spec: str, arrays: tuple[np.ndarray, ...], num_classes: int, seed: int, val_size: int
) -> DataSplits:
    """Carve validation out of training, normalise, and wrap as in-memory datasets."""
    _check_classes(spec, arrays[1])
    train_x, train_y, test_x, test_y = (torch.from_numpy(array) for array in arrays)
    n_val = min(val_size, len(train_y) // 10)
    train_idx, val_idx = stratified_split(train_y.numpy(), [len(train_y) - n_val, n_val], seed)
    parts = {
        "train": (train_x[train_idx], train_y[train_idx]),
        "val": (train_x[val_idx], train_y[val_idx]),
        "test": (test_x, test_y),
    }
    _check_non_empty(spec, {name: len(labels) for name, (_, labels) in parts.items()})
    mean, std = channel_stats(parts["train"][0])
    datasets = {name: ImageTensorDataset(x, y, mean, std) for name, (x, y) in parts.items()}
    return DataSplits(
        spec=spec,
        **datasets,
        in_channels=train_x.shape[1],
        num_classes=num_classes,
        input_size=(train_x.shape[2], train_x.shape[3]),
    )


def _existing_dir(name: str, directory: str | None) -> Path:
    if not directory:
        raise UserInputError(f"data {name!r} needs a directory: {name}:DIR")
    path = Path(os.path.abspath(os.path.expanduser(directory)))
    if not path.is_dir():
        raise UserInputError(f"{name} directory '{directory}' does not exist or is not a folder")
    return path


# (directory or None, seed, validation size, image size or None) -> splits
DataLoaderFn = Callable[[str | None, int, int, tuple[int, int] | None], DataSplits]
DATA_LOADERS: Registry[DataLoaderFn] = Registry("data set")


@DATA_LOADERS.register("digits")
def _load_digits(
    directory: str | None, seed: int, val_size: int, image_size: tuple[int, int] | None
) -> DataSplits:
    if directory is not None:
        raise UserInputError(f"data 'digits' takes no directory (got 'digits:{directory}')")
    # scikit-learn (and the pandas it imports when installed) only for this data set.
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images / 16.0).float()[:, None]
    labels = torch.from_numpy(digits.target).long()
    counts = _fraction_counts(len(labels), [0.6, 0.2, 0.2])
    train_idx, val_idx, test_idx = stratified_split(labels.numpy(), counts, seed)
    mean, std = channel_stats(images[train_idx])
    train, val, test = (
        ImageTensorDataset(images[i], labels[i], mean, std) for i in (train_idx, val_idx, test_idx)
    )
    return DataSplits("digits", train, val, test, in_channels=1, num_classes=10, input_size=(8, 8))


@DATA_LOADERS.register("fashion-mnist")
def _load_fashion_mnist(
    directory: str | None, seed: int, val_size: int, image_size: tuple[int, int] | None
) -> DataSplits:
    path = _existing_dir("fashion-mnist", directory or DEFAULT_FASHION_MNIST_DIR)
    arrays = read_fashion_mnist(path)
    return _tensor_splits(f"fashion-mnist:{path}", arrays, FASHION_MNIST_CLASSES, seed, val_size)


@DATA_LOADERS.register("cifar10")
def _load_cifar10(
    directory: str | None, seed: int, val_size: int, image_size: tuple[int, int] | None
) -> DataSplits:
    path = _existing_dir("cifar10", directory)
    return _tensor_splits(f"cifar10:{path}", read_cifar10(path), CIFAR10_CLASSES, seed, val_size)


@DATA_LOADERS.register("imagefolder")
def _load_image_folder(
    directory: str | None, seed: int, val_size: int, image_size: tuple[int, int] | None
) -> DataSplits:
    path = _existing_dir("imagefolder", directory)
    # torchvision and Pillow only for image folders.
    from lpsd_search.data.images import read_image_folders

    spec = f"imagefolder:{path}"
    present = [name for name in ("train", "val", "test") if (path / name).is_dir()]
    if "train" not in present:
        present = [""]  # one class-per-subfolder tree, split 70/15/15 below
    folders, size, channels = read_image_folders(path, tuple(present), image_size)
    train_folder = folders.pop(present[0])
    missing = [name for name in ("val", "test") if name not in folders]
    targets = np.asarray(train_folder.targets)
    _check_classes(spec, targets)
    counts = _fraction_counts(len(targets), [0.7] + [0.15] * len(missing))
    pieces = stratified_split(targets, counts, seed)
    raw: dict[str, Dataset[tuple[Tensor, int]]] = {
        name: Subset(train_folder, idx.tolist())
        for name, idx in zip(["train", *missing], pieces, strict=True)
    }
    raw.update(folders)
    _check_non_empty(spec, {name: _size(raw[name]) for name in ("train", "val", "test")})
    stats_idx = np.random.default_rng(seed).permutation(len(pieces[0]))[:_STATS_SAMPLE]
    sample = torch.stack([raw["train"][int(i)][0] for i in np.sort(stats_idx)])
    mean, std = channel_stats(sample)
    wrapped = {name: NormalisedDataset(raw[name], mean, std) for name in ("train", "val", "test")}
    classes = len(train_folder.classes)
    return DataSplits(spec, **wrapped, in_channels=channels, num_classes=classes, input_size=size)


def load_data(
    spec: str,
    *,
    seed: int = 0,
    image_size: tuple[int, int] | None = None,
    val_size: int = DEFAULT_VAL_SIZE,
) -> DataSplits:
    """Load the data set named by ``spec`` as normalised, disjoint train/val/test splits.

    Args:
        spec: one of ``digits``, ``fashion-mnist[:DIR]``, ``cifar10:DIR``, ``imagefolder:DIR``.
        seed: seeds the stratified splits; the same seed gives the same splits.
        image_size: ``(H, W)`` for ``imagefolder`` images (default: the first image's size);
            the other data sets have fixed sizes and reject it.
        val_size: validation images carved from the training file of ``fashion-mnist`` and
            ``cifar10`` (at most a tenth of it).

    Returns:
        The splits with their channel count, class count and image size.

    Raises:
        UserInputError: unknown spec, missing directory or file, malformed file, empty split.
    """
    name, _, directory = spec.strip().partition(":")
    if name not in DATA_LOADERS:
        raise UserInputError(f"unknown data spec {spec!r}; valid: {VALID_SPECS}")
    if image_size is not None and name != "imagefolder":
        raise UserInputError(f"image_size applies to imagefolder data only, not {name!r}")
    splits = DATA_LOADERS.get(name)(directory or None, seed, val_size, image_size)
    logger.info(
        "data %s: train %d, val %d, test %d images of %dx%dx%d, %d classes",
        splits.spec,
        *(_size(part) for part in (splits.train, splits.val, splits.test)),
        splits.in_channels,
        *splits.input_size,
        splits.num_classes,
    )
    return splits
