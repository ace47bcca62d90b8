"""The in-process engine: Optuna workers asking and telling trials on one storage.

``search`` runs (or continues) one search from its options: data and dense model, study,
warm starts, the global → local loop of ``run_search`` (the stage of each trial is the
controller's choice, ``search.controller``), promotion, and the results files. Several processes
pointed at one ``--storage`` share the work; a killed run loses no finished trial.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from lpsd_search.config import SearchConfig, SearchOptions
from lpsd_search.errors import UserInputError
from lpsd_search.report.record import (
    fail_reason,
    has_origin,
    set_fail_reason,
    set_trial_origin,
    set_worker,
    write_attrs,
)
from lpsd_search.report.results import write_results
from lpsd_search.strategy.controller import (
    MAX_CONSECUTIVE_FAILURES,
    choose_stage,
    claimed_count,
    fail_dead_trials,
    is_surplus,
)
from lpsd_search.strategy.promotion import promote
from lpsd_search.strategy.runner import TrialOutcome, TrialRunner
from lpsd_search.strategy.samplers import FixingSampler, make_sampler
from lpsd_search.strategy.storage import fail_stale, heartbeat
from lpsd_search.strategy.warm_starts import enqueue_warm_starts
from lpsd_search.trial.export import prune_models

logger = logging.getLogger(__name__)


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


def run_search(study: optuna.Study, runner: TrialRunner, config: SearchConfig,
               out_dir: Path, on_trial: Callable[[optuna.Study], None] | None = None) -> None:
    """Run trials until the study holds ``config.trials`` completed ones, then promote.

    Args:
        study: the opened study; its sampler must be a ``FixingSampler``.
        runner: builds, fine-tunes and measures trials.
        config: trial count, stages, warm starts, promotion.
        out_dir: where results are rewritten after every trial.
        on_trial: called after every finished trial (progress display).
    """
    sampler = study.sampler
    if not isinstance(sampler, FixingSampler):
        raise TypeError("run_search needs a study whose sampler is a FixingSampler")
    fail_dead_trials(study)
    fail_stale(study)
    if config.warm_starts and runner.created_study and not study.trials:
        enqueue_warm_starts(study, runner, config.warm_starts)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    failures = 0
    while claimed_count(study) < config.trials:
        rng = random.Random(config.seed * 100_003 + len(study.trials))
        stage, fixed, base = choose_stage(study, runner, config, rng)
        sampler.fixed = fixed
        try:
            trial = study.ask()
            params = runner.suggest(trial)
        finally:
            sampler.fixed = {}
        set_worker(trial, worker)
        if is_surplus(study, trial.number, config.trials):
            # Another worker asked between our count and our ask: the study has its trials.
            set_fail_reason(trial, "surplus: the study already had its trials")
            study.tell(trial, state=TrialState.FAIL)
            time.sleep(1.0)
            continue
        if not has_origin(trial):  # a warm start's origin came with its enqueueing
            set_trial_origin(trial, stage=stage, base=base)
        outcome = _attempt(study, trial, runner, params, out_dir)
        if outcome is None:
            failures += 1
            if failures >= MAX_CONSECUTIVE_FAILURES:
                write_results(study, out_dir)
                reason = fail_reason(study.trials[-1])
                raise RuntimeError(f"{failures} trials failed in a row; last reason: {reason}")
        else:
            failures = 0
        document = write_results(study, out_dir)
        if outcome is not None and config.save_models:
            _keep_front_models(runner, out_dir, trial.number, outcome,
                               {point["trial"] for point in document["points"]})
        if on_trial is not None:
            on_trial(study)
    fail_dead_trials(study)
    if config.promote_steps:  # None (never resolved) or 0: no promotion
        promote(study, runner, config, out_dir)
    write_results(study, out_dir)


def _attempt(study: optuna.Study, trial: optuna.Trial, runner: TrialRunner,
             params: dict[str, Any], out_dir: Path) -> TrialOutcome | None:
    """Run one trial and tell the study; a failure is recorded with its reason."""
    try:
        with heartbeat(study, trial):
            outcome = runner.run(params, trial.user_attrs)
    except KeyboardInterrupt:
        set_fail_reason(trial, "interrupted")
        study.tell(trial, state=TrialState.FAIL)
        write_results(study, out_dir)
        raise
    except UserInputError:
        study.tell(trial, state=TrialState.FAIL)
        raise
    except Exception as error:  # a failed trial is recorded and the search goes on
        reason = f"{type(error).__name__}: {error}".splitlines()[0][:500]
        logger.warning("trial %d failed: %s", trial.number, reason)
        set_fail_reason(trial, reason)
        study.tell(trial, state=TrialState.FAIL)
        return None
    write_attrs(trial, outcome.attrs)
    for budget, excess in zip(runner.budgets, outcome.constraints, strict=True):
        trial.set_constraint(budget.metric, excess)
    study.tell(trial, outcome.values)
    return outcome


def _keep_front_models(runner: TrialRunner, out_dir: Path, number: int,
                       outcome: TrialOutcome, numbers: set[int]) -> None:
    """Save the trial's weights when it is on the front; drop those that fell off it."""
    if number in numbers and outcome.model is not None:
        runner.save_model(number, outcome.model, outcome.attrs)
    prune_models(out_dir, numbers)
