"""lpsd-search: budget-aware search over per-layer decompositions plus sparse residuals.

Importing the package is cheap: it pulls in torch (needed by every public function) but never
Ray, and never initialises CUDA.
"""

from __future__ import annotations

from lpsd_search.decompositions import DECOMPOSITIONS, LayerGeometry, decompose_layer
from lpsd_search.errors import UserInputError

__version__ = "0.1.0"

__all__ = [
    "DECOMPOSITIONS",
    "LayerGeometry",
    "UserInputError",
    "__version__",
    "decompose_layer",
]
