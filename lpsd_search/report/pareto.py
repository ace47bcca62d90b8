"""Pareto fronts as plain numpy functions over a matrix of objective values.

Like Optuna, the work is done on *losses*: every column minimised (maximised objectives are
negated by ``as_losses``). ``pareto_mask`` is the one front computation of the package; the
study-level ``report.results.front`` builds its loss matrix and feasibility mask from a study,
and the controller, the promotion and the reports all go through it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def as_losses(values: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    """Flip the maximised columns so that every column is minimised.

    Args:
        values: ``n × m`` objective values.
        maximize: per column, whether larger is better.

    Returns:
        ``n × m`` float losses (a copy).
    """
    signs = np.where(np.asarray(maximize, dtype=bool), -1.0, 1.0)
    return np.asarray(values, dtype=float).reshape(-1, len(signs)) * signs


def pareto_mask(losses: np.ndarray, feasible: np.ndarray | Sequence[bool] | None = None, *,
                boost: np.ndarray | Sequence[float] | None = None,
                distinct: bool = True) -> np.ndarray:
    """Mask of the feasible rows that no other feasible row dominates.

    A row dominates another when it is no worse in every column and strictly better in one.
    Infeasible rows are neither on the front nor dominate anything (Optuna's ``best_trials``
    under constraints).

    Args:
        losses: ``n × m`` values, every column minimised.
        feasible: per row, whether it may be on the front (default: every row).
        boost: subtracted from each row's own losses before it is judged against the others
            (unchanged): a row is kept when it would be non-dominated that much better. Zero or
            None is the plain front.
        distinct: keep only the first of identical rows, so that a front has no duplicates;
            False keeps them all, as Optuna's ``best_trials`` does.

    Returns:
        Boolean mask of length ``n``.
    """
    losses = np.asarray(losses, dtype=float)
    if losses.ndim != 2:
        raise ValueError(f"losses must be an n × m matrix, not of shape {losses.shape}")
    count = len(losses)
    ok = np.ones(count, dtype=bool) if feasible is None else np.asarray(feasible, dtype=bool)
    indices = np.flatnonzero(ok)
    pool = losses[indices]
    shift = np.zeros(losses.shape[1]) if boost is None else np.asarray(boost, dtype=float)
    keep = np.zeros(count, dtype=bool)
    for position, index in enumerate(indices):
        # The row's own unboosted copy in the pool never dominates it: it is no better anywhere.
        target = pool[position] - shift
        no_worse = np.all(pool <= target, axis=1)
        better = np.any(pool < target, axis=1)
        dominated = bool(np.any(no_worse & better))
        duplicate = distinct and bool(np.any(np.all(pool[:position] == target, axis=1)))
        keep[index] = not (dominated or duplicate)
    return keep


def non_dominated(values: np.ndarray, maximize: Sequence[bool], *,
                  distinct: bool = True) -> np.ndarray:
    """Mask of the rows no other row dominates.

    A row dominates another when it is at least as good in every objective and strictly better
    in one. Of several identical rows only the first is kept (unless ``distinct`` is False), so
    a front has no duplicates.

    Args:
        values: ``n × m`` objective values.
        maximize: per column, whether larger is better.
        distinct: keep only the first of identical rows.

    Returns:
        Boolean mask of length ``n``.

    Example:
        >>> non_dominated(np.array([[0.9, 10], [0.8, 5], [0.7, 8]]), [True, False]).tolist()
        [True, True, False]
    """
    return pareto_mask(as_losses(values, maximize), distinct=distinct)


def hypervolume_2d(values: np.ndarray, maximize: Sequence[bool],
                   reference: Sequence[float]) -> float:
    """Area dominated by the points of a two-objective problem up to ``reference``.

    Points that do not dominate the reference point add nothing.

    Args:
        values: ``n × 2`` objective values.
        maximize: per column, whether larger is better.
        reference: the reference point, in the objectives' own units and directions.

    Returns:
        The dominated area (0 without a point that dominates ``reference``).
    """
    losses = as_losses(values, maximize)
    ref = as_losses(np.asarray([reference]), maximize)[0]
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


def log_size_hypervolume(accuracy: Sequence[float], params: Sequence[float],
                         budget_params: float, decades: float = 3.0) -> float:
    """Hypervolume of (accuracy, size) with size on a log scale and the reference at the budget.

    The area dominated by the points in the plane of accuracy (0 to 1) and ``log10(budget /
    params)`` (0 at the budget), divided by ``decades`` (1000× smaller than the budget fills
    the box). On a linear size axis with the baseline as reference, everything below the budget
    is nearly invisible (the best point at the budget holds ~90 % of the score); here every
    halving of the size counts the same.

    Example:
        >>> round(log_size_hypervolume([0.9], [10.0], 100.0, decades=1.0), 3)
        0.9
    """
    if not len(accuracy):
        return 0.0
    values = np.column_stack([np.asarray(accuracy, dtype=float),
                              np.log10(np.asarray(params, dtype=float) / budget_params)])
    values[:, 1] = np.maximum(values[:, 1], -decades)
    return hypervolume_2d(values, [True, False], [0.0, 0.0]) / decades
