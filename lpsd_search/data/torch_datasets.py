"""Torch datasets given from Python (``lpsd_search.search(model, (train, test), …)``) as splits.

A user's datasets yield ``(image, label)`` with the image a ``C×H×W`` tensor (``uint8`` pixels
0–255, or floats, taken as they come) and the label an integer class ``0..K−1``. They become a
``DataSplits`` like any built-in data set: normalised with the training split's statistics (the
preprocessing exports carry), fingerprinted, and named by a ``python:`` spec. Given one dataset
it is split 70/15/15, given two (train, test) validation is carved from train (15 %), given
three (or a mapping with ``train``, ``val``, ``test``) they are used as they are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset, TensorDataset

from lpsd_search.data.normalise import (
    UINT8_SCALE,
    ImageTensorDataset,
    NormalisedDataset,
    preprocessing_of,
    size_of,
)
from lpsd_search.data.objects import PYTHON_PREFIX
from lpsd_search.data.splits import (
    SPLIT_SEED,
    STATS_SAMPLE,
    DataSplits,
    check_classes,
    check_non_empty,
    fingerprint,
    fraction_counts,
    stratified_split,
)
from lpsd_search.errors import UserInputError

SPLITS = ("train", "val", "test")
DIGESTED_IMAGES = 256
"""Images per split that enter the fingerprint of a lazily read dataset (with every label)."""


def is_datasets(value: object) -> bool:
    """Whether ``value`` is data given as torch datasets rather than a spec string."""
    if isinstance(value, Dataset):
        return True
    if isinstance(value, Mapping):
        return all(isinstance(item, Dataset) for item in value.values())
    return (isinstance(value, Sequence) and not isinstance(value, str)
            and all(isinstance(item, Dataset) for item in value))


def _named(data: Dataset[Any] | Sequence[Dataset[Any]] | Mapping[str, Dataset[Any]]
           ) -> dict[str, Dataset[Any]]:
    """The given datasets by split name (a missing split is carved out of train later)."""
    if isinstance(data, Dataset):
        return {"train": data}
    if isinstance(data, Mapping):
        unknown = sorted(set(data) - set(SPLITS))
        if unknown or "train" not in data:
            raise UserInputError(f"data keys {sorted(data)} are invalid; valid: train and "
                                 "optionally val and test")
        return dict(data)
    if not 1 <= len(data) <= 3:
        raise UserInputError(f"data holds {len(data)} datasets; valid: one (split 70/15/15), "
                             "two (train, test) or three (train, val, test)")
    names = {1: ("train",), 2: ("train", "test"), 3: SPLITS}[len(data)]
    return dict(zip(names, data, strict=True))


def _labels(name: str, dataset: Dataset[Any]) -> np.ndarray:
    """Every label of ``dataset``, from ``tensors``/``targets`` when it has them."""
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
        labels = dataset.tensors[1]
    elif hasattr(dataset, "targets") and len(dataset.targets) == size_of(dataset):
        labels = torch.as_tensor(dataset.targets)
    else:
        labels = torch.as_tensor([int(dataset[i][1]) for i in range(size_of(dataset))])
    if labels.dim() != 1 or labels.is_floating_point() or (len(labels) and labels.min() < 0):
        raise UserInputError(f"the {name} dataset's labels are not class numbers 0..K-1 "
                             f"(shape {tuple(labels.shape)}, {labels.dtype}); valid: int labels")
    return labels.long().numpy()


def _image(name: str, dataset: Dataset[Any]) -> Tensor:
    """The first image, checked to be a ``C×H×W`` tensor."""
    sample = dataset[0]
    image = sample[0] if isinstance(sample, (tuple, list)) and len(sample) == 2 else None
    if not isinstance(image, Tensor) or image.dim() != 3:
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise UserInputError(f"the {name} dataset yields {shape}, not (C×H×W tensor, label); "
                             "valid: a dataset of (image tensor, int label) pairs")
    return image


def _subset(dataset: Dataset[Any], indices: np.ndarray) -> Dataset[Any]:
    """The samples ``indices`` of ``dataset``; a ``TensorDataset`` stays one (it is then
    batched on the device, see ``trial.batching``)."""
    if isinstance(dataset, TensorDataset):
        return TensorDataset(*(tensor[torch.as_tensor(indices)] for tensor in dataset.tensors))
    return Subset(dataset, indices.tolist())


def _sample(dataset: Dataset[Any], indices: np.ndarray) -> Tensor:
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[0][torch.as_tensor(indices)]
    return torch.stack([dataset[int(i)][0] for i in indices])


def splits_from_datasets(data: Dataset[Any] | Sequence[Dataset[Any]]
                         | Mapping[str, Dataset[Any]]) -> DataSplits:
    """Normalised, fingerprinted splits of a user's torch datasets, named ``python:…``.

    Raises:
        UserInputError: not one to three datasets, samples that are not ``(C×H×W tensor,
            int label)``, fewer than two classes, or an empty split.
    """
    given = _named(data)
    kind = type(given["train"]).__name__
    labels = {name: _labels(name, dataset) for name, dataset in given.items()}
    check_classes("python datasets", labels["train"])
    missing = [name for name in ("val", "test") if name not in given]
    pieces: list[np.ndarray] = []
    if missing:
        whole, base = labels["train"], given["train"]
        fractions = [0.85, 0.15] if len(missing) == 1 else [0.7, 0.15, 0.15]
        pieces = stratified_split(whole, fraction_counts(len(whole), fractions))
        for name, indices in zip(["train", *missing], pieces, strict=True):
            given[name], labels[name] = _subset(base, indices), whole[indices]
    check_non_empty("python datasets", {name: size_of(given[name]) for name in SPLITS})
    first = _image("train", given["train"])
    scale = UINT8_SCALE if first.dtype == torch.uint8 else 1.0
    rng = np.random.default_rng(SPLIT_SEED)
    stats = np.sort(rng.permutation(size_of(given["train"]))[:STATS_SAMPLE])
    preprocessing = preprocessing_of(_sample(given["train"], stats), scale)
    parts: dict[str, Any] = {}
    digests: list[Any] = []
    for name in SPLITS:
        dataset = given[name]
        if isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
            images = dataset.tensors[0]
            parts[name] = ImageTensorDataset(images, dataset.tensors[1].long(), preprocessing)
            digests += [name, images]
        else:
            parts[name] = NormalisedDataset(dataset, preprocessing)
            count = size_of(dataset)
            shown = np.unique(np.linspace(0, count - 1, min(count, DIGESTED_IMAGES)).astype(int))
            digests += [name, type(dataset).__name__, count, _sample(dataset, shown)]
        digests.append(labels[name])
    classes = int(max(int(v.max()) for v in labels.values() if len(v))) + 1
    digest = fingerprint("torch-datasets", *digests, *pieces, preprocessing)
    return DataSplits(f"{PYTHON_PREFIX}{kind}@{digest}", **parts,
                      in_channels=int(first.shape[0]), num_classes=classes,
                      input_size=(int(first.shape[1]), int(first.shape[2])),
                      preprocessing=preprocessing, fingerprint=digest)
