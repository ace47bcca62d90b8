"""Several trials at once on one device: worker processes sharing one command's study.

``--workers N`` starts N − 1 processes beside the command's own, each running the same search
on the same storage (as N commands started by hand would), with ``--threads`` split between
them. They are started once the study exists, so only the command's own process creates it and
enqueues the warm starts; the trial count, promotion claims and results files are already safe
with several workers on one storage.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable
from dataclasses import replace
from multiprocessing.process import BaseProcess

from lpsd_search.config import SearchOptions
from lpsd_search.errors import RunFault
from lpsd_search.trial.runtime import derived_threads

logger = logging.getLogger(__name__)


def worker_options(options: SearchOptions) -> SearchOptions:
    """The options each worker process runs: one worker, its share of the threads."""
    runtime = options.runtime
    threads = runtime.threads or derived_threads(runtime.workers)
    return replace(options, runtime=replace(runtime, workers=1, threads=threads))


def start_workers(target: Callable[[SearchOptions, int], None],
                  options: SearchOptions) -> list[BaseProcess]:
    """Start ``options.runtime.workers − 1`` processes running ``target(options, index)``.

    ``target`` must be a module-level function: the processes are spawned (a forked process
    would inherit the parent's CUDA context and storage connections, which breaks both).
    """
    count = options.runtime.workers
    if count <= 1:
        return []
    context = multiprocessing.get_context("spawn")
    child = worker_options(options)
    processes: list[BaseProcess] = [
        context.Process(target=target, args=(child, index), name=f"worker-{index}")
        for index in range(1, count)]
    for process in processes:
        process.start()
    logger.info("started %d more workers with %s threads each", len(processes),
                child.runtime.threads)
    return processes


def stop_workers(processes: list[BaseProcess]) -> None:
    """Stop the workers early (the command itself failed or was interrupted).

    Their running trials are left RUNNING; the next run fails them (heartbeats) and re-runs.
    """
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join()


def join_workers(processes: list[BaseProcess]) -> None:
    """Wait for the workers to finish.

    Raises:
        RunFault: a worker ended with an error (it printed its own one-line reason).
    """
    for process in processes:
        process.join()
    failed = [f"{p.name} (exit status {p.exitcode})" for p in processes if p.exitcode]
    if failed:
        raise RunFault(f"{len(failed)} of the worker processes failed: {', '.join(failed)}")
