"""A search space bound to a model: Optuna parameters and the pure map from them to requests.

Parameters come in two groups. *Global* knobs act on every layer at once: ``global:family``
(the method a layer takes unless it chooses its own), ``global:rank`` (a position in [0, 1] on
each rule's log rank range), ``global:sparsity`` (the same on the sparsity range),
``global:dense_small`` (leave layers under 5 % of the searchable parameters dense) and searched
method options (``global:cp.variant``). *Local* knobs refine one layer: ``L:method`` (``=global``
or one of its methods) and multipliers ``L:rank`` and ``L:sparsity`` on the global values.

The map from parameters to requests is a pure function, so any engine that can sample the
distributions (Optuna in-process, Ray Tune's OptunaSearch) runs the same search, and fixing the
local knobs to their neutral values (``=global``, 1.0) leaves exactly the global search.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
)
from torch import nn

from lpsd_search.decompositions.base import get_method
from lpsd_search.decompositions.ranks import suggest_rank
from lpsd_search.errors import UserInputError
from lpsd_search.plan.budget import SPARSE, Request
from lpsd_search.plan.choices import NONE
from lpsd_search.plan.layers import TargetLayer
from lpsd_search.strategy.spaces import LayerRule, SearchSpace

GLOBAL = "=global"
MULTIPLIER = (1 / 8, 8.0)
SMALL_LAYER_SHARE = 0.05


def _position(low: float, high: float, u: float) -> float:
    """``u`` in [0, 1] mapped log-linearly onto [low, high]."""
    return low * (high / low) ** min(max(u, 0.0), 1.0)


def _inverse(low: float, high: float, value: float) -> float:
    if high <= low:
        return 1.0
    return min(max(math.log(max(value, 1e-12) / low) / math.log(high / low), 0.0), 1.0)


class BoundSpace:
    """The parameters of ``space`` for one model.

    Args:
        space: the declarative space.
        targets: the model's compressible layers.
        allowed: searchable layers and their methods (``space.allowed(targets)``).
        modules: the model's layers by name (only needed for ``rank_anchor = "vbmf"``).
    """

    def __init__(self, space: SearchSpace, targets: Sequence[TargetLayer],
                 allowed: Mapping[str, Sequence[str]],
                 modules: Mapping[str, nn.Module] | None = None) -> None:
        self.space = space
        self.allowed = {name: list(methods) for name, methods in allowed.items()}
        self.rules: dict[str, LayerRule] = {}
        for name in self.allowed:
            rule = space.rule_for(name)
            assert rule is not None
            self.rules[name] = rule
        geoms = {t.name: t.geometry for t in targets}
        self.geoms = geoms
        self._option_ok: dict[tuple[str, str, str, Any], bool] = {}
        total = sum(geoms[name].dense_params for name in self.allowed)
        self.small = {name for name in self.allowed
                      if geoms[name].dense_params < SMALL_LAYER_SHARE * total}
        self.families = sorted({m for ms in self.allowed.values() for m in ms if m != NONE})
        self.anchors: dict[tuple[str, str], float] = {}
        for name, rule in self.rules.items():
            if rule.rank_anchor != "vbmf":
                continue
            if modules is None:
                raise ValueError("rank_anchor = 'vbmf' needs the model's layers")
            for method in rule.low_rank_methods:
                if method not in self.allowed[name]:
                    continue
                rank = suggest_rank(modules[name], method, "vbmf")
                self.anchors[(name, method)] = (get_method(method).params(geoms[name], rank)
                                                / geoms[name].dense_params)
        self.option_choices: dict[str, tuple[Any, ...]] = {}
        for rule in self.rules.values():
            for method, table in rule.options.items():
                for option, values in table.items():
                    if len(values) > 1:
                        key = f"global:{method}.{option}"
                        merged = self.option_choices.get(key, ())
                        self.option_choices[key] = merged + tuple(
                            v for v in values if v not in merged)

    # -- parameters ------------------------------------------------------------------------

    def global_distributions(self) -> dict[str, BaseDistribution]:
        """The global knobs."""
        dists: dict[str, BaseDistribution] = {}
        if len(self.families) > 1:
            dists["global:family"] = CategoricalDistribution(self.families)
        dists["global:rank"] = FloatDistribution(0.0, 1.0)
        if any(rule.sparsity_range for rule in self.rules.values()):
            dists["global:sparsity"] = FloatDistribution(0.0, 1.0)
        if self.small:
            dists["global:dense_small"] = CategoricalDistribution([True, False])
        for key, values in self.option_choices.items():
            dists[key] = CategoricalDistribution(list(values))
        return dists

    def local_distributions(self) -> dict[str, BaseDistribution]:
        """The per-layer refinements."""
        dists: dict[str, BaseDistribution] = {}
        for name, methods in self.allowed.items():
            rule = self.rules[name]
            dists[f"{name}:method"] = CategoricalDistribution([GLOBAL, *methods])
            if rule.low_rank_methods:
                dists[f"{name}:rank"] = FloatDistribution(*MULTIPLIER, log=True)
            if rule.sparsity_range:
                dists[f"{name}:sparsity"] = FloatDistribution(*MULTIPLIER, log=True)
        return dists

    def distributions(self) -> dict[str, BaseDistribution]:
        """Every parameter, global knobs first."""
        return {**self.global_distributions(), **self.local_distributions()}

    def neutral_local(self) -> dict[str, Any]:
        """Local values that leave every layer to the global knobs."""
        return {key: GLOBAL if key.endswith(":method") else 1.0
                for key in self.local_distributions()}

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Sample every parameter (define-by-run) and return them."""
        return {key: suggest(trial, key, dist) for key, dist in self.distributions().items()}

    # -- parameters → requests ------------------------------------------------------------

    def _method(self, name: str, params: Mapping[str, Any]) -> str:
        choice = str(params.get(f"{name}:method", GLOBAL))
        if choice != GLOBAL:
            return choice
        if name in self.small and bool(params.get("global:dense_small", False)):
            return NONE
        methods = self.allowed[name]
        family = str(params.get("global:family", self.families[0]))
        if family in methods:
            return family
        # The family does not apply here (e.g. cp on a Linear): the layer's first real method.
        return next((m for m in methods if m != NONE), NONE)

    def request(self, name: str, params: Mapping[str, Any]) -> Request:
        """The request of one layer under ``params``."""
        rule = self.rules[name]
        method = self._method(name, params)
        sparsity = 0.0
        if rule.sparsity_range and method != NONE:
            low, high = rule.sparsity_range
            value = _position(low, high, float(params.get("global:sparsity", 0.5)))
            sparsity = min(max(value * float(params.get(f"{name}:sparsity", 1.0)), low), high)
        if method in (NONE, SPARSE):
            return Request(method, 1.0, sparsity if method == SPARSE else 0.0)
        low, high = rule.rank_range
        fraction = _position(low, high, float(params.get("global:rank", 0.5)))
        fraction *= float(params.get(f"{name}:rank", 1.0))
        fraction = min(max(fraction, low), high)
        fraction *= self.anchors.get((name, method), 1.0)
        options = []
        for option, values in rule.options.get(method, {}).items():
            value = params.get(f"global:{method}.{option}", values[0])
            value = value if value in values else values[0]
            if self._option_fits(name, method, option, value):
                options.append((option, value))
        return Request(method, min(max(fraction, 1e-9), 1.0), sparsity,
                       rule.alternating and sparsity > 0, tuple(options))

    def _option_fits(self, name: str, method: str, option: str, value: Any) -> bool:
        """Whether a searched option applies to this layer (alds ``k`` does not to a Linear)."""
        key = (name, method, option, value)
        if key not in self._option_ok:
            decomposition = get_method(method)
            try:
                geom = self.geoms[name]
                decomposition.params(geom, decomposition.min_rank(geom, **{option: value}),
                                     **{option: value})
                self._option_ok[key] = True
            except UserInputError:
                self._option_ok[key] = False
        return self._option_ok[key]

    def requests(self, params: Mapping[str, Any]) -> dict[str, Request]:
        """Every searchable layer's request under ``params`` (a pure function)."""
        return {name: self.request(name, params) for name in self.allowed}

    # -- requests → parameters (warm starts) ----------------------------------------------

    def params_for(self, requests: Mapping[str, Request]) -> dict[str, Any]:
        """Parameters whose requests approximate ``requests`` (for enqueued warm starts).

        Global knobs take the most common method and the median rank position; each layer
        names its own method and its multipliers carry the rest, clipped to their ranges.
        """
        methods = [r.method for r in requests.values() if r.method != NONE]
        params: dict[str, Any] = {}
        family = max(self.families, key=methods.count) if self.families else NONE
        if "global:family" in self.global_distributions():
            params["global:family"] = family
        rank_u, sparse_u = [], []
        for name, request in requests.items():
            rule = self.rules[name]
            if request.method not in (NONE, SPARSE):
                anchor = self.anchors.get((name, request.method), 1.0)
                rank_u.append(_inverse(*rule.rank_range, request.fraction / anchor))
            if rule.sparsity_range and request.sparsity > 0:
                sparse_u.append(_inverse(*rule.sparsity_range, request.sparsity))
        params["global:rank"] = sorted(rank_u)[len(rank_u) // 2] if rank_u else 0.5
        if "global:sparsity" in self.global_distributions():
            params["global:sparsity"] = sorted(sparse_u)[len(sparse_u) // 2] if sparse_u else 0.0
        if self.small:
            params["global:dense_small"] = False
        for key, values in self.option_choices.items():
            params[key] = values[0]
        for name, request in requests.items():
            rule = self.rules[name]
            params[f"{name}:method"] = (request.method if request.method in self.allowed[name]
                                        else GLOBAL)
            if rule.low_rank_methods:
                wanted = request.fraction / self.anchors.get((name, request.method), 1.0)
                base = _position(*rule.rank_range, params["global:rank"])
                params[f"{name}:rank"] = _clip(wanted / base)
            if rule.sparsity_range:
                base = _position(*rule.sparsity_range, params.get("global:sparsity", 0.5))
                params[f"{name}:sparsity"] = _clip(max(request.sparsity, 1e-12) / base)
        return params


def suggest(trial: optuna.Trial, key: str, dist: BaseDistribution) -> Any:
    """``trial.suggest_*`` for one distribution of ours (categorical or float)."""
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(key, list(dist.choices))
    assert isinstance(dist, FloatDistribution)
    return trial.suggest_float(key, dist.low, dist.high, log=dist.log)


def _clip(value: float) -> float:
    return min(max(value, MULTIPLIER[0]), MULTIPLIER[1])
