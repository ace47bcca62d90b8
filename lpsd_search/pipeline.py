"""One search from options to results: data → model → space → controller → report."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from torch import nn

from lpsd_search.baseline import BaselineConfig, cached_baseline, load_model
from lpsd_search.budget import Pricer, parse_budget
from lpsd_search.controller import SearchConfig, open_study, run_search
from lpsd_search.data import DataSplits, load_data
from lpsd_search.errors import UserInputError
from lpsd_search.evaluate import Evaluator
from lpsd_search.layers import find_layers
from lpsd_search.report import write_results
from lpsd_search.spaces import load_space
from lpsd_search.train import TrainConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchOptions:
    """Everything ``lpsd-search search`` takes.

    Attributes:
        model: model spec (``digits-cnn``, ``vgg16``, ``torchvision:NAME``, ``pkg.mod:fn``…).
        data: data spec (``digits``, ``fashion-mnist[:DIR]``, ``cifar10:DIR``, …).
        budget: ``"0.1"`` (fraction of the baseline's parameters) or ``"50000"`` (absolute).
        out: results directory.
        checkpoint: trained weights; None trains (and caches) a baseline first.
        space: search-space preset name or TOML path.
        finetune: fine-tune of every trial.
        search: trials, seed, storage, study name, warm starts.
        baseline: recipe used when no checkpoint is given.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        cache_dir: where trained baselines are cached (None: the default cache).
    """

    model: str
    data: str
    budget: str
    out: Path
    checkpoint: str | None = None
    space: str = "default"
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(steps=200, lr=3e-3))
    search: SearchConfig = field(default_factory=SearchConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    device: str = "auto"
    cache_dir: Path | None = None


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


def _file_digest(path: str) -> str:
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
    budget_spec = parse_budget(options.budget)
    space = load_space(options.space)
    device = resolve_device(options.device)
    if options.checkpoint is not None and not Path(options.checkpoint).is_file():
        raise UserInputError(f"cannot read checkpoint {options.checkpoint!r}: no such file")
    data = load_data(options.data, seed=options.search.seed)
    model = prepare_baseline(options.model, data, options.checkpoint, options.baseline, device,
                             options.cache_dir)

    evaluator = Evaluator(model, data, options.finetune, device)
    baseline = evaluator.baseline()
    budget = budget_spec.resolve(baseline.params)
    targets = find_layers(model, evaluator.example)
    allowed = space.allowed(targets)
    if not allowed:
        raise UserInputError(
            f"search space {space.name!r} selects no compressible layer of {options.model!r}"
        )
    pricer = Pricer(targets, evaluator.size(model))
    pricer.check_reachable(budget, allowed)

    identity = {
        "model": options.model, "data": data.spec, "space": space.name,
        "budget": budget.requested, "finetune_steps": options.finetune.steps,
        "finetune_lr": options.finetune.lr, "seed": options.search.seed,
        "checkpoint": _file_digest(options.checkpoint) if options.checkpoint else "trained",
    }
    study = open_study(options.search, options.out, identity)
    if "baseline" not in study.user_attrs:
        study.set_user_attr("baseline", baseline.to_dict())
        study.set_user_attr("budget", budget.to_dict())
        study.set_user_attr("layers", {name: list(m) for name, m in allowed.items()})
    logger.info("baseline %d params, validation %.4f; budget %d params; %d searchable layers",
                baseline.params, baseline.accuracy, budget.limit, len(allowed))
    if on_start is not None:
        on_start(study)
    run_search(study, evaluator, pricer, space, allowed, budget, options.search, options.out,
               on_trial)
    return write_results(study, options.out)
