"""A compression plan: per-layer choices keyed by qualified name, JSON round trip, application."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from lpsd_search.decompositions import Rank, get_method
from lpsd_search.errors import UserInputError
from lpsd_search.layers import set_submodule

NONE = "none"
"""The method name that leaves a layer dense."""


@dataclass(frozen=True)
class LayerChoice:
    """What to do with one layer.

    Attributes:
        method: a registered decomposition, or ``"none"`` to keep the layer dense.
        rank: the method's concrete natural rank (None for ``"none"``).
        sparsity: fraction of the dense layer's entries kept in a sparse residual (0 = none).
    """

    method: str = NONE
    rank: Rank | None = None
    sparsity: float = 0.0

    def __post_init__(self) -> None:
        if self.method != NONE and self.rank is None:
            raise UserInputError(f"method {self.method!r} needs a rank; valid: an int or a tuple")
        if not 0.0 <= self.sparsity <= 1.0:
            raise UserInputError(f"sparsity {self.sparsity} is invalid; valid: a float in [0, 1]")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``{"method", "rank", "sparsity"}`` (tuple ranks become lists)."""
        rank = list(self.rank) if isinstance(self.rank, tuple) else self.rank
        return {"method": self.method, "rank": rank, "sparsity": self.sparsity}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerChoice:
        """Inverse of ``to_dict``."""
        rank = data.get("rank")
        return cls(
            method=str(data.get("method", NONE)),
            rank=tuple(int(r) for r in rank) if isinstance(rank, (list, tuple)) else rank,
            sparsity=float(data.get("sparsity", 0.0)),
        )

    def describe(self) -> str:
        """Short text such as ``tucker2(8,4)`` or ``none``."""
        if self.method == NONE:
            return NONE
        rank = ",".join(map(str, self.rank)) if isinstance(self.rank, tuple) else str(self.rank)
        sparse = f"+s{self.sparsity:.3g}" if self.sparsity else ""
        return f"{self.method}({rank}){sparse}"


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
        """Inverse of ``to_dict``."""
        return cls({name: LayerChoice.from_dict(choice) for name, choice in data.items()})

    def compressed(self) -> dict[str, LayerChoice]:
        """Only the layers that change."""
        return {n: c for n, c in self.layers.items() if c.method != NONE or c.sparsity}

    def summary(self) -> str:
        """One line: ``name=method(rank)`` for every changed layer, or ``dense``."""
        parts = [f"{name}={choice.describe()}" for name, choice in self.compressed().items()]
        return " ".join(parts) if parts else "dense"


def apply_plan(model: nn.Module, plan: Plan) -> nn.Module:
    """A copy of ``model`` with every planned layer replaced by its decomposition.

    Args:
        model: the dense model (left untouched).
        plan: the per-layer choices.

    Returns:
        A new model built only from plain modules.
    """
    compressed = copy.deepcopy(model)
    modules = dict(compressed.named_modules())
    for name, choice in plan.compressed().items():
        if choice.sparsity:
            raise UserInputError(
                f"layer {name!r}: sparse residuals are not available yet; valid sparsity: 0"
            )
        layer = modules.get(name)
        if not isinstance(layer, (nn.Conv2d, nn.Linear)):
            raise UserInputError(f"plan names {name!r}, which is not a Conv2d or Linear layer")
        assert choice.rank is not None  # guaranteed by LayerChoice.__post_init__
        set_submodule(compressed, name, get_method(choice.method).decompose(layer, choice.rank))
    return compressed
