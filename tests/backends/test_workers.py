"""``--workers N``: several trials at once from one command, on one device and study."""

from __future__ import annotations

import csv
from pathlib import Path

import optuna
import pytest

from lpsd_search.backends.workers import worker_options
from lpsd_search.cli.main import main
from lpsd_search.config import RuntimeConfig, SearchOptions
from lpsd_search.report.record import trial_worker
from lpsd_search.strategy.storage import open_storage
from lpsd_search.trial.runtime import available_cores


def test_each_worker_gets_its_share_of_the_threads():
    options = SearchOptions(budget="0.5", runtime=RuntimeConfig(workers=4))
    child = worker_options(options)
    assert child.runtime.workers == 1
    assert 1 <= child.runtime.threads <= max(1, available_cores() // 4)
    given = SearchOptions(budget="0.5", runtime=RuntimeConfig(workers=4, threads=3))
    assert worker_options(given).runtime.threads == 3


@pytest.mark.parametrize("argv", [
    ["--workers", "0"], ["--workers", "1.5"], ["--workers", "nan"],
    ["--backend", "ray", "--workers", "2"],
])
def test_bad_worker_counts_are_one_line_errors(argv, capsys, tmp_path):
    try:
        status = main(["search", "--budget", "0.5", "--out", str(tmp_path / "out"), *argv])
    except SystemExit as stop:  # argparse's own errors leave through SystemExit
        status = int(stop.code or 0)
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "--workers" in err[0], err


@pytest.mark.slow
def test_two_workers_fill_one_study(tmp_path: Path, cache_dir: Path):
    out = tmp_path / "out"
    status = main(["search", "--model", "digits-cnn", "--data", "digits", "--budget", "0.5",
                   "--trials", "16", "--finetune-steps", "400", "--train-epochs", "2",
                   "--no-warm-start", "--strategy", "flat", "--promote-steps", "0",
                   "--workers", "2", "--device", "cpu", "--cache-dir", str(cache_dir),
                   "--out", str(out), "--no-report"])
    assert status == 0
    study = optuna.load_study(study_name="lpsd-search",
                              storage=open_storage(f"sqlite:///{out / 'study.db'}"))
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 16
    # Two processes ran them (the second starts a few seconds late: imports, data, baseline),
    # each with its share of the cores.
    assert len({trial_worker(t) for t in complete}) == 2
    with (out / "trials.csv").open() as handle:
        threads = {row["threads"] for row in csv.DictReader(handle)}
    assert len(threads) == 1 and int(threads.pop()) <= max(1, available_cores() // 2)
