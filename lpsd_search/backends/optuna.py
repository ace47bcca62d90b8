"""The in-process engine: Optuna workers running the search controller's jobs on one storage.

``search`` runs (or continues) one search from its options: data and dense model, study, the
jobs of the controller (``strategy.ask_tell``: warm starts, stages, promotions) executed by
``run_search`` in this process, and the results files. Several processes pointed at one
``--storage`` share the work; a killed run loses no finished trial.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from lpsd_search.backends.workers import join_workers, start_workers, stop_workers
from lpsd_search.config import SearchConfig, SearchOptions
from lpsd_search.errors import RunFault, UserInputError
from lpsd_search.report.results import write_results
from lpsd_search.strategy.ask_tell import Job, SearchController
from lpsd_search.strategy.faults import guarding, writing
from lpsd_search.strategy.runner import TrialRunner
from lpsd_search.strategy.samplers import FixingSampler, make_sampler
from lpsd_search.strategy.storage import heartbeat

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
    sampler = make_sampler(options.search.sampler, seed, strategy=options.search.strategy)
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
    """Run the jobs of the search's controller until it has none left.

    The strategy (stages, trial count, promotions, saved models, failures) is the
    controller's (``strategy.ask_tell``); this loop executes its jobs in this process, with a
    heartbeat on storages that have them.

    Args:
        study: the study opened by ``runner.open_study``; its sampler must be a
            ``FixingSampler``.
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
        controller = SearchController(study, runner, config, out_dir, sampler,
                                      on_trial=on_trial)
        controller.start()
        try:
            while not controller.done:
                job = controller.ask()
                if job is None:  # another worker's trial or a surplus ask: look again shortly
                    if not controller.done:
                        time.sleep(1.0)
                    continue
                _execute(controller, runner, job)
        except KeyboardInterrupt:
            # Anywhere in the loop, not only in a job: an asked trial must not stay RUNNING.
            controller.abandon()
            raise
        with writing(out_dir):
            write_results(study, out_dir)


def _execute(controller: SearchController, runner: TrialRunner, job: Job) -> None:
    """Run one job here and tell the controller its outcome."""
    try:
        with heartbeat(controller.storage, controller.study, job.number):
            outcome = runner.run(job.params, job.attrs, job.steps, test=job.test)
            if controller.wants_test(job, outcome):
                runner.measure_test(outcome)
    except Exception as error:  # recorded with its reason; the search goes on
        controller.tell(job, error)
        return
    model = outcome.model

    def save() -> None:
        assert model is not None
        runner.save_model(job.number, model, outcome.attrs)

    controller.tell(job, outcome, save if model is not None else None)
