"""Low-rank decompositions of Conv2d / Linear layers behind one registry.

The contract and the shared pipeline (``base``: weight preparation, support check, rank
resolution, cached factorisation) over a layer's ``geometry``; one module per method
(``svd``, ``alds``, ``tucker2``, ``cp``, ``tt`` with ``tt_layout``); the plain-module builders
they share (``modules``); a factor cache shared by the trials of a search (``cache``); and rank
rules that need no search (``ranks``: EVBMF, energy, on each method's unfoldings). Importing
this package registers every built-in method.
"""

from __future__ import annotations

from lpsd_search.decompositions import alds, cp, svd, tt, tucker2  # noqa: F401  (registers them)
from lpsd_search.decompositions.base import (
    DECOMPOSITIONS,
    Compressible,
    Decomposition,
    Factors,
    Rank,
    RankSpec,
    get_method,
)
from lpsd_search.decompositions.cache import FactorCache
from lpsd_search.decompositions.geometry import LayerGeometry

__all__ = [
    "DECOMPOSITIONS",
    "Compressible",
    "Decomposition",
    "FactorCache",
    "Factors",
    "LayerGeometry",
    "Rank",
    "RankSpec",
    "get_method",
]
