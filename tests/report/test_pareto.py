"""Pareto fronts: the numpy masks, the one study-level front (against Optuna's
``best_trials``), the promotion margin and the 2-D hypervolume (against Optuna's)."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from optuna._hypervolume import compute_hypervolume
from optuna.study._multi_objective import _get_pareto_front_trials

from lpsd_search.report.pareto import as_losses, hypervolume_2d, non_dominated, pareto_mask
from lpsd_search.report.record import study_budgets, study_objectives, write_study_header
from lpsd_search.report.results import TrialRow, front, trial_rows


def test_non_dominated_max_accuracy_min_params():
    values = np.array([[0.90, 100], [0.95, 200], [0.85, 150], [0.95, 300], [0.80, 50],
                       [0.90, 100]])
    assert non_dominated(values, [True, False]).tolist() == [
        True, True, False, False, True, False]


def test_non_dominated_empty_and_single():
    assert non_dominated(np.zeros((0, 2)), [True, False]).tolist() == []
    assert non_dominated(np.array([[0.5, 3.0]]), [True, False]).tolist() == [True]


def test_hypervolume_2d():
    values = np.array([[0.9, 100.0], [0.8, 50.0]])
    # Reference: accuracy 0, params 200 → rectangles 0.9·100 + 0.8·50 = 90 + 40.
    assert hypervolume_2d(values, [True, False], [0.0, 200.0]) == pytest.approx(130.0)
    assert hypervolume_2d(values, [True, False], [0.95, 200.0]) == 0.0
    dominated_added = np.vstack([values, [[0.7, 120.0]]])
    assert hypervolume_2d(dominated_added, [True, False], [0.0, 200.0]) == pytest.approx(130.0)


# -- the one front, against Optuna ----------------------------------------------------------------

ACCURACY = {"name": "accuracy", "key": "accuracy", "direction": "maximize"}
LOSS = {"name": "loss", "key": "loss", "direction": "minimize"}
PARAMS = {"name": "params", "key": "params", "direction": "minimize"}
FLOPS = {"name": "flops", "key": "flops", "direction": "minimize"}
LIMIT = 60
BUDGETS = [{"metric": "params", "requested": str(LIMIT), "limit": LIMIT, "fraction": None}]


def _measures(rng: np.random.Generator, ties: bool) -> dict[str, float]:
    # Few distinct levels when ``ties``: many equal coordinates and identical rows.
    if ties:
        accuracy = float(rng.integers(0, 6)) / 5
        params, flops = int(rng.integers(8, 16)) * 5, int(rng.integers(1, 5)) * 100
    else:
        accuracy = float(rng.random())
        params, flops = int(rng.integers(20, 90)), int(rng.integers(100, 1000))
    return {"params": params, "bytes": 4 * params, "flops": flops, "accuracy": accuracy,
            "test_accuracy": accuracy, "loss": round(1.0 - accuracy, 6), "seconds": 0.1,
            "finetune_steps": 5}


def _add(study: optuna.Study, measures: dict[str, float],
         objectives: list[dict[str, str]]) -> None:
    study.add_trial(optuna.trial.create_trial(
        values=[float(measures[o["key"]]) for o in objectives],
        constraints={"params": (measures["params"] - LIMIT) / LIMIT},
        user_attrs={"plan": {}, "stage": "global", "source": "sampled", **measures}))


def _study(seed: int, objectives: list[dict[str, str]], ties: bool,
           count: int = 40) -> optuna.Study:
    """A study as a search writes it, unpromoted, with infeasible, failed and duplicate trials."""
    rng = np.random.default_rng(seed)
    study = optuna.create_study(directions=[o["direction"] for o in objectives])
    write_study_header(study, config={"seed": seed}, baseline={"params": 200, "accuracy": 1.0},
                       budgets=BUDGETS, objectives={"name": "test", "objectives": objectives},
                       layers={})
    added = []
    for index in range(count):
        measures = _measures(rng, ties)
        if index % 7 == 3 and added:  # an exact copy of an earlier trial
            measures = dict(added[int(rng.integers(len(added)))])
        _add(study, measures, objectives)
        added.append(measures)
        if index % 11 == 5:
            study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    # The lexicographic best feasible trial is on every front: a duplicate of it for sure.
    best = max((m for m in added if m["params"] <= LIMIT),
               key=lambda m: (m["accuracy"], -m["params"], -m["flops"]))
    _add(study, dict(best), objectives)
    # Infeasible, and it would dominate most of the front if the budget were ignored.
    _add(study, {**best, "params": LIMIT + 1, "accuracy": 1.5, "loss": -0.5, "flops": 1},
         objectives)
    return study


def _vector(row: TrialRow, objectives: list[dict[str, str]]) -> tuple[float, ...]:
    return tuple(float(row.measured[o["key"]]) for o in objectives)


@pytest.mark.parametrize("objectives", [[ACCURACY, PARAMS], [LOSS, PARAMS],
                                        [ACCURACY, PARAMS, FLOPS]], ids=["acc", "loss", "3d"])
@pytest.mark.parametrize("ties", [True, False], ids=["ties", "distinct"])
@pytest.mark.parametrize("seed", range(4))
def test_front_matches_optuna_best_trials(seed, ties, objectives):
    study = _study(seed, objectives, ties)
    best = study.best_trials
    unconstrained = _get_pareto_front_trials(study, consider_constraint=False)
    assert best and {t.number for t in unconstrained} != {t.number for t in best}
    assert len(best) > len({tuple(t.values) for t in best}), "the case has no duplicate"
    rows = trial_rows(study)
    budgets, stored = study_budgets(study), study_objectives(study)

    every = front(rows, budgets, stored, fidelity="short", distinct=False)
    assert sorted(r.trial for r in every) == sorted(t.number for t in best)

    # Ours keeps the first of identical rows: the same distinct vectors, one trial each.
    distinct = front(rows, budgets, stored, fidelity="short")
    first: dict[tuple[float, ...], int] = {}
    for trial in sorted(best, key=lambda t: t.number):
        first.setdefault(tuple(trial.values), trial.number)
    assert {_vector(r, objectives): r.trial for r in distinct} == first
    assert len(distinct) == len(first)
    # Unpromoted, the reported front is the same.
    assert front(rows, budgets, stored) == distinct
    params = [r.measures["params"] for r in distinct]
    assert params == sorted(params)


def _row(number: int, promoted: dict[str, float] | None = None, **measured: float) -> TrialRow:
    return TrialRow(trial=number, state="COMPLETE", measured=dict(measured), plan={}, reason="",
                    seconds=0.0, promoted=promoted)


def test_front_fidelity_short_or_promoted():
    rows = [_row(0, accuracy=0.90, params=50), _row(1, {"accuracy": 0.95}, accuracy=0.80,
                                                     params=50)]
    assert [r.trial for r in front(rows, BUDGETS, fidelity="short")] == [0]
    assert [r.trial for r in front(rows, BUDGETS)] == [1]
    assert rows[1].short == {"accuracy": 0.80} and rows[0].short is None


@pytest.mark.parametrize(("objectives", "key", "step"), [
    ([ACCURACY, PARAMS], "accuracy", -0.01),  # a maximised quality: the margin adds to it
    ([LOSS, PARAMS], "loss", +0.01),  # a minimised quality: the margin subtracts from it
])
def test_front_margin_improves_the_finetuned_objective_in_its_direction(objectives, key, step):
    rows = [_row(0, **{key: 0.50, "params": 40}), _row(1, **{key: 0.50 + step, "params": 40}),
            _row(2, **{key: 0.50 + 3 * step, "params": 40.01})]
    assert [r.trial for r in front(rows, BUDGETS, objectives)] == [0]
    near = front(rows, BUDGETS, objectives, fidelity="short", margin=0.02)
    # Trial 1 is 0.01 worse in quality: 0.02 more puts it on the front. Trial 2 is 0.03 worse
    # and a little bigger: it would be on it too if the margin shrank sizes, which it never does.
    assert sorted(r.trial for r in near) == [0, 1]
    assert [r.trial for r in front(rows, BUDGETS, objectives, margin=0.005)] == [0]


def test_pareto_mask_feasibility_and_boost():
    losses = np.array([[1.0, 1.0], [0.0, 0.0], [1.5, 1.0], [1.0, 1.0]])
    feasible = [True, False, True, True]
    assert pareto_mask(losses, feasible).tolist() == [True, False, False, False]
    assert pareto_mask(losses, feasible, distinct=False).tolist() == [True, False, False, True]
    # Each row is judged with its own losses lowered: row 3 then beats its twin, row 2 needs 0.5.
    assert pareto_mask(losses, feasible, boost=[0.4, 0.0]).tolist() == [True, False, False, True]
    assert pareto_mask(losses, feasible, boost=[0.6, 0.0]).tolist() == [True, False, True, True]
    with pytest.raises(ValueError, match="matrix"):
        pareto_mask(np.zeros(3))


@pytest.mark.parametrize("maximize", [(True, False), (False, False), (True, True)])
@pytest.mark.parametrize("seed", range(5))
def test_hypervolume_2d_matches_optuna(seed, maximize):
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 8, size=(25, 2)).astype(float)  # ties and duplicates
    values[:, 1] += rng.random(25) * (seed % 2)
    reference = [2.5 if up else 5.5 for up in maximize]
    ours = hypervolume_2d(values, maximize, reference)
    losses = as_losses(values, maximize)
    ref = as_losses(np.array([reference]), maximize)[0]
    # Optuna wants every point inside the reference box; the others add nothing to either.
    inside = losses[np.all(losses <= ref, axis=1)]
    assert len(inside) < len(losses) and ours > 0
    assert ours == pytest.approx(compute_hypervolume(inside, ref))
