"""The Ray Tune engine: the search controller's jobs run as Tune trials on a Ray cluster.

``run_ray_search`` connects to a Ray cluster (``--ray-address``) or starts a local one and runs
the same strategy as the in-process engine (``strategy.ask_tell.SearchController``: warm starts,
global → local or ladder trials, promotions to the longer fine-tune, saved front models) through
a Tune ``Searcher`` (``searcher.ControllerSearcher``) under a concurrency limit, with ``cpus`` /
fractional ``gpus`` per trial. Every job is recorded in the Optuna study in ``--storage`` as it
finishes (with its constraints, its measurements and the node that ran it), so ``pareto.json``,
``trials.csv``, ``models/`` and ``lpsd-search export`` work on a Ray run as on an Optuna run.

Fault tolerance: a trial whose worker or node died is retried by Tune
(``FailureConfig(max_failures)``); a driver killed or interrupted and started again with the
same command goes on from the study (the jobs it was running are failed as interrupted and
asked again) in a new Tune experiment ``OUT/ray/<study>-<n>``, so no finished trial is lost or
repeated. Nodes need lpsd-search installed; the data and the dense weights come from the driver
(``worker``).

Nothing here imports Ray at module import time; ``pip install 'lpsd-search[ray]'`` provides it.

Example:
    >>> from lpsd_search.backends.ray import run_ray_search  # doctest: +SKIP
    >>> run_ray_search(options, RayConfig(address="10.0.0.1:6379", gpus_per_trial=0.25))
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lpsd_search.backends.ray.worker import Shipment, trainable, trial_dirname
from lpsd_search.config import RayConfig, SearchOptions
from lpsd_search.errors import UserInputError

if TYPE_CHECKING:
    from collections.abc import Callable

    import optuna

    from lpsd_search.strategy.ask_tell import SearchController
    from lpsd_search.strategy.runner import TrialRunner

logger = logging.getLogger(__name__)


def search_key(options: SearchOptions, storage_url: str) -> str:
    """A short id of one search (storage and study), shared by driver and workers."""
    text = f"{storage_url}\0{options.search.study_name}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _experiment_dirs(root: Path, study_name: str) -> list[Path]:
    found = [p for p in root.glob(f"{study_name}-*") if p.name.rsplit("-", 1)[1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.rsplit("-", 1)[1]))


def _ship(runner: TrialRunner, key: str, config: RayConfig) -> Shipment:
    import ray

    weights = {name: tensor.detach().cpu()
               for name, tensor in runner.evaluator.model.state_dict().items()}
    return Shipment(key, runner.options, ray.put(runner.data), ray.put(weights),
                    threads=max(1, int(config.cpus_per_trial)))


def _run_experiment(runner: TrialRunner, controller: SearchController, key: str,
                    config: RayConfig) -> None:
    """One Tune experiment running the controller's jobs until it has none left."""
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from lpsd_search.backends.ray.searcher import ControllerSearcher

    options = runner.options
    root = (options.out / "ray").resolve()
    number = len(_experiment_dirs(root, options.search.study_name)) + 1
    name = f"{options.search.study_name}-{number}"
    resources = {"cpu": config.cpus_per_trial, "gpu": config.gpus_per_trial}
    function = tune.with_resources(
        tune.with_parameters(trainable, shipment=_ship(runner, key, config)), resources)
    searcher = ControllerSearcher(controller, root / name)
    logger.info("Ray Tune experiment %s: %d trials, %d jobs at a time", name,
                options.search.trials, config.max_concurrent)
    tuner = tune.Tuner(
        function,
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=config.max_concurrent),
            num_samples=-1, reuse_actors=True, trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(storage_path=str(root), name=name, verbose=0,
                                  failure_config=tune.FailureConfig(
                                      max_failures=config.max_failures)),
    )
    tuner.fit()
    if searcher.fault is not None:
        raise searcher.fault
    if not controller.done:
        # Tune ends ``fit`` quietly on Ctrl-C: the jobs it stopped fail as interrupted.
        searcher.interrupt()
        raise KeyboardInterrupt


def run_ray_search(options: SearchOptions, config: RayConfig,
                   on_trial: Callable[[optuna.Study], None] | None = None) -> dict[str, Any]:
    """Run (or continue) a search on Ray Tune and return the ``pareto.json`` document.

    Args:
        options: what to search (as for the Optuna backend); ``options.search.trials`` is the
            number of completed trials the results study should hold at the end.
        config: cluster address, resources per trial, concurrency, retries.
        on_trial: called after every finished trial (progress display).

    Raises:
        UserInputError: bad input, Ray missing (``pip install 'lpsd-search[ray]'``), or an
            ``--out`` holding another study's results.
        RunFault: the results could not be written, or the storage stopped answering.
    """
    try:
        import ray
    except ImportError:
        raise UserInputError("the ray backend needs Ray: pip install 'lpsd-search[ray]'") from None
    from lpsd_search.report.results import write_results
    from lpsd_search.strategy.ask_tell import SearchController
    from lpsd_search.strategy.faults import guarding, writing
    from lpsd_search.strategy.runner import TrialRunner
    from lpsd_search.strategy.samplers import make_sampler

    sampler = make_sampler(options.search.sampler, options.search.seed,
                           strategy=options.search.strategy)
    runner = TrialRunner.from_options(options)
    study = runner.open_study(sampler)  # refuses an --out holding another study's results
    key = search_key(options, runner.storage_url())
    controller = SearchController(study, runner, options.search, options.out, sampler,
                                  lazy_test=False, on_trial=on_trial)
    started_here = not ray.is_initialized()
    if started_here:
        try:
            # Workers' output reaches the driver's console only with debug logging (-v): a
            # trial's outcome and failure reason come from the controller, and Ray's own
            # teardown sometimes prints a worker's traceback (an actor's SystemExit landing in a
            # weakref callback) after the search has ended cleanly. Without -v it stays in
            # Ray's logs on each node (/tmp/ray/session_latest/logs).
            ray.init(address=config.address, logging_level=logging.WARNING,
                     include_dashboard=False,
                     log_to_driver=logger.isEnabledFor(logging.DEBUG))
        except ConnectionError as error:
            raise UserInputError(f"cannot reach the Ray cluster at {config.address!r}: "
                                 f"{error}") from None
    try:
        with guarding(runner.storage_url()):
            controller.start()
            _run_experiment(runner, controller, key, config)
    finally:
        if started_here:
            ray.shutdown()
    with guarding(runner.storage_url()), writing(options.out):
        return write_results(study, options.out)
