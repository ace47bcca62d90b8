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
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from lpsd_search.backends.workers import join_workers, start_workers, stop_workers
from lpsd_search.config import SearchConfig, SearchOptions
from lpsd_search.errors import RunFault, UserInputError
from lpsd_search.report.record import (
    has_origin,
    set_fail_reason,
    set_trial_origin,
    set_worker,
    write_attrs,
)
from lpsd_search.report.results import write_results
from lpsd_search.strategy.controller import (
    choose_stage,
    claimed_count,
    fail_dead_trials,
    is_surplus,
    joins_front,
)
from lpsd_search.strategy.faults import (
    FailureStreak,
    guarding,
    is_out_of_memory,
    release_memory,
    write_fault_message,
    writing,
)
from lpsd_search.strategy.promotion import promote, warm_starts_done
from lpsd_search.strategy.results_folder import prune_front_models
from lpsd_search.strategy.runner import TrialOutcome, TrialRunner
from lpsd_search.strategy.samplers import FixingSampler, make_sampler
from lpsd_search.strategy.storage import fail_stale, heartbeat
from lpsd_search.strategy.warm_starts import enqueue_warm_starts

logger = logging.getLogger(__name__)


def search(options: SearchOptions,
           on_trial: Callable[[optuna.Study], None] | None = None,
           on_start: Callable[[optuna.Study], None] | None = None,
           worker: int = 0) -> dict[str, Any]:
    """Run (or continue) a search and return the ``pareto.json`` document.

    With ``options.runtime.workers`` > 1 the command's own process (``worker`` 0) starts the
    other workers once its study is open, runs trials beside them and waits for them.

    Args:
        options: what to search.
        on_trial: called after every finished trial (progress display).
        on_start: called once the study is open, before the first trial.
        worker: this process's index among the command's workers (0: the command itself).

    Raises:
        UserInputError: any bad input, before expensive work where it can be checked early;
            ``--out`` holding another study's results.
        RunFault: the run cannot go on (disk full, storage lost, trials failing in a row).
    """
    if options.checkpoint is not None and not Path(options.checkpoint).is_file():
        raise UserInputError(f"cannot read checkpoint {options.checkpoint!r}: no such file")
    seed = options.search.seed
    if worker or (options.search.storage and not options.search.storage.startswith("sqlite")):
        # Workers sharing a storage must not draw the same samples: one seed each.
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
    processes = start_workers(_worker_main, options) if worker == 0 else []
    try:
        run_search(study, runner, options.search, options.out, on_trial)
    except BaseException:
        stop_workers(processes)
        raise
    join_workers(processes)
    with guarding(runner.storage_url()), writing(options.out):
        return write_results(study, options.out)


def _worker_main(options: SearchOptions, index: int) -> None:
    """One extra worker process of ``--workers`` (spawned: module level, options pickled)."""
    logging.basicConfig(level=logging.WARNING, format=f"worker-{index} %(name)s: %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        search(options, worker=index)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except (UserInputError, RunFault) as error:
        print(f"lpsd-search worker-{index}: {error}", file=sys.stderr)
        raise SystemExit(1) from None


def run_search(study: optuna.Study, runner: TrialRunner, config: SearchConfig,
               out_dir: Path, on_trial: Callable[[optuna.Study], None] | None = None) -> None:
    """Run trials until the study holds ``config.trials`` completed ones, then promote.

    Args:
        study: the opened study; its sampler must be a ``FixingSampler``.
        runner: builds, fine-tunes and measures trials.
        config: trial count, stages, warm starts, promotion.
        out_dir: where results are rewritten after every trial.
        on_trial: called after every finished trial (progress display).

    Raises:
        RunFault: results or weights could not be written, the storage stopped answering, or
            trials kept failing (``strategy.faults``); finished trials stay in the study.
    """
    sampler = study.sampler
    if not isinstance(sampler, FixingSampler):
        raise TypeError("run_search needs a study whose sampler is a FixingSampler")
    with guarding(runner.storage_url()):
        _run_trials(study, sampler, runner, config, out_dir, on_trial)
        fail_dead_trials(study)
        if config.promote_steps:  # None (never resolved) or 0: no promotion
            promote(study, runner, config, out_dir)
        with writing(out_dir):
            write_results(study, out_dir)


def _run_trials(study: optuna.Study, sampler: FixingSampler, runner: TrialRunner,
                config: SearchConfig, out_dir: Path,
                on_trial: Callable[[optuna.Study], None] | None) -> None:
    """The ask/tell loop of ``run_search``."""
    fail_dead_trials(study)
    fail_stale(study)
    if config.warm_starts and runner.created_study and not study.trials:
        enqueue_warm_starts(study, runner, config.warm_starts, config.trials)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    streak = FailureStreak(runner.options.finetune.lr, runner.options.finetune.batch_size)
    while claimed_count(study) < config.trials:
        rng = random.Random(config.seed * 100_003 + len(study.trials))
        stage, fixed, base = choose_stage(study, runner, config, rng)
        sampler.fixed = fixed
        try:
            trial = study.ask()
            set_worker(trial, worker)  # at once: is_surplus of other workers sees it claimed
            params = runner.suggest(trial)
        finally:
            sampler.fixed = {}
        if is_surplus(study, trial.number, config.trials):
            # Another worker asked between our count and our ask: the study has its trials.
            set_fail_reason(trial, "surplus: the study already had its trials")
            study.tell(trial, state=TrialState.FAIL)
            time.sleep(1.0)
            continue
        if not has_origin(trial):  # a warm start's origin came with its enqueueing
            set_trial_origin(trial, stage=stage, base=base)
        outcome = _attempt(study, trial, runner, params, config, out_dir)
        if config.strategy == "ladder" and config.promote_steps and warm_starts_done(study):
            # Successive halving during the run: each rung's best go to the long fine-tune
            # as soon as they are known, so the front grows while the search runs.
            promote(study, runner, config, out_dir, final=False)
        with writing(out_dir):
            write_results(study, out_dir)
            if config.save_models:
                prune_front_models(study, out_dir)
        if on_trial is not None:
            on_trial(study)
        if isinstance(outcome, TrialOutcome):
            streak.succeeded()
        else:
            streak.failed(outcome)


def _attempt(study: optuna.Study, trial: optuna.Trial, runner: TrialRunner,
             params: dict[str, Any], config: SearchConfig,
             out_dir: Path) -> TrialOutcome | Exception:
    """Run one trial and tell the study; a failure is recorded with its reason and returned.

    With ``config.save_models`` the weights are saved before the study is told: a trial is
    complete only once its weights are on disk (the prune after the tell drops those of trials
    off the front). When they cannot be saved the trial is failed, with the reason, and the
    run stops: a disk that is full stays full.
    """
    # A ladder search reports promoted trials only: their promotion measures the test
    # accuracy and keeps the weights.
    promoted_front = config.strategy == "ladder" and bool(config.promote_steps)
    try:
        with heartbeat(study, trial):
            outcome = runner.run(params, trial.user_attrs, test=False)
            if not promoted_front and joins_front(study, trial.number, outcome.attrs,
                                                  config.promote_margin):
                runner.measure_test(outcome)
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
        if is_out_of_memory(error):
            release_memory()
        return error
    write_attrs(trial, outcome.attrs)
    if config.save_models and outcome.model is not None and not promoted_front:
        try:
            runner.save_model(trial.number, outcome.model, outcome.attrs)
        except OSError as error:
            set_fail_reason(trial, f"its weights could not be saved: {error}"[:500])
            study.tell(trial, state=TrialState.FAIL)
            raise RunFault(write_fault_message(error, out_dir)) from error
    for budget, excess in zip(runner.budgets, outcome.constraints, strict=True):
        trial.set_constraint(budget.metric, excess)
    study.tell(trial, outcome.values)
    return outcome
