"""The input normalisation of a data set, and the datasets that apply it when read.

A model is trained on images normalised with the training split's per-channel statistics:
``(raw / input_scale − mean) / std``, where *raw* is an image as the data set stores it (pixels
0–255 for image files, Fashion-MNIST and CIFAR-10; 0–16 for scikit-learn's digits; whatever a
user's torch dataset yields) and ``input_scale`` brings it to 0..1. ``Preprocessing`` is that
recipe as data: it travels with checkpoints and exported models, so a deployed model is given
raw images and normalises them itself (``models.preprocessing.InputNormalization``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sized
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor
from torch.utils.data import Dataset

Sample = tuple[Tensor, int]

UINT8_SCALE = 255.0
"""The divisor of 8-bit pixels."""


@dataclass(frozen=True)
class Preprocessing:
    """How raw images become a model's input: ``(raw / input_scale − mean) / std`` per channel.

    Attributes:
        input_scale: the divisor that maps raw pixels to 0..1 (255 for 8-bit images, 16 for the
            digits, 1 for float images already in 0..1).
        mean: per-channel mean of the training split after scaling.
        std: per-channel standard deviation of the training split after scaling.
        in_channels: image channels ``C`` of the raw input.
        input_size: image ``(H, W)`` of the raw input.
    """

    input_scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    in_channels: int
    input_size: tuple[int, int]

    def apply(self, images: Tensor) -> Tensor:
        """Normalise raw ``(…, C, H, W)`` images exactly as training saw them."""
        mean = torch.tensor(self.mean, device=images.device)[:, None, None]
        std = torch.tensor(self.std, device=images.device)[:, None, None]
        return normalise(images, self.input_scale, mean, std)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored with checkpoints and exported models."""
        return {"input_scale": self.input_scale, "mean": list(self.mean), "std": list(self.std),
                "in_channels": self.in_channels, "input_size": list(self.input_size),
                "input": "raw images, float N×C×H×W; pixels as the data set stores them "
                         f"(0..{self.input_scale:g})"}

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> Preprocessing:
        """The inverse of ``to_dict``.

        Raises:
            KeyError, TypeError, ValueError: ``value`` is not a preprocessing record.
        """
        height, width = (int(v) for v in value["input_size"])
        return cls(float(value["input_scale"]), tuple(float(v) for v in value["mean"]),
                   tuple(float(v) for v in value["std"]), int(value["in_channels"]),
                   (height, width))


def size_of(dataset: Dataset[Any]) -> int:
    # torch's Dataset declares no __len__, though every dataset used here has one.
    return len(cast(Sized, dataset))


def normalise(images: Tensor, input_scale: float, mean: Tensor, std: Tensor) -> Tensor:
    """``(images / input_scale − mean) / std``; ``mean`` and ``std`` broadcast over H and W."""
    return (images.float() / input_scale - mean) / std


def channel_stats(images: Tensor, input_scale: float,
                  chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """Per-channel mean and standard deviation of raw ``(N, C, H, W)`` images after scaling."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, len(images), chunk):
        batch = (images[start : start + chunk].float() / input_scale).double()
        total += batch.sum(dim=(0, 2, 3))
        squares += batch.square().sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0.0).sqrt()
    # A constant channel (blank border pixels, say) would divide by zero.
    return mean.float(), torch.where(std > 1e-8, std, torch.ones_like(std)).float()


def preprocessing_of(images: Tensor, input_scale: float) -> Preprocessing:
    """The ``Preprocessing`` of raw training images ``(N, C, H, W)``."""
    mean, std = channel_stats(images, input_scale)
    return Preprocessing(input_scale, tuple(mean.tolist()), tuple(std.tolist()),
                         int(images.shape[1]), (int(images.shape[2]), int(images.shape[3])))


def _tensors(preprocessing: Preprocessing) -> tuple[Tensor, Tensor]:
    mean = torch.tensor(preprocessing.mean)[:, None, None]
    return mean, torch.tensor(preprocessing.std)[:, None, None]


class ImageTensorDataset(Dataset[Sample]):
    """In-memory raw images (``uint8`` or float), normalised when read.

    Keeping ``uint8`` storage makes CIFAR-10 take 150 MB instead of 600 MB.
    """

    def __init__(self, images: Tensor, labels: Tensor, preprocessing: Preprocessing) -> None:
        self.images, self.labels, self.preprocessing = images, labels, preprocessing
        self.mean, self.std = _tensors(preprocessing)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Sample:
        image = normalise(self.images[index], self.preprocessing.input_scale, self.mean, self.std)
        return image, int(self.labels[index])

    def tensors(self) -> tuple[Tensor, Tensor]:
        """All images normalised as one float tensor ``(N, C, H, W)``, and the labels."""
        scale = self.preprocessing.input_scale
        return normalise(self.images, scale, self.mean, self.std), self.labels

    def normaliser(self, device: torch.device) -> Callable[[Tensor], Tensor]:
        """Normalises rows of ``self.images`` moved to ``device`` as every read does; the
        statistics go to the device once, here, not with every batch (each such copy would
        make the host wait for the GPU)."""
        mean, std = self.mean.to(device), self.std.to(device)
        scale = self.preprocessing.input_scale
        return lambda images: normalise(images, scale, mean, std)


class NormalisedDataset(Dataset[Sample]):
    """Wraps a dataset of raw images and normalises each one when read."""

    def __init__(self, base: Dataset[tuple[Tensor, int]], preprocessing: Preprocessing) -> None:
        self.base, self.preprocessing = base, preprocessing
        self.mean, self.std = _tensors(preprocessing)

    def __len__(self) -> int:
        return size_of(self.base)

    def __getitem__(self, index: int) -> Sample:
        image, label = self.base[index]
        return normalise(image, self.preprocessing.input_scale, self.mean, self.std), int(label)
