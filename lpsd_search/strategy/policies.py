"""The ladder search's parameters: a size rung and a policy, mapped exactly to a plan.

A trial of the ladder strategy is a pair (size rung, policy). The policy is a handful of knobs
that a whole-model allocator understands (``procedures.compress.compress_model``): the
low-rank family, the rank rule (error-balanced, uniform, VBMF-scaled), the sparse residual's
share of the budget, one-pass or alternating fit (Sparsification or ALPSD), ALPSD's local
passes, a sensitivity exponent that tightens the error target of the layers the accuracy
depends on, and whether small layers stay dense. The plan is computed from them exactly, so a
trial is reproducible from its parameters, and every one-shot heuristic is one point of this
space: ``uniform``, ``vbmf``, ``alds``, ``lpsd`` and ``alpsd`` at every rung are the search's
warm starts, and the sampler learns from them (a dozen dimensions, not one per layer).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
)

from lpsd_search.config import ALLOCATIONS, CompressConfig, Procedure

RUNG = "rung"
FAMILY = "policy:family"
ALLOCATION = "policy:allocation"
SHARE = "policy:sparse_share"
ALTERNATING = "policy:alternating"
LOCAL = "policy:local_passes"
SENSITIVITY = "policy:sensitivity"
DENSE_SMALL = "policy:dense_small"

SHARE_RANGE = (0.0, 0.5)
"""The sparse residual's share of the compressible layers' budget a policy may take."""

SHARE_OFF = 0.02
"""Shares sampled below this mean no sparse residual (a continuous knob must reach zero)."""

HEURISTIC_SHARE = 0.3
"""The sparse share of the published Sparsification and ALPSD procedures."""

PREFERRED = ("tucker2", "alds", "svd", "cp", "tt")
"""Families in the order a heuristic prefers them (the first the space allows)."""


@dataclass(frozen=True)
class Policy:
    """How a whole-model allocator turns a size into a plan (see the module docstring)."""

    family: str
    allocation: str = "balanced"
    sparse_share: float = 0.0
    alternating: bool = False
    local_passes: int = 0
    sensitivity: float = 0.0
    dense_small: bool = False

    def compress_config(self) -> CompressConfig:
        """The allocator's settings."""
        procedure: Procedure = ("lowrank" if self.sparse_share <= 0
                                else "alpsd" if self.alternating else "lpsd")
        return CompressConfig(procedure=procedure, low_rank=self.family,
                              sparse_share=self.sparse_share,
                              local_passes=self.local_passes,
                              allocation=self.allocation)  # type: ignore[arg-type]


def preferred_family(families: Sequence[str], first: str | None = None) -> str:
    """``first`` when the space has it, else the first of ``PREFERRED`` it has."""
    if first is not None and first in families:
        return first
    return next((f for f in PREFERRED if f in families), families[0])


class PolicySpace:
    """The ladder's parameters for one model and space.

    Args:
        rungs: compression levels, the budget's first.
        families: the space's low-rank families.
        sparse: whether the space allows a sparse residual.
        small: whether the model has small layers a policy may keep dense.
    """

    def __init__(self, rungs: Sequence[float], families: Sequence[str], sparse: bool,
                 small: bool) -> None:
        if not families:
            raise ValueError("a ladder search needs at least one low-rank family")
        self.rungs = list(rungs)
        self.families = list(families)
        self.sparse = sparse
        self.small = small

    def distributions(self) -> dict[str, BaseDistribution]:
        """Every parameter of a trial."""
        dists: dict[str, BaseDistribution] = {RUNG: CategoricalDistribution(self.rungs)}
        if len(self.families) > 1:
            dists[FAMILY] = CategoricalDistribution(self.families)
        dists[ALLOCATION] = CategoricalDistribution(list(ALLOCATIONS))
        if self.sparse:
            dists[SHARE] = FloatDistribution(*SHARE_RANGE)
            dists[ALTERNATING] = CategoricalDistribution([False, True])
            dists[LOCAL] = CategoricalDistribution([0, 1])
        dists[SENSITIVITY] = FloatDistribution(0.0, 1.0)
        if self.small:
            dists[DENSE_SMALL] = CategoricalDistribution([False, True])
        return dists

    def policy(self, params: Mapping[str, Any]) -> Policy:
        """The policy of a trial's parameters (missing knobs take their neutral values)."""
        share = float(params.get(SHARE, 0.0)) if self.sparse else 0.0
        share = 0.0 if share < SHARE_OFF else share
        return Policy(
            family=str(params.get(FAMILY, self.families[0])),
            allocation=str(params.get(ALLOCATION, "balanced")),
            sparse_share=share,
            alternating=bool(params.get(ALTERNATING, False)) and share > 0,
            local_passes=int(params.get(LOCAL, 0)) if share > 0 else 0,
            sensitivity=float(params.get(SENSITIVITY, 0.0)),
            dense_small=bool(params.get(DENSE_SMALL, False)) and self.small,
        )

    def params(self, rung: float, policy: Policy) -> dict[str, Any]:
        """The parameters of ``policy`` at ``rung`` (what a warm start is enqueued with)."""
        values: dict[str, Any] = {RUNG: rung, ALLOCATION: policy.allocation,
                                  SENSITIVITY: policy.sensitivity}
        if len(self.families) > 1:
            values[FAMILY] = policy.family
        if self.sparse:
            values[SHARE] = policy.sparse_share
            values[ALTERNATING] = policy.alternating
            values[LOCAL] = policy.local_passes
        if self.small:
            values[DENSE_SMALL] = policy.dense_small
        return values

    def heuristics(self, names: Sequence[str]) -> list[tuple[str, Policy]]:
        """The named one-shot heuristics as policies (those the space cannot express are left
        out: ``lpsd``/``alpsd`` need a sparse residual)."""
        low_rank = preferred_family(self.families)
        balanced = preferred_family(self.families, "alds")
        table = {
            "uniform": Policy(low_rank, "uniform"),
            "vbmf": Policy(low_rank, "vbmf"),
            "alds": Policy(balanced, "balanced"),
        }
        if self.sparse:
            table["lpsd"] = Policy(balanced, "balanced", HEURISTIC_SHARE)
            table["alpsd"] = Policy(balanced, "balanced", HEURISTIC_SHARE, alternating=True,
                                    local_passes=1)
        return [(name, table[name]) for name in names if name in table]
