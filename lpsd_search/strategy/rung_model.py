"""One Gaussian process over every rung: the ladder's policies, with the rung as a context.

Per-rung samplers (``rung_sampler``) see a handful of trials at each rung, too few to model
anything: at four rungs and forty trials, half of them heuristics, a rung's TPE gets four
random draws and one guided one. Yet the rungs are one problem seen at different sizes: a
policy that loses at 20x (too little sparse residual, say) tends to lose at 30x too. This model
pools the trials of every rung into one regression, with the rung's log size as an input, and
chooses the policy for a given rung by expected improvement over that rung's best.

The target is a trial's quality objective *relative to its rung's best*, clipped at
``FLOOR`` below it: rungs differ in accuracy by whole points, the collapsed heuristics of the
far rungs (chance level) by tens, and neither should shape the model of what wins near the top.
The regression is scikit-learn's ``GaussianProcessRegressor`` (Matern 5/2 with one length
scale per input, plus a noise term: short fine-tunes are noisy); the acquisition is maximised
over random policies and perturbations of the best ones seen at any rung.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

FLOOR = 0.05
"""How far below its rung's best a trial's target is clipped (5 points of accuracy)."""

CANDIDATES = 2048
"""Random policies the acquisition is evaluated on, besides perturbations of the best."""

PERTURBED = 256
"""Perturbations of each of the best few trials (``TOP``) among the candidates."""

TOP = 4


@dataclass(frozen=True)
class Observation:
    """One completed trial: its rung, its policy's parameters and its quality objective."""

    rung: float
    params: Mapping[str, Any]
    value: float


class Encoder:
    """Policies as points of the unit cube: one-hot categories, floats scaled to [0, 1], and the
    rung's log size scaled over the ladder."""

    def __init__(self, space: Mapping[str, BaseDistribution], rungs: Sequence[float]) -> None:
        self.space = dict(space)
        low, high = math.log(min(rungs)), math.log(max(rungs))
        self._rung = (low, max(high - low, 1e-9))

    def encode(self, rung: float, params: Mapping[str, Any]) -> np.ndarray:
        """The point of ``params`` at ``rung``: the rung first, then each parameter."""
        low, span = self._rung
        parts = [(math.log(rung) - low) / span]
        for name, dist in self.space.items():
            value = params[name]
            if isinstance(dist, CategoricalDistribution):
                parts += [float(value == choice) for choice in dist.choices]
            else:
                assert isinstance(dist, FloatDistribution | IntDistribution)
                parts.append((float(value) - dist.low) / max(dist.high - dist.low, 1e-12))
        return np.asarray(parts)

    def random(self, rng: np.random.Generator) -> dict[str, Any]:
        """A policy drawn uniformly from the space."""
        return {name: _draw(dist, rng) for name, dist in self.space.items()}

    def perturb(self, params: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """``params`` with each float moved by a tenth of its range, and one other knob redrawn
        with probability one half."""
        out = dict(params)
        for name, dist in self.space.items():
            if isinstance(dist, FloatDistribution):
                span = dist.high - dist.low
                out[name] = float(np.clip(out[name] + rng.normal(0, 0.1 * span), dist.low,
                                          dist.high))
        if rng.random() < 0.5:
            name = list(self.space)[int(rng.integers(len(self.space)))]
            out[name] = _draw(self.space[name], rng)
        return out


def _draw(dist: BaseDistribution, rng: np.random.Generator) -> Any:
    if isinstance(dist, CategoricalDistribution):
        return dist.choices[int(rng.integers(len(dist.choices)))]
    if isinstance(dist, IntDistribution):
        return int(rng.integers(dist.low, dist.high + 1))
    assert isinstance(dist, FloatDistribution)
    return float(rng.uniform(dist.low, dist.high))


def relative_targets(observations: Sequence[Observation]) -> np.ndarray:
    """Each value minus its rung's best, clipped at ``-FLOOR``."""
    best: dict[float, float] = {}
    for obs in observations:
        best[obs.rung] = max(best.get(obs.rung, -math.inf), obs.value)
    return np.asarray([max(obs.value - best[obs.rung], -FLOOR) for obs in observations])


def choose(observations: Sequence[Observation], space: Mapping[str, BaseDistribution],
           rungs: Sequence[float], rung: float, seed: int) -> dict[str, Any]:
    """The policy to try at ``rung``: the candidate of highest expected improvement over the
    rung's best predicted value, under a GP fitted to every rung's observations.

    Args:
        observations: completed, feasible trials of every rung (values: higher is better).
        space: the policy's parameters (the rung left out).
        rungs: the ladder (for the rung input's scale).
        rung: where the next trial runs.
        seed: seeds the candidates and the GP's optimiser restarts.
    """
    from scipy.stats import norm
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    rng = np.random.default_rng(seed)
    encoder = Encoder(space, rungs)
    x = np.stack([encoder.encode(obs.rung, obs.params) for obs in observations])
    y = relative_targets(observations)
    kernel = (ConstantKernel(1.0, (1e-3, 1e3))
              * Matern(length_scale=np.ones(x.shape[1]), length_scale_bounds=(0.05, 20.0),
                       nu=2.5)
              + WhiteKernel(0.1, (1e-6, 1.0)))
    model = GaussianProcessRegressor(kernel, normalize_y=True, n_restarts_optimizer=2,
                                     random_state=int(rng.integers(2**31)))
    with warnings.catch_warnings():
        # A length scale at its upper bound is an input the targets do not depend on (a knob
        # that does not matter here), and a noise level at its lower bound a smooth fit: both
        # are answers, not failures, and sklearn would warn on most fits.
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x, y)

    order = np.argsort(-y, kind="stable")[:TOP]
    candidates = [encoder.random(rng) for _ in range(CANDIDATES)]
    for index in order:
        candidates += [encoder.perturb(observations[index].params, rng)
                       for _ in range(PERTURBED)]
    here = [i for i, obs in enumerate(observations) if obs.rung == rung]
    incumbent = float(model.predict(x[here]).max()) if here else float(y.max())
    grid = np.stack([encoder.encode(rung, params) for params in candidates])
    mean, std = model.predict(grid, return_std=True)
    std = np.maximum(std, 1e-9)
    z = (mean - incumbent) / std
    improvement = (mean - incumbent) * norm.cdf(z) + std * norm.pdf(z)
    return candidates[int(np.argmax(improvement))]
