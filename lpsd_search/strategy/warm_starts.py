"""Warm starts: cheap heuristic plans enqueued as a search's first trials.

* ``uniform``: every layer one method (one plan per method family) at the rank that meets the
  budget with one common rank fraction;
* ``vbmf``: per layer the rank EVBMF finds (Nakajima et al. 2013), repaired to the budget;
* ``alds``: error-balanced ranks (ALDS-style allocation: minimise the worst layer's error);
* ``lpsd`` and ``alpsd``: the whole-model Sparsification and ALPSD procedures (spaces with a
  sparse residual only).

Each is enqueued with approximate parameters (so the sampler learns from it) and the exact plan
as the ``plan_override`` user attribute (``report.record.warm_start_attrs``), which the runner
builds when it fits the budgets.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import optuna

from lpsd_search.config import WARM_STARTS, CompressConfig, Procedure
from lpsd_search.decompositions.base import get_method
from lpsd_search.decompositions.ranks import suggest_rank
from lpsd_search.errors import UserInputError
from lpsd_search.plan.budget import SPARSE, Request
from lpsd_search.plan.budget import plan_requests as budget_requests
from lpsd_search.plan.choices import NONE, Plan
from lpsd_search.procedures.compress import compress_model
from lpsd_search.report.record import warm_start_attrs
from lpsd_search.strategy.ladder import params_budget as ladder_budget
from lpsd_search.strategy.runner import TrialRunner

logger = logging.getLogger(__name__)

# WARM_STARTS (the names) lives in config, so that SearchConfig rejects a bad one up front.
PREFERRED = ("tucker2", "alds", "svd", "cp", "tt")


def _first_low_rank(methods: Sequence[str]) -> str | None:
    ranked = sorted((m for m in methods if m not in (NONE, SPARSE)),
                    key=lambda m: PREFERRED.index(m) if m in PREFERRED else len(PREFERRED))
    return ranked[0] if ranked else None


def plan_requests(runner: TrialRunner, plan: Plan) -> dict[str, Request]:
    """A concrete plan as requests (rank fraction of each layer's parameters)."""
    return budget_requests(runner.pricer, plan, runner.space.allowed)


def _params_fraction(runner: TrialRunner) -> float:
    """The share of the baseline's parameters the tightest budget leaves (estimated)."""
    return min(b.fraction for b in runner.budgets)


def uniform_plans(runner: TrialRunner) -> list[tuple[str, Plan]]:
    """One plan per method family: every layer that allows it takes it, at one fraction."""
    plans = []
    fraction = _params_fraction(runner)
    for family in runner.space.families:
        if family == SPARSE:
            continue
        requests = {}
        for name, methods in runner.space.allowed.items():
            rule = runner.space.rules[name]
            sparsity = 0.3 * fraction if rule.sparsity_range else 0.0
            small = name in runner.space.small
            requests[name] = (Request(family, fraction, sparsity, rule.alternating)
                              if family in methods and not small else Request(NONE))
        plans.append((f"uniform {family}", runner.pricer.fit(requests, runner.budgets,
                                                             runner.space.allowed)))
    return plans


def vbmf_plan(runner: TrialRunner) -> list[tuple[str, Plan]]:
    """Per layer the VBMF rank of its preferred method, repaired to the budgets."""
    modules = dict(runner.evaluator.model.named_modules())
    requests = {}
    for name, methods in runner.space.allowed.items():
        method = _first_low_rank(methods)
        if method is None:
            requests[name] = Request(NONE)
            continue
        geom = runner.pricer.targets[name].geometry
        rank = suggest_rank(modules[name], method, "vbmf")
        fraction = get_method(method).params(geom, rank) / geom.dense_params
        requests[name] = Request(method, min(fraction, 1.0))
    return [("vbmf", runner.pricer.fit(requests, runner.budgets, runner.space.allowed))]


def _procedure_plan(runner: TrialRunner, procedure: str) -> list[tuple[str, Plan]]:
    from lpsd_search.trial.evaluate import validation_loss

    families = runner.space.families
    low_rank = "alds" if "alds" in families else _first_low_rank(families)
    if low_rank is None or (procedure != "alds" and not runner.space.space.has_sparsity):
        return []
    params_budget = ladder_budget(runner.budgets, runner.pricer)
    kind: Procedure = ("lowrank" if procedure == "alds"
                       else "alpsd" if procedure == "alpsd" else "lpsd")
    config = CompressConfig(procedure=kind, low_rank=low_rank)
    objective = (validation_loss(runner.data, runner.device) if procedure == "alpsd" else None)
    plans = []
    # The error-balanced allocation is cheap: it also seeds the front at half the budget, where
    # the accurate small models are that the budget alone does not ask for.
    shares = (1.0, 0.5) if procedure == "alds" else (1.0,)
    for share in shares:
        budget = replace(params_budget, limit=int(share * params_budget.limit))
        try:
            result = compress_model(runner.evaluator.model, runner.evaluator.example, budget,
                                    config, objective=objective)
        except UserInputError as error:
            logger.info("warm start %s at %.2g of the budget skipped: %s", procedure, share,
                        error)
            continue
        allowed = {name: choice for name, choice in result.plan.layers.items()
                   if name in runner.space.allowed
                   and choice.method in runner.space.allowed[name]}
        plan = Plan(allowed)
        if not runner.pricer.fits(plan, runner.budgets):
            plan = runner.pricer.fit(plan_requests(runner, plan), runner.budgets,
                                     runner.space.allowed)
        plans.append((procedure if share == 1.0 else f"{procedure} x{share:g}", plan))
    return plans


BUILDERS: dict[str, Callable[[TrialRunner], list[tuple[str, Plan]]]] = {
    "uniform": uniform_plans,
    "vbmf": vbmf_plan,
    "alds": lambda runner: _procedure_plan(runner, "alds"),
    "lpsd": lambda runner: _procedure_plan(runner, "lpsd"),
    "alpsd": lambda runner: _procedure_plan(runner, "alpsd"),
}


def warm_start_plans(runner: TrialRunner, names: Sequence[str]) -> list[tuple[str, Plan]]:
    """The named heuristics' plans; one that cannot run here is skipped with a log line."""
    plans: list[tuple[str, Plan]] = []
    for name in names:
        if name not in BUILDERS:
            raise UserInputError(f"unknown warm start {name!r}; valid: {', '.join(WARM_STARTS)}")
        try:
            plans.extend(BUILDERS[name](runner))
        except UserInputError as error:
            logger.info("warm start %s skipped: %s", name, error)
    return plans


LADDER_ORDER = ("alpsd", "alds", "lpsd", "vbmf", "uniform")
"""The order the ladder runs its heuristics in (those published as strongest first), so that a
search with fewer trials than heuristics × rungs still has the strongest at every rung."""


def ladder_warm_starts(runner: TrialRunner, names: Sequence[str],
                       limit: int) -> list[tuple[str, dict[str, Any]]]:
    """The named heuristics at every rung as (label, parameters), at most ``limit`` of them."""
    assert runner.ladder is not None
    space = runner.ladder.space
    ordered = sorted(names, key=lambda n: LADDER_ORDER.index(n) if n in LADDER_ORDER else 99)
    starts = [(f"{name} {rung:.3g}x", space.params(rung, policy))
              for name, policy in space.heuristics(ordered) for rung in space.rungs]
    return starts[:limit]


def enqueue_warm_starts(study: optuna.Study, runner: TrialRunner, names: Sequence[str],
                        limit: int | None = None) -> int:
    """Enqueue the heuristics' plans as the first trials; returns how many were enqueued.

    A ladder search enqueues each heuristic's parameters at every rung (at most ``limit``);
    the others their plans at the budget.
    """
    if runner.ladder is not None:
        starts = ladder_warm_starts(runner, names, limit if limit is not None else 10**6)
        for label, params in starts:
            study.enqueue_trial(params, user_attrs=warm_start_attrs(label))
            logger.info("warm start %s", label)
        return len(starts)
    plans = warm_start_plans(runner, names)
    for label, plan in plans:
        params = runner.space.params_for(plan_requests(runner, plan))
        study.enqueue_trial(params, user_attrs=warm_start_attrs(label, plan.to_dict()))
        logger.info("warm start %s: %s", label, plan.summary())
    return len(plans)
