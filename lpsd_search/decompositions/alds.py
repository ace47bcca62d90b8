"""ALDS: channel-split truncated SVD (Liebenwein et al., NeurIPS 2021).

The input channels of each group are split into ``k`` equal chunks and each
``O/g × (I/(g·k)·kh·kw)`` block is approximated by its own rank-``r`` SVD. Built as a
``kh × kw`` conv ``I → g·k·r`` (``groups = g·k``, the original stride/padding/dilation) followed
by a 1×1 conv ``g·k·r → O`` (``groups = g``) that carries the bias. ``k = 1`` is plain ``svd``.
Splitting trades a larger 1×1 stage for SVDs of smaller blocks, which ALDS chooses per layer;
here ``k`` is an option.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lpsd_search.decompositions.base import (
    DECOMPOSITIONS,
    Compressible,
    Decomposition,
    Factors,
    Rank,
)
from lpsd_search.decompositions.geometry import LayerGeometry
from lpsd_search.decompositions.modules import layer_bias, pointwise_stage, spatial_stage
from lpsd_search.decompositions.svd import as_int_rank, truncated_svd
from lpsd_search.errors import UserInputError


def default_splits(geom: LayerGeometry) -> int:
    """The default ``k``: 4, else 2, else 1 — the largest that divides ``I/g`` into chunks of at
    least 4 channels (always 1 for Linear, which has no grouped form)."""
    if geom.kind == "linear":
        return 1
    for k in (4, 2):
        if geom.in_per_group % k == 0 and geom.in_per_group // k >= 4:
            return k
    return 1


@DECOMPOSITIONS.register("alds")
class ALDS(Decomposition):
    """ALDS: params ``r·(I·kh·kw + k·O)`` + bias, rank ``r`` per chunk (and per group).

    Options:
        k: input-channel chunks per group; must divide ``I/g`` (default: ``default_splits``).
            Linear layers accept only ``k = 1``.
    """

    name = "alds"
    structural_options = ("k",)

    def splits(self, geom: LayerGeometry, options: dict[str, Any]) -> int:
        """The chunk count ``k`` for this layer (validated)."""
        k = options.get("k")
        if k is None:
            return default_splits(geom)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1 or geom.in_per_group % k:
            raise UserInputError(
                f"alds k={k!r} is invalid for {geom.in_per_group} input channels per group; "
                "valid: a positive divisor of I/g"
            )
        if k > 1 and geom.kind == "linear":
            raise UserInputError(
                f"alds k={k} is invalid for a Linear layer; valid: 1 (nn.Linear has no groups)"
            )
        return k

    def max_rank(self, geom: LayerGeometry, **options: Any) -> int:
        k = self.splits(geom, options)
        return min(geom.out_per_group, geom.in_per_group // k * geom.kernel_area)

    def _per_rank(self, geom: LayerGeometry, options: dict[str, Any]) -> int:
        return geom.in_channels * geom.kernel_area + self.splits(geom, options) * geom.out_channels

    def params(self, geom: LayerGeometry, rank: Rank, **options: Any) -> int:
        return as_int_rank(rank) * self._per_rank(geom, options) + geom.bias_params

    def flops(self, geom: LayerGeometry, rank: Rank, **options: Any) -> int:
        # Both stages run at the output resolution: the spatial stage carries the stride.
        return geom.out_positions * as_int_rank(rank) * self._per_rank(geom, options)

    def rank_for_params(self, geom: LayerGeometry, target: float, **options: Any) -> int:
        rank = int((target - geom.bias_params) // self._per_rank(geom, options))
        return max(1, min(rank, self.max_rank(geom, **options)))

    def factorize(self, weight: torch.Tensor, geom: LayerGeometry, rank: Rank,
                  **options: Any) -> Factors:
        self.check_options(options)
        left, right = truncated_svd(self._chunks(weight, geom, options), as_int_rank(rank))
        return left, right  # g·k × O/g × r, g·k × r × (I/(g·k)·kh·kw)

    def _chunks(self, weight: torch.Tensor, geom: LayerGeometry,
                options: dict[str, Any]) -> torch.Tensor:
        """The ``g·k`` blocks ``O/g × (I/(g·k)·kh·kw)`` that get one SVD each."""
        k = self.splits(geom, options)
        chunks = weight.reshape(geom.out_channels, geom.in_per_group, -1)
        chunks = chunks.reshape(geom.groups, geom.out_per_group, k, -1).transpose(1, 2)
        return chunks.reshape(geom.groups * k, geom.out_per_group, -1)

    def unfoldings(self, weight: torch.Tensor, geom: LayerGeometry,
                   **options: Any) -> list[torch.Tensor]:
        # Every chunk's block: the one rank r applies to all of them.
        return [self._chunks(weight, geom, options)]

    def factor_shapes(self, geom: LayerGeometry, rank: Rank,
                      **options: Any) -> list[tuple[int, ...]]:
        r, k = as_int_rank(rank), self.splits(geom, options)
        chunk = geom.in_per_group // k * geom.kernel_area
        return [(geom.groups * k, geom.out_per_group, r), (geom.groups * k, r, chunk)]

    def reconstruct(self, factors: Factors, geom: LayerGeometry, rank: Rank,
                    **options: Any) -> torch.Tensor:
        left, right = factors
        k = self.splits(geom, options)
        # Undo the chunking of factorize: (g·k, O/g, I/(g·k)·S) → (g, O/g, k, I/(g·k)·S).
        blocks = (left @ right).reshape(geom.groups, k, geom.out_per_group, -1).transpose(1, 2)
        return blocks.reshape(geom.out_channels, geom.in_per_group, *geom.kernel_size)

    def build(self, layer: Compressible, factors: Factors, rank: Rank,
              **options: Any) -> nn.Module:
        left, right = factors
        geom = LayerGeometry.of(layer)
        g, r, k = geom.groups, as_int_rank(rank), self.splits(geom, options)
        kh, kw = geom.kernel_size
        first = spatial_stage(layer, geom.in_channels, g * k * r, g * k,
                              right.reshape(g * k * r, geom.in_per_group // k, kh, kw))
        # Output channel o of group gi reads the k chunks' rank-r outputs in chunk order.
        mixing = left.reshape(g, k, geom.out_per_group, r).transpose(1, 2)
        second = pointwise_stage(layer, g * k * r, geom.out_channels, g,
                                 mixing.reshape(geom.out_channels, k * r), layer_bias(layer))
        return nn.Sequential(first, second)
