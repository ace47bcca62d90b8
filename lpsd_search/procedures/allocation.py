"""Error-balanced rank allocation under a parameter budget (the ALDS idea, without a search).

ALDS (Liebenwein, Maalouf, Gal, Feldman & Rus, NeurIPS 2021) chooses per-layer ranks so that
the *worst* relative approximation error over the layers is as small as the budget allows. Here:
every layer gets a ladder of candidate ranks (parameter fractions on a log grid), each with its
measured relative weight error ``‖W − L‖ / ‖W‖``; one common error target ``ε`` then picks, per
layer, the cheapest candidate whose error is at most ``ε``, and ``ε`` is bisected until the
total fits. (ALDS also picks its channel-split ``k`` per layer; we keep the method's default.)

``allocate`` generalises the knob: ``balanced`` bisects the common error target (optionally
weighted per layer, e.g. tighter for layers the accuracy is sensitive to), ``uniform`` one common
parameter fraction of every layer, ``vbmf`` one common multiple of each layer's VBMF rank. Every
rule is monotone in its scalar, so one bisection serves them all, and the search's policies and
the one-shot heuristics come from the same function at any size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from torch import nn

from lpsd_search.config import Allocation
from lpsd_search.decompositions import Compressible, Rank
from lpsd_search.decompositions.base import get_method, prepare_weight
from lpsd_search.errors import UserInputError

DEFAULT_FRACTIONS = tuple(float(f) for f in np.geomspace(0.002, 1.0, 28))
"""The ladder's rank fractions: a log grid fine enough (×1.26 a rung) that a uniform rule
lands within a few per cent of any size, down to 1/500 of a layer for 50× and beyond."""




@dataclass(frozen=True)
class Candidate:
    """One rung of a layer's ladder: a rank, what it costs and how well it fits."""

    rank: Rank
    params: int
    error: float


def layer_weight(layer: nn.Module) -> torch.Tensor:
    """The layer's weight as ``O × I/g × kh × kw`` in float32 or better (``prepare_weight``)."""
    return prepare_weight(layer)


def ladder(layer: nn.Module, method: str,
           fractions: Sequence[float] = DEFAULT_FRACTIONS) -> list[Candidate]:
    """Candidate ranks of ``layer`` for ``method``, cheapest first, with measured errors.

    Raises:
        UserInputError: a layer the method cannot make smaller, or a fraction out of (0, 1].
    """
    decomposition = get_method(method)
    dense = cast(Compressible, layer)  # prepare rejects any other layer in one line
    seen: dict[Rank, Candidate] = {}
    with torch.no_grad():
        for fraction in fractions:
            # The decomposition's own preparation: the weight and rank decompose would use.
            geom, rank, _, weight = decomposition.prepare(dense, fraction, {})
            if rank in seen:
                continue
            factors = decomposition.factorize(weight, geom, rank)
            residual = weight - decomposition.reconstruct(factors, geom, rank)
            error = float(residual.norm()) / (float(weight.norm()) or 1.0)
            seen[rank] = Candidate(rank, decomposition.params(geom, rank), error)
    return sorted(seen.values(), key=lambda c: c.params)


def _pick(ladders: Mapping[str, Sequence[Candidate]], target: float) -> dict[str, Candidate]:
    """Per layer, the cheapest candidate within ``target`` (else the most accurate one)."""
    chosen = {}
    for name, candidates in ladders.items():
        fitting = [c for c in candidates if c.error <= target]
        chosen[name] = (fitting[0] if fitting else min(candidates, key=lambda c: c.error))
    return chosen


def balanced_ranks(ladders: Mapping[str, Sequence[Candidate]],
                   budget: int) -> dict[str, Candidate]:
    """Per-layer candidates minimising the worst error with at most ``budget`` parameters.

    Raises:
        UserInputError: when even the cheapest rank of every layer exceeds ``budget``.
    """
    cheapest = sum(candidates[0].params for candidates in ladders.values())
    if cheapest > budget:
        raise UserInputError(
            f"the low-rank part needs at least {cheapest} params but only {budget} are left; "
            "valid: a larger budget, or a smaller share for the sparse part"
        )
    low, high = 0.0, max(c.error for cs in ladders.values() for c in cs) + 1e-9
    for _ in range(50):  # ``high`` always fits: at that target every layer takes its cheapest
        middle = (low + high) / 2
        total = sum(c.params for c in _pick(ladders, middle).values())
        if total <= budget:
            high = middle
        else:
            low = middle
        if math.isclose(low, high, rel_tol=1e-6):
            break
    return _pick(ladders, high)


def _by_size(ladders: Mapping[str, Sequence[Candidate]], scale: Mapping[str, float],
             knob: float) -> dict[str, Candidate]:
    """Per layer the largest candidate within ``knob × scale`` (else its cheapest)."""
    chosen = {}
    for name, candidates in ladders.items():
        within = [c for c in candidates if c.params <= knob * scale[name]]
        chosen[name] = within[-1] if within else candidates[0]
    return chosen


def _by_error(ladders: Mapping[str, Sequence[Candidate]], weights: Mapping[str, float],
              knob: float) -> dict[str, Candidate]:
    """Per layer the cheapest candidate within the error ``weight / knob`` (else its best)."""
    chosen = {}
    for name, candidates in ladders.items():
        target = weights.get(name, 1.0) / knob
        within = [c for c in candidates if c.error <= target]
        chosen[name] = within[0] if within else min(candidates, key=lambda c: c.error)
    return chosen


def allocate(ladders: Mapping[str, Sequence[Candidate]], budget: int,
             allocation: Allocation = "balanced",
             weights: Mapping[str, float] | None = None,
             scale: Mapping[str, float] | None = None) -> dict[str, Candidate]:
    """Per-layer candidates under one scalar rule, as large as ``budget`` parameters allow.

    Args:
        ladders: per layer its candidates, cheapest first (``ladder``).
        budget: parameters the chosen candidates may hold together.
        allocation: ``balanced`` (one error target, each layer's scaled by its weight),
            ``uniform`` (one fraction of each layer's ``scale``: its dense parameters) or
            ``vbmf`` (one multiple of each layer's ``scale``: the parameters at its VBMF rank).
        weights: ``balanced`` only: per-layer multipliers of the error target (below 1: the
            layer is held to a smaller error). Default 1 (``balanced_ranks``).
        scale: ``uniform``/``vbmf``: each layer's reference size (required for those).

    Raises:
        UserInputError: the cheapest candidates of all layers exceed ``budget``.
    """
    if allocation == "balanced" and not weights:
        return balanced_ranks(ladders, budget)
    cheapest = sum(candidates[0].params for candidates in ladders.values())
    if cheapest > budget:
        raise UserInputError(
            f"the low-rank part needs at least {cheapest} params but only {budget} are left; "
            "valid: a larger budget, or a smaller share for the sparse part")
    if allocation != "balanced" and scale is None:
        raise ValueError(f"allocation {allocation!r} needs each layer's scale")

    def pick(knob: float) -> dict[str, Candidate]:
        if allocation == "balanced":
            return _by_error(ladders, weights or {}, knob)
        assert scale is not None
        return _by_size(ladders, scale, knob)

    # Both rules grow the model with the knob: bisect its logarithm between bounds that
    # bracket every ladder (the low end takes every layer's cheapest candidate, which fits).
    low, high = -40.0, 40.0
    for _ in range(100):
        middle = (low + high) / 2
        if sum(c.params for c in pick(math.exp(middle)).values()) <= budget:
            low = middle
        else:
            high = middle
        if high - low < 1e-6:
            break
    return pick(math.exp(low))
