"""Error-balanced rank allocation under a parameter budget (the ALDS idea, without a search).

ALDS (Liebenwein, Maalouf, Gal, Feldman & Rus, NeurIPS 2021) chooses per-layer ranks so that
the *worst* relative approximation error over the layers is as small as the budget allows. Here:
every layer gets a ladder of candidate ranks (parameter fractions on a log grid), each with its
measured relative weight error ``‖W − L‖ / ‖W‖``; one common error target ``ε`` then picks, per
layer, the cheapest candidate whose error is at most ``ε``, and ``ε`` is bisected until the
total fits. (ALDS also picks its channel-split ``k`` per layer; we keep the method's default.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from torch import nn

from lpsd_search.decompositions import Compressible, Rank
from lpsd_search.decompositions.base import get_method, prepare_weight
from lpsd_search.errors import UserInputError

DEFAULT_FRACTIONS = tuple(float(f) for f in np.geomspace(0.005, 1.0, 16))


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
