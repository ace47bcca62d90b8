"""One search from options to results: data → model → space → controller → report."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from torch import nn

from lpsd_search.baseline import BaselineConfig, cached_baseline, load_model
from lpsd_search.controller import SearchConfig, run_search
from lpsd_search.data import DataSplits
from lpsd_search.errors import UserInputError
from lpsd_search.report import write_results
from lpsd_search.train import TrainConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchOptions:
    """Everything ``lpsd-search search`` takes.

    Attributes:
        model: model spec (``digits-cnn``, ``vgg16``, ``torchvision:NAME``, ``pkg.mod:fn``…).
        data: data spec (``digits``, ``fashion-mnist[:DIR]``, ``cifar10:DIR``, …).
        budget: one budget or several (``"0.1"``, ``"50000"``, ``"flops=0.3"``, ``"bytes=0.05"``).
        out: results directory.
        checkpoint: trained weights; None trains (and caches) a baseline first.
        space: search-space preset name or TOML path.
        objectives: objectives preset name, TOML path, or comma list (``accuracy,flops``).
        latency_batch: batch size of measured latency (overrides the objectives preset).
        finetune: fine-tune of every trial (and its distillation settings).
        search: trials, seed, storage, study name, sampler, stages, warm starts, promotion.
        baseline: recipe used when no checkpoint is given.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        cache_dir: where trained baselines are cached (None: the default cache).
    """

    model: str
    data: str
    budget: str | tuple[str, ...]
    out: Path
    checkpoint: str | None = None
    space: str = "default"
    objectives: str = "default"
    latency_batch: int | None = None
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(steps=200, lr=3e-3))
    search: SearchConfig = field(default_factory=SearchConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    device: str = "auto"
    cache_dir: Path | None = None

    @property
    def budgets(self) -> tuple[str, ...]:
        return (self.budget,) if isinstance(self.budget, str) else tuple(self.budget)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when there is a GPU; otherwise the named device, checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserInputError(f"unknown device {name!r}; valid: auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError(f"device {name!r} is not available here; valid: auto, cpu")
    if device.type not in ("cpu", "cuda"):
        raise UserInputError(f"unsupported device {name!r}; valid: auto, cpu, cuda, cuda:N")
    return device


def file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def prepare_baseline(model_spec: str, data: DataSplits, checkpoint: str | None,
                     config: BaselineConfig, device: torch.device,
                     cache_dir: Path | None) -> nn.Module:
    """The dense model to compress: ``checkpoint``'s weights, or a trained and cached baseline."""
    if checkpoint is not None:
        if not Path(checkpoint).is_file():
            raise UserInputError(f"cannot read checkpoint {checkpoint!r}: no such file")
        return load_model(model_spec, data, checkpoint, device)
    return cached_baseline(model_spec, data, config, device, cache_dir)


def search(options: SearchOptions,
           on_trial: Callable[[optuna.Study], None] | None = None,
           on_start: Callable[[optuna.Study], None] | None = None) -> dict[str, Any]:
    """Run (or continue) a search and return the ``pareto.json`` document.

    Args:
        options: what to search.
        on_trial: called after every finished trial (progress display).
        on_start: called once the study is open, before the first trial.

    Raises:
        UserInputError: any bad input, before expensive work where it can be checked early.
    """
    from lpsd_search.runner import TrialRunner
    from lpsd_search.samplers import make_sampler

    if options.checkpoint is not None and not Path(options.checkpoint).is_file():
        raise UserInputError(f"cannot read checkpoint {options.checkpoint!r}: no such file")
    seed = options.search.seed
    if options.search.storage and not options.search.storage.startswith("sqlite"):
        # Workers sharing a server storage must not draw the same samples: one seed each.
        seed += zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode()) % 1_000_003
    sampler = make_sampler(options.search.sampler, seed)
    runner = TrialRunner.from_options(options)
    study = runner.open_study(sampler)
    logger.info("baseline %d params, validation %.4f; budgets %s; %d searchable layers",
                runner.baseline.params, runner.baseline.accuracy,
                ", ".join(f"{b.metric} <= {b.limit}" for b in runner.budgets),
                len(runner.space.allowed))
    if on_start is not None:
        on_start(study)
    run_search(study, runner, options.search, options.out, on_trial)
    return write_results(study, options.out)
