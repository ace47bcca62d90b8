from __future__ import annotations

import numpy as np
import pytest

from lpsd_search.report.pareto import hypervolume_2d, non_dominated


def test_non_dominated_max_accuracy_min_params():
    values = np.array([[0.90, 100], [0.95, 200], [0.85, 150], [0.95, 300], [0.80, 50],
                       [0.90, 100]])
    assert non_dominated(values, [True, False]).tolist() == [
        True, True, False, False, True, False]


def test_non_dominated_empty_and_single():
    assert non_dominated(np.zeros((0, 2)), [True, False]).tolist() == []
    assert non_dominated(np.array([[0.5, 3.0]]), [True, False]).tolist() == [True]


def test_hypervolume_2d():
    values = np.array([[0.9, 100.0], [0.8, 50.0]])
    # Reference: accuracy 0, params 200 → rectangles 0.9·100 + 0.8·50 = 90 + 40.
    assert hypervolume_2d(values, [True, False], [0.0, 200.0]) == pytest.approx(130.0)
    assert hypervolume_2d(values, [True, False], [0.95, 200.0]) == 0.0
    dominated_added = np.vstack([values, [[0.7, 120.0]]])
    assert hypervolume_2d(dominated_added, [True, False], [0.0, 200.0]) == pytest.approx(130.0)
