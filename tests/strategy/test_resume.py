"""A search killed with SIGKILL mid-trial resumes from its storage without losing a finished
trial, and ends with the requested number of finished trials."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

pytestmark = pytest.mark.slow

TRIALS = 6


def _command(out: Path, cache: Path) -> list[str]:
    return [sys.executable, "-m", "lpsd_search", "-q", "search", "--budget", "0.4",
            "--trials", str(TRIALS), "--finetune-steps", "150", "--train-epochs", "8",
            "--promote-steps", "0", "--no-report", "--out", str(out), "--cache-dir", str(cache)]


def _trials(out: Path) -> list[optuna.trial.FrozenTrial]:
    database = out / "study.db"
    if not database.is_file():
        return []
    try:
        study = optuna.load_study(study_name="lpsd-search", storage=f"sqlite:///{database}")
    except Exception:  # the first process may still be creating the schema
        return []
    return study.get_trials(deepcopy=False)


def _states(out: Path) -> dict[int, str]:
    return {t.number: t.state.name for t in _trials(out)}


def test_sigkill_mid_trial_then_rerun_loses_no_finished_trial(tmp_path):
    out, cache = tmp_path / "run", tmp_path / "cache"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(_command(out, cache), env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        # Kill once two trials are finished and a third is running.
        while time.monotonic() < deadline:
            trials = _trials(out)
            done = sum(t.state.name == "COMPLETE" for t in trials)
            # Mid-trial: the last trial is running and its worker has started on it.
            if (done >= 2 and trials[-1].state.name == "RUNNING"
                    and "worker" in trials[-1].user_attrs):
                break
            assert first.poll() is None, "the search ended before it could be killed"
            time.sleep(0.05)
        else:
            pytest.fail("the search never had two finished trials and one running")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    before = _states(out)
    finished = {n for n, s in before.items() if s == "COMPLETE"}
    assert "RUNNING" in before.values() and len(finished) >= 2
    with (out / "trials.csv").open() as handle:
        rows_before = {r["trial"]: r for r in csv.DictReader(handle) if r["state"] == "COMPLETE"}

    rerun = subprocess.run(_command(out, cache), env=env, capture_output=True, text=True,
                           timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    after = _states(out)
    assert sum(s == "COMPLETE" for s in after.values()) == TRIALS
    assert "RUNNING" not in after.values()
    # The killed trial is failed (its process is gone), every finished one is still there.
    killed = next(n for n, s in before.items() if s == "RUNNING")
    assert after[killed] == "FAIL"
    assert all(after[n] == "COMPLETE" for n in finished)
    with (out / "trials.csv").open() as handle:
        rows_after = {r["trial"]: r for r in csv.DictReader(handle)}
    for number, row in rows_before.items():
        assert rows_after[number]["accuracy"] == row["accuracy"]
        assert rows_after[number]["plan"] == row["plan"]
