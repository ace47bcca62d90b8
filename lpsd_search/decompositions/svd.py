"""Truncated SVD of the matricised kernel (Denton et al., NeurIPS 2014; the ALDS building block).

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
    Factors,
    Rank,
)
from lpsd_search.decompositions.geometry import LayerGeometry
from lpsd_search.decompositions.modules import layer_bias, pointwise_stage, spatial_stage


def as_int_rank(rank: Rank) -> int:
    """A single-int rank, accepting a one-element tuple."""
    if isinstance(rank, int):
        return rank
    (only,) = rank
    return only


def leading_eigenvectors(gram: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``rank`` eigenpairs of a batch of symmetric PSD matrices, largest first.

    Returns:
        ``(values batch × rank, vectors batch × m × rank)``.
    """
    values, vectors = torch.linalg.eigh(gram)
    return values[:, -rank:].flip(-1).clamp_min(0), vectors[:, :, -rank:].flip(-1)


def refine_eigenvectors(gram: torch.Tensor, start: torch.Tensor) -> tuple[torch.Tensor,
                                                                         torch.Tensor]:
    """Top eigenpairs of symmetric PSD matrices near a known subspace (one Rayleigh–Ritz step).

    The Ritz pairs of ``gram`` on ``span[start, gram @ start]`` (one block-Krylov step). When
    ``start`` spans an invariant subspace of the top eigenvalues this returns it exactly, so an
    iteration that refines a slowly moving subspace (HOOI) keeps its fixed points while every
    step costs a ``2r``-sized eigenproblem instead of an ``m``-sized one (a third of the time for
    ``m = 512``, ``r = 115``). Falls back to the full ``eigh`` when ``2r ≥ m``.

    Args:
        gram: ``batch × m × m``.
        start: ``batch × m × r`` with orthonormal columns.

    Returns:
        ``(values batch × r, vectors batch × m × r)``, largest first.
    """
    rank = start.shape[-1]
    if 2 * rank >= gram.shape[-1]:
        return leading_eigenvectors(gram, rank)
    basis = torch.linalg.qr(torch.cat([start, gram @ start], dim=2)).Q
    values, vectors = torch.linalg.eigh(basis.transpose(1, 2) @ (gram @ basis))
    return values[:, -rank:].flip(-1).clamp_min(0), basis @ vectors[:, :, -rank:].flip(-1)


def filter_subspace(gram: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """One degree-2 Chebyshev-filtered subspace step on a batch of symmetric PSD matrices.

    ``start``'s span is mapped through ``T₂`` of ``gram`` scaled so that ``[-b/2, b]`` lands on
    ``[-1, 1]``, with ``b`` just below the smallest Ritz value on ``span(start)`` (Zhou & Saad
    2007): eigenvalues inside the interval (the unwanted ones, once the span is close) keep
    ``|T₂| ≤ 1`` while those above it are amplified quadratically, so repeated steps converge
    to the leading eigenspace. One step costs two products with ``gram``, an ``r × r``
    eigenvalue problem and a QR, against an ``m``-sized ``eigh`` for the exact eigenvectors;
    inside HOOI it is also a better step than the exact eigenvectors: on the flat spectra of
    random or lightly trained kernels, HOOI with it reaches a given error in fewer sweeps
    (benchmarks/decompose_vgg16.py). Falls back to ``refine_eigenvectors`` when the smallest
    Ritz value is (near) zero.

    Args:
        gram: ``batch × m × m``.
        start: ``batch × m × r`` with orthonormal columns.

    Returns:
        ``batch × m × r`` with orthonormal columns.
    """
    product = gram @ start
    ritz = torch.linalg.eigvalsh(start.transpose(1, 2) @ product)
    # A (near-)singular block would blow the scaling up: take the safe step there.
    if not bool((ritz[:, 0] > 1e-4 * ritz[:, -1]).all()):
        return refine_eigenvectors(gram, start)[1]
    # b = 0.95·θ_min: a wanted eigenvalue at θ_min gains T₂ ≈ 1.29 per step over the unwanted
    # ones; b = θ_min itself would leave it no gain over the interval's centre and ends.
    upper = ritz[:, :1, None] * 0.95  # batch × 1 × 1
    centre, half = upper / 4, upper * 0.75  # of [a, b] = [-b/2, b]
    first = (product - centre * start) / half
    second = 2 * (gram @ first - centre * first) / half - start
    # Householder QR: as fast as a Cholesky QR at these sizes, and stable when T₂ has spread
    # the columns' norms.
    return torch.linalg.qr(second).Q


def leading_subspace(unfolded: torch.Tensor, rank: int) -> torch.Tensor:
    """Top-``rank`` left singular vectors of a batch of matrices, via their Gram matrices.

    Args:
        unfolded: ``batch × m × n``.
        rank: how many vectors to keep (≤ m).

    Returns:
        ``batch × m × rank`` with orthonormal columns, largest singular value first.
    """
    # eigh of the m×m Gram matrix costs far less than an SVD of the m×n unfolding when n ≫ m.
    # Its eigenvectors are orthonormal to working precision, so projecting on all of them is
    # exact; only the directions of tiny singular values lose accuracy, and those are the ones
    # a truncation drops.
    return leading_eigenvectors(unfolded @ unfolded.transpose(1, 2), rank)[1]


def truncated_svd(matrices: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-``rank`` factors ``left @ right`` of a batch of matrices (Eckart–Young).

    Uses the Gram matrix of the shorter side (an ``eigh``, several times faster than
    ``torch.linalg.svd`` on CPU) and projects the matrix on the leading subspace, so at full
    rank the product reproduces the input to working precision. The singular values are split
    evenly between the two factors (``U√Σ`` and ``√ΣVᵀ``), which keeps fine-tuning balanced.

    Args:
        matrices: ``batch × m × n``.
        rank: kept rank, ``1 ≤ rank ≤ min(m, n)``.

    Returns:
        ``(left batch × m × rank, right batch × rank × n)``.
    """
    m, n = matrices.shape[-2:]
    if m <= n:
        basis = leading_subspace(matrices, rank)  # b × m × r
        right = basis.transpose(1, 2) @ matrices  # b × r × n, rows of norm σ
        sigma = right.norm(dim=2)
        left = basis
    else:
        basis = leading_subspace(matrices.transpose(1, 2), rank)  # b × n × r
        left = matrices @ basis  # b × m × r, columns of norm σ
        sigma = left.norm(dim=1)
        right = basis.transpose(1, 2)
    # Move √σ to the other side; σ = 0 columns are left alone (nothing to balance).
    root = torch.where(sigma > 0, sigma.sqrt(), torch.ones_like(sigma))
    if m <= n:
        return left * root[:, None, :], right / root[:, :, None]
    return left / root[:, None, :], right * root[:, :, None]


def channel_unfoldings(weight: torch.Tensor,
                       geom: LayerGeometry) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-group mode-0 and mode-1 unfoldings of a kernel ``O × I/g × kh × kw``.

    Returns:
        ``(g × O/g × (I/g·kh·kw), g × I/g × (O/g·kh·kw))``.
    """
    blocks = weight.reshape(geom.groups, geom.out_per_group, geom.in_per_group,
                            geom.kernel_area)
    return (blocks.reshape(geom.groups, geom.out_per_group, -1),
            blocks.transpose(1, 2).reshape(geom.groups, geom.in_per_group, -1))


@DECOMPOSITIONS.register("svd")
class SVD(Decomposition):
    """Truncated SVD: params ``r·(I·kh·kw + O)`` + bias (``r`` per group for grouped convs)."""

    name = "svd"

    def max_rank(self, geom: LayerGeometry, **options: Any) -> int:
        return min(geom.out_per_group, geom.in_per_group * geom.kernel_area)

    def _per_rank(self, geom: LayerGeometry) -> int:
        return geom.in_channels * geom.kernel_area + geom.out_channels

    def params(self, geom: LayerGeometry, rank: Rank, **options: Any) -> int:
        return as_int_rank(rank) * self._per_rank(geom) + geom.bias_params

    def flops(self, geom: LayerGeometry, rank: Rank, **options: Any) -> int:
        # Both stages run at the output resolution: the spatial stage carries the stride.
        return geom.out_positions * as_int_rank(rank) * self._per_rank(geom)

    def rank_for_params(self, geom: LayerGeometry, target: float, **options: Any) -> int:
        rank = int((target - geom.bias_params) // self._per_rank(geom))
        return max(1, min(rank, self.max_rank(geom)))

    def factorize(self, weight: torch.Tensor, geom: LayerGeometry, rank: Rank,
                  **options: Any) -> Factors:
        self.check_options(options)
        g = geom.groups
        left, right = truncated_svd(weight.reshape(g, geom.out_per_group, -1), as_int_rank(rank))
        return left, right  # g × O/g × r, g × r × (I/g·kh·kw)

    def factor_shapes(self, geom: LayerGeometry, rank: Rank,
                      **options: Any) -> list[tuple[int, ...]]:
        r, g = as_int_rank(rank), geom.groups
        return [(g, geom.out_per_group, r), (g, r, geom.in_per_group * geom.kernel_area)]

    def unfoldings(self, weight: torch.Tensor, geom: LayerGeometry,
                   **options: Any) -> list[torch.Tensor]:
        # The per-group matricisation that factorize truncates.
        return [channel_unfoldings(weight, geom)[0]]

    def reconstruct(self, factors: Factors, geom: LayerGeometry, rank: Rank,
                    **options: Any) -> torch.Tensor:
        left, right = factors
        return (left @ right).reshape(geom.out_channels, geom.in_per_group, *geom.kernel_size)

    def build(self, layer: Compressible, factors: Factors, rank: Rank,
              **options: Any) -> nn.Module:
        left, right = factors
        geom = LayerGeometry.of(layer)
        g, r = geom.groups, as_int_rank(rank)
        kh, kw = geom.kernel_size
        first = spatial_stage(layer, geom.in_channels, g * r, g,
                              right.reshape(g * r, geom.in_per_group, kh, kw))
        second = pointwise_stage(layer, g * r, geom.out_channels, g,
                                 left.reshape(geom.out_channels, r), layer_bias(layer))
        return nn.Sequential(first, second)
