"""The controller: failed trials are recorded and skipped, the global then local stages refine
front trials (Optuna's ``best_trials`` within a margin), dead workers are cleaned up."""

from __future__ import annotations

import csv
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest

from lpsd_search.backends.optuna import run_search
from lpsd_search.config import SearchConfig, SearchOptions, TrainConfig
from lpsd_search.report.record import write_study_header
from lpsd_search.strategy import ask_tell
from lpsd_search.strategy.controller import (
    _bases,
    choose_stage,
    completed_count,
    fail_dead_trials,
    is_surplus,
)
from lpsd_search.strategy.runner import TrialRunner
from lpsd_search.strategy.samplers import make_sampler
from lpsd_search.trial import evaluate
from lpsd_search.trial.train import TrainingDiverged

LOW_RANK = """description = "none / svd / tucker2 per layer"
[[rules]]
match = ".*"
methods = ["none", "svd", "tucker2"]
rank = [0.02, 1.0]
"""


def _runner(digits, digits_model, tmp_path, budget="0.5", space=None, steps=5, **search):
    """A runner of the global-local strategy over a low-rank space (these tests' subject)."""
    if space is None:
        space = str(tmp_path / "low-rank.toml")
        Path(space).write_text(LOW_RANK, encoding="utf-8")
    search.setdefault("strategy", "global-local")
    options = SearchOptions(model="digits-cnn", data="digits", budget=budget, out=tmp_path,
                            space=space, finetune=TrainConfig(steps=steps),
                            search=SearchConfig(**search), device="cpu")
    return TrialRunner(options, digits, digits_model), options


def test_a_failed_trial_is_recorded_and_does_not_count(digits, digits_model, tmp_path,
                                                       monkeypatch):
    real_train = evaluate.train
    calls = {"n": 0}

    def diverge_once(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise TrainingDiverged("loss became nan at step 3")
        return real_train(*args, **kwargs)

    monkeypatch.setattr(evaluate, "train", diverge_once)
    runner, options = _runner(digits, digits_model, tmp_path, trials=3, warm_starts=())
    study = runner.open_study(make_sampler("tpe", 0))

    run_search(study, runner, options.search, tmp_path)

    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL,
                      optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.COMPLETE]
    assert completed_count(study) == 3
    with (tmp_path / "trials.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert rows[1]["state"] == "FAIL"
    assert rows[1]["fail_reason"] == "TrainingDiverged: loss became nan at step 3"
    assert all(row["fail_reason"] == "" for i, row in enumerate(rows) if i != 1)


@pytest.mark.parametrize("where", ["in a job", "between ask and job"])
def test_ctrl_c_anywhere_in_the_loop_leaves_no_trial_running(where, digits, digits_model,
                                                              tmp_path, monkeypatch):
    runner, options = _runner(digits, digits_model, tmp_path, trials=4, warm_starts=())
    calls = {"n": 0}
    if where == "in a job":
        real = evaluate.train

        def interrupt(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        monkeypatch.setattr(evaluate, "train", interrupt)
    else:  # the trial is asked and named, its parameters not yet drawn (a CI failure's window)
        real_suggest = runner.suggest

        def interrupt_suggest(trial):
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt
            return real_suggest(trial)

        monkeypatch.setattr(runner, "suggest", interrupt_suggest)
    study = runner.open_study(make_sampler("tpe", 0))

    with pytest.raises(KeyboardInterrupt):
        run_search(study, runner, options.search, tmp_path)

    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL]
    assert study.trials[1].user_attrs["fail_reason"] == "interrupted"
    with (tmp_path / "trials.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["state"] for row in rows] == ["COMPLETE", "FAIL"]
    # The run resumes from its storage: the finished trial stays, the interrupted one is redone.
    monkeypatch.undo()
    run_search(study, runner, options.search, tmp_path)
    assert completed_count(study) == 4
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE


def test_global_stage_then_local_refinements_of_front_trials(digits, digits_model, tmp_path,
                                                             monkeypatch):
    runner, options = _runner(digits, digits_model, tmp_path, trials=8, warm_starts=(),
                              global_share=0.5, local_share=0.25)
    study = runner.open_study(make_sampler("random", 0))
    chosen = []  # what the controller asked of each trial, in ask order

    def recording(*args, **kwargs):
        stage, fixed, base = choose_stage(*args, **kwargs)
        chosen.append((stage, dict(fixed), base))
        return stage, fixed, base

    monkeypatch.setattr(ask_tell, "choose_stage", recording)
    run_search(study, runner, options.search, tmp_path)
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert [t.number for t in study.trials] == [t.number for t in trials] == list(range(8))
    assert [t.user_attrs["stage"] for t in trials] == ["global"] * 4 + ["local"] * 4
    assert [stage for stage, _, _ in chosen] == ["global"] * 4 + ["local"] * 4
    neutral = runner.space.neutral_local()
    for trial in trials[:4]:
        assert all(trial.params[k] == v for k, v in neutral.items())
    layers = set(runner.space.allowed)
    assert len(layers) == 4
    differs = 0
    for trial, (_, fixed, base_number) in zip(trials[4:], chosen[4:], strict=True):
        base = study.trials[trial.user_attrs["base_trial"]]
        assert base.number == base_number
        # The base is an earlier finished trial (global, or a local one that reached the front).
        assert base.number < trial.number and base.user_attrs["stage"] in ("global", "local")
        # Exactly one layer (25 % of 4) is re-sampled; every other parameter, the global knobs
        # included, is the base's.
        free = {k.split(":")[0] for k in base.params if k not in fixed}
        assert len(free) == 1 and free <= layers
        assert fixed == {k: v for k, v in base.params.items() if k.split(":")[0] not in free}
        assert all(trial.params[k] == v for k, v in fixed.items())
        changed = {k.split(":")[0] for k, v in trial.params.items() if base.params[k] != v}
        assert changed <= free
        differs += bool(changed)
    # The random sampler re-draws a layer's rank from a continuous range: a refinement that
    # reproduced its base exactly would mean the layer was not re-sampled at all.
    assert differs == 4


def test_warm_starts_run_first_with_their_exact_plans(digits, digits_model, tmp_path):
    runner, options = _runner(digits, digits_model, tmp_path, budget="0.3", trials=4,
                              warm_starts=("uniform", "vbmf", "alds"))
    study = runner.open_study(make_sampler("tpe", 0))
    run_search(study, runner, options.search, tmp_path)
    sources = [t.user_attrs["source"] for t in study.trials]
    # Five warm starts are enqueued; the fifth waits for a run with more trials.
    assert sources == ["uniform svd", "uniform tucker2", "vbmf", "alds", "alds x0.5"]
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert [t.number for t in complete] == [0, 1, 2, 3]
    for trial in complete:
        assert trial.user_attrs["plan"] == trial.user_attrs["plan_override"]
        assert trial.user_attrs["params"] <= runner.budgets[0].limit


def test_trials_left_running_by_a_dead_process_are_failed(tmp_path):
    study = optuna.create_study(directions=["maximize", "minimize"],
                                storage=f"sqlite:///{tmp_path / 'study.db'}")
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    dead_pid = int(finished.stdout)
    host = socket.gethostname()
    orphan = study.ask()
    orphan.set_user_attr("worker", f"{host}:{dead_pid}")
    alive = study.ask()
    alive.set_user_attr("worker", f"{host}:1")  # pid 1 always exists
    elsewhere = study.ask()
    elsewhere.set_user_attr("worker", f"another-host:{dead_pid}")

    fail_dead_trials(study)

    states = {t.number: t.state for t in study.get_trials()}
    assert states == {orphan.number: optuna.trial.TrialState.FAIL,
                      alive.number: optuna.trial.TrialState.RUNNING,
                      elsewhere.number: optuna.trial.TrialState.RUNNING}


def test_an_unnamed_trial_watched_for_a_while_is_failed_however_recent_its_start(monkeypatch):
    # A driver killed between asking a trial and naming it leaves the trial RUNNING with no
    # worker; the next run, started at once, fails it once it has seen it unnamed for a while,
    # and leaves alone a trial another live worker has just asked.
    monkeypatch.setattr("lpsd_search.strategy.controller.ORPHAN_OBSERVED_SECONDS", 1.0)
    study = optuna.create_study(directions=["maximize", "minimize"])
    orphan = study.ask()
    unnamed: dict[int, float] = {}
    fail_dead_trials(study, unnamed)
    time.sleep(1.1)
    fresh = study.ask()  # another worker's, in the instant before it names it
    fail_dead_trials(study, unnamed)
    states = {t.number: t.state for t in study.get_trials()}
    assert states == {orphan.number: optuna.trial.TrialState.FAIL,
                      fresh.number: optuna.trial.TrialState.RUNNING}
    fail_dead_trials(study)  # without a watch, only the age of its start counts
    assert study.trials[fresh.number].state == optuna.trial.TrialState.RUNNING


def test_only_the_lower_numbered_of_two_racing_asks_takes_the_last_slot():
    # Two workers ask for the last of 2 slots at once; neither has named its trial yet when the
    # other checks. The one with the lower number runs it, whichever names its trial first.
    study = optuna.create_study(directions=["maximize", "minimize"])
    done = study.ask()
    study.tell(done, [0.9, 10.0])
    first, second = study.ask(), study.ask()
    second.set_user_attr("worker", "host:2")
    assert is_surplus(study, second.number, 2)
    assert not is_surplus(study, first.number, 2)
    first.set_user_attr("worker", "host:1")
    assert is_surplus(study, second.number, 2)
    assert not is_surplus(study, first.number, 2)


def test_an_unnamed_trial_older_than_an_ask_is_an_orphan_and_takes_no_slot(monkeypatch):
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.ask()  # asked by a process killed before it named the trial
    later = study.ask()
    assert is_surplus(study, later.number, 1)
    monkeypatch.setattr("lpsd_search.strategy.controller.ORPHAN_SECONDS", -1)
    assert not is_surplus(study, later.number, 1)


def test_local_bases_are_optuna_best_trials_within_the_margin():
    study = optuna.create_study(directions=["maximize", "minimize"])
    write_study_header(study, config={}, baseline={"params": 100, "accuracy": 0.9},
                       budgets=[{"metric": "params", "limit": 60}],
                       objectives={"objectives": [
                           {"name": "accuracy", "key": "accuracy", "direction": "maximize"},
                           {"name": "params", "key": "params", "direction": "minimize"}]},
                       layers={})
    rng = np.random.default_rng(0)
    points = [(round(float(rng.random()), 2), int(rng.integers(20, 80))) for _ in range(30)]
    points += [points[0], max(p for p in points if p[1] <= 60), (0.99, 61)]
    for accuracy, params in points:
        study.add_trial(optuna.trial.create_trial(
            values=[accuracy, params], constraints={"params": (params - 60) / 60},
            user_attrs={"accuracy": accuracy, "params": params, "stage": "global"}))
    best = sorted(study.best_trials, key=lambda t: t.number)
    assert len({tuple(t.values) for t in best}) < len(best)  # a duplicate on the front
    top = max(t.values[0] for t in best)
    for margin in (0.0, 0.05, 0.3, 1.0):
        expected = [t.number for t in best if t.values[0] >= top - margin]
        assert [t.number for t in _bases(study, margin)] == expected
    assert len(_bases(study, 0.0)) == 2 and len(_bases(study, 1.0)) == len(best)
