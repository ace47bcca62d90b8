"""Size rungs: the sizes a ladder search aims its trials at, from the budget down.

A front is useful when a user can pick any size from it, so the search does not push every trial
to the budget's edge: each trial aims at one rung of a ladder of compression levels, the budget's
own level first, then the round levels (5×, 10×, 20×, 30×, 50×, …) beyond it that every method
family of the space can still reach, and its plan is allocated exactly to that rung's size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from lpsd_search.decompositions.base import get_method
from lpsd_search.errors import UserInputError
from lpsd_search.plan.budget import SPARSE, Budget, Pricer
from lpsd_search.plan.choices import NONE
from lpsd_search.procedures.allocation import DEFAULT_FRACTIONS

LEVELS = (1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 50.0, 100.0, 200.0, 500.0, 1000.0)
"""Round compression levels (baseline params ÷ model params) a ladder may hold."""

REACH_MARGIN = 1.25
"""A rung is kept only when its size is this many times the smallest size every family reaches
(room for the allocation to choose, and for a sparse part)."""

MAX_RUNGS = 6
"""At most this many rungs: beyond them a front point is rarely useful and trials thin out."""


def layer_method(family: str, methods: Sequence[str]) -> str | None:
    """The low-rank method a layer takes under ``family``: the family where the layer allows
    it, else the layer's first low-rank method (a Linear under ``cp`` takes ``svd``), else
    None (the layer stays dense)."""
    if family in methods:
        return family
    return next((m for m in methods if m not in (NONE, SPARSE)), None)


def family_floor(pricer: Pricer, allowed: Mapping[str, Sequence[str]], family: str) -> int:
    """Parameters of the model when every layer takes ``family``'s cheapest ladder rank."""
    total = pricer.baseline.params
    smallest = DEFAULT_FRACTIONS[0]
    for name, methods in allowed.items():
        method = layer_method(family, methods)
        if method is None:
            continue
        geom = pricer.targets[name].geometry
        decomposition = get_method(method)
        if not decomposition.supports(geom):
            continue
        rank = decomposition.resolve_rank(geom, smallest)
        total -= geom.dense_params - min(decomposition.params(geom, rank), geom.dense_params)
    return total


def size_rungs(pricer: Pricer, allowed: Mapping[str, Sequence[str]], budget: Budget,
               families: Sequence[str]) -> list[float]:
    """The ladder's compression levels, smallest compression (the budget) first.

    Args:
        pricer: prices plans of the model.
        allowed: searchable layers and their methods.
        budget: the parameter budget; its level is the first rung.
        families: the low-rank families of the space (each must reach every rung).

    Raises:
        UserInputError: no family can reach the budget.
    """
    baseline = pricer.baseline.params
    top = baseline / budget.limit
    floor = max(family_floor(pricer, allowed, family) for family in families)
    if floor > budget.limit:
        raise UserInputError(
            f"budget {budget.requested} ({budget.limit} params) is below what every method of "
            f"the space reaches ({floor} params); valid: a budget ≥ {floor / baseline:.4f}, or a "
            "space whose methods go smaller")
    reach = baseline / (floor * REACH_MARGIN)
    rungs = [round(top, 3)]
    rungs += [level for level in LEVELS if level > top * 1.2 and level <= reach]
    return rungs[:MAX_RUNGS]


def rung_budget(budget: Budget, baseline_params: int, level: float) -> Budget:
    """The parameter budget of one rung (the search's own budget at its first rung)."""
    limit = min(budget.limit, math.floor(baseline_params / level))
    return Budget(limit, limit / baseline_params, f"{level:g}x", budget.metric)
