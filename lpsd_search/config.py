"""Every option dataclass of lpsd-search in one place, with one set of defaults.

The command line, the TOML config and the Python API all map onto these frozen dataclasses
(through ``lpsd_search.options``); nothing above them keeps a default of its own. The module
imports only the error type and ``checks``, so every layer can take its settings from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import lpsd_search.checks as checks
from lpsd_search.errors import UserInputError

MAX_SEED = checks.MAX_SEED
_check, _real, _count, _text = checks.check, checks.real, checks.count, checks.text


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
        admm_steps: ADMM steps of the dense model towards each plan's ranks before it is
            decomposed (``trial.admm``); 0: none.
        admm_rho: ADMM's penalty ρ at the start; admm_rho_growth: ρ's factor per dual update.
        orth_reg: λ of ``λ·Σ‖UᵀU − I‖²`` on the factors in the fine-tune (``trial.orthogonal``).

    These four are None unless given; a search space's ``[training]`` table fills them
    (``options.search_options``), ``METHOD_DEFAULTS`` the rest (``method_settings``).
    """

    steps: int = 200
    lr: float = 3e-3
    batch_size: int = 64
    weight_decay: float = 0.0
    seed: int = 0
    distill_alpha: float = 0.0
    distill_temperature: float = 4.0
    admm_steps: int | None = None
    admm_rho: float | None = None
    admm_rho_growth: float | None = None
    orth_reg: float | None = None

    def __post_init__(self) -> None:
        # 0 steps is allowed: the trials are then measured as built, without a fine-tune.
        _count("--finetune-steps", self.steps, 0)
        _real("--finetune-lr", self.lr, 0, open_low=True)
        _count("--batch-size", self.batch_size, 1)
        _real("weight decay", self.weight_decay, 0)
        _count("--seed", self.seed, 0, MAX_SEED)
        _real("--distill", self.distill_alpha, 0, 1)
        _real("--distill-temperature", self.distill_temperature, 0, open_low=True)
        settings = self.method_settings()  # None: a default, which is valid
        _count("--admm-steps", 0 if self.admm_steps is None else self.admm_steps, 0)
        _real("--admm-rho", settings["admm_rho"], 0, open_low=True)
        _real("--admm-rho-growth", settings["admm_rho_growth"], 1, 100)  # ρ never falls
        _real("--orth-reg", settings["orth_reg"], 0)

    def method_settings(self) -> dict[str, float]:
        """The training-time methods' settings, ``METHOD_DEFAULTS`` where one is None."""
        return {name: default if getattr(self, name) is None else getattr(self, name)
                for name, default in METHOD_DEFAULTS.items()}


METHOD_DEFAULTS: dict[str, float] = {
    "admm_steps": 0, "admm_rho": 0.1, "admm_rho_growth": 1.5, "orth_reg": 0.0}
"""Unset training-time methods: neither ADMM nor the orthogonality penalty; ADMM's ρ from 0.1,
1.5× per dual update (why: ``trial.admm``)."""


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SWITCHES = ("auto", "on", "off")


@dataclass(frozen=True)
class RuntimeConfig:
    """How trials use the hardware (``trial.runtime.resolve_runtime`` decides each ``auto``).

    Attributes:
        precision: autocast precision of fine-tuning and evaluation (``auto``: bf16 on CPUs
            with AMX or AVX512-BF16, fp32 elsewhere, CUDA included, where small trials are
            launch-bound); master weights and decompositions stay fp32.
        channels_last: channels-last memory format (``auto``: on the CPU, where it measured
            faster, off on CUDA).
        compile: wrap each compressed model in ``torch.compile`` for its fine-tune (off by
            default: on the measured models its compile time outweighed what it saved).
        threads: intra-op CPU threads per process; None derives them from the cores available
            and the number of workers.
        workers: trials run at once by this command, each in its own process on the same
            device and storage (several small trials fill a GPU that one leaves idle).
    """

    precision: str = "auto"
    channels_last: str = "auto"
    compile: bool = False
    threads: int | None = None
    workers: int = 1

    def __post_init__(self) -> None:
        _check(self.precision in PRECISIONS, "--precision", self.precision,
               ", ".join(PRECISIONS))
        _check(self.channels_last in SWITCHES, "--channels-last", self.channels_last,
               ", ".join(SWITCHES))
        if self.threads is not None:
            _count("--threads", self.threads, 1)
        _count("--workers", self.workers, 1, 64)


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
        _real("baseline epochs (--train-epochs, train --epochs)", self.epochs, 0,
              open_low=True)
        _real("baseline learning rate", self.lr, 0, open_low=True)
        _count("baseline batch size", self.batch_size, 1)
        _real("baseline weight decay", self.weight_decay, 0)
        _count("--seed", self.seed, 0, MAX_SEED)


Procedure = Literal["lpsd", "alpsd", "lowrank"]
PROCEDURES: tuple[str, ...] = ("lpsd", "alpsd", "lowrank")
Allocation = Literal["balanced", "uniform", "vbmf"]
ALLOCATIONS: tuple[str, ...] = ("balanced", "uniform", "vbmf")


@dataclass(frozen=True)
class CompressConfig:
    """Settings of the whole-model procedures.

    Attributes:
        procedure: ``lpsd`` (Sparsification), ``alpsd`` or ``lowrank``.
        low_rank: the registered method of the low-rank parts (the paper uses ``alds``).
        sparse_share: fraction of the compressible layers' budget spent on sparse entries.
        local_passes: passes of local selection over the layers (ALPSD; 0 skips it).
        local_step: share of a layer's entries one local move transfers.
        allocation: the rank rule of the low-rank parts: ``balanced`` (error-balanced, the ALDS
            idea), ``uniform`` (one fraction of every layer) or ``vbmf`` (one multiple of
            every layer's VBMF rank).
    """

    procedure: Procedure = "lpsd"
    low_rank: str = "alds"
    sparse_share: float = 0.3
    local_passes: int = 1
    local_step: float = 0.25
    allocation: Allocation = "balanced"

    def __post_init__(self) -> None:
        if self.procedure not in PROCEDURES:
            raise UserInputError(f"unknown procedure {self.procedure!r}; valid: "
                                 f"{', '.join(PROCEDURES)}")
        _real("--sparse-share", self.sparse_share, 0, 1, open_high=True)
        _count("--local-passes", self.local_passes, 0)
        _real("local step", self.local_step, 0, 1, open_low=True, open_high=True)
        if self.allocation not in ALLOCATIONS:
            raise UserInputError(f"unknown allocation {self.allocation!r}; valid: "
                                 f"{', '.join(ALLOCATIONS)}")


STRATEGIES = ("ladder", "global-local", "flat")
SAMPLERS = ("auto", "tpe", "nsga2", "random", "rung-gp", "rung-tpe", "rung-ctx")
WARM_STARTS = ("uniform", "vbmf", "alds", "lpsd", "alpsd")
"""The heuristics a search can run first (``strategy.warm_starts`` builds their plans)."""


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
        sampler: ``auto`` (ladder: ``rung-tpe``, else ``tpe``), ``tpe``, ``nsga2``, ``random``.
        strategy: ``ladder`` (each trial a size rung and an allocation policy, the heuristics
            at every rung first, the best of each rung promoted during the run),
            ``global-local`` or ``flat`` (every per-layer parameter sampled in every trial).
        global_share: share of the trials in the global stage.
        local_share: share of the layers a local trial re-samples.
        promote_steps: fine-tune steps of the promoted (front) trials; 0 disables promotion;
            None (the default): ``PROMOTE_FACTOR`` × the fine-tune steps, filled in
            by ``SearchOptions`` (a bare ``SearchConfig`` handed to the controller promotes
            nothing).
        promote_margin: trials within this much validation accuracy of the front are promoted
            (``global-local`` and ``flat``).
        promote_top: ``ladder``: the best this many trials of each rung (by validation
            accuracy after the short fine-tune) are promoted, as soon as the rung's heuristics
            are measured and whenever a new trial enters them.
        save_models: keep the fine-tuned weights of front trials under ``OUT/models``.
        min_accuracy: the validation accuracy a point needs to be shown as the best at a
            compression level in reports (None: half the baseline's); a reporting setting,
            not part of the study's identity (a continued search may change it).
        base_margin: local trials refine front trials within this much of the front's best
            first objective (validation accuracy).
    """

    trials: int = 40
    seed: int = 0
    storage: str | None = None
    study_name: str = "lpsd-search"
    warm_starts: tuple[str, ...] = WARM_STARTS
    sampler: str = "auto"
    strategy: str = "ladder"
    global_share: float = 0.4
    local_share: float = 0.3
    promote_steps: int | None = None
    promote_margin: float = 0.005
    promote_top: int = 2
    save_models: bool = True
    base_margin: float = 0.02
    min_accuracy: float | None = None

    def __post_init__(self) -> None:
        # A study that should hold no trial would run nothing and report an empty front.
        _count("--trials", self.trials, 1)
        _count("--seed", self.seed, 0, MAX_SEED)
        _check(self.storage is None or _text(self.storage), "--storage", self.storage,
               "a storage URL such as sqlite:///FILE, or none for OUT/study.db")
        _check(_text(self.study_name), "--study", self.study_name, "a non-empty name")
        unknown = [name for name in self.warm_starts if name not in WARM_STARTS]
        if unknown:
            raise UserInputError(f"unknown warm start {unknown[0]!r}; valid: "
                                 f"{', '.join(WARM_STARTS)}")
        if self.strategy not in STRATEGIES:
            raise UserInputError(f"unknown strategy {self.strategy!r}; valid: "
                                 f"{', '.join(STRATEGIES)}")
        if self.sampler not in SAMPLERS:
            raise UserInputError(f"unknown sampler {self.sampler!r}; valid: "
                                 f"{', '.join(SAMPLERS)}")
        if self.sampler.startswith("rung-") and self.strategy != "ladder":
            raise UserInputError(f"--sampler {self.sampler} needs --strategy ladder; valid "
                                 f"with {self.strategy}: tpe, nsga2, random")
        _real("--global-share", self.global_share, 0, 1)
        _real("local share", self.local_share, 0, 1, open_low=True)
        if self.promote_steps is not None:  # None: automatic
            _count("--promote-steps", self.promote_steps, 0)
        # Margins are in units of validation accuracy, which lies in [0, 1].
        _real("--promote-margin", self.promote_margin, 0, 1)
        _real("base margin", self.base_margin, 0, 1)
        _count("--promote-top", self.promote_top, 1)
        if self.min_accuracy is not None:
            _real("--min-accuracy", self.min_accuracy, 0, 1)


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
        runtime: precision, memory format, compilation and threads of the trials.
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
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    cache_dir: Path | None = None

    def __post_init__(self) -> None:
        if not self.budgets or not all(self.budgets):
            raise UserInputError("--budget is required; valid: --budget 0.1 (a fraction of the "
                                 "baseline's parameters), --budget 50000, --budget flops=0.3")
        _check_specs(self.model, self.data, self.device)
        if self.latency_batch is not None:
            _count("--latency-batch", self.latency_batch, 1)
        if self.search.promote_steps is None:
            steps = PROMOTE_FACTOR * self.finetune.steps
            object.__setattr__(self, "search", replace(self.search, promote_steps=steps))
        promote = self.search.promote_steps
        # Promotion is a longer fine-tune of the front; a shorter one would report worse
        # numbers as the promoted ones.
        _check(not promote or promote > self.finetune.steps, "--promote-steps", promote,
               f"0 (no promotion) or more than --finetune-steps ({self.finetune.steps})")

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
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    cache_dir: Path | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        _check(_text(self.budget), "--budget", self.budget,
               "a fraction of the baseline's parameters (0.05) or a count (50000)")
        _check_specs(self.model, self.data, self.device)
        _count("--seed", self.seed, 0, MAX_SEED)


def _check_specs(model: str, data: str, device: str) -> None:
    """The model, data and device specs are non-empty strings (their meaning is checked where
    they are used: ``models.zoo``, ``data.splits``, ``trial.device``)."""
    for option, value in (("--model", model), ("--data", data), ("--device", device)):
        _check(_text(value), option, value, "a non-empty spec (see --help)")


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
        finite = [math.isfinite(value) for value in (self.cpus_per_trial, self.gpus_per_trial)]
        _check(finite[0] and self.cpus_per_trial > 0, "--cpus-per-trial", self.cpus_per_trial,
               "> 0")
        _check(finite[1] and self.gpus_per_trial >= 0, "--gpus-per-trial", self.gpus_per_trial,
               "0 or more")
        _check(self.max_concurrent >= 1, "--max-concurrent", self.max_concurrent, "1 or more")
        _check(self.max_failures >= 0, "max failures", self.max_failures, "0 or more")


