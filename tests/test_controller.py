"""The controller: failed trials are recorded and skipped, dead workers cleaned up."""

from __future__ import annotations

import csv
import socket
import subprocess
import sys

import optuna
import torch

from lpsd_search import evaluate
from lpsd_search.budget import Pricer, parse_budget
from lpsd_search.controller import (
    SearchConfig,
    completed_count,
    fail_dead_trials,
    open_study,
    run_search,
)
from lpsd_search.evaluate import Evaluator
from lpsd_search.layers import find_layers
from lpsd_search.spaces import load_space
from lpsd_search.train import TrainConfig, TrainingDiverged


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
    evaluator = Evaluator(digits_model, digits, TrainConfig(steps=5), torch.device("cpu"))
    targets = find_layers(digits_model, evaluator.example)
    space = load_space("default")
    allowed = space.allowed(targets)
    pricer = Pricer(targets, evaluator.size(digits_model))
    budget = parse_budget("0.5").resolve(pricer.baseline.params)
    config = SearchConfig(trials=3, seed=0, warm_start=False)
    study = open_study(config, tmp_path, {"test": 1})
    study.set_user_attr("baseline", evaluator.baseline().to_dict())
    study.set_user_attr("budget", budget.to_dict())

    run_search(study, evaluator, pricer, space, allowed, budget, config, tmp_path)

    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL,
                      optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.COMPLETE]
    assert completed_count(study) == 3
    with (tmp_path / "trials.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert rows[1]["state"] == "FAIL"
    assert rows[1]["fail_reason"] == "TrainingDiverged: loss became nan at step 3"
    assert all(row["fail_reason"] == "" for i, row in enumerate(rows) if i != 1)


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
