"""The decomposition contract: closed-form sizes, rank resolution, factorisation and building.

A decomposition turns one dense ``nn.Conv2d`` or ``nn.Linear`` into a short chain of plain
modules. Sizes are closed-form functions of the layer's geometry and the rank, so the search and
the budget can price a configuration without building it; the contract tests check that every
formula equals what the built module really holds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeAlias

import torch
from torch import nn

from lpsd_search.errors import UserInputError
from lpsd_search.registry import Registry

Rank: TypeAlias = int | tuple[int, ...]
"""A method's natural rank: an int, or a tuple where the method has several (tucker2)."""

RankSpec: TypeAlias = int | tuple[int, ...] | float
"""A rank as users give it: a natural rank, or a float in (0, 1] = fraction of the layer's params."""

Compressible: TypeAlias = nn.Conv2d | nn.Linear


@dataclass(frozen=True)
class LayerGeometry:
    """Everything the size formulas need to know about a dense layer.

    Attributes:
        kind: ``"conv"`` or ``"linear"``.
        out_channels: O (out_features for Linear).
        in_channels: I (in_features for Linear).
        kernel_size: (kh, kw); (1, 1) for Linear.
        groups: g; 1 for Linear.
        bias: whether the layer has a bias.
        in_positions: spatial positions of the input per sample (H_in·W_in; 1 for a plain Linear).
        out_positions: spatial positions of the output per sample (H_out·W_out).
    """

    kind: Literal["conv", "linear"]
    out_channels: int
    in_channels: int
    kernel_size: tuple[int, int]
    groups: int
    bias: bool
    in_positions: int = 1
    out_positions: int = 1

    @classmethod
    def of(cls, layer: nn.Module, in_positions: int = 1, out_positions: int = 1) -> LayerGeometry:
        """Read the geometry of ``layer`` (positions come from a forward pass, see measure.py)."""
        if isinstance(layer, nn.Conv2d):
            kh, kw = layer.kernel_size
            return cls("conv", layer.out_channels, layer.in_channels, (kh, kw), layer.groups,
                       layer.bias is not None, in_positions, out_positions)
        if isinstance(layer, nn.Linear):
            return cls("linear", layer.out_features, layer.in_features, (1, 1), 1,
                       layer.bias is not None, in_positions, out_positions)
        raise UserInputError(
            f"cannot decompose a {type(layer).__name__}; valid layers: Conv2d, Linear"
        )

    @property
    def kernel_area(self) -> int:
        return self.kernel_size[0] * self.kernel_size[1]

    @property
    def in_per_group(self) -> int:
        return self.in_channels // self.groups

    @property
    def out_per_group(self) -> int:
        return self.out_channels // self.groups

    @property
    def bias_params(self) -> int:
        return self.out_channels if self.bias else 0

    @property
    def dense_params(self) -> int:
        return self.out_channels * self.in_per_group * self.kernel_area + self.bias_params

    @property
    def dense_flops(self) -> int:
        """Multiply-accumulates of the dense layer for one sample."""
        return self.out_positions * self.out_channels * self.in_per_group * self.kernel_area


class Decomposition(ABC):
    """Base class of every low-rank method.

    Life cycle: ``resolve_rank`` turns what the user asked for into a concrete rank,
    ``factorize`` computes the factors of the weight (on the weight's device), ``build`` wraps
    them into plain modules that keep the layer's stride, padding, dilation, groups, bias and
    output shape. ``params`` and ``flops`` price a (geometry, rank) pair in closed form.
    """

    name: ClassVar[str]

    def supports(self, geom: LayerGeometry) -> bool:
        """Whether the method can make this layer smaller at all (depthwise convs cannot)."""
        return self.params(geom, self.min_rank(geom)) < geom.dense_params

    @abstractmethod
    def max_rank(self, geom: LayerGeometry) -> Rank:
        """The rank at which the method is exact."""

    def min_rank(self, geom: LayerGeometry) -> Rank:
        """The smallest rank the method accepts."""
        top = self.max_rank(geom)
        return 1 if isinstance(top, int) else tuple(1 for _ in top)

    @abstractmethod
    def params(self, geom: LayerGeometry, rank: Rank) -> int:
        """Parameters of the built module, bias included."""

    @abstractmethod
    def flops(self, geom: LayerGeometry, rank: Rank) -> int:
        """Multiply-accumulates of the built module for one sample."""

    @abstractmethod
    def rank_for_params(self, geom: LayerGeometry, target: float) -> Rank:
        """The largest rank whose ``params`` do not exceed ``target`` (never below min_rank)."""

    @abstractmethod
    def factorize(self, weight: torch.Tensor, geom: LayerGeometry, rank: Rank,
                  **options: Any) -> tuple[torch.Tensor, ...]:
        """Compute the factors of ``weight`` (shape ``O × I/g × kh × kw``) at ``rank``."""

    @abstractmethod
    def build(self, layer: Compressible, factors: tuple[torch.Tensor, ...],
              rank: Rank) -> nn.Module:
        """Wrap ``factors`` into plain modules equivalent to ``layer`` at that rank."""

    def resolve_rank(self, geom: LayerGeometry, rank: RankSpec) -> Rank:
        """Turn a user rank (natural rank or parameter fraction) into a valid natural rank."""
        if isinstance(rank, float):
            if not 0.0 < rank <= 1.0:
                raise UserInputError(
                    f"rank fraction {rank} is out of range; valid: a float in (0, 1]"
                )
            return self.rank_for_params(geom, rank * geom.dense_params)
        return self.check_rank(geom, rank)

    def check_rank(self, geom: LayerGeometry, rank: Rank) -> Rank:
        """Validate a natural rank against ``[min_rank, max_rank]``."""
        top = self.max_rank(geom)
        if isinstance(top, int):
            if isinstance(rank, int) and not isinstance(rank, bool) and 1 <= rank <= top:
                return rank
            raise UserInputError(
                f"{self.name} rank {rank!r} is invalid for this layer; valid: an int in [1, {top}]"
                " or a float in (0, 1]"
            )
        values = tuple(rank) if isinstance(rank, (tuple, list)) else ()
        if len(values) == len(top) and all(
            isinstance(v, int) and 1 <= v <= t for v, t in zip(values, top, strict=True)
        ):
            return values
        raise UserInputError(
            f"{self.name} rank {rank!r} is invalid for this layer; valid: a tuple of "
            f"{len(top)} ints up to {top} or a float in (0, 1]"
        )

    def decompose(self, layer: Compressible, rank: RankSpec, **options: Any) -> nn.Module:
        """Factorise ``layer`` at ``rank`` and return the replacement module."""
        geom = LayerGeometry.of(layer)
        if not self.supports(geom):
            raise UserInputError(
                f"{self.name} cannot compress a layer of shape {tuple(layer.weight.shape)} "
                f"(groups={geom.groups}); valid: leave it dense (method 'none')"
            )
        concrete = self.resolve_rank(geom, rank)
        weight = layer.weight.detach()
        if geom.kind == "linear":
            weight = weight[:, :, None, None]
        with torch.no_grad():
            factors = self.factorize(weight, geom, concrete, **options)
            return self.build(layer, factors, concrete)


DECOMPOSITIONS: Registry[type[Decomposition]] = Registry("decomposition method")
"""Every low-rank method by name; ``@DECOMPOSITIONS.register("svd")`` on the class."""
