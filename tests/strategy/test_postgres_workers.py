"""Several ``lpsd-search search`` processes sharing one study on a real PostgreSQL server."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from services import PostgresServer, postgres_server

from lpsd_search.report.results import write_results

pytestmark = pytest.mark.postgres

TRIALS = 6
# Same baseline recipe as the conftest fixture, so the workers load the cached weights.
FAST = ["--train-epochs", "8", "--finetune-steps", "20", "--seed", "0", "--budget", "0.5"]


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with postgres_server() as server:
        yield server


def _worker(storage: str, out: Path, cache_dir: Path, trials: int) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "lpsd_search", "-q", "search", "--storage", storage,
               "--study", "shared", "--trials", str(trials), "--out", str(out),
               "--cache-dir", str(cache_dir), "--device", "cpu", *FAST]
    # One torch thread each: two workers on two cores, as two machines would run them.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)


def _run_workers(storage: str, outs: list[Path], cache_dir: Path, trials: int) -> None:
    workers = [_worker(storage, out, cache_dir, trials) for out in outs]
    logs = [worker.communicate(timeout=300)[0] for worker in workers]
    for worker, log in zip(workers, logs, strict=True):
        assert worker.returncode == 0, log


def test_two_workers_share_one_study(postgres, digits_model, cache_dir, tmp_path):
    storage = postgres.create_database("two_workers")
    outs = [tmp_path / "worker0", tmp_path / "worker1"]

    _run_workers(storage, outs, cache_dir, TRIALS)

    study = optuna.load_study(study_name="shared", storage=storage)
    trials = study.get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    assert sorted(numbers) == list(range(len(numbers)))
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == TRIALS, [(t.number, t.state.name) for t in trials]
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    # Both processes ran trials: they cooperated rather than one doing all the work.
    assert len({t.user_attrs["worker"] for t in complete}) == 2
    # No plan was evaluated twice (the warm starts are enqueued once, not once per worker).
    plans = [json.dumps(t.user_attrs["plan"], sort_keys=True) for t in complete]
    assert len(plans) == len(set(plans))

    # The report reads the shared study: every trial, and a front of its completed trials.
    document = write_results(study, tmp_path / "report")
    with (tmp_path / "report" / "trials.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["trial"]) for r in rows] == sorted(numbers)
    assert sum(r["state"] == "COMPLETE" for r in rows) == TRIALS
    front = sorted(p["trial"] for p in document["points"])
    assert len(front) >= 1
    assert front == sorted(int(r["trial"]) for r in rows if r["pareto"] == "1")
    assert set(front) <= {t.number for t in complete}


def test_a_second_round_tops_the_shared_study_up(postgres, digits_model, cache_dir, tmp_path):
    storage = postgres.create_database("top_up")
    outs = [tmp_path / "worker0", tmp_path / "worker1"]
    _run_workers(storage, outs[:1], cache_dir, 2)

    _run_workers(storage, outs, cache_dir, 4)

    study = optuna.load_study(study_name="shared", storage=storage)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 4
    # No plan was evaluated twice across the two rounds.
    assert len({json.dumps(t.user_attrs["plan"], sort_keys=True) for t in complete}) == 4
    numbers = [t.number for t in study.get_trials(deepcopy=False)]
    assert sorted(numbers) == list(range(len(numbers)))


def test_workers_opening_a_fresh_database_at_once_all_succeed(postgres):
    # Optuna creates its schema (tables, then alembic's version table) on first open; without the
    # advisory lock the processes that lose the race fail with "relation ... already exists".
    storage = postgres.create_database("schema_race")
    # Each process imports first, then waits for a common start time, so the opens coincide.
    code = ("import sys, time; from lpsd_search.strategy.storage import open_storage; "
            "time.sleep(max(0.0, float(sys.argv[2]) - time.time())); "
            "open_storage(sys.argv[1]).get_all_studies()")
    start = str(time.time() + 15)
    openers = [subprocess.Popen([sys.executable, "-c", code, storage, start],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(6)]
    logs = [opener.communicate(timeout=120)[0] for opener in openers]
    assert [opener.returncode for opener in openers] == [0] * 6, logs
