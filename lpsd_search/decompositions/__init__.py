"""Low-rank decompositions of Conv2d / Linear layers behind one registry.

Importing this package registers every built-in method.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from lpsd_search.decompositions import svd, tucker2  # noqa: F401  (registers the methods)
from lpsd_search.decompositions.base import (
    DECOMPOSITIONS,
    Compressible,
    Decomposition,
    LayerGeometry,
    Rank,
    RankSpec,
)

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


def decompose_layer(layer: nn.Module, method: str, rank: RankSpec, **options: Any) -> nn.Module:
    """Replace one dense layer by its decomposition.

    Args:
        layer: an ``nn.Conv2d`` (any stride/padding/dilation/groups) or ``nn.Linear``.
        method: a registered method name, e.g. ``"svd"`` or ``"tucker2"``.
        rank: the method's natural rank (int, or tuple such as tucker2's ``(r_out, r_in)``), or a
            float in (0, 1] meaning that fraction of the layer's parameters.
        **options: method-specific options (e.g. tucker2 ``iters``).

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
    return get_method(method).decompose(layer, rank, **options)  # type: ignore[arg-type]
