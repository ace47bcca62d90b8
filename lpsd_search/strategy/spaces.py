"""Search spaces: declarative presets of what each layer may become.

A space (a TOML preset, see ``search_spaces/``) is an ordered list of rules; the first rule whose
regex matches a layer's qualified name applies to it, and layers no rule matches stay dense. A
rule names the allowed methods (registry keys, plus ``none`` to keep the layer dense and
``sparse`` for a sparse residual alone), the rank range (a fraction of the layer's parameters, or
a multiple of the VBMF rank with ``rank_anchor = "vbmf"``), an optional sparse-residual range
(LPSD), whether L and S are fitted by alternation (ALPSD), and method options that are fixed or
searched. ``params.BoundSpace`` turns a space and a model into Optuna parameters.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lpsd_search.decompositions import DECOMPOSITIONS
from lpsd_search.decompositions.base import get_method
from lpsd_search.errors import UserInputError
from lpsd_search.plan.budget import SPARSE
from lpsd_search.plan.choices import NONE
from lpsd_search.plan.layers import TargetLayer
from lpsd_search.presets import load_preset

ANCHORS = ("none", "vbmf")


@dataclass(frozen=True)
class LayerRule:
    """What the layers whose qualified name matches ``pattern`` may become.

    Attributes:
        pattern: regex matched against the whole qualified name.
        methods: allowed methods (``none``, ``sparse`` or registry keys).
        rank_range: low and high rank fraction (or VBMF-rank multiple when anchored).
        sparsity_range: low and high sparse-residual density, or None for no residual.
        alternating: fit L and S by alternation (ALPSD) rather than in one pass.
        rank_anchor: ``none`` (fractions of the layer) or ``vbmf`` (multiples of VBMF's rank).
        options: per method, option name → allowed values (one value: fixed; several: searched).
    """

    pattern: str
    methods: tuple[str, ...]
    rank_range: tuple[float, float] = (0.02, 1.0)
    sparsity_range: tuple[float, float] | None = None
    alternating: bool = False
    rank_anchor: str = "none"
    options: Mapping[str, Mapping[str, tuple[Any, ...]]] = field(default_factory=dict)

    def matches(self, name: str) -> bool:
        return re.fullmatch(self.pattern, name) is not None

    @property
    def low_rank_methods(self) -> tuple[str, ...]:
        return tuple(m for m in self.methods if m not in (NONE, SPARSE))


@dataclass(frozen=True)
class SearchSpace:
    """An ordered list of rules; the first rule matching a layer applies to it."""

    name: str
    description: str
    rules: tuple[LayerRule, ...]

    def rule_for(self, name: str) -> LayerRule | None:
        return next((rule for rule in self.rules if rule.matches(name)), None)

    @property
    def has_sparsity(self) -> bool:
        return any(rule.sparsity_range is not None for rule in self.rules)

    def allowed(self, targets: Sequence[TargetLayer]) -> dict[str, list[str]]:
        """Searchable layers and the methods that can actually shrink each of them."""
        allowed = {}
        for target in targets:
            rule = self.rule_for(target.name)
            if rule is None:
                continue
            methods = [m for m in rule.methods
                       if m in (NONE, SPARSE) or get_method(m).supports(target.geometry)]
            if any(m != NONE for m in methods):
                allowed[target.name] = methods
        return allowed


def _range(raw: Any, where: str, key: str, low_bound: float, high_bound: float,
           ) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in raw)
    except (TypeError, ValueError):
        raise UserInputError(f"{where}: {key} {raw!r} is invalid; valid: [low, high]") from None
    if not low_bound < low <= high <= high_bound:
        raise UserInputError(f"{where}: {key} range [{low}, {high}] is invalid; valid: "
                             f"{low_bound} < low ≤ high ≤ {high_bound}")
    return low, high


def _options(raw: Any, methods: Sequence[str],
             where: str) -> dict[str, dict[str, tuple[Any, ...]]]:
    options: dict[str, dict[str, tuple[Any, ...]]] = {}
    raw = _table(raw if raw is not None else {}, where, "options")
    for method, values in raw.items():
        if method not in methods:
            raise UserInputError(f"{where}: options for {method!r}, which the rule does not "
                                 f"allow; valid: {', '.join(methods)}")
        decomposition = get_method(method)
        table: dict[str, tuple[Any, ...]] = {}
        for option, value in _table(values, where, f"options.{method}").items():
            choices = tuple(value) if isinstance(value, list) else (value,)
            if not choices:
                raise UserInputError(f"{where}: option {method}.{option} has no values")
            try:
                decomposition.check_options({option: choices[0]})
            except UserInputError as error:
                raise UserInputError(f"{where}: {error}") from None
            table[str(option)] = choices
        options[method] = table
    return options


def _table(raw: Any, where: str, key: str) -> Mapping[str, Any]:
    """``raw`` if it is a TOML table (a mapping with string keys)."""
    if not isinstance(raw, Mapping) or not all(isinstance(k, str) for k in raw):
        raise UserInputError(f"{where}: {key} {raw!r} is invalid; valid: a table")
    return raw


def _rule(raw: Any, where: str) -> LayerRule:
    raw = _table(raw, where, "rule")
    valid_methods = [NONE, SPARSE, *DECOMPOSITIONS.names()]
    known = {"match", "methods", "rank", "sparsity", "alternating", "rank_anchor", "options",
             "log"}
    extra = sorted(set(raw) - known)
    if extra:
        raise UserInputError(
            f"{where}: unknown key {extra[0]!r}; valid: {', '.join(sorted(known))}")
    if raw.get("log", True) is not True:  # every range is sampled on a log scale
        raise UserInputError(f"{where}: log {raw['log']!r} is invalid; valid: log = true or "
                             "no log key (ranges are always sampled on a log scale)")
    pattern = raw.get("match", ".*")
    if not isinstance(pattern, str):
        raise UserInputError(f"{where}: match {pattern!r} is invalid; valid: a regex string")
    try:
        re.compile(pattern)
    except re.error as error:
        raise UserInputError(f"{where}: bad regex {pattern!r} ({error})") from None
    methods = raw.get("methods", [NONE, *DECOMPOSITIONS.names()])
    if not isinstance(methods, list) or not all(isinstance(m, str) for m in methods):
        raise UserInputError(f"{where}: methods {methods!r} is invalid; valid: a list of "
                             f"{', '.join(valid_methods)}")
    methods = tuple(methods)
    unknown = [m for m in methods if m not in valid_methods]
    if unknown:
        raise UserInputError(
            f"{where}: unknown method {unknown[0]!r}; valid: {', '.join(valid_methods)}"
        )
    anchor = raw.get("rank_anchor", "none")
    if anchor not in ANCHORS:
        raise UserInputError(f"{where}: rank_anchor {anchor!r} is invalid; valid: "
                             f"{', '.join(ANCHORS)}")
    rank = _range(raw.get("rank", (0.02, 1.0)), where, "rank", 0.0,
                  16.0 if anchor == "vbmf" else 1.0)
    sparsity = (_range(raw["sparsity"], where, "sparsity", 0.0, 1.0)
                if "sparsity" in raw else None)
    if SPARSE in methods and sparsity is None:
        raise UserInputError(f"{where}: method 'sparse' needs a sparsity range; valid: "
                             "sparsity = [low, high]")
    alternating = raw.get("alternating", False)
    if not isinstance(alternating, bool):
        raise UserInputError(f"{where}: alternating {alternating!r} is invalid; valid: true or "
                             "false")
    if alternating and sparsity is None:
        raise UserInputError(f"{where}: alternating needs a sparsity range; valid: "
                             "sparsity = [low, high], or alternating = false")
    return LayerRule(pattern, methods, rank, sparsity, alternating, anchor,
                     _options(raw.get("options"), methods, where))


def space_from_dict(name: str, data: Mapping[str, Any]) -> SearchSpace:
    """Validate a parsed preset; every error names the bad entry and what is valid."""
    data = _table(data, f"search space {name!r}", "file")
    raw_rules = data.get("rules", [])
    if not isinstance(raw_rules, list):
        raise UserInputError(f"search space {name!r}: rules {raw_rules!r} is invalid; valid: "
                             "[[rules]] tables")
    rules = tuple(_rule(raw, f"search space {name!r} rule {index + 1}")
                  for index, raw in enumerate(raw_rules))
    if not rules:
        raise UserInputError(f"search space {name!r} has no [[rules]]; valid: at least one")
    return SearchSpace(name, str(data.get("description", "")), rules)


def load_space(name_or_path: str) -> SearchSpace:
    """A shipped preset by name (``default``, ``svd``, …) or a user's TOML file by path."""
    name, data = load_preset("search_spaces", name_or_path)
    return space_from_dict(name, data)
