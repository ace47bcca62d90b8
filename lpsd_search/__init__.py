"""lpsd-search: budget-aware search over per-layer decompositions plus sparse residuals.

Importing the package is cheap: it pulls in torch (needed by every public function) but never
Ray, torchvision, scikit-learn or pandas, and never initialises CUDA. ``search`` and ``compress``
take spec strings or Python objects (an ``nn.Module`` or a factory, torch datasets); ``load``
returns a saved model that takes raw images (its input normalisation is its first layer).
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from lpsd_search.decompositions import DECOMPOSITIONS, LayerGeometry
from lpsd_search.errors import UserInputError
from lpsd_search.lpsd.layer import decompose_layer


def _version() -> str:
    # pyproject.toml holds the only version literal; a source tree that was never installed
    # (``PYTHONPATH=.``) has no metadata to read it from.
    try:
        return metadata.version("lpsd-search")
    except metadata.PackageNotFoundError:
        return "0+unknown"


__version__ = _version()

__all__ = [
    "DECOMPOSITIONS",
    "LayerGeometry",
    "UserInputError",
    "__version__",
    "compress",
    "decompose_layer",
    "load",
    "search",
]


def __getattr__(name: str) -> Any:
    # The search pulls in Optuna; import it only when it is asked for.
    if name == "search":
        from lpsd_search.api import search

        return search
    if name == "compress":
        from lpsd_search.api import compress

        return compress
    if name == "load":
        from lpsd_search.trial.export import load

        return load
    raise AttributeError(f"module 'lpsd_search' has no attribute {name!r}")
