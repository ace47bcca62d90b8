"""Readers for the array data set formats: IDX (MNIST family) and CIFAR-10 batches.

Image folders are read by :mod:`lpsd_search.data.images` (it needs torchvision and Pillow, which
are imported only when such a data set is loaded). These functions only read and validate files;
splitting and normalisation live in :mod:`lpsd_search.data.splits`. Every problem with a user's
files is reported as a one-line :class:`~lpsd_search.errors.UserInputError` naming the file and
what was expected.
"""

from __future__ import annotations

import gzip
import math
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np

from lpsd_search.errors import UserInputError

# IDX type codes (http://yann.lecun.com/exdb/mnist/); multi-byte values are big-endian.
_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"
FASHION_MNIST_CLASSES = 10
CIFAR10_CLASSES = 10
_CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST_BATCH = "test_batch"
# CIFAR-10 batches are pickles; only the globals a numpy array needs may be resolved, so a
# hostile file cannot run code through the unpickler.
_CIFAR_PICKLE_GLOBALS = frozenset(
    {
        ("_codecs", "encode"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
    }
)

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (gzip-compressed or not, detected from its first bytes).

    Raises:
        UserInputError: the file is unreadable, truncated or its header is invalid.
    """
    try:
        raw = path.read_bytes()
        if raw[:2] == _GZIP_MAGIC:
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as exc:
        raise UserInputError(f"cannot read IDX file '{path}': {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise UserInputError(
            f"malformed IDX file '{path}': bad magic number {raw[:4].hex() or '(empty)'}; "
            "expected 0000 + type code + number of dimensions"
        )
    ndim = raw[3]
    header_size = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header_size:
        raise UserInputError(
            f"malformed IDX file '{path}': header for {ndim} dimensions truncated"
        )
    dims = struct.unpack(f">{ndim}I", raw[4:header_size])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = math.prod(dims) * dtype.itemsize
    if len(raw) - header_size != expected:
        raise UserInputError(
            f"malformed IDX file '{path}': header says {dims} ({expected} bytes) "
            f"but {len(raw) - header_size} data bytes follow"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header_size).reshape(dims).copy()


def _find_idx_file(directory: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    raise UserInputError(f"fashion-mnist directory '{directory}' lacks '{stem}.gz' (or '{stem}')")


def _read_idx_pair(directory: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    images_path = _find_idx_file(directory, f"{prefix}-images-idx3-ubyte")
    labels_path = _find_idx_file(directory, f"{prefix}-labels-idx1-ubyte")
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise UserInputError(
            f"malformed IDX file '{images_path}': expected 3-D uint8 images, "
            f"got {images.ndim}-D {images.dtype}"
        )
    if labels.ndim != 1:
        raise UserInputError(
            f"malformed IDX file '{labels_path}': expected 1-D labels, got {labels.ndim}-D"
        )
    if len(images) != len(labels):
        raise UserInputError(
            f"'{images_path}' holds {len(images)} images but '{labels_path}' "
            f"holds {len(labels)} labels"
        )
    _check_labels(labels_path, labels, FASHION_MNIST_CLASSES)
    return images, labels.astype(np.int64)


def read_fashion_mnist(directory: Path) -> Arrays:
    """Read Fashion-MNIST (or MNIST) IDX files: ``(train_x, train_y, test_x, test_y)``.

    Images come back as ``uint8`` arrays of shape ``(N, 1, H, W)``, labels as ``int64``.
    """
    train_x, train_y = _read_idx_pair(directory, "train")
    test_x, test_y = _read_idx_pair(directory, "t10k")
    if train_x.shape[1:] != test_x.shape[1:]:
        raise UserInputError(
            f"fashion-mnist train images are {train_x.shape[1:]} but test images are "
            f"{test_x.shape[1:]} in '{directory}'"
        )
    return train_x[:, None], train_y, test_x[:, None], test_y


def _check_labels(path: Path, labels: np.ndarray, num_classes: int) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise UserInputError(
            f"malformed labels in '{path}': values span {labels.min()}..{labels.max()}, "
            f"valid: 0..{num_classes - 1}"
        )


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _CIFAR_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise UserInputError(f"cifar10 directory '{path.parent}' lacks the file '{path.name}'")
    try:
        with path.open("rb") as file:
            batch = _NumpyOnlyUnpickler(file, encoding="bytes").load()
    except Exception as exc:  # any unpickling failure means a bad file
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserInputError(f"malformed CIFAR-10 batch '{path}': {reason}") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise UserInputError(
            f"malformed CIFAR-10 batch '{path}': expected a dict with b'data' and b'labels'"
        )
    data, labels = batch[b"data"], np.asarray(batch[b"labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise UserInputError(f"malformed CIFAR-10 batch '{path}': b'data' is not a uint8 matrix")
    if data.shape[1] != 3 * 32 * 32 or labels.shape != (data.shape[0],):
        raise UserInputError(
            f"malformed CIFAR-10 batch '{path}': data is {data.shape}, labels {labels.shape}; "
            "expected (N, 3072) and (N,)"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise UserInputError(f"malformed CIFAR-10 batch '{path}': labels are not integers")
    _check_labels(path, labels, CIFAR10_CLASSES)
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def cifar10_root(directory: Path) -> Path:
    """The folder holding the batches: ``directory`` or its ``cifar-10-batches-py/``."""
    nested = directory / "cifar-10-batches-py"
    if not (directory / _CIFAR_TRAIN_BATCHES[0]).exists() and nested.is_dir():
        return nested
    return directory


def read_cifar10(directory: Path) -> Arrays:
    """Read the CIFAR-10 python batches: ``(train_x, train_y, test_x, test_y)``.

    Images come back as ``uint8`` arrays of shape ``(N, 3, 32, 32)``, labels as ``int64``.
    """
    root = cifar10_root(directory)
    train = [_read_cifar_batch(root / name) for name in _CIFAR_TRAIN_BATCHES]
    test_x, test_y = _read_cifar_batch(root / _CIFAR_TEST_BATCH)
    train_x = np.concatenate([images for images, _ in train])
    train_y = np.concatenate([labels for _, labels in train])
    return train_x, train_y, test_x, test_y
