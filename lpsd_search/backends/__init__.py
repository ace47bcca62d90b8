"""Engines that execute a search's trials: in-process Optuna workers, or Ray Tune.

``optuna`` runs here (several processes may share one storage); ``ray`` runs Tune trials on a
Ray cluster and imports Ray only when it is used.
"""

from __future__ import annotations

from lpsd_search.backends.optuna import run_search, search

__all__ = [
    "run_search",
    "search",
]
