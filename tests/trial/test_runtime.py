"""How trials use the hardware: the resolved runtime, batches on the device, the fast loop."""

from __future__ import annotations

import copy
import importlib
import math

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from lpsd_search.config import RuntimeConfig, TrainConfig
from lpsd_search.data.splits import DataSplits
from lpsd_search.errors import UserInputError
from lpsd_search.lpsd.layer import decompose_layer
from lpsd_search.lpsd.sparse import masked_weights
from lpsd_search.trial import batching, runtime
from lpsd_search.trial.batching import batches, on_device
from lpsd_search.trial.runtime import Runtime, derived_threads, resolve_runtime
from lpsd_search.trial.train import CHECK_EVERY, TrainingDiverged, score, train

CPU = torch.device("cpu")
# The module, not the function ``lpsd_search.trial.train`` that the package exports.
train_module = importlib.import_module("lpsd_search.trial.train")


@pytest.fixture(autouse=True)
def _keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# -- the resolved runtime ---------------------------------------------------------------------


@pytest.mark.parametrize(("flags", "expected"), [
    (frozenset({"avx512f", "amx_bf16", "amx_tile"}), "bf16"),
    (frozenset({"avx512f", "avx512_bf16"}), "bf16"),
    (frozenset({"avx2", "fma"}), "fp32"),
    (frozenset(), "fp32"),
])
def test_auto_precision_is_bf16_only_where_the_cpu_has_bf16_kernels(monkeypatch, flags,
                                                                      expected):
    monkeypatch.setattr(runtime, "_cpu_flags", lambda: flags)
    resolved = resolve_runtime(RuntimeConfig(threads=1), CPU)
    assert resolved.precision == expected
    assert resolved.dtype == (torch.bfloat16 if expected == "bf16" else None)
    assert resolved.channels_last is True  # auto: on for the CPU


def test_explicit_settings_are_kept_and_described():
    resolved = resolve_runtime(RuntimeConfig(precision="fp32", channels_last="on", threads=1),
                               CPU)
    assert resolved.describe() == {"device": "cpu", "precision": "fp32", "channels_last": True,
                                   "compile": False, "threads": 1}
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize(("workers", "cores", "load", "expected"), [
    (1, 2, 0.0, 2), (2, 2, 0.0, 1), (1, 2, 1.3, 1), (1, 16, 3.9, 13), (4, 16, 0.0, 4),
    (1, 2, 7.0, 1), (3, 2, 0.0, 1),
])
def test_derived_threads_split_the_free_cores_between_workers(workers, cores, load, expected):
    assert derived_threads(workers, cores=cores, load=load) == expected


@pytest.mark.parametrize("bad", [
    {"precision": "fp8"}, {"channels_last": "yes"}, {"threads": 0}, {"threads": -2},
])
def test_bad_runtime_options_are_one_line_errors(bad):
    with pytest.raises(UserInputError, match="valid:"):
        RuntimeConfig(**bad)


# -- batches on the device ----------------------------------------------------------------------


class _PerItem(Dataset):
    """The same samples, read one at a time (the DataLoader path)."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        return self.base[index]


def test_resident_batches_equal_the_per_item_reads(digits: DataSplits):
    resident = list(batches(digits.val, 64, torch.Generator(), shuffle=False))
    loaded = list(batches(_PerItem(digits.val), 64, torch.Generator(), shuffle=False))
    assert len(resident) == len(loaded) > 1
    for (x1, y1), (x2, y2) in zip(resident, loaded, strict=True):
        assert torch.allclose(x1, x2, atol=1e-6) and torch.equal(y1, y2.long())


def test_a_seed_gives_one_order_of_every_sample(digits: DataSplits):
    def labels(seed: int) -> torch.Tensor:
        stream = batches(digits.val, 64, torch.Generator().manual_seed(seed))
        return torch.cat([y for _, y in stream])

    ordered = torch.cat([y for _, y in batches(digits.val, 64, torch.Generator(), shuffle=False)])
    assert torch.equal(labels(3), labels(3)) and not torch.equal(labels(3), labels(4))
    assert torch.equal(labels(3).sort().values, ordered.sort().values)


def test_data_is_moved_to_the_device_once(digits: DataSplits):
    first = on_device(digits.train, CPU)
    assert first is not None and on_device(digits.train, CPU) is first
    assert first.images.dtype == digits.train.images.dtype  # stored as is, normalised per batch
    assert on_device(_PerItem(digits.train), CPU) is None
    tensors = TensorDataset(torch.randn(5, 1, 4, 4), torch.arange(5))
    resident = on_device(tensors, CPU)
    assert resident is not None and torch.equal(resident.labels, torch.arange(5))


def test_a_file_backed_dataset_gets_no_loader_workers_on_the_cpu():
    assert batching._loader_workers(CPU) == 0


# -- the training loop --------------------------------------------------------------------------


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(32, 10))


class _Poisoned(nn.Module):
    """Returns NaN logits from call ``after`` on (a fine-tune that diverges there)."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.base, self.after, self.calls = _model(), after, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        logits = self.base(x)
        return logits * math.nan if self.calls > self.after else logits


def test_divergence_names_its_first_step_and_is_found_within_the_check_interval(
        digits: DataSplits):
    model = _Poisoned(after=30)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 30$"):
        train(model, digits.train, TrainConfig(steps=200), CPU)
    # Found at the next check, not at the end of the 200 steps, and not at step 30 itself.
    assert model.calls == 2 * CHECK_EVERY


def test_the_loop_reads_the_device_only_every_check_interval(digits: DataSplits, monkeypatch):
    reads = []
    real_float, real_int = torch.Tensor.__float__, torch.Tensor.__int__
    monkeypatch.setattr(torch.Tensor, "__float__", lambda t: reads.append(1) or real_float(t))
    monkeypatch.setattr(torch.Tensor, "__int__", lambda t: reads.append(1) or real_int(t))
    train(_model(), digits.train, TrainConfig(steps=2 * CHECK_EVERY), CPU)
    # Two divergence checks and the loss tail, whatever the number of steps.
    assert len(reads) <= 3


def test_bf16_fine_tune_stays_close_to_fp32(digits: DataSplits, digits_model: nn.Module):
    config = TrainConfig(steps=60, seed=1)
    accuracies = {}
    for precision in ("fp32", "bf16"):
        model = copy.deepcopy(digits_model)
        # Perturb the trained model so that the fine-tune has something to recover.
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.05 * torch.randn_like(parameter))
        used = Runtime(CPU, precision=precision)
        train(model, digits.train, config, CPU, runtime=used)
        assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 masters
        accuracies[precision] = score(model, digits.val, CPU, runtime=used)[0]
    assert accuracies["fp32"] > 0.9
    assert abs(accuracies["bf16"] - accuracies["fp32"]) < 0.03


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_the_sparse_pattern_stays_exact_in_mixed_precision(digits: DataSplits, precision):
    model = _model()
    model[0] = decompose_layer(model[0], "svd", 0.5, sparsity=0.2)
    pairs = masked_weights(model)
    assert pairs
    patterns = [mask.clone() for _, mask in pairs]
    train(model, digits.train, TrainConfig(steps=30), CPU, runtime=Runtime(CPU, precision))
    for (weight, mask), pattern in zip(masked_weights(model), patterns, strict=True):
        assert torch.equal(mask, pattern)
        assert not weight[~mask].any()


def test_channels_last_trains_the_same_model(digits: DataSplits):
    results = []
    for channels_last in (False, True):
        model = _model()
        train(model, digits.train, TrainConfig(steps=20), CPU,
              runtime=Runtime(CPU, channels_last=channels_last))
        results.append(score(model, digits.val, CPU)[1])
    assert results[0] == pytest.approx(results[1], rel=1e-3)
