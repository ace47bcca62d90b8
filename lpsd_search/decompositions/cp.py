"""CP (CANDECOMP/PARAFAC) of conv kernels (Lebedev et al., ICLR 2015), fitted by CP-ALS.

``W ≈ Σ_{j≤R} a_j ∘ b_j ∘ c_j ∘ d_j`` per group, built as a 1×1 conv ``I → g·R``, a depthwise
``kh×1`` conv (vertical stride/padding/dilation), a depthwise ``1×kw`` conv (the horizontal ones)
and a 1×1 conv ``g·R → O`` carrying the bias. The ``cp3`` variant keeps ``kh×kw`` together as one
depthwise conv (a 3-way CP over ``O × I × kh·kw``). A spatial axis of size 1 gets no stage of its
own (its scalar is folded into the last factor); with a 1×1 kernel, and for Linear layers, a CP
is a two-factor matrix factorisation and the best one is the truncated SVD, which is what is used.

The fit is CP-ALS in torch on the weight's device (Kolda & Bader 2009). The start pairs the
factors through the SVD of the ``O × (I·kh·kw)`` unfolding: ``a_j = σ_j u_j`` and
``(b_j, c_j, d_j)`` the best rank-1 terms of the right singular vector reshaped to
``I × kh × kw`` (a closed form through ``kh·kw``-sized eigenproblems), which starts far closer
than tensorly's per-mode SVD start, whose columns are not matched across modes. Each sweep
needs two large contractions (one per channel mode; the spatial modes reuse the second), the
error comes from the normal equations without reconstructing ``W`` (and from the explicit
residual once it is too small for that form to resolve in the weight's precision), and
extrapolation steps (Bro's line search) speed up the slow phase of ALS. The fit stops when the
error has fallen by less than ``tol`` per sweep over the last few sweeps: a window, because one
sweep's gain can be smaller than the rounding noise of the error itself.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
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
from lpsd_search.decompositions.modules import Axis, conv_stage, layer_bias, pointwise_stage
from lpsd_search.decompositions.svd import (
    as_int_rank,
    channel_unfoldings,
    leading_eigenvectors,
    truncated_svd,
)
from lpsd_search.errors import UserInputError

VARIANTS = ("cp4", "cp3")
STOP_WINDOW = 5
"""Sweeps over which the stopping rule measures progress (see ``cp_als``)."""


def _solve(gram: torch.Tensor, mttkrp: torch.Tensor) -> torch.Tensor:
    """``mttkrp @ gram⁻¹`` for a batch of SPD ``R × R`` Gram products (tiny ridge for safety)."""
    rank = gram.shape[-1]
    scale = gram.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-30)[:, None, None]
    eye = torch.eye(rank, dtype=gram.dtype, device=gram.device)
    chol, info = torch.linalg.cholesky_ex(gram + 1e-7 * scale * eye)
    if int(info.max()) == 0:
        return torch.cholesky_solve(mttkrp.transpose(1, 2), chol).transpose(1, 2)
    return mttkrp @ torch.linalg.pinv(gram, hermitian=True)


def _khatri_rao(spatial: list[torch.Tensor], groups: int, rank: int,
                like: torch.Tensor) -> torch.Tensor:
    """Column-wise Kronecker product of the spatial factors: ``g × (∏ n) × R`` (row-major)."""
    if not spatial:
        return torch.ones(groups, 1, rank, dtype=like.dtype, device=like.device)
    product = spatial[0]
    for factor in spatial[1:]:
        product = (product[:, :, None, :] * factor[:, None, :, :]).reshape(groups, -1, rank)
    return product


def _top_rank_one(matrices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-1 ``σ·u vᵀ`` of a batch of ``m × n`` matrices with n small: ``(σu, v)``."""
    _, right = leading_eigenvectors(matrices.transpose(1, 2) @ matrices, 1)
    right = right[:, :, 0]
    return (matrices @ right[:, :, None])[:, :, 0], right


def cp_init(blocks: torch.Tensor, spatial_shape: tuple[int, ...], rank: int,
            seed: int = 0) -> list[torch.Tensor]:
    """Matched SVD start for CP: ``[A g×O×R, B g×I×R, *spatial g×n×R]``.

    Components beyond the rank of the ``O × (I·S)`` unfolding get random columns (zero weight).
    """
    g, n_out, n_in, area = blocks.shape
    avail = min(rank, n_out, n_in * area)
    left, right = truncated_svd(blocks.reshape(g, n_out, n_in * area), avail)
    # left = U√σ, right = √σVᵀ: move all of σ onto A so that the rank-1 splits act on unit V.
    sigma = right.norm(dim=2)  # √σ·‖v‖ = √σ
    a = left * sigma[:, None, :]
    unit = right / sigma.clamp_min(1e-30)[:, :, None]  # g × k × (I·S)
    pieces = unit.reshape(g * avail, n_in, area)
    b, s = _top_rank_one(pieces)  # I-part carries the weight, S-part unit-norm
    spatial: list[torch.Tensor] = []
    if len(spatial_shape) == 2:
        kh, kw = spatial_shape
        c, d = _top_rank_one(s.reshape(g * avail, kh, kw))
        spatial = [c, d]
    elif len(spatial_shape) == 1:
        spatial = [s]
    factors = [a, b.reshape(g, avail, n_in).transpose(1, 2)]
    factors += [f.reshape(g, avail, -1).transpose(1, 2) for f in spatial]
    if avail < rank:
        # Unit-norm random columns in B and the spatial factors, zero weight in A: the first sweep
        # solves A against them. They must not be tiny, or the solve's ridge keeps them at zero.
        gen = torch.Generator().manual_seed(seed)
        extra = rank - avail
        filled = [torch.cat([a, a.new_zeros(g, n_out, extra)], dim=2)]
        for factor in factors[1:]:
            noise = torch.randn(g, factor.shape[1], extra, generator=gen, dtype=factor.dtype)
            noise = noise / noise.norm(dim=1, keepdim=True)
            filled.append(torch.cat([factor, noise.to(factor.device)], dim=2))
        factors = filled
    return factors


def cp_als(blocks: torch.Tensor, spatial_shape: tuple[int, ...], rank: int, iters: int = 100,
           tol: float = 1e-6, linesearch: bool = True,
           seed: int = 0) -> tuple[list[torch.Tensor], list[float]]:
    """CP-ALS of a batch of tensors ``g × O × I × S`` with ``S = ∏ spatial_shape``.

    Args:
        blocks: the kernel per group, spatial modes flattened row-major.
        spatial_shape: ``(kh, kw)`` for CP4, ``(kh·kw,)`` for CP3, ``()`` for none.
        rank: R, components per group.
        iters: maximum ALS sweeps.
        tol: stop when the relative error has fallen by less than ``tol`` per sweep, on
            average over the last ``STOP_WINDOW`` sweeps.
        linesearch: try an extrapolated point every other sweep (Bro 1998; tensorly's scheme).
        seed: seed of the random columns used when R exceeds the unfolding's rank.

    Returns:
        ``([A, B, *spatial], relative errors per sweep)`` with balanced column norms.
    """
    g, n_out, n_in, area = blocks.shape
    by_out = blocks.permute(0, 1, 3, 2).reshape(g, n_out * area, n_in)  # contract I
    by_in = blocks.permute(0, 2, 3, 1).reshape(g, n_in * area, n_out)  # contract O
    norm2 = max(float(blocks.square().sum()), 1e-30)
    # ‖W‖² − 2⟨W, Ŵ⟩ + ‖Ŵ‖² cancels: its terms carry a relative rounding error of ~eps, so
    # below this relative error (0.035 in float32) the residual is formed explicitly instead.
    explicit_below = math.sqrt(1e4 * torch.finfo(blocks.dtype).eps)

    def gram(f: torch.Tensor) -> torch.Tensor:
        return f.transpose(1, 2) @ f

    def residual(factors: list[torch.Tensor]) -> float:
        a, b, *spatial = factors
        kr = _khatri_rao(spatial, g, rank, blocks)
        right = (b[:, :, None, :] * kr[:, None, :, :]).reshape(g, n_in * area, rank)
        approx = a @ right.transpose(1, 2)
        return float((blocks.reshape(g, n_out, -1) - approx).norm()) / math.sqrt(norm2)

    def error_of(factors: list[torch.Tensor], inner: float) -> float:
        total = gram(factors[0])
        for f in factors[1:]:
            total = total * gram(f)
        error = math.sqrt(max(norm2 - 2 * inner + float(total.sum()), 0.0) / norm2)
        return error if error > explicit_below else residual(factors)

    def error_direct(factors: list[torch.Tensor]) -> float:
        a, b, *spatial = factors
        kr = _khatri_rao(spatial, g, rank, blocks)
        projected = (by_out @ b).reshape(g, n_out, area, rank)
        inner = float(((projected * kr[:, None]).sum(2) * a).sum())
        return error_of(factors, inner)

    def sweep(factors: list[torch.Tensor]) -> tuple[list[torch.Tensor], float]:
        a, b, *spatial = factors
        kr = _khatri_rao(spatial, g, rank, blocks)
        kr_gram = gram(kr)
        projected = (by_out @ b).reshape(g, n_out, area, rank)
        a = _solve(gram(b) * kr_gram, (projected * kr[:, None]).sum(2))
        a_gram = gram(a)
        projected = (by_in @ a).reshape(g, n_in, area, rank)
        m_b = (projected * kr[:, None]).sum(2)
        b = _solve(a_gram * kr_gram, m_b)
        last_m, last_f = m_b, b
        if spatial:
            both = a_gram * gram(b)
            z = (projected * b[:, :, None, :]).sum(1)  # g × S × R
            if len(spatial) == 1:
                spatial = [_solve(both, z)]
                last_m, last_f = z, spatial[0]
            else:
                c, d = spatial
                z4 = z.reshape(g, c.shape[1], d.shape[1], rank)
                m_c = (z4 * d[:, None]).sum(2)
                c = _solve(both * gram(d), m_c)
                m_d = (z4 * c[:, :, None]).sum(1)
                d = _solve(both * gram(c), m_d)
                spatial = [c, d]
                last_m, last_f = m_d, d
        new = [a, b, *spatial]
        # ⟨W, Ŵ⟩ from the last solve's MTTKRP: no reconstruction of W needed.
        return _balance(new), error_of(new, float((last_m * last_f).sum()))

    factors = cp_init(blocks, spatial_shape, rank, seed)
    errors: list[float] = []
    older: list[torch.Tensor] | None = None
    power, failures = 2.0, 0
    for sweep_index in range(iters):
        if linesearch and sweep_index % 2 == 0:
            older = factors
        factors, error = sweep(factors)
        if linesearch and older is not None and sweep_index % 2 == 0 and sweep_index > 5:
            jump = sweep_index ** (1.0 / power)
            trial = [o + jump * (f - o) for o, f in zip(older, factors, strict=True)]
            trial_error = error_direct(trial)
            if trial_error < error:
                factors, error, failures = _balance(trial), trial_error, 0
            else:
                failures += 1
                if failures == 4:  # back off the extrapolation, as tensorly does
                    power, failures = power + 1.0, 0
        errors.append(error)
        # Compare with the error STOP_WINDOW sweeps ago: a single sweep's gain can be below the
        # rounding noise of the error, which would stop a fit that is still improving.
        if len(errors) > STOP_WINDOW:
            before = errors[-1 - STOP_WINDOW]
            if before - error < STOP_WINDOW * tol * before:
                break
    return factors, errors


def _balance(factors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Give every factor's column j the same norm (the N-th root of the component's weight)."""
    norms = [f.norm(dim=1, keepdim=True).clamp_min(1e-30) for f in factors]
    weight = torch.stack(norms).prod(0) ** (1.0 / len(factors))
    return [f / n * weight for f, n in zip(factors, norms, strict=True)]


def _spatial_axes(geom: LayerGeometry, variant: str) -> tuple[int, ...]:
    """The spatial modes that get their own factor and stage."""
    kh, kw = geom.kernel_size
    if variant == "cp3":
        return (kh * kw,) if kh * kw > 1 else ()
    return tuple(n for n in (kh, kw) if n > 1)


@DECOMPOSITIONS.register("cp")
class CP(Decomposition):
    """CP: params ``R·(I + O) + g·R·(kh + kw)`` + bias (``g·R·kh·kw`` for ``cp3``).

    ``R`` is per group; a spatial axis of size 1 adds nothing, so 1×1 convs and Linear layers
    cost ``R·(I + O)`` + bias. The rank is an int.

    Options:
        variant: ``"cp4"`` (default; separate ``kh×1`` and ``1×kw`` depthwise stages) or
            ``"cp3"`` (one ``kh×kw`` depthwise stage).
        iters: maximum ALS sweeps (default 100).
        tol: stop when the relative error falls by less than this fraction per sweep, averaged
            over the last ``STOP_WINDOW`` sweeps (default 1e-6).
        linesearch: extrapolation steps (default True).
        seed: seed of the random columns used when R exceeds the unfolding's rank (default 0).
    """

    name = "cp"
    structural_options = ("variant",)
    fit_options = ("iters", "tol", "linesearch", "seed")

    @staticmethod
    def _variant(options: dict[str, Any]) -> str:
        variant = options.get("variant", "cp4")
        if variant not in VARIANTS:
            valid = ", ".join(VARIANTS)
            raise UserInputError(f"cp variant {variant!r} is invalid; valid: {valid}")
        return str(variant)

    @staticmethod
    def _fit_settings(options: dict[str, Any]) -> tuple[int, float, bool, int]:
        """``(iters, tol, linesearch, seed)`` from the options, validated."""
        iters, tol = options.get("iters", 100), options.get("tol", 1e-6)
        seed = options.get("seed", 0)
        if isinstance(iters, bool) or not isinstance(iters, Integral) or iters < 0:
            raise UserInputError(f"cp iters={iters!r} is invalid; valid: an int >= 0")
        if isinstance(tol, bool) or not isinstance(tol, Real) or not float(tol) >= 0:
            raise UserInputError(f"cp tol={tol!r} is invalid; valid: a number >= 0")
        if isinstance(seed, bool) or not isinstance(seed, Integral):
            raise UserInputError(f"cp seed={seed!r} is invalid; valid: an int")
        return int(iters), float(tol), bool(options.get("linesearch", True)), int(seed)

    def max_rank(self, geom: LayerGeometry, **options: Any) -> int:
        # A tensor's CP rank is at most the product of its mode sizes over the largest one (one
        # rank-1 term per fibre of the largest mode): min(O·I, O·S, I·S) for three modes.
        modes = (geom.out_per_group, geom.in_per_group,
                 *_spatial_axes(geom, self._variant(options)))
        return math.prod(modes) // max(modes)

    def _spatial_params(self, geom: LayerGeometry, options: dict[str, Any]) -> int:
        return geom.groups * sum(_spatial_axes(geom, self._variant(options)))

    def params(self, geom: LayerGeometry, rank: Rank, **options: Any) -> int:
        per_rank = geom.in_channels + geom.out_channels + self._spatial_params(geom, options)
        return as_int_rank(rank) * per_rank + geom.bias_params

    def flops(self, geom: LayerGeometry, rank: Rank, **options: Any) -> int:
        r, g = as_int_rank(rank), geom.groups
        axes = _spatial_axes(geom, self._variant(options))
        last = geom.out_positions * geom.out_channels * r
        if not axes:  # the first stage carries the spatial settings: output resolution
            return geom.out_positions * geom.in_channels * r + last
        first = geom.in_positions * geom.in_channels * r
        if len(axes) == 2:
            middle = geom.mid_positions * g * r * axes[0] + geom.out_positions * g * r * axes[1]
        else:
            middle = geom.out_positions * g * r * axes[0]
        return first + middle + last

    def rank_for_params(self, geom: LayerGeometry, target: float, **options: Any) -> int:
        per_rank = geom.in_channels + geom.out_channels + self._spatial_params(geom, options)
        rank = int((target - geom.bias_params) // per_rank)
        return max(1, min(rank, self.max_rank(geom, **options)))

    def factorize(self, weight: torch.Tensor, geom: LayerGeometry, rank: Rank,
                  **options: Any) -> Factors:
        self.check_options(options)
        axes = _spatial_axes(geom, self._variant(options))
        r, g = as_int_rank(rank), geom.groups
        iters, tol, linesearch, seed = self._fit_settings(options)
        blocks = weight.reshape(g, geom.out_per_group, geom.in_per_group, geom.kernel_area)
        if not axes:
            left, right = truncated_svd(blocks[..., 0], r)
            return left, right.transpose(1, 2)
        factors, _ = cp_als(blocks, axes, r, iters=iters, tol=tol, linesearch=linesearch,
                            seed=seed)
        return tuple(factors)

    def unfoldings(self, weight: torch.Tensor, geom: LayerGeometry,
                   **options: Any) -> list[torch.Tensor]:
        # Every unfolding of a rank-R CP tensor has rank ≤ R, so R must reach the larger of the
        # two channel-mode ranks (the spatial modes are too short to matter).
        return list(channel_unfoldings(weight, geom))

    def factor_shapes(self, geom: LayerGeometry, rank: Rank,
                      **options: Any) -> list[tuple[int, ...]]:
        r, g = as_int_rank(rank), geom.groups
        axes = _spatial_axes(geom, self._variant(options))
        return [(g, geom.out_per_group, r), (g, geom.in_per_group, r),
                *((g, n, r) for n in axes)]

    def reconstruct(self, factors: Factors, geom: LayerGeometry, rank: Rank,
                    **options: Any) -> torch.Tensor:
        # W[g, o, i, s] = Σ_r A[g, o, r] B[g, i, r] K[g, s, r], K the Khatri–Rao product of the
        # spatial factors in the row-major order of (kh, kw); axes of size 1 have no factor, so
        # K always spans the kh·kw positions (a single row of ones when there is none).
        a, b, *spatial = factors
        kr = _khatri_rao(list(spatial), geom.groups, a.shape[-1], a)
        blocks = torch.einsum("gor,gir,gsr->gois", a, b, kr)
        return blocks.reshape(geom.out_channels, geom.in_per_group, *geom.kernel_size)

    def build(self, layer: Compressible, factors: Factors, rank: Rank,
              **options: Any) -> nn.Module:
        geom = LayerGeometry.of(layer)
        variant = self._variant(options)
        axes = _spatial_axes(geom, variant)
        r, g = as_int_rank(rank), geom.groups
        a, b, *spatial = factors
        first_weight = b.transpose(1, 2).reshape(g * r, geom.in_per_group, 1, 1)
        last_weight = a.reshape(geom.out_channels, r)
        bias = layer_bias(layer)
        if not axes:
            if isinstance(layer, nn.Linear):
                first = pointwise_stage(layer, geom.in_channels, r, 1, first_weight)
            else:
                first = conv_stage(layer, geom.in_channels, g * r, g, first_weight)
            return nn.Sequential(first, pointwise_stage(layer, g * r, geom.out_channels, g,
                                                        last_weight, bias))
        assert isinstance(layer, nn.Conv2d)  # Linear layers have no spatial axes
        kh, kw = geom.kernel_size
        stages: list[nn.Module] = [
            pointwise_stage(layer, geom.in_channels, g * r, g, first_weight)
        ]
        if variant == "cp3":
            shapes = [(kh, kw)]
        else:
            shapes = [s for s, n in (((kh, 1), kh), ((1, kw), kw)) if n > 1]
        split = len(spatial) == 2
        for index, (factor, shape) in enumerate(zip(spatial, shapes, strict=True)):
            axis: Axis = ("height" if index == 0 else "width") if split else "both"
            depthwise = factor.transpose(1, 2).reshape(g * r, 1, *shape)
            stages.append(conv_stage(layer, g * r, g * r, g * r, depthwise, axis=axis))
        stages.append(pointwise_stage(layer, g * r, geom.out_channels, g, last_weight, bias))
        return nn.Sequential(*stages)
