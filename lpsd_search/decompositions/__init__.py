"""Low-rank decompositions of Conv2d / Linear layers behind one registry.

Importing this package registers every built-in method.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from lpsd_search.decompositions import alds, cp, svd, tt, tucker2  # noqa: F401  (registers them)
from lpsd_search.decompositions.base import (
    DECOMPOSITIONS,
    Compressible,
    Decomposition,
    LayerGeometry,
    Rank,
    RankSpec,
)
from lpsd_search.errors import UserInputError

if TYPE_CHECKING:
    from lpsd_search.decompositions.cache import FactorCache

__all__ = [
    "DECOMPOSITIONS",
    "Compressible",
    "Decomposition",
    "LayerGeometry",
    "Rank",
    "RankSpec",
    "decompose_layer",
    "get_method",
]


def get_method(name: str) -> Decomposition:
    """An instance of the registered method ``name`` (the error lists the valid names)."""
    return DECOMPOSITIONS.get(name)()


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
        # Imported here: the LPSD layer is built on top of this package's methods.
        from lpsd_search.lowrank_sparse import decompose_low_rank_plus_sparse

        return decompose_low_rank_plus_sparse(
            layer, method, rank, sparsity,  # type: ignore[arg-type]
            alternating=alternating, cache=cache, **options)
    if alternating:
        raise UserInputError("alternating=True needs a sparsity > 0; valid: a sparsity in (0, 1]")
    return get_method(method).decompose(layer, rank, cache=cache,  # type: ignore[arg-type]
                                        **options)
