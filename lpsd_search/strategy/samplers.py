"""Samplers of a search: TPE, NSGA-II, random or per-rung, wrapped so that a stage can fix
parameters.

Global → local search needs two things Optuna's samplers do not offer together: the global stage
samples only the global knobs (local ones held at their neutral values), and the local stage
samples some layers' refinements while everything else is held at a base trial's values.
``FixingSampler`` does both: parameters in ``fixed`` are returned as given and left out of the
relative (joint) search space, the rest go to the wrapped sampler. Optuna's own
``PartialFixedSampler`` is experimental and cannot change its fixed values between trials.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from lpsd_search.config import SAMPLERS
from lpsd_search.errors import UserInputError
from lpsd_search.strategy.rung_sampler import RungSampler


class FixingSampler(BaseSampler):
    """Delegates to ``base`` except for the parameters in ``fixed``.

    Args:
        base: the sampler doing the work.
    """

    def __init__(self, base: BaseSampler) -> None:
        self.base = base
        self.fixed: dict[str, Any] = {}

    def infer_relative_search_space(self, study: Study,
                                    trial: FrozenTrial) -> dict[str, BaseDistribution]:
        space = self.base.infer_relative_search_space(study, trial)
        return {name: dist for name, dist in space.items() if name not in self.fixed}

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self.base.sample_relative(study, trial, search_space)

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        if param_name in self.fixed:
            return self.fixed[param_name]
        return self.base.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self.base.before_trial(study, trial)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()


def make_sampler(name: str, seed: int, population: int = 10,
                 startup_trials: int = 8, *, strategy: str = "ladder") -> FixingSampler:
    """A fixing wrapper around the named sampler.

    Args:
        name: ``auto`` (``rung-tpe`` for the ladder strategy, else ``tpe``), ``tpe``
            (multivariate, constraint-aware), ``nsga2``, ``random``, or ``rung-gp`` /
            ``rung-tpe`` / ``rung-ctx`` (ladder strategy: each rung a single-objective search,
            ``rung_sampler.RungSampler``).
        seed: sampler seed.
        population: NSGA-II population size (small: a search here is tens of trials).
        startup_trials: TPE's random trials before it models the history.
        strategy: the search's strategy (what ``auto`` resolves against).
    """
    if name == "auto":
        # benchmarks/results/search_samplers_cpu.md: per-rung sampling beat one TPE over all
        # rungs where the sampler mattered (ResNet-20), TPE per rung at least matched the GP.
        name = "rung-tpe" if strategy == "ladder" else "tpe"
    base: BaseSampler
    if name == "tpe":
        base = optuna.samplers.TPESampler(seed=seed, multivariate=True, group=False,
                                          n_startup_trials=startup_trials)
    elif name == "nsga2":
        base = optuna.samplers.NSGAIISampler(seed=seed, population_size=population)
    elif name == "random":
        base = optuna.samplers.RandomSampler(seed=seed)
    elif name.startswith("rung-") and name in SAMPLERS:
        base = RungSampler(name.removeprefix("rung-"), seed)
    else:
        raise UserInputError(f"unknown sampler {name!r}; valid: {', '.join(SAMPLERS)}")
    return FixingSampler(base)
