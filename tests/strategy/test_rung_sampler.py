"""Per-rung sampling: the sampler picks the rung, each rung's policy is learnt from its trials."""

from __future__ import annotations

import statistics

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution

from lpsd_search.backends.optuna import run_search
from lpsd_search.config import SearchConfig, SearchOptions, TrainConfig
from lpsd_search.errors import UserInputError
from lpsd_search.strategy.policies import RUNG
from lpsd_search.strategy.rung_sampler import RungSampler, next_rung
from lpsd_search.strategy.runner import TrialRunner
from lpsd_search.strategy.samplers import make_sampler

RUNGS = [5.0, 10.0, 20.0]
SPACE = {RUNG: CategoricalDistribution(RUNGS),
         "policy:family": CategoricalDistribution(["a", "b", "c"]),
         "policy:share": FloatDistribution(0.0, 1.0)}
BEST = {5.0: ("a", 0.1), 10.0: ("b", 0.5), 20.0: ("c", 0.9)}
"""Each rung's best policy differs: a sampler that pools the rungs learns a compromise."""


def _accuracy(rung: float, family: str, share: float) -> float:
    best_family, best_share = BEST[rung]
    return 1.0 - 0.3 * (family != best_family) - (share - best_share) ** 2 - 0.01 * rung


def _search(sampler: optuna.samplers.BaseSampler, trials: int) -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    # Warm starts as the ladder enqueues them: the same policy at every rung.
    for rung in RUNGS:
        study.enqueue_trial({RUNG: rung, "policy:family": "a", "policy:share": 0.3})
    for _ in range(trials):
        trial = study.ask()
        params = {name: trial._suggest(name, dist) for name, dist in SPACE.items()}
        study.tell(trial, [_accuracy(params[RUNG], params["policy:family"],
                                     params["policy:share"]), 1 / params[RUNG]])
    return study


def _regret(study: optuna.Study) -> float:
    """Mean over rungs of how far the rung's best trial is from the rung's optimum."""
    gaps = []
    for rung in RUNGS:
        found = [t.values[0] for t in study.trials if t.params[RUNG] == rung]
        gaps.append(_accuracy(rung, *BEST[rung]) - max(found))
    return statistics.mean(gaps)


def test_the_rungs_are_filled_evenly_the_most_compressed_first():
    study = _search(RungSampler("gp", 0), trials=6)
    rungs = [t.params[RUNG] for t in study.trials]
    assert rungs[:3] == RUNGS  # the enqueued warm starts keep their rung
    assert rungs[3:] == [20.0, 10.0, 5.0]
    study = optuna.create_study(directions=["maximize", "minimize"])
    for rung in (5.0, 5.0, 20.0):
        study.enqueue_trial({RUNG: rung})
        trial = study.ask()
        trial.suggest_categorical(RUNG, RUNGS)
        study.tell(trial, [0.5, 1 / rung])
    study.enqueue_trial({RUNG: 10.0})
    running = study.ask()  # a trial still running at 10x counts too
    running.suggest_categorical(RUNG, RUNGS)
    assert next_rung(study, number=99, rungs=RUNGS) == 20.0
    assert next_rung(study, number=running.number, rungs=RUNGS) == 10.0


@pytest.mark.parametrize("inner", ["gp", "tpe"])
def test_each_rung_finds_its_own_best_policy_better_than_random(inner):
    trials = 36
    rung_regret = statistics.mean(_regret(_search(RungSampler(inner, seed), trials))
                                  for seed in range(3))
    random_regret = statistics.mean(
        _regret(_search(optuna.samplers.RandomSampler(seed=seed), trials)) for seed in range(3))
    assert rung_regret < 0.5 * random_regret, (rung_regret, random_regret)
    assert rung_regret < 0.05


def test_infeasible_and_other_rungs_trials_are_left_out_of_a_rungs_model():
    from lpsd_search.strategy.rung_sampler import _rung_history

    study = optuna.create_study(directions=["maximize", "minimize"])
    for rung, share, excess in ((5.0, 0.2, 0.0), (5.0, 0.4, 3.0), (10.0, 0.6, 0.0)):
        study.add_trial(optuna.trial.create_trial(
            params={RUNG: rung, "policy:share": share},
            distributions={RUNG: SPACE[RUNG], "policy:share": SPACE["policy:share"]},
            values=[share, 1 / rung], system_attrs={"constraints": [excess]}))
    history = _rung_history(study, 5.0, {"policy:share": SPACE["policy:share"]})
    assert [(t.params, t.value) for t in history] == [({"policy:share": 0.2}, 0.2)]


def test_a_per_rung_sampler_needs_the_ladder_strategy_and_is_the_ladders_default():
    with pytest.raises(UserInputError,
                       match="--sampler rung-gp needs --strategy ladder; valid with flat"):
        SearchConfig(sampler="rung-gp", strategy="flat")
    assert isinstance(make_sampler("rung-tpe", 0).base, RungSampler)
    # The default: per-rung TPE for a ladder search, one TPE for the others.
    auto = make_sampler(SearchConfig().sampler, 0).base
    assert isinstance(auto, RungSampler) and auto.inner == "tpe"
    assert isinstance(make_sampler("auto", 0, strategy="flat").base, optuna.samplers.TPESampler)
    SearchConfig(strategy="flat")  # the default sampler suits every strategy


def test_a_ladder_search_with_the_per_rung_sampler_balances_its_rungs(digits, digits_model,
                                                                      tmp_path):
    options = SearchOptions(model="digits-cnn", data="digits", budget="0.5", out=tmp_path,
                            finetune=TrainConfig(steps=5), device="cpu",
                            search=SearchConfig(trials=12, sampler="rung-gp",
                                                warm_starts=("alds",), promote_steps=0))
    runner = TrialRunner(options, digits, digits_model)
    assert runner.ladder is not None
    study = runner.open_study(make_sampler("rung-gp", 0))
    run_search(study, runner, options.search, tmp_path)
    trials = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(trials) == 12
    counts = [sum(t.params[RUNG] == rung for t in trials) for rung in runner.ladder.rungs]
    assert max(counts) - min(counts) <= 1, counts
    sampled = [t for t in trials if t.user_attrs.get("source") == "sampled"]
    # Sampled policies differ from the warm start (the model explores), each reproducible.
    assert len({tuple(sorted(t.params.items())) for t in sampled}) == len(sampled)
