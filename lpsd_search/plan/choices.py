"""A compression plan: per-layer choices keyed by qualified name, with a JSON round trip."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lpsd_search.decompositions.base import DECOMPOSITIONS, Rank
from lpsd_search.errors import UserInputError

NONE = "none"
"""The method name that leaves a layer dense."""


def _whole(value: object, least: int = 1) -> bool:
    return (isinstance(value, numbers.Integral) and not isinstance(value, bool)
            and int(value) >= least)


def _short(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, for an error about a whole file's entry."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_rank(value: object) -> bool:
    """A natural rank: a whole number ≥ 1, or a non-empty tuple of them."""
    if isinstance(value, tuple):
        return bool(value) and all(_whole(item) for item in value)
    return _whole(value)


def _is_option_value(value: object) -> bool:
    """What a plan may hold as a method option: a JSON scalar or a list of whole numbers."""
    if isinstance(value, (list, tuple)):
        return all(_whole(item, least=0) for item in value)
    return value is None or isinstance(value, (str, bool, int)) or (
        isinstance(value, float) and math.isfinite(value))


@dataclass(frozen=True)
class LayerChoice:
    """What to do with one layer.

    Attributes:
        method: a registered decomposition, or ``"none"`` for no low-rank part.
        rank: the method's concrete natural rank (None for ``"none"``).
        sparsity: fraction of the dense layer's entries kept in a sparse residual (0 = none);
            with method ``"none"`` the layer is only sparsified (magnitude pruning).
        alternating: fit the low-rank and sparse parts by alternating (ALPSD) rather than in
            one pass (Sparsification); needs a method and a sparsity.
        options: the method's options as sorted ``(name, value)`` pairs (e.g. cp
            ``("variant", "cp3")``, alds ``("k", 2)``); values are JSON scalars or int tuples.
    """

    method: str = NONE
    rank: Rank | None = None
    sparsity: float = 0.0
    alternating: bool = False
    options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.method != NONE and self.rank is None:
            raise UserInputError(f"method {self.method!r} needs a rank; valid: an int or a tuple")
        if self.rank is not None and not _is_rank(self.rank):
            raise UserInputError(f"rank {_short(self.rank)} is invalid; valid: a whole number "
                                 "≥ 1 or a tuple of them")
        # NaN fails the range check; a string or None would make it raise TypeError.
        if not (isinstance(self.sparsity, numbers.Real) and not isinstance(self.sparsity, bool)
                and 0.0 <= self.sparsity <= 1.0):
            raise UserInputError(f"sparsity {_short(self.sparsity)} is invalid; valid: a float in "
                                 "[0, 1]")
        if self.alternating and (self.method == NONE or not self.sparsity):
            raise UserInputError(
                "alternating needs a low-rank method and a sparsity > 0; valid: alternating "
                "false, or both set"
            )
        if self.options and self.method == NONE:
            raise UserInputError("method 'none' takes no options; valid: options = {}")
        # Canonical order, so equal choices compare (and hash) equal.
        object.__setattr__(self, "options", tuple(sorted(
            (str(k), tuple(v) if isinstance(v, list) else v) for k, v in self.options)))

    @property
    def option_dict(self) -> dict[str, Any]:
        """The options as keyword arguments for the method."""
        return dict(self.options)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``{"method", "rank", "sparsity"}`` (tuple ranks become lists), plus
        ``"alternating": true`` for ALPSD layers."""
        rank = list(self.rank) if isinstance(self.rank, tuple) else self.rank
        data: dict[str, Any] = {"method": self.method, "rank": rank, "sparsity": self.sparsity}
        if self.alternating:
            data["alternating"] = True
        if self.options:
            data["options"] = {k: list(v) if isinstance(v, tuple) else v
                               for k, v in self.options}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerChoice:
        """Inverse of ``to_dict``.

        Raises:
            UserInputError: ``data`` is not such a table (a hand-edited or corrupt plan file),
                in one line naming the bad entry.
        """
        if not isinstance(data, Mapping):
            raise UserInputError(f"plan entry {_short(data)} is invalid; valid: a table of "
                                 "method, rank and sparsity")
        method, rank = data.get("method", NONE), data.get("rank")
        sparsity, alternating = data.get("sparsity", 0.0), data.get("alternating", False)
        options = data.get("options") or {}
        if not isinstance(method, str) or (method != NONE and method not in DECOMPOSITIONS):
            raise UserInputError(f"plan method {_short(method)} is invalid; valid: {NONE}, "
                                 f"{', '.join(DECOMPOSITIONS.names())}")
        if not isinstance(alternating, bool):
            raise UserInputError(f"plan alternating {_short(alternating)} is invalid; valid: "
                                 "true or false")
        if not isinstance(options, Mapping) or not all(
                isinstance(k, str) and _is_option_value(v) for k, v in options.items()):
            raise UserInputError(f"plan options {_short(options)} are invalid; valid: a table of "
                                 "numbers, strings or lists of whole numbers")
        if isinstance(sparsity, numbers.Real) and not isinstance(sparsity, bool):
            sparsity = float(sparsity)
        return cls(method=method, rank=tuple(rank) if isinstance(rank, list) else rank,
                   sparsity=sparsity, alternating=alternating, options=tuple(options.items()))

    def describe(self) -> str:
        """Short text: ``tucker2(8,4)``, ``svd(3)+s0.02`` (ALPSD: ``+S``), ``sparse(0.1)``."""
        if self.method == NONE:
            return f"sparse({self.sparsity:.3g})" if self.sparsity else NONE
        rank = ",".join(map(str, self.rank)) if isinstance(self.rank, tuple) else str(self.rank)
        sparse = f"+{'S' if self.alternating else 's'}{self.sparsity:.3g}" if self.sparsity else ""
        options = ",".join(f"{k}={v}" for k, v in self.options)
        method = f"{self.method}[{options}]" if options else self.method
        return f"{method}({rank}){sparse}"


@dataclass(frozen=True)
class Plan:
    """Ordered per-layer choices keyed by the layer's qualified name.

    Layers that are not listed stay dense.
    """

    layers: Mapping[str, LayerChoice] = field(default_factory=dict)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """``{layer name: {"method", "rank", "sparsity"}}``."""
        return {name: choice.to_dict() for name, choice in self.layers.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Mapping[str, Any]]) -> Plan:
        """Inverse of ``to_dict``.

        Raises:
            UserInputError: ``data`` is not a table of layer names to choices.
        """
        if not isinstance(data, Mapping) or not all(isinstance(name, str) for name in data):
            raise UserInputError(f"plan {_short(data)} is invalid; valid: a table of layer names "
                                 "to {method, rank, sparsity}")
        return cls({name: LayerChoice.from_dict(choice) for name, choice in data.items()})

    def compressed(self) -> dict[str, LayerChoice]:
        """Only the layers that change."""
        return {n: c for n, c in self.layers.items() if c.method != NONE or c.sparsity}

    def summary(self) -> str:
        """One line: ``name=method(rank)`` for every changed layer, or ``dense``."""
        parts = [f"{name}={choice.describe()}" for name, choice in self.compressed().items()]
        return " ".join(parts) if parts else "dense"
