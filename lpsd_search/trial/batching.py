"""Batches on the device: in-memory data moved there once, file-backed data through a loader.

In-memory splits (``ImageTensorDataset``: digits, Fashion-MNIST, CIFAR-10; ``TensorDataset``)
are copied to the device once per process and batched there by indexing, so a step costs no
host-to-device copy and no Python per image; ``ImageTensorDataset`` keeps its ``uint8`` storage
on the device too and each batch is normalised there. Other datasets (image folders) go through
a ``DataLoader`` with worker processes, pinned memory and non-blocking copies on CUDA.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lpsd_search.data.splits import ImageTensorDataset
from lpsd_search.trial.runtime import available_cores


@dataclass(frozen=True)
class DeviceTensors:
    """A dataset's images and labels resident on one device.

    Attributes:
        images: every image, as stored (``uint8`` or float).
        labels: every label (int64).
        prepare: turns rows of ``images`` into the model's normalised float input.
    """

    images: Tensor
    labels: Tensor
    prepare: Callable[[Tensor], Tensor]

    def __len__(self) -> int:
        return len(self.labels)


# One device copy per (dataset, device) for the life of the dataset: every trial of a worker
# reuses it. Weak keys, so a dataset that is dropped frees its device copy too.
_RESIDENT: weakref.WeakKeyDictionary[Dataset, dict[str, DeviceTensors]] = (
    weakref.WeakKeyDictionary())


def _identity(images: Tensor) -> Tensor:
    return images


def on_device(dataset: Dataset, device: torch.device) -> DeviceTensors | None:
    """``dataset`` resident on ``device``, or None when it is not held in memory.

    The copy is made on the first call for a (dataset, device) and reused after: every epoch
    and every evaluation asks again.
    """
    if isinstance(dataset, ImageTensorDataset):
        images, labels = dataset.images, dataset.labels
    elif isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
        images, labels = dataset.tensors[0], dataset.tensors[1]
    else:
        return None
    copies = _RESIDENT.setdefault(dataset, {})
    key = str(device)
    if key not in copies:
        prepare = (dataset.normaliser(device) if isinstance(dataset, ImageTensorDataset)
                   else _identity)
        copies[key] = DeviceTensors(images.to(device), labels.to(device).long(), prepare)
    return copies[key]


def _loader_workers(device: torch.device) -> int:
    # On the CPU the loader's workers would take cores from the training threads; on CUDA the
    # host is otherwise idle while the GPU computes, so decoding runs beside it.
    return min(4, available_cores() // 2) if device.type == "cuda" else 0


def batches(dataset: Dataset, batch_size: int, generator: torch.Generator,
            shuffle: bool = True, device: torch.device | None = None
            ) -> Iterator[tuple[Tensor, Tensor]]:
    """One pass over ``dataset`` in batches on ``device`` (default: the CPU).

    The order comes from ``generator`` on the CPU whatever the device, so a seed gives the same
    batches on every device.
    """
    device = torch.device("cpu") if device is None else device
    resident = on_device(dataset, device)
    if resident is not None:
        count = len(resident)
        order = torch.randperm(count, generator=generator) if shuffle else torch.arange(count)
        if device.type == "cuda":
            # From pinned memory the copy is asynchronous: the host does not wait for the GPU.
            order = order.pin_memory()
        order = order.to(device, non_blocking=True)
        for start in range(0, count, batch_size):
            index = order[start:start + batch_size]
            yield resident.prepare(resident.images[index]), resident.labels[index]
        return
    cuda = device.type == "cuda"
    workers = _loader_workers(device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                        num_workers=workers, pin_memory=cuda, persistent_workers=False)
    for inputs, labels in loader:
        yield inputs.to(device, non_blocking=cuda), labels.to(device, non_blocking=cuda)


def endless(dataset: Dataset, batch_size: int, generator: torch.Generator,
            device: torch.device | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """Shuffled passes over ``dataset`` without end (a training stream)."""
    while True:
        yield from batches(dataset, batch_size, generator, device=device)
