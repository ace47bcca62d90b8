"""Tucker-2 over the channel modes (Kim et al., ICLR 2016), HOSVD start and HOOI refinement.

``W ≈ G ×₀ U_out ×₁ U_in`` with core ``G`` of shape ``r_o × r_i × kh × kw``; built as a 1×1 conv
``I → g·r_i``, the ``kh × kw`` core conv ``g·r_i → g·r_o`` (original stride/padding/dilation) and
a 1×1 conv ``g·r_o → O`` carrying the bias. Grouped convs are decomposed per group.

The factors come from eigen-decompositions of the unfoldings' Gram matrices (closed form, the
same subspaces as an SVD at a fraction of the cost), then a few HOOI sweeps that stop when the
relative error no longer improves by ``tol``.
"""

from __future__ import annotations

import math
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


def _pair(rank: Rank) -> tuple[int, int]:
    if isinstance(rank, int):
        return rank, rank
    out_rank, in_rank = rank
    return out_rank, in_rank


def leading_subspace(unfolded: torch.Tensor, rank: int) -> torch.Tensor:
    """Top-``rank`` left singular vectors of a batch of matrices, via their Gram matrices.

    Args:
        unfolded: ``batch × m × n``.
        rank: how many vectors to keep (≤ m).

    Returns:
        ``batch × m × rank`` with orthonormal columns, largest singular value first.
    """
    # eigh of the m×m Gram matrix is much cheaper than an SVD of the m×n unfolding when n ≫ m;
    # float64 keeps the small eigenvalues' vectors accurate enough for an exact full-rank fit.
    gram = unfolded.double() @ unfolded.double().transpose(1, 2)
    _, vectors = torch.linalg.eigh(gram)
    return vectors[:, :, -rank:].flip(-1).to(unfolded.dtype)


@DECOMPOSITIONS.register("tucker2")
class Tucker2(Decomposition):
    """Tucker-2: params ``I·r_i + g·r_i·r_o·kh·kw + r_o·O`` + bias; rank is ``(r_out, r_in)``.

    Options:
        iters: maximum HOOI sweeps after the HOSVD start (default 5; 0 = plain HOSVD).
        tol: stop when the relative error improves by less than this (default 1e-4).
    """

    name = "tucker2"

    def max_rank(self, geom: LayerGeometry) -> tuple[int, int]:
        return geom.out_per_group, geom.in_per_group

    def params(self, geom: LayerGeometry, rank: Rank) -> int:
        out_rank, in_rank = _pair(rank)
        core = geom.groups * in_rank * out_rank * geom.kernel_area
        return (geom.in_channels * in_rank + core + out_rank * geom.out_channels
                + geom.bias_params)

    def flops(self, geom: LayerGeometry, rank: Rank) -> int:
        out_rank, in_rank = _pair(rank)
        # The first 1×1 stage runs at the input resolution, the other two at the output's.
        first = geom.in_positions * geom.in_channels * in_rank
        core = geom.out_positions * geom.groups * out_rank * in_rank * geom.kernel_area
        last = geom.out_positions * geom.out_channels * out_rank
        return first + core + last

    def rank_for_params(self, geom: LayerGeometry, target: float) -> tuple[int, int]:
        # Keep r_out : r_in proportional to the mode sizes and solve the quadratic in the scale t:
        # g·k·a·b·t² + (I·a + O·b)·t = target − bias, with r_out = b·t and r_in = a·t.
        top_out, top_in = self.max_rank(geom)
        a, b = top_in / max(top_in, top_out), top_out / max(top_in, top_out)
        quad = geom.groups * geom.kernel_area * a * b
        lin = geom.in_channels * a + geom.out_channels * b
        budget = max(target - geom.bias_params, 0.0)
        t = (-lin + math.sqrt(lin * lin + 4 * quad * budget)) / (2 * quad)
        out_rank = max(1, min(top_out, int(b * t)))
        in_rank = max(1, min(top_in, int(a * t)))
        # One mode may saturate at its maximum; spend what is left on the other one.
        while out_rank < top_out and self.params(geom, (out_rank + 1, in_rank)) <= target:
            out_rank += 1
        while in_rank < top_in and self.params(geom, (out_rank, in_rank + 1)) <= target:
            in_rank += 1
        return out_rank, in_rank

    def factorize(self, weight: torch.Tensor, geom: LayerGeometry, rank: Rank,
                  **options: Any) -> tuple[torch.Tensor, ...]:
        iters = int(options.pop("iters", 5))
        tol = float(options.pop("tol", 1e-4))
        if options:
            raise TypeError(f"tucker2 got unknown options {sorted(options)}; valid: iters, tol")
        out_rank, in_rank = _pair(rank)
        g, kh, kw = geom.groups, *geom.kernel_size
        blocks = weight.reshape(g, geom.out_per_group, geom.in_per_group, kh, kw)
        mode_in = blocks.transpose(1, 2)  # g × I/g × O/g × kh × kw

        u_out = leading_subspace(blocks.reshape(g, geom.out_per_group, -1), out_rank)
        u_in = leading_subspace(mode_in.reshape(g, geom.in_per_group, -1), in_rank)
        norm = blocks.norm()
        previous = math.inf
        for _ in range(iters):
            # HOOI: each factor is the leading subspace of W projected on the other one.
            projected = torch.einsum("goikl,gis->goskl", blocks, u_in)
            u_out = leading_subspace(projected.reshape(g, geom.out_per_group, -1), out_rank)
            projected = torch.einsum("goikl,gor->girkl", blocks, u_out)
            u_in = leading_subspace(projected.reshape(g, geom.in_per_group, -1), in_rank)
            core = torch.einsum("goikl,gor,gis->grskl", blocks, u_out, u_in)
            # With orthonormal factors, ‖W − Ŵ‖² = ‖W‖² − ‖G‖².
            error = float((norm**2 - core.norm() ** 2).clamp_min(0).sqrt() / norm.clamp_min(1e-30))
            if previous - error < tol:
                break
            previous = error
        core = torch.einsum("goikl,gor,gis->grskl", blocks, u_out, u_in)
        return u_out, core, u_in

    def build(self, layer: Compressible, factors: tuple[torch.Tensor, ...],
              rank: Rank) -> nn.Module:
        u_out, core, u_in = factors
        geom = LayerGeometry.of(layer)
        out_rank, in_rank = _pair(rank)
        g, kh, kw = geom.groups, *geom.kernel_size
        first = pointwise_stage(layer, geom.in_channels, g * in_rank, g,
                                u_in.transpose(1, 2).reshape(g * in_rank, geom.in_per_group))
        middle = spatial_stage(layer, g * in_rank, g * out_rank, g,
                               core.reshape(g * out_rank, in_rank, kh, kw))
        last = pointwise_stage(layer, g * out_rank, geom.out_channels, g,
                               u_out.reshape(geom.out_channels, out_rank), layer_bias(layer))
        return nn.Sequential(first, middle, last)
