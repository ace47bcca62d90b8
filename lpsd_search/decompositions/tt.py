"""Tensor-Train of conv / linear kernels (Novikov et al., NeurIPS 2015; Garipov et al., 2016).

The channels per group factor as ``I/g = i₁·…·i_a`` and ``O/g = o₁·…·o_b``, and the kernel,
reshaped to the modes ``(i₁, …, i_a, s, o_b, …, o₁)`` with ``s = kh·kw`` (left out when 1),
is split by TT-SVD (Oseledets, SISC 2011) into cores ``G_k[r_{k-1}, n_k, r_k]``. Built from plain
modules as a chain of small contractions on ``x`` of shape ``N × I × H × W``:

* input cores: ``Unflatten`` the channels to ``(g·r·i_k, rest)`` and contract with a 1×1×1
  ``Conv3d`` whose weight is shared over the "depth" of the not-yet-consumed input modes (which
  is why the module holds exactly the core's parameters), then ``Flatten`` back; the last input
  core is a 1×1 ``Conv2d``;
* the spatial core: a ``kh × kw`` ``Conv2d`` with the layer's stride, padding, dilation and
  padding mode (for a 1×1 kernel there is none and the last input core carries them);
* output cores mirror the input side (a 1×1 ``Conv2d``, then ``Unflatten``/``Conv3d``/``Flatten``)
  and emit ``o_b`` first and ``o₁`` last, so the channels come out in the dense layer's order.

A convolution shares its bias over everything its weight is shared over, so the last ``Conv3d``
could only carry a bias per ``o₁``; when ``b ≥ 2`` the bias lives on a final depthwise 1×1
``Conv2d`` (weights one, ``2·O`` parameters), which keeps it exact at every rank. Linear layers
run the same chain on ``N × I × 1 × 1`` (inputs must be ``N × I``). The layout, the size
formulas and the bond-rank trimming live in ``tt_layout``.
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
from lpsd_search.decompositions.modules import conv_stage, layer_bias, unit_conv
from lpsd_search.decompositions.svd import leading_subspace
from lpsd_search.decompositions.tt_layout import (
    TTLayout,
    balanced_modes,
    feasible_ranks,
    layout_of,
    stage_costs,
)
from lpsd_search.errors import UserInputError

__all__ = ["TTLayout", "TensorTrain", "balanced_modes", "feasible_ranks", "tt_svd"]


def _left_orthonormal(matrices: torch.Tensor, rank: int) -> torch.Tensor:
    """Top-``rank`` left singular vectors of a batch ``b × m × n``, zero columns past min(m, n).

    The wide case uses the ``m × m`` Gram matrix (``leading_subspace``); the tall case first
    takes a QR so that the eigenproblem is only ``n × n`` and full rank stays exact.
    """
    batch, m, n = matrices.shape
    kept = min(rank, m, n)
    if m <= n:
        basis = leading_subspace(matrices, kept)
    else:
        q, r = torch.linalg.qr(matrices)  # q: b × m × n
        basis = q @ leading_subspace(r, kept)
    if kept < rank:  # a rank the unfolding cannot use: zero columns keep the requested shape
        basis = torch.cat([basis, basis.new_zeros(batch, m, rank - kept)], dim=2)
    return basis


def tt_svd(tensor: torch.Tensor, ranks: tuple[int, ...]) -> list[torch.Tensor]:
    """TT-SVD (Oseledets 2011, Alg. 1) of a batch of tensors ``g × n₁ × … × n_d``.

    Each step keeps the leading left singular vectors of the current unfolding as a
    left-orthonormal core and carries ``Σ·Vᵀ`` on, so the squared error is the sum of what the
    steps drop and the result is exact when every rank is at its maximum.

    Args:
        tensor: ``g × n₁ × … × n_d``.
        ranks: ``d − 1`` bond ranks.

    Returns:
        ``d`` cores, the k-th of shape ``g × r_{k-1} × n_k × r_k`` (``r₀ = r_d = 1``).
    """
    g, *modes = tensor.shape
    cores = []
    rest = tensor.reshape(g, modes[0], -1)
    left_rank = 1
    for k, rank in enumerate(ranks):
        basis = _left_orthonormal(rest, rank)
        cores.append(basis.reshape(g, left_rank, modes[k], rank))
        rest = (basis.transpose(1, 2) @ rest).reshape(g, rank * modes[k + 1], -1)
        left_rank = rank
    cores.append(rest.reshape(g, left_rank, modes[-1], 1))
    return cores


@DECOMPOSITIONS.register("tt")
class TensorTrain(Decomposition):
    """Tensor-Train: params ``g·Σ_k r_{k-1}·n_k·r_k`` + bias (``2·O`` when ``b ≥ 2``, else ``O``).

    The rank is one int per bond (a tuple), or an int ``r`` meaning ``min(r, max)`` on every
    bond. A bond's maximum is ``min(∏ modes on its left, ∏ modes on its right)``, so the
    maximal rank is exact. A float rank picks the largest uniform ``r`` within the budget. A
    bond rank above what its left side can feed (``r_k > r_{k-1}·n_k``) is valid but wasted: the
    extra channels are zero.

    Grouped convs are decomposed per group (one train per group, ``groups=g`` on every stage);
    depthwise convs are not supported (no train is smaller than their kernel), nor are Linear
    layers applied over extra positions (inputs other than ``N × I``).

    Options:
        in_modes: the factors ``(i₁, …, i_a)`` of ``I/g`` (default: ``d`` balanced factors).
        out_modes: the factors ``(o₁, …, o_b)`` of ``O/g`` (default: ``d`` balanced factors).
        d: how many factors the defaults use (default 2; a prime count gets fewer).
    """

    name = "tt"
    structural_options = ("in_modes", "out_modes", "d")

    def layout(self, geom: LayerGeometry, options: dict[str, Any]) -> TTLayout:
        """The validated modes of this layer under ``options``."""
        return layout_of(geom, options)

    def supports(self, geom: LayerGeometry, **options: Any) -> bool:
        # The chain moves a Linear's features to the channel axis of an N × I × 1 × 1 tensor, so
        # it cannot replace a Linear that runs over extra positions (an N × T × I input).
        if geom.kind == "linear" and geom.in_positions != 1:
            return False
        return super().supports(geom, **options)

    def max_rank(self, geom: LayerGeometry, **options: Any) -> tuple[int, ...]:
        return self.layout(geom, options).max_ranks

    def check_rank(self, geom: LayerGeometry, rank: Rank, **options: Any) -> tuple[int, ...]:
        top = self.max_rank(geom, **options)
        if isinstance(rank, int) and not isinstance(rank, bool) and rank >= 1:
            return tuple(min(rank, t) for t in top)
        values = tuple(rank) if isinstance(rank, (tuple, list)) else ()
        if len(values) == len(top) and all(
            isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= t
            for v, t in zip(values, top, strict=True)
        ):
            return values
        raise UserInputError(
            f"tt rank {rank!r} is invalid for this layer; valid: a positive int, a tuple of "
            f"{len(top)} ints up to {top}, or a float in (0, 1]"
        )

    def params(self, geom: LayerGeometry, rank: Rank, **options: Any) -> int:
        ranks = self.check_rank(geom, rank, **options)
        return sum(p for p, _ in stage_costs(geom, self.layout(geom, options), ranks))

    def flops(self, geom: LayerGeometry, rank: Rank, **options: Any) -> int:
        ranks = self.check_rank(geom, rank, **options)
        return sum(f for _, f in stage_costs(geom, self.layout(geom, options), ranks))

    def rank_for_params(self, geom: LayerGeometry, target: float,
                        **options: Any) -> tuple[int, ...]:
        # params grows with the uniform rank r, so bisect on r in [1, the largest bond].
        low, high = 1, max(self.max_rank(geom, **options))
        while low < high:
            middle = (low + high + 1) // 2
            if self.params(geom, middle, **options) <= target:
                low = middle
            else:
                high = middle - 1
        return self.check_rank(geom, low, **options)

    def factorize(self, weight: torch.Tensor, geom: LayerGeometry, rank: Rank,
                  **options: Any) -> Factors:
        self.check_options(options)
        train = self.layout(geom, options).train_of(weight, geom.groups)
        return tuple(tt_svd(train, self.check_rank(geom, rank, **options)))

    def unfoldings(self, weight: torch.Tensor, geom: LayerGeometry,
                   **options: Any) -> list[torch.Tensor]:
        # The train's unfolding at every bond: its rank bounds that bond's TT rank.
        layout = self.layout(geom, options)
        train = layout.train_of(weight, geom.groups)
        return [train.reshape(geom.groups, math.prod(layout.modes[:k]), -1)
                for k in range(1, len(layout.modes))]

    def rank_from_unfoldings(self, ranks: list[int], geom: LayerGeometry,
                             **options: Any) -> tuple[int, ...]:
        clipped = self.check_rank(geom, super().rank_from_unfoldings(ranks, geom, **options),
                                  **options)
        # Trimming only lowers bonds, never below 1: the result stays a valid rank.
        return tuple(feasible_ranks(list(clipped), self.layout(geom, options).modes))

    def factor_shapes(self, geom: LayerGeometry, rank: Rank,
                      **options: Any) -> list[tuple[int, ...]]:
        modes = self.layout(geom, options).modes
        bonds = (1, *self.check_rank(geom, rank, **options), 1)
        return [(geom.groups, bonds[k], mode, bonds[k + 1]) for k, mode in enumerate(modes)]

    def reconstruct(self, factors: Factors, geom: LayerGeometry, rank: Rank,
                    **options: Any) -> torch.Tensor:
        g = geom.groups
        train = factors[0].reshape(g, -1, factors[0].shape[-1])
        for core in factors[1:]:
            train = torch.einsum("gmr,grns->gmns", train, core).reshape(g, -1, core.shape[-1])
        return self.layout(geom, options).kernel_of(train, geom)

    def build(self, layer: Compressible, factors: Factors, rank: Rank,
              **options: Any) -> nn.Module:
        geom = LayerGeometry.of(layer)
        layout = self.layout(geom, options)
        g, a, b = geom.groups, len(layout.in_modes), len(layout.out_modes)
        stages: list[nn.Module] = []
        if isinstance(layer, nn.Linear):
            stages.append(nn.Unflatten(1, (geom.in_channels, 1, 1)))
        cores = list(factors)
        for k in range(a):  # input cores: consume i_k, the modes after it ride as depth
            core = cores[k]
            left, mode, right = int(core.shape[1]), int(core.shape[2]), int(core.shape[3])
            weight = core.permute(0, 3, 1, 2)  # (g, r_k) ← (r_{k-1}, i_k)
            depth = math.prod(layout.in_modes[k + 1:])
            if k < a - 1:
                stages += [nn.Unflatten(1, (g * left * mode, depth)),
                           unit_conv(layer, 3, g * left * mode, g * right, g, weight),
                           nn.Flatten(1, 2)]
            elif layout.area == 1 and isinstance(layer, nn.Conv2d):
                # No spatial core: this 1×1 stage carries the stride and padding (it has no
                # bias, so it commutes with every padding mode).
                stages.append(conv_stage(layer, g * left * mode, g * right, g,
                                         weight.reshape(g * right, left * mode, 1, 1)))
            else:
                stages.append(unit_conv(layer, 2, g * left * mode, g * right, g, weight))
        first_out = a
        if layout.area > 1:
            assert isinstance(layer, nn.Conv2d)  # Linear layers have a 1×1 "kernel"
            core = cores[a]
            kh, kw = geom.kernel_size
            spatial = core.permute(0, 3, 1, 2).reshape(-1, int(core.shape[1]), kh, kw)
            stages.append(conv_stage(layer, g * int(core.shape[1]), g * int(core.shape[3]), g,
                                     spatial))
            first_out = a + 1
        bias = layer_bias(layer)
        produced = 1  # product of the output modes emitted so far (the depth)
        for k in range(first_out, len(cores)):  # output cores: emit o_b first, o₁ last
            core = cores[k]
            left, mode, right = int(core.shape[1]), int(core.shape[2]), int(core.shape[3])
            weight = core.permute(0, 3, 2, 1)  # (g, r_k, o) ← r_{k-1}
            last_bias = bias if b == 1 else None
            if k == first_out:
                stages.append(unit_conv(layer, 2, g * left, g * right * mode, g, weight,
                                         last_bias))
            else:
                stages += [nn.Unflatten(1, (g * left, produced)),
                           unit_conv(layer, 3, g * left, g * right * mode, g, weight),
                           nn.Flatten(1, 2)]
            produced *= mode
        if b > 1 and bias is not None:
            ones = torch.ones(geom.out_channels)
            stages.append(unit_conv(layer, 2, geom.out_channels, geom.out_channels,
                                     geom.out_channels, ones, bias))
        if isinstance(layer, nn.Linear):
            stages.append(nn.Flatten())
        return nn.Sequential(*stages)
