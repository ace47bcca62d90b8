"""A per-layer compression plan: what it is, what it costs, and how it is applied.

``choices`` (``LayerChoice``, ``Plan``: the JSON contract of ``pareto.json`` and saved models),
``layers`` (finding the compressible layers and their input sizes), ``measure`` (honest sizes
of a built model: params, bytes with sparse indices, FLOPs), ``budget`` (budgets, closed-form
pricing of a plan, and repair of a plan to the budgets) and ``apply`` (the plan applied to a
model, or its empty skeleton for loading).

The one-shot procedures and the search both price and repair plans, so budgets live here,
below both of them.
"""

from __future__ import annotations

from lpsd_search.plan.apply import apply_plan, build_skeleton, skeleton_layer
from lpsd_search.plan.budget import (
    METRICS,
    SPARSE,
    Budget,
    BudgetSpec,
    Pricer,
    Request,
    choice_size,
    parse_budget,
    parse_budgets,
)
from lpsd_search.plan.choices import NONE, LayerChoice, Plan
from lpsd_search.plan.layers import TargetLayer, find_layers, layer_positions, set_submodule
from lpsd_search.plan.measure import ModelSize, count_bytes, count_flops, count_params, measure

__all__ = [
    "METRICS",
    "NONE",
    "SPARSE",
    "Budget",
    "BudgetSpec",
    "LayerChoice",
    "ModelSize",
    "Plan",
    "Pricer",
    "Request",
    "TargetLayer",
    "apply_plan",
    "build_skeleton",
    "choice_size",
    "count_bytes",
    "count_flops",
    "count_params",
    "find_layers",
    "layer_positions",
    "measure",
    "parse_budget",
    "parse_budgets",
    "set_submodule",
    "skeleton_layer",
]
