"""A search measures test accuracy only for the trials that reach its front."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import optuna
from optuna.distributions import FloatDistribution

from lpsd_search.cli.main import main
from lpsd_search.report import record
from lpsd_search.strategy.controller import joins_front

BUDGETS = [{"metric": "params", "requested": "0.5", "limit": 500, "fraction": 0.5}]
OBJECTIVES = {"name": "default", "latency_batch": 1, "objectives": [
    {"name": "accuracy", "key": "accuracy", "direction": "maximize"},
    {"name": "params", "key": "params", "direction": "minimize"}]}


def _measures(params: int, accuracy: float) -> dict[str, float]:
    return {"params": params, "bytes": 4 * params, "flops": 10 * params, "accuracy": accuracy,
            "seconds": 0.1}


def _study(*trials: tuple[int, float]) -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize"])
    record.write_study_header(study, config={"model": "m"}, baseline=_measures(1000, 0.95),
                              budgets=BUDGETS, objectives=OBJECTIVES, layers={"c": ["svd"]})
    for params, accuracy in trials:
        study.add_trial(optuna.trial.create_trial(
            params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)},
            values=[accuracy, params], user_attrs=_measures(params, accuracy)))
    return study


def test_a_trial_joins_the_front_unless_dominated_or_over_budget():
    study = _study((200, 0.90), (400, 0.94))
    assert not joins_front(study, 2, _measures(300, 0.89), margin=0.0)  # dominated by 200
    assert joins_front(study, 2, _measures(300, 0.92), margin=0.0)  # between the two
    assert joins_front(study, 2, _measures(100, 0.50), margin=0.0)  # smallest
    assert not joins_front(study, 2, _measures(600, 0.99), margin=0.0)  # over the budget
    # Within the promotion margin: promotion would re-run it, so it is measured too.
    assert joins_front(study, 2, _measures(300, 0.895), margin=0.01)


def test_front_points_have_test_accuracy_and_dominated_trials_skip_it(cache_dir: Path,
                                                                      tmp_path: Path):
    out = tmp_path / "out"
    assert main(["-q", "search", "--budget", "0.5", "--trials", "8", "--finetune-steps", "10",
                 "--train-epochs", "8", "--strategy", "flat", "--sampler", "random",
                 "--no-warm-start", "--promote-steps", "0", "--no-report",
                 "--cache-dir", str(cache_dir), "--out", str(out)]) == 0
    document = json.loads((out / "pareto.json").read_text())
    assert all(0 <= point["test_accuracy"] <= 1 for point in document["points"])
    with (out / "trials.csv").open() as handle:
        rows = [row for row in csv.DictReader(handle) if row["state"] == "COMPLETE"]
    front = {point["trial"] for point in document["points"]}
    skipped = [row for row in rows if row["test_accuracy"] == ""]
    assert all(int(row["trial"]) not in front for row in skipped)
    assert len(rows) == 8
    # Seeded: here trials 4 and 7 were dominated when they finished (measured 2026-12-04).
    assert skipped
