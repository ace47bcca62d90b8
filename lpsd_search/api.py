"""The Python API: ``lpsd_search.search(...)`` mirrors ``lpsd-search search``.

Its defaults are the dataclasses' of ``lpsd_search.config``, and its arguments go through the
same ``search_options`` as the command line's.

Example:
    >>> import lpsd_search
    >>> result = lpsd_search.search("digits-cnn", "digits", budget=0.3, trials=12,
    ...                             out="runs/digits")  # doctest: +SKIP
    >>> best = max(result.pareto, key=lambda p: p["accuracy"])  # doctest: +SKIP
    >>> result.export(best["trial"], "digits-best.pt")  # doctest: +SKIP
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lpsd_search.backends.optuna import search as run_search
from lpsd_search.config import (
    BaselineConfig,
    RuntimeConfig,
    SearchConfig,
    SearchOptions,
    TrainConfig,
)
from lpsd_search.options import search_options


@dataclass(frozen=True)
class SearchResult:
    """What a search left in its results folder.

    Attributes:
        out: the results folder.
        document: the ``pareto.json`` document.
    """

    out: Path
    document: dict[str, Any]

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
        """Write a front trial's model (``.pt``) and its ``torch.export`` program (``.pt2``).

        A search of a user's model (``nets.py:build``) needs ``model_factory`` or
        ``trust_model_spec=True`` to rebuild it, as for ``lpsd_search.load``.
        """
        from lpsd_search.trial.export import export_trial

        return export_trial(self.out, trial, Path(path), model_factory=model_factory,
                            trust_model_spec=trust_model_spec)


CLI_ONLY: tuple[str, ...] = ("config", "no_report", "backend", "ray_address", "cpus_per_trial",
                             "gpus_per_trial", "max_concurrent")
"""Options of ``lpsd-search search`` that ``search`` does not take: the TOML file (pass the
arguments), the visual report (``lpsd_search.report.html.render_report(out)`` draws it) and the
Ray backend (``lpsd-search search --backend ray``)."""


def search(model: str = SearchOptions.model, data: str = SearchOptions.data, *,
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
           seed: int = SearchConfig.seed,
           sampler: str = SearchConfig.sampler,
           strategy: str = SearchConfig.strategy,
           global_share: float = SearchConfig.global_share,
           warm_starts: str | Sequence[str] = SearchConfig.warm_starts,
           no_warm_start: bool = False,
           promote_steps: int | None = None,
           promote_margin: float = SearchConfig.promote_margin,
           storage: str | None = None,
           study: str = SearchConfig.study_name,
           train_epochs: float = BaselineConfig.epochs,
           device: str = SearchOptions.device,
           cache_dir: str | Path | None = None,
           precision: str = RuntimeConfig.precision,
           channels_last: str = RuntimeConfig.channels_last,
           compile: bool = RuntimeConfig.compile,
           threads: int | None = None,
           workers: int = RuntimeConfig.workers) -> SearchResult:
    """Run (or continue) a search; every argument is the ``lpsd-search search`` option of the
    same name, with the same default (the dataclasses' of ``lpsd_search.config``).

    The command line's ``--config``, ``--no-report`` and Ray options are not taken here
    (``CLI_ONLY``). ``search_options(**arguments)`` gives the options without running them.

    Args:
        model: model spec (``digits-cnn``, ``vgg16:width=0.25``, ``pkg.mod:factory`` …).
        data: data spec (``digits``, ``fashion-mnist``, ``cifar10:DIR`` …).
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
        seed: seed of the sampler, the fine-tune and the baseline.
        sampler: ``tpe``, ``nsga2`` or ``random``.
        strategy: ``global-local`` or ``flat``.
        global_share: share of the trials in the global stage.
        warm_starts: heuristic plans run first (names, or a comma list).
        no_warm_start: run no warm starts.
        promote_steps: fine-tune steps of promoted trials (None: 3× ``finetune_steps``; 0
            disables promotion).
        promote_margin: promote trials within this validation accuracy of the front.
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
        workers: trials run at once, one process each, on the same device and study.

    Returns:
        The result, read from the files the search wrote.

    Raises:
        UserInputError: an invalid option (one line naming it and what is valid), or an ``out``
            holding another study's results.
        RunFault: the run could not go on (disk full, storage lost, trials failing in a row);
            finished trials are kept and the same call continues.
    """
    options = search_options(**locals())
    return SearchResult(options.out, run_search(options))
