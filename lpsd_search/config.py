"""Every option dataclass of lpsd-search in one place, with one set of defaults.

The command line, the TOML config and the Python API all map onto these frozen dataclasses
(through ``lpsd_search.options``); nothing above them keeps a default of its own. The module
imports nothing but the error type, so every layer can take its settings from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from lpsd_search.errors import UserInputError


def _check(ok: bool, what: str, value: object, valid: str) -> None:
    """Raise the one-line error ``<what> <value> is invalid; valid: <valid>`` unless ``ok``."""
    if not ok:
        raise UserInputError(f"{what} {value!r} is invalid; valid: {valid}")


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser settings; the defaults are the fine-tune of every trial.

    Attributes:
        steps: optimiser steps.
        lr: AdamW learning rate (cosine-decayed to zero over ``steps``).
        batch_size: examples per step.
        weight_decay: decoupled weight decay (AdamW).
        seed: seeds the batch order.
        distill_alpha: weight of the distillation loss (0 = plain cross-entropy); the loss is
            ``(1 − α)·CE + α·T²·KL(teacher_T ‖ student_T)`` (Hinton et al. 2015).
        distill_temperature: softmax temperature T of the distillation loss.
    """

    steps: int = 200
    lr: float = 3e-3
    batch_size: int = 64
    weight_decay: float = 0.0
    seed: int = 0
    distill_alpha: float = 0.0
    distill_temperature: float = 4.0

    def __post_init__(self) -> None:
        _check(self.steps >= 0, "fine-tune steps", self.steps, "0 or more")
        _check(self.lr > 0, "learning rate", self.lr, "> 0")
        _check(self.batch_size >= 1, "batch size", self.batch_size, "1 or more")
        _check(self.weight_decay >= 0, "weight decay", self.weight_decay, "0 or more")
        _check(0.0 <= self.distill_alpha <= 1.0, "distillation weight", self.distill_alpha,
               "a float in [0, 1]")
        _check(self.distill_temperature > 0, "distillation temperature",
               self.distill_temperature, "> 0")


@dataclass(frozen=True)
class BaselineConfig:
    """How a baseline is trained when no checkpoint is given.

    Attributes:
        epochs: passes over the training split.
        lr: peak AdamW learning rate.
        batch_size: examples per step.
        weight_decay: AdamW weight decay.
        seed: seeds initialisation and batch order.
    """

    epochs: float = 30.0
    lr: float = 3e-3
    batch_size: int = 64
    weight_decay: float = 5e-4
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.epochs > 0, "baseline epochs", self.epochs, "> 0")
        _check(self.lr > 0, "baseline learning rate", self.lr, "> 0")
        _check(self.batch_size >= 1, "baseline batch size", self.batch_size, "1 or more")
        _check(self.weight_decay >= 0, "baseline weight decay", self.weight_decay, "0 or more")


Procedure = Literal["lpsd", "alpsd", "lowrank"]
PROCEDURES: tuple[str, ...] = ("lpsd", "alpsd", "lowrank")


@dataclass(frozen=True)
class CompressConfig:
    """Settings of the whole-model procedures.

    Attributes:
        procedure: ``lpsd`` (Sparsification), ``alpsd`` or ``lowrank``.
        low_rank: the registered method of the low-rank parts (the paper uses ``alds``).
        sparse_share: fraction of the compressible layers' budget spent on sparse entries.
        local_passes: passes of local selection over the layers (ALPSD; 0 skips it).
        local_step: share of a layer's entries one local move transfers.
    """

    procedure: Procedure = "lpsd"
    low_rank: str = "alds"
    sparse_share: float = 0.3
    local_passes: int = 1
    local_step: float = 0.25

    def __post_init__(self) -> None:
        if self.procedure not in PROCEDURES:
            raise UserInputError(f"unknown procedure {self.procedure!r}; valid: "
                                 f"{', '.join(PROCEDURES)}")
        _check(0.0 <= self.sparse_share < 1.0, "sparse share", self.sparse_share,
               "a float in [0, 1)")
        _check(self.local_passes >= 0, "local passes", self.local_passes, "0 or more")
        _check(0.0 < self.local_step < 1.0, "local step", self.local_step, "(0, 1)")


STRATEGIES = ("global-local", "flat")
SAMPLERS = ("tpe", "nsga2", "random")


PROMOTE_FACTOR = 3
"""Promoted trials get this many times the search's fine-tune steps unless told otherwise."""


@dataclass(frozen=True)
class SearchConfig:
    """How the controller runs.

    Attributes:
        trials: completed trials the study should hold at the end (a re-run tops it up); failed
            and interrupted trials are kept in the study but do not count.
        seed: sampler seed.
        storage: Optuna storage URL, or None for ``<out>/study.db``.
        study_name: name of the study inside the storage.
        warm_starts: heuristics enqueued as the first trials (``warm_starts.WARM_STARTS``).
        sampler: ``tpe``, ``nsga2`` or ``random``.
        strategy: ``global-local`` or ``flat`` (every parameter sampled in every trial).
        global_share: share of the trials in the global stage.
        local_share: share of the layers a local trial re-samples.
        promote_steps: fine-tune steps of the promoted (front) trials; 0 disables promotion;
            None (the default): ``PROMOTE_FACTOR`` × the fine-tune steps, filled in
            by ``SearchOptions`` (a bare ``SearchConfig`` handed to the controller promotes
            nothing).
        promote_margin: trials within this much validation accuracy of the front are promoted.
        save_models: keep the fine-tuned weights of front trials under ``OUT/models``.
        base_margin: local trials refine front trials within this much of the front's best
            first objective (validation accuracy).
    """

    trials: int = 20
    seed: int = 0
    storage: str | None = None
    study_name: str = "lpsd-search"
    warm_starts: tuple[str, ...] = ("uniform", "vbmf", "alds", "lpsd", "alpsd")
    sampler: str = "tpe"
    strategy: str = "global-local"
    global_share: float = 0.4
    local_share: float = 0.3
    promote_steps: int | None = None
    promote_margin: float = 0.005
    save_models: bool = True
    base_margin: float = 0.02

    def __post_init__(self) -> None:
        _check(self.trials >= 0, "trials", self.trials, "0 or more")
        _check(self.seed >= 0, "seed", self.seed, "0 or more")
        if self.strategy not in STRATEGIES:
            raise UserInputError(f"unknown strategy {self.strategy!r}; valid: "
                                 f"{', '.join(STRATEGIES)}")
        if self.sampler not in SAMPLERS:
            raise UserInputError(f"unknown sampler {self.sampler!r}; valid: "
                                 f"{', '.join(SAMPLERS)}")
        _check(0.0 <= self.global_share <= 1.0, "global share", self.global_share, "[0, 1]")
        _check(0.0 < self.local_share <= 1.0, "local share", self.local_share, "(0, 1]")
        _check(self.promote_steps is None or self.promote_steps >= 0, "promote steps",
               self.promote_steps, "None (automatic), 0 (no promotion) or more")
        _check(self.promote_margin >= 0, "promote margin", self.promote_margin, "0 or more")
        _check(self.base_margin >= 0, "base margin", self.base_margin, "0 or more")


@dataclass(frozen=True, kw_only=True)
class SearchOptions:
    """Everything ``lpsd-search search`` takes (keywords only; ``budget`` is required).

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
        search: trials, seed, storage, study name, sampler, stages, warm starts, promotion; an
            automatic ``promote_steps`` is resolved against ``finetune.steps`` here.
        baseline: recipe used when no checkpoint is given.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        cache_dir: where trained baselines are cached (None: the default cache).
    """

    model: str = "digits-cnn"
    data: str = "digits"
    budget: str | tuple[str, ...]
    out: Path = Path("lpsd-out")
    checkpoint: str | None = None
    space: str = "default"
    objectives: str = "default"
    latency_batch: int | None = None
    finetune: TrainConfig = field(default_factory=TrainConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    device: str = "auto"
    cache_dir: Path | None = None

    def __post_init__(self) -> None:
        if not self.budgets or not all(self.budgets):
            raise UserInputError("--budget is required; valid: --budget 0.1 (a fraction of the "
                                 "baseline's parameters), --budget 50000, --budget flops=0.3")
        if self.latency_batch is not None:
            _check(self.latency_batch >= 1, "latency batch", self.latency_batch, "1 or more")
        if self.search.promote_steps is None:
            steps = PROMOTE_FACTOR * self.finetune.steps
            object.__setattr__(self, "search", replace(self.search, promote_steps=steps))

    @property
    def budgets(self) -> tuple[str, ...]:
        return (self.budget,) if isinstance(self.budget, str) else tuple(self.budget)


@dataclass(frozen=True, kw_only=True)
class CompressOptions:
    """Everything ``lpsd-search compress`` takes (see ``SearchOptions`` for the shared ones)."""

    model: str = SearchOptions.model
    data: str = SearchOptions.data
    budget: str
    out: Path = Path("lpsd-compress")
    config: CompressConfig = field(default_factory=CompressConfig)
    checkpoint: str | None = None
    finetune: TrainConfig = field(default_factory=TrainConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    device: str = SearchOptions.device
    cache_dir: Path | None = None
    seed: int = 0


BACKENDS = ("optuna", "ray")


@dataclass(frozen=True)
class RayConfig:
    """How the Ray backend runs.

    Attributes:
        address: ``HOST:PORT`` of a running cluster, ``auto``; None starts a local Ray (or joins
            the one ``RAY_ADDRESS`` names).
        cpus_per_trial: CPUs Tune reserves for each trial (also its torch threads).
        gpus_per_trial: GPUs per trial; fractions share one GPU between trials.
        max_concurrent: trials running at once (``ConcurrencyLimiter``).
        max_failures: retries of a trial whose worker or node died.
    """

    address: str | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int = 2
    max_failures: int = 1

    def __post_init__(self) -> None:
        _check(self.cpus_per_trial > 0, "--cpus-per-trial", self.cpus_per_trial, "> 0")
        _check(self.gpus_per_trial >= 0, "--gpus-per-trial", self.gpus_per_trial, "0 or more")
        _check(self.max_concurrent >= 1, "--max-concurrent", self.max_concurrent, "1 or more")
        _check(self.max_failures >= 0, "max failures", self.max_failures, "0 or more")


