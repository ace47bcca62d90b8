"""One Gaussian process over every rung: targets, encoding, and what it learns across rungs."""

from __future__ import annotations

import math
import statistics

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution

from lpsd_search.strategy.policies import RUNG
from lpsd_search.strategy.rung_model import FLOOR, Encoder, Observation, relative_targets
from lpsd_search.strategy.rung_sampler import RungSampler

RUNGS = [5.0, 10.0, 20.0, 30.0]
POLICY = {"policy:family": CategoricalDistribution(["a", "b", "c"]),
          "policy:allocation": CategoricalDistribution(["u", "v", "w"]),
          "policy:share": FloatDistribution(0.0, 0.5),
          "policy:sensitivity": FloatDistribution(0.0, 1.0),
          "policy:flag": CategoricalDistribution([False, True])}
SPACE = {RUNG: CategoricalDistribution(RUNGS), **POLICY}


def test_targets_are_relative_to_the_rungs_best_and_clipped_below_it():
    observations = [Observation(5.0, {}, 0.90), Observation(5.0, {}, 0.88),
                    Observation(30.0, {}, 0.80), Observation(30.0, {}, 0.27)]
    assert relative_targets(observations) == pytest.approx([0.0, -0.02, 0.0, -FLOOR])


def test_policies_are_encoded_in_the_unit_cube_with_the_rung_on_a_log_scale():
    encoder = Encoder(POLICY, RUNGS)
    params = {"policy:family": "b", "policy:allocation": "w", "policy:share": 0.25,
              "policy:sensitivity": 1.0, "policy:flag": True}
    vector = encoder.encode(math.sqrt(5.0 * 30.0), params)
    assert vector == pytest.approx([0.5, 0, 1, 0, 0, 0, 1, 0.5, 1.0, 0, 1])
    rng = np.random.default_rng(0)
    for _ in range(20):
        drawn = encoder.random(rng)
        moved = encoder.perturb(drawn, rng)
        for params in (drawn, moved):
            assert all(POLICY[k]._contains(POLICY[k].to_internal_repr(v))
                       for k, v in params.items())


def _accuracy(rung: float, params: dict, noise: float) -> float:
    """A drifting optimum, as on VGG-11: the further from the budget, the more of the size the
    sparse residual should take, and the more it costs to miss it."""
    level = math.log(rung / RUNGS[0]) / math.log(RUNGS[-1] / RUNGS[0])
    best_share = 0.2 + 0.25 * level
    miss = (1 + 3 * level) * (params["policy:share"] - best_share) ** 2
    return (0.9 - 0.03 * level - miss - 0.01 * (params["policy:family"] != "a")
            - 0.005 * (params["policy:allocation"] == "v") + noise)


def _regret(sampler: optuna.samplers.BaseSampler, trials: int, seed: int, warm: bool) -> float:
    rng = np.random.default_rng(seed)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    if warm:  # the heuristics as the ladder enqueues them: the same policies at every rung
        for rung in RUNGS:
            for family, share in (("a", 0.3), ("b", 0.0)):
                study.enqueue_trial({RUNG: rung, "policy:family": family,
                                     "policy:allocation": "u", "policy:share": share,
                                     "policy:sensitivity": 0.0, "policy:flag": False})
    for _ in range(trials + 2 * len(RUNGS) * warm):
        trial = study.ask()
        params = {name: trial._suggest(name, dist) for name, dist in SPACE.items()}
        study.tell(trial, [_accuracy(params[RUNG], params, rng.normal(0, 0.002)),
                           1 / params[RUNG]])
    gaps = []
    for rung in RUNGS:
        found = [t for t in study.trials if t.params[RUNG] == rung]
        best = max(found, key=lambda t: t.values[0])  # chosen on its noisy value
        level = math.log(rung / RUNGS[0]) / math.log(RUNGS[-1] / RUNGS[0])
        gaps.append(0.9 - 0.03 * level - _accuracy(rung, best.params, 0.0))
    return statistics.mean(gaps)


@pytest.mark.slow  # ~1 minute: a Gaussian process fit per trial
def test_one_model_over_every_rung_beats_per_rung_models_and_random_with_three_times_the_trials():
    # Six sampled trials per rung; at four per rung (16) the pooled model was not better than
    # per-rung TPE (regret 0.0056 against 0.0046): it needs some data before it pays.
    trials, seeds = 24, range(3)
    pooled = statistics.mean(_regret(RungSampler("ctx", s), trials, s, True) for s in seeds)
    per_rung = statistics.mean(_regret(RungSampler("tpe", s), trials, s, True) for s in seeds)
    random_3n = statistics.mean(_regret(optuna.samplers.RandomSampler(seed=s), 3 * trials, s,
                                        False) for s in seeds)
    assert pooled < 0.75 * min(per_rung, random_3n), (pooled, per_rung, random_3n)
