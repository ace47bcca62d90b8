"""The Python API: ``lpsd_search.search(...)`` and ``lpsd_search.compress(...)`` mirror the
``lpsd-search search`` and ``compress`` commands, and write the same files.

Their defaults are the dataclasses' of ``lpsd_search.config``, and a search's arguments go through
the same ``search_options`` as the command line's. Besides spec strings, both take the model as
an ``nn.Module`` (a trained model, used as it is) or a factory (a function building an untrained
one, trained and cached like a built-in), and the data as torch datasets (one, split 70/15/15;
``(train, test)``; or ``(train, val, test)``) yielding ``(C×H×W image tensor, int label)``.

Example:
    >>> import lpsd_search
    >>> result = lpsd_search.search(my_trained_net, (train_set, test_set), budget=0.3,
    ...                             trials=12, out="runs/mine")  # doctest: +SKIP
    >>> best = max(result.pareto, key=lambda p: p["accuracy"])  # doctest: +SKIP
    >>> result.export(best["trial"], "best.pt")  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import csv
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from lpsd_search.backends.optuna import search as run_search
from lpsd_search.config import (
    BaselineConfig,
    CompressConfig,
    CompressOptions,
    RuntimeConfig,
    SearchConfig,
    SearchOptions,
    TrainConfig,
)
from lpsd_search.errors import UserInputError
from lpsd_search.options import search_options

logger = logging.getLogger(__name__)

Model = str | nn.Module | Callable[..., nn.Module]
"""A model spec, a trained module, or a factory of untrained ones."""
Data = str | Dataset[Any] | Sequence[Dataset[Any]] | Mapping[str, Dataset[Any]]
"""A data spec, or torch datasets."""


@contextmanager
def given(model: Model, data: Data) -> Iterator[tuple[str, str, Callable[..., nn.Module] | None]]:
    """The specs of ``model`` and ``data`` (objects registered for the block), and the factory
    that rebuilds a given model's architecture for ``load`` (None for a spec)."""
    from lpsd_search.data import objects as data_objects
    from lpsd_search.data.torch_datasets import is_datasets, splits_from_datasets
    from lpsd_search.models import objects as model_objects

    with ExitStack() as stack:
        factory: Callable[..., nn.Module] | None = None
        if not isinstance(model, str):
            spec = stack.enter_context(model_objects.given(model))
            factory = ((lambda: copy.deepcopy(model)) if isinstance(model, nn.Module)
                       else model)
        else:
            spec = model
        if not isinstance(data, str):
            if not is_datasets(data):
                raise UserInputError(f"data {type(data).__name__} is invalid; valid: a spec "
                                     "string, a torch Dataset, or (train, test) / (train, val, "
                                     "test) datasets")
            data = stack.enter_context(data_objects.given(splits_from_datasets(data)))
        yield spec, data, factory


def _reports(out: Path) -> list[Path]:
    from lpsd_search.report.html import render_report_or_warn  # matplotlib: only when drawn

    return render_report_or_warn(out)


@dataclass(frozen=True)
class SearchResult:
    """What a search left in its results folder.

    Attributes:
        out: the results folder.
        document: the ``pareto.json`` document.
        model_factory: rebuilds the dense architecture of a model given as an object (used by
            ``export``); None for a spec.
    """

    out: Path
    document: dict[str, Any]
    model_factory: Callable[..., nn.Module] | None = field(default=None, repr=False)

    @property
    def pareto(self) -> list[dict[str, Any]]:
        """The front: one dict per point (trial, params, bytes, flops, accuracy, plan …)."""
        return list(self.document["points"])

    @property
    def trials(self) -> list[dict[str, str]]:
        """Every trial as a row of ``trials.csv``."""
        with (self.out / "trials.csv").open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))

    def export(self, trial: int, path: str | Path, *, trust_model_spec: bool = False,
               model_factory: Callable[..., Any] | None = None) -> list[Path]:
        """Write a front trial's model (``.pt``) and its ``torch.export`` program (``.pt2``);
        both take raw images (see the README's export contract).

        A search of a user's model spec (``nets.py:build``) needs ``model_factory`` or
        ``trust_model_spec=True`` to rebuild it, as for ``lpsd_search.load``; a model given as
        an object is rebuilt by the factory the result holds.
        """
        from lpsd_search.trial.export import export_trial

        return export_trial(self.out, trial, Path(path),
                            model_factory=model_factory or self.model_factory,
                            trust_model_spec=trust_model_spec)


CLI_ONLY: tuple[str, ...] = ("config", "backend", "ray_address", "cpus_per_trial",
                             "gpus_per_trial", "max_concurrent")
"""Options of ``lpsd-search search`` that ``search`` does not take: the TOML file (pass the
arguments) and the Ray backend (``lpsd-search search --backend ray``)."""


def search(model: Model = SearchOptions.model, data: Data = SearchOptions.data, *,
           budget: float | str | Sequence[float | str],
           out: str | Path = SearchOptions.out,
           checkpoint: str | None = None,
           space: str = SearchOptions.space,
           objectives: str = SearchOptions.objectives,
           latency_batch: int | None = None,
           trials: int = SearchConfig.trials,
           finetune_steps: int = TrainConfig.steps,
           finetune_lr: float = TrainConfig.lr,
           batch_size: int = TrainConfig.batch_size,
           distill: float = TrainConfig.distill_alpha,
           distill_temperature: float = TrainConfig.distill_temperature,
           admm_steps: int | None = None,
           admm_rho: float | None = None,
           admm_rho_growth: float | None = None,
           orth_reg: float | None = None,
           seed: int = SearchConfig.seed,
           sampler: str = SearchConfig.sampler,
           strategy: str = SearchConfig.strategy,
           global_share: float = SearchConfig.global_share,
           warm_starts: str | Sequence[str] = SearchConfig.warm_starts,
           no_warm_start: bool = False,
           promote_steps: int | None = None,
           promote_margin: float = SearchConfig.promote_margin,
           promote_top: int = SearchConfig.promote_top,
           min_accuracy: float | None = None,
           storage: str | None = None,
           study: str = SearchConfig.study_name,
           train_epochs: float = BaselineConfig.epochs,
           device: str = SearchOptions.device,
           cache_dir: str | Path | None = None,
           precision: str = RuntimeConfig.precision,
           channels_last: str = RuntimeConfig.channels_last,
           compile: bool = RuntimeConfig.compile,
           threads: int | None = None,
           workers: int = RuntimeConfig.workers,
           no_report: bool = False) -> SearchResult:
    """Run (or continue) a search; every argument is the ``lpsd-search search`` option of the
    same name, with the same default (the dataclasses' of ``lpsd_search.config``), and the
    files written are the command's: ``pareto.json``, ``trials.csv``, ``models/``,
    ``study.db``, ``pareto.png`` and ``report.html``.

    The command line's ``--config`` and Ray options are not taken here (``CLI_ONLY``).
    ``search_options(**arguments)`` gives the options of spec arguments without running them.
    Each finished trial logs one line (logger ``lpsd_search.progress``, INFO).

    Args:
        model: model spec (``digits-cnn``, ``vgg16:width=0.25``, ``pkg.mod:factory`` …), a
            trained ``nn.Module`` (compressed from its own weights; a ``checkpoint`` replaces
            them), or a function returning an untrained one (called with those of
            ``in_channels``, ``num_classes``, ``input_size`` it takes; trained and cached).
        data: data spec (``digits``, ``fashion-mnist``, ``cifar10:DIR`` …) or torch datasets of
            ``(C×H×W image, label)``: one (split 70/15/15), ``(train, test)`` or
            ``(train, val, test)``.
        budget: one budget or several (``0.1``, ``50000``, ``"flops=0.3"``).
        out: results folder.
        checkpoint: trained weights; None trains and caches a baseline (``train_epochs``).
        space: search-space preset or TOML file.
        objectives: objectives preset, TOML file or a list such as ``"accuracy,flops"``.
        latency_batch: batch size of the measured latency objective.
        trials: completed trials the study should hold (a re-run tops it up).
        finetune_steps: fine-tune steps of every trial.
        finetune_lr: fine-tune learning rate.
        batch_size: fine-tune batch size.
        distill: knowledge-distillation weight from the dense model (0 = off).
        distill_temperature: distillation temperature.
        admm_steps: ADMM steps towards each plan's ranks before it is decomposed (None: the
            space's ``[training]`` table, else none).
        admm_rho: ADMM's starting penalty (None: as ``admm_steps``).
        admm_rho_growth: ADMM's penalty growth per dual update (None: as ``admm_steps``).
        orth_reg: weight of the factors' orthogonality penalty in the fine-tune (None: as
            ``admm_steps``).
        seed: seed of the sampler and the fine-tunes (not of the data split, nor the baseline).
        sampler: ``tpe``, ``nsga2`` or ``random``.
        strategy: ``ladder``, ``global-local`` or ``flat``.
        global_share: share of the trials in the global stage.
        warm_starts: heuristic plans run first (names, or a comma list).
        no_warm_start: run no warm starts.
        promote_steps: fine-tune steps of promoted trials (None: 3× ``finetune_steps``; 0
            disables promotion).
        promote_margin: promote trials within this validation accuracy of the front.
        promote_top: ``ladder`` strategy: promote the best this many trials of each rung.
        min_accuracy: validation accuracy a point needs to be a report's best at a level
            (None: half the baseline's).
        storage: Optuna storage URL (None: ``OUT/study.db``).
        study: study name in the storage.
        train_epochs: epochs of the baseline trained when no checkpoint is given.
        device: ``auto``, ``cpu`` or ``cuda:N``.
        cache_dir: where trained baselines are cached (None: ``~/.cache/lpsd-search``).
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16`` (autocast of fine-tune and
            evaluation; ``auto`` is bf16 on AMX/AVX512-BF16 CPUs, fp32 elsewhere).
        channels_last: ``auto`` (on the CPU, off on CUDA), ``on`` or ``off``.
        compile: ``torch.compile`` each compressed model for its fine-tune.
        threads: CPU threads per process (None: derived from the free cores and ``workers``).
        workers: trials run at once, one process each, on the same device and study (spec
            arguments only: objects cannot be handed to other processes).
        no_report: skip ``pareto.png`` and ``report.html``.

    Returns:
        The result, read from the files the search wrote.

    Raises:
        UserInputError: an invalid option (one line naming it and what is valid), or an ``out``
            holding another study's results.
        RunFault: the run could not go on (disk full, storage lost, trials failing in a row);
            finished trials are kept and the same call continues.
    """
    arguments = {k: v for k, v in locals().items() if k not in ("no_report", "model", "data")}
    from lpsd_search.cli.progress import SearchProgress

    with given(model, data) as (model_spec, data_spec, factory):
        options = search_options(model=model_spec, data=data_spec, **arguments)
        if options.runtime.workers > 1 and (factory is not None or data_spec != data):
            raise UserInputError(f"workers={workers} needs the model and data as spec strings; "
                                 "valid: workers=1 with a module, factory or datasets")
        with SearchProgress(options.search.trials, enabled=False) as progress:
            document = run_search(options, on_trial=progress.update, on_start=progress.update)
    if not no_report:
        _reports(options.out)
    return SearchResult(options.out, document, factory)


@dataclass(frozen=True)
class CompressResult:
    """What ``compress`` left in its folder: ``plan.json`` (``document``) and ``model.pt``.

    Attributes:
        out: the folder.
        document: the ``plan.json`` document (plan, sizes, accuracies).
        model_factory: rebuilds the dense architecture of a model given as an object.
    """

    out: Path
    document: dict[str, Any]
    model_factory: Callable[..., nn.Module] | None = field(default=None, repr=False)

    def load(self, *, trust_model_spec: bool = False) -> nn.Module:
        """The fine-tuned compressed model (taking raw images, as every export does)."""
        from lpsd_search.trial.export import COMPRESSED_MODEL, load

        return load(self.out / COMPRESSED_MODEL, model_factory=self.model_factory,
                    trust_model_spec=trust_model_spec)

    def export(self, path: str | Path, *, trust_model_spec: bool = False) -> list[Path]:
        """Write the model (``.pt``) and its ``torch.export`` program (``.pt2``)."""
        from lpsd_search.trial.export import export_trial

        return export_trial(self.out, None, Path(path), model_factory=self.model_factory,
                            trust_model_spec=trust_model_spec)


def compress(model: Model = CompressOptions.model, data: Data = CompressOptions.data, *,
             budget: float | str, method: str = CompressConfig.procedure,
             out: str | Path = CompressOptions.out, checkpoint: str | None = None,
             low_rank: str = CompressConfig.low_rank,
             sparse_share: float = CompressConfig.sparse_share,
             local_passes: int = CompressConfig.local_passes,
             finetune_steps: int = TrainConfig.steps, finetune_lr: float = TrainConfig.lr,
             batch_size: int = TrainConfig.batch_size,
             train_epochs: float = BaselineConfig.epochs, seed: int = 0,
             device: str = CompressOptions.device, cache_dir: str | Path | None = None,
             precision: str = RuntimeConfig.precision,
             channels_last: str = RuntimeConfig.channels_last) -> CompressResult:
    """Run ``lpsd-search compress`` from Python: one whole-model LPSD (Sparsification), ALPSD
    or low-rank plan for ``budget``, fine-tuned, written as ``plan.json`` and ``model.pt``.

    ``model`` and ``data`` are taken as by ``search``; the other arguments are the command's
    options of the same names and defaults.

    Raises:
        UserInputError: an invalid option, model or data.
    """
    from lpsd_search.procedures.run import run_compress

    with given(model, data) as (model_spec, data_spec, factory):
        options = CompressOptions(
            model=model_spec, data=data_spec, budget=str(budget), out=Path(out),
            config=CompressConfig(procedure=method,  # type: ignore[arg-type]
                                  low_rank=low_rank, sparse_share=sparse_share,
                                  local_passes=local_passes),
            checkpoint=checkpoint, seed=seed,
            finetune=TrainConfig(steps=finetune_steps, lr=finetune_lr, batch_size=batch_size,
                                 seed=seed),
            baseline=BaselineConfig(epochs=train_epochs), device=device,
            runtime=RuntimeConfig(precision=precision, channels_last=channels_last),
            cache_dir=None if cache_dir is None else Path(cache_dir))
        document = run_compress(options)
    return CompressResult(options.out, document, factory)
