"""Per-rung sampling for the ladder strategy: each size rung is its own single-objective search.

A ladder trial is a (size rung, policy) pair whose plan is repaired to exactly the rung's size,
so at one rung only the quality objective varies. A multi-objective sampler over (rung, policy)
learns from every rung's trials at once: its "good" set is the front, which mixes the policies
that win at the budget with those that win far below it, and the far rungs (where the
heuristics are weakest) get few trials shaped by the wrong ones. ``RungSampler`` instead

1. picks the rung itself: the one with the fewest trials so far (completed and running), the
   most compressed first on ties;
2. samples the policy with a single-objective sampler (Gaussian process or TPE) fitted only to
   that rung's completed, feasible trials, maximising the first objective (the quality one):
   the heuristics enqueued at every rung are the first points of each rung's model.

The inner study lives in memory and is rebuilt for every trial from the shared storage, so
several workers (or the Ray driver) need nothing beyond the study itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers import BaseSampler
from optuna.search_space import IntersectionSearchSpace
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from lpsd_search.strategy.policies import RUNG
from lpsd_search.strategy.rung_model import Encoder, Observation, choose

INNER = ("gp", "tpe", "ctx")
"""Where a rung's policy comes from: a single-objective ``GPSampler`` or TPE fitted to that
rung's trials, or one Gaussian process over every rung with the rung as an input (``ctx``,
``strategy.rung_model``)."""

STARTUP = 4
"""Random policies at a rung before its TPE or Gaussian process models it (the heuristics
count)."""

_CONSTRAINTS = "constraints"
"""System attribute where Optuna keeps ``trial.set_constraint`` values (excess > 0: infeasible)."""


class RungSampler(BaseSampler):
    """Chooses the rung of each trial and samples its policy from that rung's trials alone.

    Args:
        inner: ``gp`` (Optuna's ``GPSampler``), ``tpe`` (multivariate TPE), both fitted to the
            rung's trials, or ``ctx`` (one GP over every rung, ``strategy.rung_model``).
        seed: seed of the rung choice's fallback and of every inner sampler (combined with the
            trial number, so a resumed search draws what an uninterrupted one would).
    """

    def __init__(self, inner: str, seed: int) -> None:
        if inner not in INNER:
            raise ValueError(f"unknown inner sampler {inner!r}; valid: {', '.join(INNER)}")
        self.inner = inner
        self.seed = seed
        self._random = optuna.samplers.RandomSampler(seed=seed)

    def infer_relative_search_space(self, study: Study,
                                    trial: FrozenTrial) -> dict[str, BaseDistribution]:
        if "fixed_params" in trial.system_attrs:  # an enqueued warm start: nothing to sample
            return {}
        space = IntersectionSearchSpace().calculate(study)
        return space if isinstance(space.get(RUNG), CategoricalDistribution) else {}

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if not search_space:
            return {}
        rungs = search_space[RUNG]
        assert isinstance(rungs, CategoricalDistribution)
        rung = next_rung(study, trial.number, rungs.choices)
        policy_space = {k: v for k, v in search_space.items() if k != RUNG}
        if self.inner == "ctx":
            return {RUNG: rung, **self._sample_in_context(study, trial.number, rung,
                                                           rungs.choices, policy_space)}
        history = _rung_history(study, rung, policy_space)
        return {RUNG: rung, **self._sample_policy(history, policy_space, trial.number,
                                                   study.directions[0])}

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        # No history yet (or a parameter outside the joint space): uniform.
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    def reseed_rng(self) -> None:
        self._random.reseed_rng()

    def _sample_policy(self, history: list[FrozenTrial], space: dict[str, BaseDistribution],
                       number: int, direction: StudyDirection) -> dict[str, Any]:
        seed = (self.seed * 1_000_003 + number) % 2**31
        inner: BaseSampler
        if self.inner == "gp":
            inner = optuna.samplers.GPSampler(seed=seed, n_startup_trials=STARTUP,
                                              warn_independent_sampling=False)
        else:
            inner = optuna.samplers.TPESampler(seed=seed, multivariate=True,
                                               n_startup_trials=STARTUP)
        rung_study = optuna.create_study(direction=direction, sampler=inner)
        rung_study.add_trials(history)
        return dict(rung_study.ask(fixed_distributions=space).params)


    def _sample_in_context(self, study: Study, number: int, rung: Any, rungs: Sequence[Any],
                           space: dict[str, BaseDistribution]) -> dict[str, Any]:
        seed = (self.seed * 1_000_003 + number) % 2**31
        observations = _observations(study, space)
        if len(observations) < STARTUP:
            rng = np.random.default_rng(seed)
            return Encoder(space, rungs).random(rng)
        return choose(observations, space, [float(r) for r in rungs], float(rung),
                                 seed)


def next_rung(study: Study, number: int, rungs: Sequence[Any]) -> Any:
    """The rung with the fewest trials (completed or running, trial ``number`` left out); ties
    go to the most compressed rung (the rungs run from the budget down)."""
    counts = {rung: 0 for rung in rungs}
    for other in study.get_trials(deepcopy=False,
                                  states=(TrialState.COMPLETE, TrialState.RUNNING)):
        rung = other.params.get(RUNG)
        if other.number != number and rung in counts:
            counts[rung] += 1
    order = list(rungs)
    return min(reversed(order), key=lambda rung: counts[rung])


def _feasible(study: Study, space: dict[str, BaseDistribution]) -> list[FrozenTrial]:
    """The completed, feasible trials that have every parameter of ``space`` and a rung."""
    found = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if trial.values is None or RUNG not in trial.params:
            continue
        if any(excess > 0 for excess in trial.system_attrs.get(_CONSTRAINTS, ())):
            continue
        if all(name in trial.params for name in space):
            found.append(trial)
    return found


def _rung_history(study: Study, rung: Any,
                  space: dict[str, BaseDistribution]) -> list[FrozenTrial]:
    """The completed, feasible trials at ``rung``, as single-objective trials over ``space``
    (value: the first objective)."""
    return [optuna.trial.create_trial(params={name: trial.params[name] for name in space},
                                      distributions=dict(space), value=trial.values[0])
            for trial in _feasible(study, space) if trial.params[RUNG] == rung]


def _observations(study: Study,
                  space: dict[str, BaseDistribution]) -> list[Observation]:
    """Every rung's completed, feasible trials (value: the first objective, maximised)."""
    sign = 1.0 if study.directions[0] == StudyDirection.MAXIMIZE else -1.0
    return [Observation(float(trial.params[RUNG]),
                                   {name: trial.params[name] for name in space},
                                   sign * trial.values[0])
            for trial in _feasible(study, space)]
