"""Tucker-2 over the channel modes (Kim et al., ICLR 2016): ST-HOSVD start, HOOI refinement.

``W ≈ G ×₀ U_out ×₁ U_in`` with core ``G`` of shape ``r_o × r_i × kh × kw``; built as a 1×1 conv
``I → g·r_i``, the ``kh × kw`` core conv ``g·r_i → g·r_o`` (original stride/padding/dilation) and
a 1×1 conv ``g·r_o → O`` carrying the bias. Grouped convs are decomposed per group.

The fit: ``U_in`` from the Gram matrix of the input-mode unfolding, ``U_out`` from the Gram matrix
of ``W`` projected on ``U_in`` (sequentially truncated HOSVD, Vannieuwenhoven et al. 2012), then
HOOI sweeps (De Lathauwer et al. 2000) until the relative error improves by less than ``tol`` of
itself. A sweep does not solve its two eigenproblems exactly: it applies a degree-2 Chebyshev
filter to the previous factor (``filter_subspace``), two products with a channel-sized Gram
matrix and a QR. On the flat spectra of random or lightly trained kernels this reaches a given
error in fewer sweeps than exact HOOI, each sweep cheaper; if a filtered step ever raises the
error the fit continues from the best pair with monotone Rayleigh–Ritz steps. The error comes
for free (‖W − Ŵ‖² = ‖W‖² − ‖G‖² for orthonormal factors, ‖G‖² = tr(U_outᵀ G_out U_out)). A mode
kept at full rank gets an identity factor, so full rank is exact.
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
    Factors,
    Rank,
)
from lpsd_search.decompositions.geometry import LayerGeometry
from lpsd_search.decompositions.modules import layer_bias, pointwise_stage, spatial_stage
from lpsd_search.decompositions.svd import (
    channel_unfoldings,
    filter_subspace,
    leading_eigenvectors,
    leading_subspace,
    refine_eigenvectors,
)

__all__ = ["Tucker2", "leading_subspace", "tucker2_fit"]


def _pair(rank: Rank) -> tuple[int, int]:
    if isinstance(rank, int):
        return rank, rank
    out_rank, in_rank = rank
    return out_rank, in_rank


def _gram(matrices: torch.Tensor) -> torch.Tensor:
    return matrices @ matrices.transpose(1, 2)


def _ritz_step(gram: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    return refine_eigenvectors(gram, start)[1]


def tucker2_fit(blocks: torch.Tensor, out_rank: int, in_rank: int, iters: int = 20,
                tol: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Tucker-2 of a batch of 3-way tensors ``g × O × I × S`` over the O and I modes.

    Args:
        blocks: ``g × O × I × S`` (S = kh·kw).
        out_rank: r_o ≤ O.
        in_rank: r_i ≤ I.
        iters: maximum HOOI sweeps after the ST-HOSVD start (0 = ST-HOSVD only).
        tol: stop when a sweep lowers the relative error ``e`` by less than ``tol · e``.

    Returns:
        ``(U_out g × O × r_o, core g × r_o × r_i × S, U_in g × I × r_i, relative error)``.
    """
    g, n_out, n_in, area = blocks.shape
    norm2 = float(blocks.square().sum())
    # Two layouts so that every projection is one batched matmul over a contiguous operand.
    by_out = blocks.permute(0, 1, 3, 2).reshape(g, n_out * area, n_in)  # contract I
    by_in = blocks.permute(0, 2, 3, 1).reshape(g, n_in * area, n_out)  # contract O

    def error_of(kept: torch.Tensor) -> float:
        return math.sqrt(max(norm2 - float(kept.sum()), 0.0) / max(norm2, 1e-30))

    def project_in(u_in: torch.Tensor) -> torch.Tensor:
        # W ×_I U_inᵀ as g × O × (S·r_i), columns ordered (s, i')
        return (by_out @ u_in).reshape(g, n_out, area * u_in.shape[2])

    def gram_in(u_out: torch.Tensor) -> torch.Tensor:
        return _gram((by_in @ u_out).reshape(g, n_in, area * u_out.shape[2]))

    eye = torch.eye
    if out_rank == n_out and in_rank < n_in:  # Tucker-1 on the input mode: one eigh, no sweeps
        u_out = eye(n_out, dtype=blocks.dtype, device=blocks.device).expand(g, -1, -1)
        values, u_in = leading_eigenvectors(gram_in(u_out), in_rank)
        error = error_of(values)
        projected = project_in(u_in)
    else:
        # ST-HOSVD start; with the input mode at full rank it is Tucker-1 on the output mode,
        # where the one eigh is optimal.
        u_in = (eye(n_in, dtype=blocks.dtype, device=blocks.device).expand(g, -1, -1)
                if in_rank == n_in
                else leading_subspace(by_in.reshape(g, n_in, area * n_out), in_rank))
        projected = project_in(u_in)
        values, u_out = leading_eigenvectors(_gram(projected), out_rank)
        error = error_of(values)
    if in_rank < n_in and out_rank < n_out:
        best = (error, u_out, u_in, projected)
        step = filter_subspace
        for _ in range(iters):
            previous = error
            u_in = step(gram_in(u_out), u_in)
            projected = project_in(u_in)
            gram = _gram(projected)
            u_out = step(gram, u_out)
            # ‖G‖² = tr(U_outᵀ G_out U_out) for any orthonormal pair: the error of this pair.
            error = error_of(u_out * (gram @ u_out))
            if error < best[0]:
                best = (error, u_out, u_in, projected)
            elif step is filter_subspace:
                # The filter overshot: go on from the best pair with the monotone HOOI step.
                step = _ritz_step
                error, u_out, u_in, projected = best
                continue
            if previous - error <= tol * error:  # ≤: an exact fit (error 0) stops too
                break
        error, u_out, u_in, projected = best
    # core[r, i', s] = Σ_o U_out[o, r] (W ×_I U_inᵀ)[o, s, i']
    core = (u_out.transpose(1, 2) @ projected).reshape(g, out_rank, area, in_rank)
    return u_out.contiguous(), core.transpose(2, 3).contiguous(), u_in.contiguous(), error


@DECOMPOSITIONS.register("tucker2")
class Tucker2(Decomposition):
    """Tucker-2: params ``I·r_i + g·r_i·r_o·kh·kw + r_o·O`` + bias; rank is ``(r_out, r_in)``.

    An int rank ``r`` means ``(r, r)`` (each clipped to its mode size).

    Options:
        iters: maximum HOOI sweeps after the ST-HOSVD start (default 20; 0 = ST-HOSVD only).
        tol: stop when a sweep lowers the relative error ``e`` by less than ``tol · e``
            (default 1e-4: tensorly's ``partial_tucker`` rule made scale-free, so that a
            well-approximated kernel is not stopped early).
    """

    name = "tucker2"
    fit_options = ("iters", "tol")

    def max_rank(self, geom: LayerGeometry, **options: Any) -> tuple[int, int]:
        return geom.out_per_group, geom.in_per_group

    def check_rank(self, geom: LayerGeometry, rank: Rank, **options: Any) -> Rank:
        if isinstance(rank, int) and not isinstance(rank, bool):
            top_out, top_in = self.max_rank(geom)
            rank = (min(rank, top_out), min(rank, top_in))
        return super().check_rank(geom, rank, **options)

    def params(self, geom: LayerGeometry, rank: Rank, **options: Any) -> int:
        out_rank, in_rank = _pair(rank)
        core = geom.groups * in_rank * out_rank * geom.kernel_area
        return (geom.in_channels * in_rank + core + out_rank * geom.out_channels
                + geom.bias_params)

    def flops(self, geom: LayerGeometry, rank: Rank, **options: Any) -> int:
        out_rank, in_rank = _pair(rank)
        # The first 1×1 stage runs at the input resolution, the other two at the output's.
        first = geom.in_positions * geom.in_channels * in_rank
        core = geom.out_positions * geom.groups * out_rank * in_rank * geom.kernel_area
        last = geom.out_positions * geom.out_channels * out_rank
        return first + core + last

    def rank_for_params(self, geom: LayerGeometry, target: float,
                        **options: Any) -> tuple[int, int]:
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
                  **options: Any) -> Factors:
        self.check_options(options)
        iters = int(options.get("iters", 20))
        tol = float(options.get("tol", 1e-4))
        out_rank, in_rank = _pair(rank)
        g = geom.groups
        blocks = weight.reshape(g, geom.out_per_group, geom.in_per_group, geom.kernel_area)
        u_out, core, u_in, _ = tucker2_fit(blocks, out_rank, in_rank, iters, tol)
        return u_out, core, u_in

    def unfoldings(self, weight: torch.Tensor, geom: LayerGeometry,
                   **options: Any) -> list[torch.Tensor]:
        # (r_out, r_in) bound the ranks of the mode-0 and mode-1 unfoldings (Kim et al. 2016).
        return list(channel_unfoldings(weight, geom))

    def factor_shapes(self, geom: LayerGeometry, rank: Rank,
                      **options: Any) -> list[tuple[int, ...]]:
        out_rank, in_rank = _pair(rank)
        g = geom.groups
        return [(g, geom.out_per_group, out_rank), (g, out_rank, in_rank, geom.kernel_area),
                (g, geom.in_per_group, in_rank)]

    def reconstruct(self, factors: Factors, geom: LayerGeometry, rank: Rank,
                    **options: Any) -> torch.Tensor:
        u_out, core, u_in = factors
        blocks = torch.einsum("goa,gabs,gib->gois", u_out, core, u_in)
        return blocks.reshape(geom.out_channels, geom.in_per_group, *geom.kernel_size)

    def build(self, layer: Compressible, factors: Factors, rank: Rank,
              **options: Any) -> nn.Module:
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
