"""Promotion claims are atomic: workers racing on one storage (processes or threads on SQLite,
threads on a journal file) claim each trial exactly once; a released claim or one left by a dead
process is claimed again, a live one is not; workers promoting at once run each promotion once;
claims are not taken for searches."""

from __future__ import annotations

import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import optuna
import pytest

from lpsd_search.config import SearchConfig
from lpsd_search.report.claims import release_claim, set_claimant
from lpsd_search.report.record import promoted_measures, write_study_header
from lpsd_search.strategy.ask_tell import SearchController
from lpsd_search.strategy.promotion import claim_promotion
from lpsd_search.strategy.runner import TrialOutcome
from lpsd_search.strategy.samplers import make_sampler
from lpsd_search.strategy.storage import open_storage
from lpsd_search.strategy.study import load_study

TRIALS = 12
WORKERS = 3


def _worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _claim_all(url: str, barrier: Any, results: Any, name: str) -> None:
    """One worker: claim every trial in turn, starting together with the others.

    The claimant ``name`` is no ``host:pid``: a worker that ends before the others reach a
    trial must not make its claims void here (``promote`` re-checks ``is_promoted`` for that).
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(url)
    study = optuna.load_study(study_name="search", storage=storage)
    barrier.wait(timeout=120)
    won = [n for n in range(TRIALS) if claim_promotion(study, n, name, storage) is not None]
    results.put(won)


def _assert_each_claimed_once(claimed: list[list[int]]) -> None:
    counts = Counter(n for won in claimed for n in won)
    assert counts == Counter(range(TRIALS)), counts


@pytest.mark.slow  # ~10 s: each spawned process imports torch
def test_processes_racing_on_one_sqlite_file_claim_each_trial_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(storage=open_storage(url), study_name="search")
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(WORKERS), context.Queue()
    processes = [context.Process(target=_claim_all, args=(url, barrier, results, f"w{i}"))
                 for i in range(WORKERS)]
    for process in processes:
        process.start()
    claimed = [results.get(timeout=300) for _ in processes]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    _assert_each_claimed_once(claimed)
    # One marker study per claimed trial, and no more.
    assert len(optuna.get_all_study_names(open_storage(url))) == 1 + TRIALS


def _race_threads(url: str) -> list[list[int]]:
    """Each thread opens its own storage (its own database connections, its own journal
    reader), as separate processes would, and claims every trial."""
    optuna.create_study(storage=open_storage(url), study_name="search")
    barrier = threading.Barrier(WORKERS)
    claimed: list[list[int]] = []

    class Results:
        def put(self, won: list[int]) -> None:
            claimed.append(won)

    threads = [threading.Thread(target=_claim_all, args=(url, barrier, Results(), f"t{i}"))
               for i in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(claimed) == WORKERS
    return claimed


@pytest.mark.parametrize("storage", ["sqlite:///{}/study.db", "journal:{}/study.log"])
def test_threads_racing_on_one_storage_claim_each_trial_once(storage, tmp_path):
    _assert_each_claimed_once(_race_threads(storage.format(tmp_path)))


def test_released_and_dead_claims_are_claimed_again_live_ones_are_not(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(storage=storage, study_name="search")
    me = _worker()
    first = claim_promotion(study, 0, me, storage)
    assert first is not None
    # Claims live in storages: their names and keys are pinned like the study's.
    assert first.study_name == "search:promotion-claim:0.0"
    assert first.user_attrs == {"claimant": me}
    assert claim_promotion(study, 0, me, storage) is None  # held by a live process (this one)
    release_claim(first)
    assert optuna.load_study(study_name=first.study_name, storage=storage).user_attrs == {
        "claimant": me, "released": True}
    again = claim_promotion(study, 0, me, storage)
    assert again is not None and again.study_name == "search:promotion-claim:0.1"

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    dead = claim_promotion(study, 1, me, storage)
    assert dead is not None
    set_claimant(dead, f"{socket.gethostname()}:{int(finished.stdout)}")
    assert claim_promotion(study, 1, me, storage) is not None  # its process is gone

    elsewhere = claim_promotion(study, 2, me, storage)
    assert elsewhere is not None
    set_claimant(elsewhere, "another-host:1")
    assert claim_promotion(study, 2, me, storage) is None  # another host's claim cannot be judged


def test_claims_are_not_searches_to_report(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    storage = open_storage(url)
    study = optuna.create_study(storage=storage, study_name="search",
                                directions=["maximize", "minimize"])
    write_study_header(study, config={}, baseline={"params": 10}, budgets=[{"limit": 5}],
                       objectives={}, layers={})
    assert claim_promotion(study, 0, _worker(), storage) is not None
    assert load_study(url, None).study_name == "search"




class _Runner:
    """Stands in for ``TrialRunner`` where promotions need it: a slow longer fine-tune that
    counts its calls, the study's storage, no budgets."""

    def __init__(self, calls: Counter[int], storage: optuna.storages.BaseStorage) -> None:
        self.calls = calls
        self.storage = storage
        self.budgets: list[Any] = []
        self.created_study = False
        self.options = SimpleNamespace(finetune=SimpleNamespace(lr=0.01, batch_size=64))

    def run(self, params: dict[str, Any], attrs: dict[str, Any], steps: int | None,
            test: bool = True) -> TrialOutcome:
        self.calls[int(attrs["params"])] += 1
        time.sleep(0.05)  # long enough for the other workers to reach the same trial
        measured = {"params": attrs["params"], "accuracy": attrs["accuracy"] + 0.01}
        return TrialOutcome([0.0, 0.0], [0.0], dict(measured))


def test_controllers_promoting_at_once_promote_each_trial_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(storage=open_storage(url), study_name="search",
                                directions=["maximize", "minimize"])
    write_study_header(study, config={}, baseline={"params": 1000, "accuracy": 0.9,
                                                   "bytes": 4000, "flops": 10000,
                                                   "test_accuracy": 0.9},
                       budgets=[{"metric": "params", "limit": 500}], objectives={}, layers={})
    for accuracy, params in [(0.8, 400), (0.7, 300), (0.6, 200), (0.5, 100)]:  # all on the front
        study.add_trial(optuna.trial.create_trial(
            values=[accuracy, params], constraints={"params": (params - 500) / 500},
            user_attrs={"accuracy": accuracy, "params": params, "bytes": 4 * params,
                        "flops": 10 * params, "test_accuracy": accuracy}))
    calls: Counter[int] = Counter()
    config = SearchConfig(strategy="global-local", trials=4, promote_steps=10,
                          save_models=False, warm_starts=())
    barrier = threading.Barrier(WORKERS)
    done: list[list[int]] = []

    def worker(index: int) -> None:
        storage = open_storage(url)
        own = optuna.load_study(study_name="search", storage=storage)
        runner = _Runner(calls, storage)
        controller = SearchController(own, runner, config,  # type: ignore[arg-type]
                                      tmp_path / f"out{index}", make_sampler("random", index))
        barrier.wait(timeout=60)
        promoted = []
        while (job := controller.ask()) is not None:
            assert job.promotion and job.steps == 10
            controller.tell(job, runner.run(job.params, job.attrs, job.steps))
            promoted.append(job.number)
        assert controller.done
        done.append(promoted)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert calls == Counter({400: 1, 300: 1, 200: 1, 100: 1})
    assert sorted(n for numbers in done for n in numbers) == [0, 1, 2, 3]
    assert sorted(promoted_measures(optuna.load_study(study_name="search", storage=url))) == [
        0, 1, 2, 3]

@pytest.fixture(scope="module")
def postgres() -> Iterator[Any]:
    from services import postgres_server

    with postgres_server() as server:
        yield server


@pytest.mark.postgres
def test_threads_racing_on_postgresql_claim_each_trial_once(postgres):
    _assert_each_claimed_once(_race_threads(postgres.create_database("claims")))
