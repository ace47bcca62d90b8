"""Search spaces: which methods and rank ranges each layer may take, sampled through Optuna.

A space is declarative (a TOML preset, see ``search_spaces/``) and sampled define-by-run: every
layer gets a ``<layer>:method`` categorical and a ``<layer>:rank`` float, so the space is the same
for every trial and warm starts can be enqueued as plain parameter dicts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna

from lpsd_search.budget import Request
from lpsd_search.decompositions import DECOMPOSITIONS, get_method
from lpsd_search.errors import UserInputError
from lpsd_search.layers import TargetLayer
from lpsd_search.plan import NONE
from lpsd_search.presets import load_preset


@dataclass(frozen=True)
class LayerRule:
    """Methods and rank-fraction range for the layers whose qualified name matches ``pattern``."""

    pattern: str
    methods: tuple[str, ...]
    rank_range: tuple[float, float]
    log: bool = True

    def matches(self, name: str) -> bool:
        return re.fullmatch(self.pattern, name) is not None


@dataclass(frozen=True)
class SearchSpace:
    """An ordered list of rules; the first rule matching a layer applies to it."""

    name: str
    description: str
    rules: tuple[LayerRule, ...]

    def rule_for(self, name: str) -> LayerRule | None:
        return next((rule for rule in self.rules if rule.matches(name)), None)

    def allowed(self, targets: Sequence[TargetLayer]) -> dict[str, list[str]]:
        """Searchable layers and the methods that can actually shrink each of them."""
        allowed = {}
        for target in targets:
            rule = self.rule_for(target.name)
            if rule is None:
                continue
            methods = [m for m in rule.methods
                       if m == NONE or get_method(m).supports(target.geometry)]
            if any(m != NONE for m in methods):
                allowed[target.name] = methods
        return allowed

    def sample(self, trial: optuna.Trial,
               allowed: Mapping[str, Sequence[str]]) -> dict[str, Request]:
        """One (method, rank fraction) request per searchable layer."""
        requests = {}
        for name, methods in allowed.items():
            rule = self.rule_for(name)
            assert rule is not None
            method = trial.suggest_categorical(f"{name}:method", list(methods))
            low, high = rule.rank_range
            fraction = trial.suggest_float(f"{name}:rank", low, high, log=rule.log)
            requests[name] = (str(method), fraction)
        return requests


def space_from_dict(name: str, data: Mapping[str, Any]) -> SearchSpace:
    """Validate a parsed preset; every error names the bad entry and what is valid."""
    rules = []
    valid_methods = [NONE, *DECOMPOSITIONS.names()]
    for index, raw in enumerate(data.get("rules", [])):
        where = f"search space {name!r} rule {index + 1}"
        pattern = str(raw.get("match", ".*"))
        try:
            re.compile(pattern)
        except re.error as error:
            raise UserInputError(f"{where}: bad regex {pattern!r} ({error})") from None
        methods = tuple(raw.get("methods", valid_methods))
        unknown = [m for m in methods if m not in valid_methods]
        if unknown:
            raise UserInputError(
                f"{where}: unknown method {unknown[0]!r}; valid: {', '.join(valid_methods)}"
            )
        low, high = (float(v) for v in raw.get("rank", (0.02, 1.0)))
        if not 0.0 < low <= high <= 1.0:
            raise UserInputError(
                f"{where}: rank range [{low}, {high}] is invalid; valid: 0 < low ≤ high ≤ 1"
            )
        rules.append(LayerRule(pattern, methods, (low, high), bool(raw.get("log", True))))
    if not rules:
        raise UserInputError(f"search space {name!r} has no [[rules]]; valid: at least one")
    return SearchSpace(name, str(data.get("description", "")), tuple(rules))


def load_space(name_or_path: str) -> SearchSpace:
    """A shipped preset by name (``default``, ``svd``, …) or a user's TOML file by path."""
    name, data = load_preset("search_spaces", name_or_path)
    return space_from_dict(name, data)
