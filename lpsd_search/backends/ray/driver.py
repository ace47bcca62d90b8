"""The Ray Tune backend: the same trials as the Optuna controller, run as Tune trials.

``run_ray_search`` connects to a Ray cluster (``--ray-address``) or starts a local one, and runs
the search space's define-by-run sampler through Tune's ``OptunaSearch`` (several objectives)
under a concurrency limit, with ``cpus`` / fractional ``gpus`` per trial. Every finished Tune
trial is copied into the Optuna results study in ``--storage`` (with its constraints, its
measurements and the node that ran it), so ``pareto.json`` and ``trials.csv`` are the same files
as with the Optuna backend and the report reads either alike.

Fault tolerance is Tune's: the experiment lives under ``OUT/ray/<study>-<n>``; an interrupted
run is restored on the next invocation (``Tuner.restore(resume_errored=True)``), and a trial
whose worker or node died is retried once (``FailureConfig(max_failures=1)``). Copies are keyed
on the Tune trial id, so a restored run never adds a trial twice.

Every trial samples every parameter (a ladder trial's rung and policy, or with ``--strategy
flat`` every per-layer one): the global → local stages, the promotion and the saved front models
are the Optuna controller's. Nodes need
lpsd-search installed; the data and the dense weights come from the driver (``worker``).

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
    from ray.tune import ResultGrid

    from lpsd_search.backends.ray.record import StudyRecorder
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


def _run_experiments(runner: TrialRunner, recorder: StudyRecorder, key: str,
                     config: RayConfig) -> None:
    """Restore the latest unfinished experiment, then start one for the trials still missing."""
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from lpsd_search.backends.ray.record import Record, make_searcher

    options = runner.options
    root = (options.out / "ray").resolve()
    resources = {"cpu": config.cpus_per_trial, "gpu": config.gpus_per_trial}
    function = tune.with_resources(
        tune.with_parameters(trainable, shipment=_ship(runner, key, config)), resources)
    existing = _experiment_dirs(root, options.search.study_name)
    if existing and tune.Tuner.can_restore(str(existing[-1])):
        logger.info("restoring the Ray Tune experiment %s", existing[-1])
        tuner = tune.Tuner.restore(str(existing[-1]), function, resume_errored=True)
        _finish(tuner.fit(), recorder)
    missing = options.search.trials - recorder.completed()
    if missing <= 0:
        return
    searcher = ConcurrencyLimiter(make_searcher(runner, recorder.study, key),
                                  max_concurrent=config.max_concurrent)
    name = f"{options.search.study_name}-{len(existing) + 1}"
    logger.info("Ray Tune experiment %s: %d trials, %d at a time", name, missing,
                config.max_concurrent)
    tuner = tune.Tuner(
        function,
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=missing,
                                    reuse_actors=True, trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(storage_path=str(root), name=name, verbose=0,
                                  failure_config=tune.FailureConfig(
                                      max_failures=config.max_failures),
                                  callbacks=[Record(key)]),
    )
    _finish(tuner.fit(), recorder, missing)


def _finish(grid: ResultGrid, recorder: StudyRecorder, expected: int | None = None) -> None:
    """Record the experiment's trials; raise ``KeyboardInterrupt`` if it was interrupted."""
    recorder.sweep(grid)
    # Tune ends ``fit`` quietly on Ctrl-C, after saving the experiment for ``Tuner.restore``.
    if grid.num_terminated + grid.num_errors < len(grid) or (
            expected is not None and len(grid) < expected):
        raise KeyboardInterrupt


def run_ray_search(options: SearchOptions, config: RayConfig) -> dict[str, Any]:
    """Run (or continue) a search on Ray Tune and return the ``pareto.json`` document.

    Args:
        options: what to search (as for the Optuna backend); ``options.search.trials`` is the
            number of completed trials the results study should hold at the end.
        config: cluster address, resources per trial, concurrency, retries.

    Raises:
        UserInputError: bad input, Ray missing (``pip install 'lpsd-search[ray]'``), or an
            ``--out`` holding another study's results.
        RunFault: the results could not be written, or the storage stopped answering.
    """
    try:
        import ray
    except ImportError:
        raise UserInputError("the ray backend needs Ray: pip install 'lpsd-search[ray]'") from None
    from lpsd_search.backends.ray.record import StudyRecorder
    from lpsd_search.report.results import write_results
    from lpsd_search.strategy.faults import guarding, writing
    from lpsd_search.strategy.runner import TrialRunner

    runner = TrialRunner.from_options(options)
    study = runner.open_study()  # refuses an --out holding another study's results
    key = search_key(options, runner.storage_url())
    recorder = StudyRecorder.register(key, study, runner)
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=config.address, logging_level=logging.WARNING,
                     include_dashboard=False)
        except ConnectionError as error:
            raise UserInputError(f"cannot reach the Ray cluster at {config.address!r}: "
                                 f"{error}") from None
    try:
        with guarding(runner.storage_url()):
            _run_experiments(runner, recorder, key, config)
    finally:
        StudyRecorder.unregister(key)
        if started_here:
            ray.shutdown()
    with guarding(runner.storage_url()), writing(options.out):
        return write_results(study, options.out)


