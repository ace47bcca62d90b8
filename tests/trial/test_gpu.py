"""The GPU path of a trial: bf16, data resident on the device, decompositions on the device.

Marked ``gpu``: skipped where there is no CUDA device (run with ``pytest -m gpu``).
"""

from __future__ import annotations

import copy
import csv
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from lpsd_search.config import RuntimeConfig, TrainConfig
from lpsd_search.data.splits import DataSplits
from lpsd_search.decompositions.cache import FactorCache
from lpsd_search.plan.choices import LayerChoice, Plan
from lpsd_search.plan.layers import find_layers
from lpsd_search.trial import batching
from lpsd_search.trial.evaluate import Evaluator
from lpsd_search.trial.runtime import Runtime, resolve_runtime
from lpsd_search.trial.train import CHECK_EVERY, score, train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CPU = torch.device("cpu")


@pytest.fixture
def cuda() -> torch.device:
    return torch.device("cuda")


def _plan(model: nn.Module, example: torch.Tensor) -> Plan:
    """Every conv Tucker-2 with a sparse residual, the linear layers SVD."""
    layers = {}
    for target in find_layers(model, example):
        geometry = target.geometry
        if geometry.kernel_size != (1, 1):
            layers[target.name] = LayerChoice("tucker2", (max(1, geometry.out_channels // 4),
                                                          max(1, geometry.in_channels // 4)),
                                              sparsity=0.05)
        else:
            layers[target.name] = LayerChoice("svd", max(1, min(geometry.out_channels,
                                                                geometry.in_channels) // 4))
    return Plan(layers)


def test_auto_runtime_on_the_gpu_is_fp32_with_tf32(cuda):
    # Measured (benchmarks/results/evaluator_gpu.md): the benchmark's small trials are
    # launch-bound on an H200, and bf16 autocast with channels-last was slower there.
    resolved = resolve_runtime(RuntimeConfig(), cuda)
    assert resolved.precision == "fp32" and not resolved.channels_last
    assert torch.backends.cudnn.benchmark and torch.backends.cuda.matmul.allow_tf32


def test_a_trial_on_the_gpu_matches_the_cpu_trial(digits: DataSplits, digits_model, cuda):
    cpu_eval = Evaluator(copy.deepcopy(digits_model), digits, TrainConfig(steps=80), CPU,
                         runtime=Runtime(CPU))
    gpu_eval = Evaluator(copy.deepcopy(digits_model), digits, TrainConfig(steps=80), cuda,
                         cache=FactorCache(), runtime=resolve_runtime(RuntimeConfig(), cuda))
    plan = _plan(cpu_eval.model, cpu_eval.example)
    on_cpu, _ = cpu_eval.evaluate(plan)
    on_gpu, model = gpu_eval.evaluate(plan)
    # Decomposed on the device: the factors and the cache's copies live there.
    assert all(p.device.type == "cuda" for p in model.parameters())
    stored = [t for factors in gpu_eval.cache._entries.values() for t in factors]
    assert stored and all(t.device.type == "cuda" for t in stored)
    # The data went to the device once and stayed there.
    assert str(cuda) in batching._RESIDENT[digits.train]
    assert (on_gpu.params, on_gpu.bytes, on_gpu.flops) == (on_cpu.params, on_cpu.bytes,
                                                           on_cpu.flops)
    assert abs(on_gpu.accuracy - on_cpu.accuracy) < 0.03
    assert on_gpu.finetune_seconds > 0 and on_gpu.build_seconds > 0


def test_the_fine_tune_synchronises_only_at_its_checks(digits: DataSplits, digits_model, cuda):
    model = copy.deepcopy(digits_model)
    runtime = Runtime(cuda, precision="bf16", channels_last=True)
    train(model, digits.train, TrainConfig(steps=5), cuda, runtime=runtime)  # warm-up
    steps = 4 * CHECK_EVERY
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train(model, digits.train, TrainConfig(steps=steps), cuda, runtime=runtime)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    # One read per check and the loss tail (the batch order goes to the device from pinned
    # memory, without waiting; the normalisation's statistics are there already); a few more
    # for the optimiser's and the schedule's set-up. Before the statistics stayed on the
    # device, the H200 run counted 205 for these 100 steps.
    assert len(syncs) <= steps // CHECK_EVERY + 4, [str(w.message) for w in syncs[:8]]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_keeps_fp32_weights_and_accuracy(digits, digits_model, cuda, precision):
    model = copy.deepcopy(digits_model)
    before = score(model, digits.val, CPU)[0]
    runtime = Runtime(cuda, precision=precision, channels_last=True)
    train(model, digits.train, TrainConfig(steps=60, lr=1e-3), cuda, runtime=runtime)
    assert all(p.dtype == torch.float32 and p.device.type == "cuda" for p in model.parameters())
    assert score(model, digits.val, cuda, runtime=runtime)[0] > before - 0.03


def test_a_search_on_the_gpu_records_how_its_trials_ran(tmp_path: Path, cache_dir: Path):
    from lpsd_search.cli.main import main

    out = tmp_path / "out"
    status = main(["search", "--model", "digits-cnn", "--data", "digits", "--budget", "0.3",
                   "--trials", "4", "--finetune-steps", "30", "--train-epochs", "2",
                   "--no-warm-start", "--promote-steps", "0", "--device", "cuda",
                   "--cache-dir", str(cache_dir), "--out", str(out), "--no-report"])
    assert status == 0
    with (out / "trials.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    complete = [row for row in rows if row["state"] == "COMPLETE"]
    assert len(complete) == 4
    assert {row["precision"] for row in complete} == {"fp32"}
    assert all(float(row["finetune_seconds"]) > 0 for row in complete)
