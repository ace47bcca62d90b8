"""Truncated SVD of the matricised kernel (Denton et al. 2014; the ALDS building block).

``W`` (``O × I/g × kh × kw``) is matricised per group as ``O/g × (I/g·kh·kw)``; rank r gives a
``kh × kw`` conv ``I → g·r`` (the original stride/padding/dilation, ``groups=g``) followed by a
1×1 conv ``g·r → O`` that carries the bias. By Eckart–Young this is the best rank-r fit.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lpsd_search.decompositions.base import (
    DECOMPOSITIONS,
    Compressible,
    Decomposition,
    LayerGeometry,
    Rank,
)
from lpsd_search.decompositions.modules import layer_bias, pointwise_stage, spatial_stage


def _as_int(rank: Rank) -> int:
    if isinstance(rank, int):
        return rank
    (only,) = rank
    return only


@DECOMPOSITIONS.register("svd")
class SVD(Decomposition):
    """Truncated SVD: params ``r·(I·kh·kw + O)`` + bias."""

    name = "svd"

    def max_rank(self, geom: LayerGeometry) -> int:
        return min(geom.out_per_group, geom.in_per_group * geom.kernel_area)

    def _per_rank(self, geom: LayerGeometry) -> int:
        return geom.in_channels * geom.kernel_area + geom.out_channels

    def params(self, geom: LayerGeometry, rank: Rank) -> int:
        return _as_int(rank) * self._per_rank(geom) + geom.bias_params

    def flops(self, geom: LayerGeometry, rank: Rank) -> int:
        # Both stages run at the output resolution: the spatial stage carries the stride.
        return geom.out_positions * _as_int(rank) * self._per_rank(geom)

    def rank_for_params(self, geom: LayerGeometry, target: float) -> int:
        rank = int((target - geom.bias_params) // self._per_rank(geom))
        return max(1, min(rank, self.max_rank(geom)))

    def factorize(self, weight: torch.Tensor, geom: LayerGeometry, rank: Rank,
                  **options: Any) -> tuple[torch.Tensor, ...]:
        if options:
            raise TypeError(f"svd takes no options, got {sorted(options)}")
        r = _as_int(rank)
        g = geom.groups
        matrices = weight.reshape(g, geom.out_per_group, -1)
        # Batched over groups; full_matrices=False keeps it O(m·n·min(m, n)).
        u, s, vh = torch.linalg.svd(matrices, full_matrices=False)
        root = s[:, :r].sqrt()
        left = u[:, :, :r] * root[:, None, :]  # g × O/g × r
        right = vh[:, :r, :] * root[:, :, None]  # g × r × (I/g·kh·kw)
        return left, right

    def build(self, layer: Compressible, factors: tuple[torch.Tensor, ...],
              rank: Rank) -> nn.Module:
        left, right = factors
        geom = LayerGeometry.of(layer)
        g, r = geom.groups, _as_int(rank)
        kh, kw = geom.kernel_size
        first = spatial_stage(layer, geom.in_channels, g * r, g,
                              right.reshape(g * r, geom.in_per_group, kh, kw))
        second = pointwise_stage(layer, g * r, geom.out_channels, g,
                                 left.reshape(geom.out_channels, r), layer_bias(layer))
        return nn.Sequential(first, second)
