"""The ladder strategy's planner: (size rung, policy) → the exact plan of the allocator.

Built once per worker next to the ``TrialRunner``: it keeps what every plan of the search
shares (the layers' ladders, the per-family sensitivity tables, the validation subset ALPSD's
local selection scores on), so a trial's plan costs an allocation, not a factorisation of every
layer at every rank.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from lpsd_search.data.splits import DataSplits
from lpsd_search.decompositions.base import get_method
from lpsd_search.decompositions.cache import FactorCache
from lpsd_search.errors import UserInputError
from lpsd_search.plan.budget import Budget, Pricer, parse_budget, plan_requests
from lpsd_search.plan.choices import Plan
from lpsd_search.procedures.compress import LadderCache, compress_model
from lpsd_search.strategy.policies import RUNG, Policy, PolicySpace
from lpsd_search.strategy.rungs import layer_method, rung_budget, size_rungs
from lpsd_search.strategy.sensitivity import layer_sensitivity, sensitivity_weights

logger = logging.getLogger(__name__)


def params_budget(budgets: Sequence[Budget], pricer: Pricer) -> Budget:
    """The parameter budget the rungs descend from: the search's own, or (with only byte or
    FLOP budgets) the same fraction of the baseline's parameters as the tightest of them."""
    found = next((b for b in budgets if b.metric == "params"), None)
    if found is not None:
        return found
    fraction = min(b.fraction for b in budgets)
    return parse_budget(f"{fraction:.6f}").resolve(pricer.baseline.params)


class LadderPlanner:
    """Plans of (rung, policy) pairs for one model.

    Args:
        model: the dense model (not modified).
        example: one input batch of the data's shape.
        data: the splits (the validation subset of local selection and sensitivity).
        device: where models are scored.
        pricer: prices plans of ``model``.
        allowed: searchable layers and their methods.
        small: layers a policy may keep dense.
        budgets: the search's budgets.
        cache: the evaluator's factor cache (plans built later reuse the factors).
        sparse: whether the space allows a sparse residual.
    """

    def __init__(self, model: nn.Module, example: torch.Tensor, data: DataSplits,
                 device: torch.device, pricer: Pricer, allowed: Mapping[str, Sequence[str]],
                 small: set[str], budgets: Sequence[Budget], cache: FactorCache,
                 sparse: bool) -> None:
        self.model = model
        self.example = example
        self.data = data
        self.device = device
        self.pricer = pricer
        self.allowed = {name: list(methods) for name, methods in allowed.items()}
        self.small = small
        self.budgets = list(budgets)
        self.cache = cache
        self.ladders = LadderCache()
        self.budget = params_budget(budgets, pricer)
        families = sorted({m for ms in self.allowed.values() for m in ms
                           if m not in ("none", "sparse")})
        self.rungs = size_rungs(pricer, self.allowed, self.budget, families)
        self.space = PolicySpace(self.rungs, families, sparse, bool(small))
        self._sensitivity: dict[str, dict[str, float]] = {}
        self._loss: Any = None

    def methods(self, policy: Policy) -> dict[str, str]:
        """Each compressed layer's method under ``policy`` (small layers left out on request)."""
        chosen = {}
        for name, methods in self.allowed.items():
            if policy.dense_small and name in self.small:
                continue
            method = layer_method(policy.family, methods)
            if method is not None and get_method(method).supports(
                    self.pricer.targets[name].geometry):
                chosen[name] = method
        return chosen

    def loss(self) -> Any:
        """The validation-subset loss (built on first use)."""
        if self._loss is None:
            from lpsd_search.trial.evaluate import validation_loss

            self._loss = validation_loss(self.data, self.device)
        return self._loss

    def weights(self, policy: Policy, methods: Mapping[str, str]) -> dict[str, float] | None:
        """Error-target multipliers of a sensitivity-weighted policy (None: unweighted)."""
        if policy.sensitivity <= 0 or policy.allocation != "balanced":
            return None
        if policy.family not in self._sensitivity:
            every = self.methods(Policy(policy.family))
            self._sensitivity[policy.family] = layer_sensitivity(
                self.model, every, self.pricer.targets, self.loss(), self.cache)
        rises = self._sensitivity[policy.family]
        return sensitivity_weights({n: rises[n] for n in methods if n in rises},
                                   policy.sensitivity)

    def plan(self, params: Mapping[str, Any]) -> Plan:
        """The plan of a trial's parameters, within its rung (and every budget)."""
        policy = self.space.policy(params)
        level = float(params[RUNG])
        budget = rung_budget(self.budget, self.pricer.baseline.params, level)
        try:
            plan = self._allocate(policy, budget)
        except UserInputError as error:
            if not policy.dense_small:
                # Not the user's input: a sampled policy that cannot reach this rung fails
                # its trial, and the search goes on.
                raise RuntimeError(f"policy cannot reach {level:g}x: {error}") from None
            # Small layers kept dense can cost more than a far rung leaves (the rungs are
            # reachable with every layer compressed): compress them too.
            logger.info("rung %gx: small layers compressed too (%s)", level, error)
            try:
                plan = self._allocate(replace(policy, dense_small=False), budget)
            except UserInputError as again:
                raise RuntimeError(f"policy cannot reach {level:g}x: {again}") from None
        if not self.pricer.fits(plan, self.budgets):
            # A byte or FLOP budget the parameter rung does not imply: the closed-form repair.
            plan = self.pricer.fit(plan_requests(self.pricer, plan, self.allowed),
                                   self.budgets, self.allowed)
        return plan

    def _allocate(self, policy: Policy, budget: Budget) -> Plan:
        """The allocator's plan of ``policy`` within ``budget``."""
        methods = self.methods(policy)
        objective = self.loss() if policy.local_passes > 0 else None
        return compress_model(self.model, self.example, budget, policy.compress_config(),
                              objective=objective, methods=methods,
                              weights=self.weights(policy, methods), ladders=self.ladders).plan
