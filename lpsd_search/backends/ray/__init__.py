"""The Ray Tune engine (``--backend ray``); importing this package does not import Ray."""

from __future__ import annotations

from lpsd_search.backends.ray.driver import run_ray_search

__all__ = [
    "run_ray_search",
]
