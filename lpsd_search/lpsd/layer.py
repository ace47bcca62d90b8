"""One layer as low-rank plus sparse, ``W ≈ L + S`` (LPSD; Huang, Sie, Lin & Lee, PAKDD 2024).

``L`` is any registered low-rank decomposition, ``S`` keeps a fixed number of entries. Two fits:

* **one pass** (the Sparsification method's per-layer step): ``L = lowrank(W)``, then ``S`` is the
  largest-magnitude entries of ``W − L``;
* **alternating** (ALPSD, GoDec-style; Zhou & Tao, ICML 2011): repeat ``L ← lowrank(W − S)`` and
  ``S ← top(W − L)`` until the relative error ``‖W − L − S‖ / ‖W‖`` improves by less than ``tol``
  (relative) or ``rounds`` is reached. Each half-step is the best (or, for the iterative fits, a
  good) answer given the other part, so the error does not grow from one round to the next; the
  fit keeps the best round it saw all the same.

The result is ``AddBranches(low_rank, sparse)``: the low-rank branch carries the bias, the sparse
branch is a masked dense copy of the layer (see ``lpsd_search.sparse``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lpsd_search.decompositions import Compressible, LayerGeometry, RankSpec
from lpsd_search.decompositions.base import cached, get_method, prepare_weight
from lpsd_search.errors import UserInputError
from lpsd_search.lpsd.sparse import AddBranches, kept_entries, sparse_stage, top_entries_mask

if TYPE_CHECKING:
    from lpsd_search.decompositions.cache import FactorCache

logger = logging.getLogger(__name__)

DEFAULT_ROUNDS = 10
DEFAULT_TOL = 1e-3


@dataclass(frozen=True)
class SparseFit:
    """A fitted ``L + S`` of one weight.

    Attributes:
        factors: the low-rank factors of ``L``.
        mask: the entries ``S`` keeps (shaped like the weight as ``O × I/g × kh × kw``).
        residual: ``S`` on its mask, zeros elsewhere.
        errors: relative error ``‖W − L − S‖ / ‖W‖`` after each round (one for a single pass).
    """

    factors: tuple[torch.Tensor, ...]
    mask: torch.Tensor
    residual: torch.Tensor
    errors: tuple[float, ...]


def fit_low_rank_plus_sparse(weight: torch.Tensor, geom: LayerGeometry, method: str,
                             rank: Any, kept: int, *, alternating: bool = False,
                             rounds: int = DEFAULT_ROUNDS, tol: float = DEFAULT_TOL,
                             **options: Any) -> SparseFit:
    """Fit ``weight ≈ L + S`` with ``L`` of ``method`` at a concrete ``rank`` and ``kept`` entries.

    Args:
        weight: ``O × I/g × kh × kw`` (a Linear weight with two trailing unit dims).
        geom: the layer's geometry.
        method: a registered low-rank method.
        rank: the method's concrete natural rank.
        kept: entries of ``S``.
        alternating: ALPSD's alternating fit instead of one pass.
        rounds: most alternating rounds.
        tol: stop when a round lowers the error by less than this fraction of it.
        **options: the low-rank method's options.
    """
    decomposition = get_method(method)
    norm = float(weight.norm()) or 1.0

    def split(target: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor,
                                              torch.Tensor, float]:
        factors = tuple(decomposition.factorize(target, geom, rank, **options))
        residual = weight - decomposition.reconstruct(factors, geom, rank, **options)
        mask = top_entries_mask(residual, kept)
        sparse = residual * mask
        return factors, mask, sparse, float((residual - sparse).norm()) / norm

    factors, mask, sparse, error = split(weight)
    errors = [error]
    best = (factors, mask, sparse)
    for _ in range(rounds if alternating and kept else 0):
        factors, mask, sparse, error = split(weight - sparse)
        errors.append(error)
        if error < min(errors[:-1]):
            best = (factors, mask, sparse)
        if errors[-2] - error < tol * errors[-2]:
            break
    return SparseFit(best[0], best[1], best[2], tuple(errors))


def decompose_low_rank_plus_sparse(layer: Compressible, method: str, rank: RankSpec,
                                   sparsity: float, *, alternating: bool = False,
                                   rounds: int = DEFAULT_ROUNDS, tol: float = DEFAULT_TOL,
                                   cache: FactorCache | None = None,
                                   **options: Any) -> nn.Module:
    """Replace ``layer`` by a low-rank branch plus a sparse branch.

    Args:
        layer: a Conv2d or Linear.
        method: a registered low-rank method, or ``"none"`` for a sparse layer alone (magnitude
            pruning; the sparse branch then carries the bias).
        rank: the low-rank part's rank (natural, or a fraction of the layer's parameters).
        sparsity: fraction of the dense weight's entries kept in ``S``, in [0, 1].
        alternating: ALPSD's alternating fit instead of one pass.
        rounds: most alternating rounds.
        tol: relative improvement under which the alternation stops.
        cache: optional ``FactorCache``; the whole fit is cached under its settings.
        **options: the low-rank method's options.
    """
    geom = LayerGeometry.of(layer)
    kept = kept_entries(geom, sparsity)
    if method == "none":
        weight = prepare_weight(layer)
        mask = top_entries_mask(weight, kept)
        return sparse_stage(layer, weight.reshape(layer.weight.shape),
                            mask.reshape(layer.weight.shape), bias=layer.bias)
    decomposition = get_method(method)
    geom, concrete, structural, weight = decomposition.prepare(
        layer, rank, options, remedy="method 'none' with a sparsity")
    settings = {**options, "lpsd_kept": kept, "lpsd_alternating": alternating,
                "lpsd_rounds": rounds, "lpsd_tol": tol}

    def fit() -> tuple[torch.Tensor, ...]:
        result = fit_low_rank_plus_sparse(weight, geom, method, concrete, kept,
                                          alternating=alternating, rounds=rounds, tol=tol,
                                          **options)
        logger.debug("lpsd %s rank %s kept %d: errors %s", method, concrete, kept,
                     result.errors)
        return (*result.factors, result.mask, result.residual)

    with torch.no_grad():
        # The whole fit is one cache entry: the factors of L, then the mask and values of S.
        *factors, mask, residual = cached(cache, weight, f"lpsd:{method}", concrete, settings,
                                          fit)
        low_rank = decomposition.build(layer, tuple(factors), concrete, **structural)
        sparse = sparse_stage(layer, residual.reshape(layer.weight.shape),
                              mask.reshape(layer.weight.shape))
    return AddBranches(low_rank, sparse)


def decompose_layer(layer: nn.Module, method: str, rank: RankSpec, *,
                    sparsity: float = 0.0, alternating: bool = False,
                    cache: FactorCache | None = None, **options: Any) -> nn.Module:
    """Replace one dense layer by its decomposition.

    Args:
        layer: an ``nn.Conv2d`` (any stride/padding/dilation/groups) or ``nn.Linear``.
        method: a registered method name, e.g. ``"svd"`` or ``"tucker2"``.
        rank: the method's natural rank (int, or tuple such as tucker2's ``(r_out, r_in)``), or a
            float in (0, 1] meaning that fraction of the layer's parameters.
        sparsity: fraction of the dense weight's entries kept in a sparse residual ``S``
            (LPSD, ``W ≈ L + S``); 0 means low rank alone. With ``method="none"`` the layer
            is only sparsified (magnitude pruning).
        alternating: fit ``L`` and ``S`` by alternating (ALPSD) instead of one pass.
        cache: an optional ``FactorCache`` shared across calls; a hit skips the factorisation.
        **options: method-specific options (e.g. tucker2 ``iters``, alds ``k``, cp ``variant``).

    Returns:
        A module of plain ``nn.Conv2d`` / ``nn.Linear`` stages with the layer's output shape.

    Example:
        >>> import torch
        >>> conv = torch.nn.Conv2d(16, 32, 3, padding=1)
        >>> small = decompose_layer(conv, "tucker2", 0.25)
        >>> small(torch.randn(1, 16, 8, 8)).shape
        torch.Size([1, 32, 8, 8])
    """
    if not isinstance(layer, (nn.Conv2d, nn.Linear)):
        LayerGeometry.of(layer)  # raises the one-line error naming the valid layer types
    if sparsity or method == "none":
        return decompose_low_rank_plus_sparse(
            layer, method, rank, sparsity,  # type: ignore[arg-type]
            alternating=alternating, cache=cache, **options)
    if alternating:
        raise UserInputError("alternating=True needs a sparsity > 0; valid: a sparsity in (0, 1]")
    return get_method(method).decompose(layer, rank, cache=cache,  # type: ignore[arg-type]
                                        **options)
