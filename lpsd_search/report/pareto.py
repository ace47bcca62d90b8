"""Pareto fronts as plain numpy functions over a matrix of objective values."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _as_losses(values: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    """Flip the maximised columns so that every column is minimised."""
    signs = np.where(np.asarray(maximize, dtype=bool), -1.0, 1.0)
    return np.asarray(values, dtype=float) * signs


def non_dominated(values: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    """Mask of the rows no other row dominates.

    A row dominates another when it is at least as good in every objective and strictly better
    in one. Of several identical rows only the first is kept, so a front has no duplicates.

    Args:
        values: ``n × m`` objective values.
        maximize: per column, whether larger is better.

    Returns:
        Boolean mask of length ``n``.

    Example:
        >>> non_dominated(np.array([[0.9, 10], [0.8, 5], [0.7, 8]]), [True, False]).tolist()
        [True, True, False]
    """
    losses = _as_losses(values, maximize)
    count = len(losses)
    keep = np.ones(count, dtype=bool)
    for i in range(count):
        no_worse = np.all(losses <= losses[i], axis=1)
        better = np.any(losses < losses[i], axis=1)
        dominated = np.any(no_worse & better)
        duplicate = np.any(np.all(losses[:i] == losses[i], axis=1))
        keep[i] = not (dominated or duplicate)
    return keep


def hypervolume_2d(values: np.ndarray, maximize: Sequence[bool],
                   reference: Sequence[float]) -> float:
    """Area dominated by the points of a two-objective problem up to ``reference``.

    Points that do not dominate the reference point add nothing.
    """
    losses = _as_losses(values, maximize)
    ref = _as_losses(np.asarray([reference]), maximize)[0]
    points = losses[np.all(losses < ref, axis=1)]
    if len(points) == 0:
        return 0.0
    points = points[np.argsort(points[:, 0])]
    area, best_second = 0.0, ref[1]
    for first, second in points:
        if second < best_second:
            area += (ref[0] - first) * (best_second - second)
            best_second = second
    return float(area)
