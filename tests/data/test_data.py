"""Tests for lpsd_search.data (splits, readers, images) on small files written in tmp_path."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from collections.abc import Sized
from pathlib import Path
from typing import cast

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

from lpsd_search.data.splits import (
    DataSplits,
    ImageTensorDataset,
    NormalisedDataset,
    load_data,
    stratified_split,
)
from lpsd_search.errors import UserInputError

REAL_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def _stack(dataset: Dataset[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    samples = [dataset[i] for i in range(len(cast(Sized, dataset)))]
    return torch.stack([x for x, _ in samples]), torch.tensor([y for _, y in samples])


def _sizes(splits: DataSplits) -> list[int]:
    return [len(cast(Sized, part)) for part in (splits.train, splits.val, splits.test)]


def _in_memory(dataset: Dataset[tuple[torch.Tensor, int]]) -> ImageTensorDataset:
    assert isinstance(dataset, ImageTensorDataset)
    return dataset


def _rows(images: torch.Tensor) -> set[bytes]:
    return {image.numpy().tobytes() for image in images}


def _assert_disjoint(splits: DataSplits) -> None:
    train, val, test = (_rows(_stack(part)[0]) for part in (splits.train, splits.val, splits.test))
    assert not train & val and not train & test and not val & test


def _unique_images(count: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """uint8 images whose first two pixels encode their index, so all are distinct."""
    images = np.random.default_rng(seed).integers(0, 256, (count, *shape), dtype=np.uint8)
    flat = images.reshape(count, -1)
    flat[:, 0], flat[:, 1] = np.arange(count) % 256, np.arange(count) // 256 + seed * 7
    return images


def _write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def _write_fashion(directory: Path, n_train: int = 200, n_test: int = 50, **kw: bool) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if kw.get("compress", True) else ""
    for prefix, count, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        labels = np.arange(count) % 10
        images = _unique_images(count, (6, 5), seed)
        _write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images, bool(suffix))
        _write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels, bool(suffix))


def test_stratified_split_is_exact_disjoint_and_proportional() -> None:
    labels = np.repeat(np.arange(4), [40, 20, 20, 20])
    parts = stratified_split(labels, [60, 20, 20], seed=3)
    assert [len(p) for p in parts] == [60, 20, 20]
    assert sorted(np.concatenate(parts).tolist()) == list(range(100))
    assert np.bincount(labels[parts[1]], minlength=4).tolist() == [8, 4, 4, 4]


def test_digits_splits_sizes_normalisation_and_determinism() -> None:
    splits = load_data("digits")
    assert splits.spec == "digits"
    assert (splits.in_channels, splits.num_classes, splits.input_size) == (1, 10, (8, 8))
    assert _sizes(splits) == [1079, 359, 359]
    x, _ = _in_memory(splits.train).tensors()
    assert x.shape == (1079, 1, 8, 8) and x.dtype == torch.float32
    assert abs(x.mean().item()) < 1e-5 and abs(x.std().item() - 1.0) < 1e-2
    image, label = splits.val[0]
    assert image.shape == (1, 8, 8) and isinstance(label, int)
    val_counts = torch.bincount(_in_memory(splits.val).labels, minlength=10)
    assert val_counts.min() >= 35 and val_counts.max() <= 37  # 359 images over 10 classes
    again = load_data("digits")
    assert torch.equal(_in_memory(again.test).images, _in_memory(splits.test).images)
    assert again.fingerprint == splits.fingerprint and len(splits.fingerprint) == 16


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_idx_files(tmp_path: Path, compress: bool) -> None:
    _write_fashion(tmp_path, compress=compress)
    splits = load_data(f"fashion-mnist:{tmp_path}")
    assert splits.spec == f"fashion-mnist:{tmp_path}"
    assert (splits.in_channels, splits.num_classes, splits.input_size) == (1, 10, (6, 5))
    assert _sizes(splits) == [180, 20, 50]
    x, _ = _stack(splits.train)
    assert x.shape == (180, 1, 6, 5)
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1.0) < 1e-2
    assert torch.bincount(_stack(splits.val)[1], minlength=10).tolist() == [2] * 10
    _assert_disjoint(splits)
    # Train and validation hold exactly the training file's images; test is the t10k file.
    train, val, test = (_in_memory(part) for part in (splits.train, splits.val, splits.test))
    written = torch.from_numpy(_unique_images(200, (6, 5), 1))[:, None]
    assert _rows(train.images) | _rows(val.images) == _rows(written)
    assert torch.equal(test.images, torch.from_numpy(_unique_images(50, (6, 5), 2))[:, None])
    assert test.labels.tolist() == [i % 10 for i in range(50)]


def test_fashion_mnist_errors(tmp_path: Path) -> None:
    _write_fashion(tmp_path)
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    labels.unlink()
    with pytest.raises(UserInputError, match="t10k-labels-idx1-ubyte"):
        load_data(f"fashion-mnist:{tmp_path}")
    labels.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + struct.pack(">I", 50) + b"\x00" * 10))
    with pytest.raises(UserInputError, match="header says") as error:
        load_data(f"fashion-mnist:{tmp_path}")
    assert "\n" not in str(error.value)
    labels.write_bytes(b"\x12\x34\x56\x78")
    with pytest.raises(UserInputError, match="bad magic number"):
        load_data(f"fashion-mnist:{tmp_path}")
    _write_idx(labels, np.arange(49) % 10)
    with pytest.raises(UserInputError, match=r"50 images but .* 49 labels"):
        load_data(f"fashion-mnist:{tmp_path}")
    _write_idx(labels, np.full(50, 12))
    with pytest.raises(UserInputError, match=r"valid: 0\.\.9"):
        load_data(f"fashion-mnist:{tmp_path}")


@pytest.mark.skipif(not REAL_FASHION_MNIST.is_dir(), reason="no Fashion-MNIST on this machine")
def test_real_fashion_mnist_default_directory() -> None:
    splits = load_data("fashion-mnist")
    assert splits.spec == f"fashion-mnist:{REAL_FASHION_MNIST}"
    assert _sizes(splits) == [55000, 5000, 10000]
    assert splits.input_size == (28, 28)


def _write_cifar(root: Path, per_batch: int = 20, protocol: int = 2) -> None:
    root.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for seed, name in enumerate(names, start=1):
        data = _unique_images(per_batch, (3072,), seed)
        batch = {b"data": data, b"labels": [i % 10 for i in range(per_batch)]}
        (root / name).write_bytes(pickle.dumps(batch, protocol=protocol))


@pytest.mark.parametrize("nested", [True, False])
def test_cifar10_batches(tmp_path: Path, nested: bool) -> None:
    _write_cifar(tmp_path / "cifar-10-batches-py" if nested else tmp_path / "flat")
    directory = tmp_path if nested else tmp_path / "flat"
    splits = load_data(f"cifar10:{directory}")
    assert (splits.in_channels, splits.num_classes, splits.input_size) == (3, 10, (32, 32))
    assert _sizes(splits) == [90, 10, 20]
    x, _ = _stack(splits.train)
    channel_means = x.mean(dim=(0, 2, 3))
    assert channel_means.abs().max() < 1e-4
    _assert_disjoint(splits)
    # The five training batches feed train and validation; the test batch is kept in order.
    train, val, test = (_in_memory(part) for part in (splits.train, splits.val, splits.test))
    written = [_unique_images(20, (3072,), seed).reshape(-1, 3, 32, 32) for seed in range(1, 7)]
    assert _rows(train.images) | _rows(val.images) == _rows(torch.from_numpy(
        np.concatenate(written[:5])))
    assert torch.equal(test.images, torch.from_numpy(written[5]))
    assert torch.bincount(val.labels, minlength=10).tolist() == [1] * 10


def test_cifar10_errors(tmp_path: Path) -> None:
    _write_cifar(tmp_path / "c", protocol=4)
    assert _sizes(load_data(f"cifar10:{tmp_path / 'c'}")) == [90, 10, 20]  # protocol 4 loads
    (tmp_path / "c" / "test_batch").unlink()
    with pytest.raises(UserInputError, match="lacks the file 'test_batch'"):
        load_data(f"cifar10:{tmp_path / 'c'}")
    (tmp_path / "c" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(UserInputError, match="malformed CIFAR-10 batch"):
        load_data(f"cifar10:{tmp_path / 'c'}")
    (tmp_path / "c" / "test_batch").write_bytes(pickle.dumps(os.getcwd, protocol=2))
    with pytest.raises(UserInputError, match="refusing to load global"):
        load_data(f"cifar10:{tmp_path / 'c'}")
    bad = {b"data": np.zeros((4, 100), np.uint8), b"labels": [0, 1, 2, 3]}
    (tmp_path / "c" / "test_batch").write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(UserInputError, match=r"expected \(N, 3072\)"):
        load_data(f"cifar10:{tmp_path / 'c'}")


def _write_images(root: Path, classes: dict[str, int], size: tuple[int, int], mode: str) -> None:
    for class_index, (name, count) in enumerate(classes.items()):
        (root / name).mkdir(parents=True)
        for i in range(count):
            colour = (class_index * 60 + i * 5) % 256
            pixels = np.full((size[1], size[0], 3), colour, np.uint8)
            pixels[0, 0] = (i, class_index, 7)  # a unique pixel: no two images are equal
            image = Image.fromarray(pixels)
            (image.convert("L") if mode == "L" else image).save(root / name / f"{i:03d}.png")


def _chw_bytes(path: Path) -> bytes:
    with Image.open(path) as image:
        return np.asarray(image).transpose(2, 0, 1).tobytes()


def test_image_folder_tree_split_70_15_15(tmp_path: Path) -> None:
    _write_images(tmp_path, {"ant": 20, "bee": 20, "cat": 20}, size=(10, 12), mode="RGB")
    splits = load_data(f"imagefolder:{tmp_path}")
    assert splits.spec == f"imagefolder:{tmp_path}"
    assert (splits.in_channels, splits.num_classes, splits.input_size) == (3, 3, (12, 10))
    assert _sizes(splits) == [42, 9, 9]
    x, y = _stack(splits.train)
    assert x.shape == (42, 3, 12, 10) and x.dtype == torch.float32
    assert x.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert torch.bincount(y).tolist() == [14, 14, 14]
    assert torch.bincount(_stack(splits.test)[1]).tolist() == [3, 3, 3]
    _assert_disjoint(splits)
    # Unnormalised, the three splits hold exactly the files' pixels (CxHxW, RGB order).
    raw: set[bytes] = set()
    for part in (splits.train, splits.val, splits.test):
        assert isinstance(part, NormalisedDataset)
        raw |= {part.base[i][0].numpy().tobytes() for i in range(len(cast(Sized, part)))}
    files = sorted(tmp_path.glob("*/*.png"))
    assert len(files) == 60
    assert raw == {_chw_bytes(f) for f in files}


def test_image_folder_with_split_dirs_shares_classes(tmp_path: Path) -> None:
    _write_images(tmp_path / "train", {"a": 12, "b": 12, "c": 12}, size=(9, 9), mode="L")
    _write_images(tmp_path / "test", {"c": 4}, size=(16, 16), mode="L")
    splits = load_data(f"imagefolder:{tmp_path}", image_size=(8, 8))
    assert (splits.in_channels, splits.num_classes, splits.input_size) == (1, 3, (8, 8))
    assert _sizes(splits) == [31, 5, 4]
    test_x, test_y = _stack(splits.test)
    assert test_x.shape == (4, 1, 8, 8) and test_y.tolist() == [2, 2, 2, 2]  # "c" keeps index 2
    _assert_disjoint(splits)


def test_image_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match="no class subfolders"):
        load_data(f"imagefolder:{tmp_path / 'empty'}")
    _write_images(tmp_path / "d" / "train", {"a": 3}, size=(4, 4), mode="RGB")
    _write_images(tmp_path / "d" / "val", {"z": 1}, size=(4, 4), mode="RGB")
    with pytest.raises(UserInputError, match="class folder 'z'"):
        load_data(f"imagefolder:{tmp_path / 'd'}")
    # One class would make every model score 100 %: refused before any training.
    _write_images(tmp_path / "single", {"a": 9}, size=(4, 4), mode="RGB")
    with pytest.raises(UserInputError, match="holds images of 1 class; valid: two classes"):
        load_data(f"imagefolder:{tmp_path / 'single'}")
    _write_images(tmp_path / "tiny", {"a": 1, "b": 1}, size=(4, 4), mode="RGB")
    with pytest.raises(UserInputError, match=r"split .* is empty"):
        load_data(f"imagefolder:{tmp_path / 'tiny'}")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("mnist", "valid: digits, fashion-mnist\\[:DIR\\], cifar10:DIR, imagefolder:DIR"),
        ("cifar10", "needs a directory: cifar10:DIR"),
        ("cifar10:/no/such/dir", "'/no/such/dir' does not exist"),
        ("digits:/tmp", "takes no directory"),
    ],
)
def test_bad_specs_give_one_line_errors(spec: str, message: str) -> None:
    with pytest.raises(UserInputError, match=message) as error:
        load_data(spec)
    assert "\n" not in str(error.value)


def test_image_size_only_for_image_folders() -> None:
    with pytest.raises(UserInputError, match="image_size applies to imagefolder"):
        load_data("digits", image_size=(8, 8))
