"""Load an image-classification data set into disjoint train/validation/test splits.

A data set is named by a one-string spec (the CLI's ``--data``)::

    digits                       scikit-learn's 8x8 digits, stratified 60/20/20
    fashion-mnist[:DIR]          IDX files; validation carved from the training file
    cifar10:DIR                  CIFAR-10 python batches; validation carved from training
    imagefolder:DIR              class-per-subfolder images (with or without train/val/test)

Every split is normalised with per-channel mean and standard deviation of the training split
(``normalise.Preprocessing``). The split itself is fixed by the data (``SPLIT_SEED``), never by a
run's seed, and ``DataSplits.fingerprint`` names it: checkpoints and cached baselines record it.

Example:
    >>> splits = load_data("digits")
    >>> len(splits.train), len(splits.val), len(splits.test)
    (1079, 359, 359)
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from lpsd_search.data.normalise import (
    UINT8_SCALE,
    ImageTensorDataset,
    NormalisedDataset,
    Preprocessing,
    Sample,
    preprocessing_of,
    size_of,
)
from lpsd_search.data.objects import PYTHON_PREFIX, given_splits
from lpsd_search.data.readers import (
    CIFAR10_CLASSES,
    FASHION_MNIST_CLASSES,
    read_cifar10,
    read_fashion_mnist,
)
from lpsd_search.errors import UserInputError
from lpsd_search.registry import Registry

__all__ = ["DataSplits", "ImageTensorDataset", "NormalisedDataset", "Preprocessing", "load_data",
           "stratified_split"]

logger = logging.getLogger(__name__)

DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
VALID_SPECS = "digits, fashion-mnist[:DIR], cifar10:DIR, imagefolder:DIR"
DEFAULT_VAL_SIZE = 5000
# Statistics of a lazily loaded image folder come from at most this many training images:
# enough for a mean/std good to three digits without decoding a large folder twice.
STATS_SAMPLE = 5000

SPLIT_SEED = 0
"""Seeds every split. The split is a property of the data, not of a run: a search's ``--seed``
must not move images between training and validation (a checkpoint trained on one split would
then be validated on its own training images). 0 keeps the splits of earlier versions' seed 0."""
SPLIT_VERSION = 1
"""Bump when a split or normalisation changes: it enters every data fingerprint."""


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
        preprocessing: how raw images become the model's input (what exports carry).
        fingerprint: digest of the images, labels and split membership (and the
            normalisation): equal fingerprints mean the same training, validation and test
            images, wherever the files live.
    """

    spec: str
    train: Dataset[Sample]
    val: Dataset[Sample]
    test: Dataset[Sample]
    in_channels: int
    num_classes: int
    input_size: tuple[int, int]
    preprocessing: Preprocessing
    fingerprint: str

    @property
    def sizes(self) -> dict[str, int]:
        """Images per split."""
        return {name: size_of(getattr(self, name)) for name in ("train", "val", "test")}


def fingerprint(*parts: Any) -> str:
    """A short digest of arrays, tensors, strings and numbers, in order."""
    digest = hashlib.sha256(f"split-version {SPLIT_VERSION}".encode())
    for part in parts:
        if isinstance(part, Tensor):
            part = part.detach().cpu().contiguous().numpy()
        if isinstance(part, np.ndarray):
            digest.update(f"{part.dtype}{part.shape}".encode())
            digest.update(np.ascontiguousarray(part).tobytes())
        else:
            digest.update(repr(part).encode())
    return digest.hexdigest()[:16]


def stratified_split(labels: np.ndarray, counts: Sequence[int],
                     seed: int = SPLIT_SEED) -> list[np.ndarray]:
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


def fraction_counts(total: int, fractions: Sequence[float]) -> list[int]:
    """Sizes for the fractions after the first; the first split takes the remainder."""
    rest = [round(total * fraction) for fraction in fractions[1:]]
    return [total - sum(rest), *rest]


def check_non_empty(spec: str, sizes: dict[str, int]) -> None:
    for name, size in sizes.items():
        if size == 0:
            raise UserInputError(
                f"the {name} split of data {spec!r} is empty (split sizes: {sizes}); "
                "add images or use a larger data set"
            )


def check_classes(spec: str, labels: np.ndarray) -> None:
    """Refuse data with fewer than two classes: every model would score 100 % on it, and the
    search would report a meaningless front."""
    present = len(np.unique(labels))
    if present < 2:
        raise UserInputError(
            f"data {spec!r} holds images of {present} class{'' if present == 1 else 'es'}; "
            "valid: two classes or more (for imagefolder, one subfolder of images per class)"
        )


def _tensor_splits(
    spec: str, arrays: tuple[np.ndarray, ...], num_classes: int, val_size: int
) -> DataSplits:
    """Carve validation out of training, normalise, and wrap as in-memory datasets."""
    check_classes(spec, arrays[1])
    train_x, train_y, test_x, test_y = (torch.from_numpy(array) for array in arrays)
    n_val = min(val_size, len(train_y) // 10)
    train_idx, val_idx = stratified_split(train_y.numpy(), [len(train_y) - n_val, n_val])
    parts = {
        "train": (train_x[train_idx], train_y[train_idx]),
        "val": (train_x[val_idx], train_y[val_idx]),
        "test": (test_x, test_y),
    }
    check_non_empty(spec, {name: len(labels) for name, (_, labels) in parts.items()})
    preprocessing = preprocessing_of(parts["train"][0], UINT8_SCALE)
    datasets = {name: ImageTensorDataset(x, y, preprocessing) for name, (x, y) in parts.items()}
    return DataSplits(
        spec=spec,
        **datasets,
        in_channels=train_x.shape[1],
        num_classes=num_classes,
        input_size=(train_x.shape[2], train_x.shape[3]),
        preprocessing=preprocessing,
        fingerprint=fingerprint(*arrays, train_idx, val_idx, preprocessing),
    )


def _existing_dir(name: str, directory: str | None) -> Path:
    if not directory:
        raise UserInputError(f"data {name!r} needs a directory: {name}:DIR")
    path = Path(os.path.abspath(os.path.expanduser(directory)))
    if not path.is_dir():
        raise UserInputError(f"{name} directory '{directory}' does not exist or is not a folder")
    return path


# (directory or None, validation size, image size or None) -> splits
DataLoaderFn = Callable[[str | None, int, tuple[int, int] | None], DataSplits]
DATA_LOADERS: Registry[DataLoaderFn] = Registry("data set")


@DATA_LOADERS.register("digits")
def _load_digits(
    directory: str | None, val_size: int, image_size: tuple[int, int] | None
) -> DataSplits:
    if directory is not None:
        raise UserInputError(f"data 'digits' takes no directory (got 'digits:{directory}')")
    # scikit-learn (and the pandas it imports when installed) only for this data set.
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images).float()[:, None]  # raw: 0..16
    labels = torch.from_numpy(digits.target).long()
    counts = fraction_counts(len(labels), [0.6, 0.2, 0.2])
    train_idx, val_idx, test_idx = stratified_split(labels.numpy(), counts)
    preprocessing = preprocessing_of(images[train_idx], 16.0)
    train, val, test = (
        ImageTensorDataset(images[i], labels[i], preprocessing)
        for i in (train_idx, val_idx, test_idx)
    )
    return DataSplits("digits", train, val, test, in_channels=1, num_classes=10,
                      input_size=(8, 8), preprocessing=preprocessing,
                      fingerprint=fingerprint(images, labels, train_idx, val_idx, test_idx,
                                              preprocessing))


@DATA_LOADERS.register("fashion-mnist")
def _load_fashion_mnist(
    directory: str | None, val_size: int, image_size: tuple[int, int] | None
) -> DataSplits:
    path = _existing_dir("fashion-mnist", directory or DEFAULT_FASHION_MNIST_DIR)
    arrays = read_fashion_mnist(path)
    return _tensor_splits(f"fashion-mnist:{path}", arrays, FASHION_MNIST_CLASSES, val_size)


@DATA_LOADERS.register("cifar10")
def _load_cifar10(
    directory: str | None, val_size: int, image_size: tuple[int, int] | None
) -> DataSplits:
    path = _existing_dir("cifar10", directory)
    return _tensor_splits(f"cifar10:{path}", read_cifar10(path), CIFAR10_CLASSES, val_size)


def _files(root: Path, samples: Iterable[tuple[str, int]]) -> list[tuple[str, int, int]]:
    """(path relative to ``root``, label, size in bytes) of image files: what an image
    folder's fingerprint is made of (decoding every image only to digest it would double the
    time it takes to open a large folder)."""
    return [(os.path.relpath(path, root), label, os.path.getsize(path))
            for path, label in samples]


@DATA_LOADERS.register("imagefolder")
def _load_image_folder(
    directory: str | None, val_size: int, image_size: tuple[int, int] | None
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
    check_classes(spec, targets)
    counts = fraction_counts(len(targets), [0.7] + [0.15] * len(missing))
    pieces = stratified_split(targets, counts)
    raw: dict[str, Dataset[tuple[Tensor, int]]] = {
        name: Subset(train_folder, idx.tolist())
        for name, idx in zip(["train", *missing], pieces, strict=True)
    }
    raw.update(folders)
    check_non_empty(spec, {name: size_of(raw[name]) for name in ("train", "val", "test")})
    stats_idx = np.random.default_rng(SPLIT_SEED).permutation(len(pieces[0]))[:STATS_SAMPLE]
    sample = torch.stack([raw["train"][int(i)][0] for i in np.sort(stats_idx)])
    preprocessing = preprocessing_of(sample, UINT8_SCALE)
    wrapped = {name: NormalisedDataset(raw[name], preprocessing)
               for name in ("train", "val", "test")}
    classes = len(train_folder.classes)
    files = [_files(path, train_folder.samples), *pieces,
             *(_files(path, folders[name].samples) for name in sorted(folders))]
    return DataSplits(spec, **wrapped, in_channels=channels, num_classes=classes,
                      input_size=size, preprocessing=preprocessing,
                      fingerprint=fingerprint(present, size, *files, preprocessing))


def load_data(
    spec: str,
    *,
    image_size: tuple[int, int] | None = None,
    val_size: int = DEFAULT_VAL_SIZE,
) -> DataSplits:
    """Load the data set named by ``spec`` as normalised, disjoint train/val/test splits.

    The split is a fixed function of the data (``SPLIT_SEED``), whatever seed a run uses.

    Args:
        spec: one of ``digits``, ``fashion-mnist[:DIR]``, ``cifar10:DIR``, ``imagefolder:DIR``,
            or the ``python:`` spec of torch datasets given to ``lpsd_search.search``.
        image_size: ``(H, W)`` for ``imagefolder`` images (default: the first image's size);
            the other data sets have fixed sizes and reject it.
        val_size: validation images carved from the training file of ``fashion-mnist`` and
            ``cifar10`` (at most a tenth of it).

    Returns:
        The splits with their channel count, class count, image size, preprocessing and
        fingerprint.

    Raises:
        UserInputError: unknown spec, missing directory or file, malformed file, empty split.
    """
    name, _, directory = spec.strip().partition(":")
    splits = given_splits(spec)
    if splits is None:
        if spec.strip().startswith(PYTHON_PREFIX):
            raise UserInputError(f"data {spec!r} were torch datasets given to lpsd_search in "
                                 "another call; valid: pass the datasets themselves again")
        if name not in DATA_LOADERS:
            raise UserInputError(f"unknown data spec {spec!r}; valid: {VALID_SPECS}")
        if image_size is not None and name != "imagefolder":
            raise UserInputError(f"image_size applies to imagefolder data only, not {name!r}")
        splits = DATA_LOADERS.get(name)(directory or None, val_size, image_size)
    logger.info(
        "data %s: train %d, val %d, test %d images of %dx%dx%d, %d classes (split %s)",
        splits.spec,
        *splits.sizes.values(),
        splits.in_channels,
        *splits.input_size,
        splits.num_classes,
        splits.fingerprint,
    )
    return splits
