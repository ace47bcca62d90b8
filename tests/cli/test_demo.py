"""The issue's acceptance runs: the demo's front, and a 0.2 budget that is never broken."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from lpsd_search.cli.main import main

pytestmark = pytest.mark.slow

DIGITS_CNN_PARAMS = 25_978
"""digits-cnn on 8x8 digits, by hand: convolutions 144 + 4,608 + 18,432, fc 2,570, BatchNorm
224."""


def _read(out: Path) -> tuple[dict[str, Any], list[dict[str, str]]]:
    document = json.loads((out / "pareto.json").read_text())
    with (out / "trials.csv").open(newline="") as handle:
        return document, list(csv.DictReader(handle))


def _check_front(document: dict[str, Any], rows: list[dict[str, str]]) -> None:
    """The front, checked from the files alone: the trials flagged pareto, each within the
    budget, with compression = baseline params / params, and none dominating another."""
    points, base = document["points"], document["baseline"]["params"]
    assert sorted(p["trial"] for p in points) == sorted(
        int(r["trial"]) for r in rows if r["pareto"] == "1")
    for point in points:
        assert point["params"] <= document["budget"]["limit"]
        assert point["compression"] == pytest.approx(base / point["params"])
        for other in points:
            dominates = (other["accuracy"] >= point["accuracy"]
                         and other["params"] <= point["params"]
                         and (other["accuracy"], other["params"])
                         != (point["accuracy"], point["params"]))
            assert not dominates, (other, point)


def test_demo_front_has_3x_within_one_point_and_10x_within_two(tmp_path):
    out = tmp_path / "demo"
    assert main(["-q", "demo", "--out", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    document, rows = _read(out)
    baseline = document["baseline"]
    assert baseline["params"] == DIGITS_CNN_PARAMS
    # The demo's budget is half the baseline's params: int(0.5 * 25,978) = 12,989.
    assert document["budget"]["limit"] == 12_989
    points = document["points"]
    assert len(points) >= 3
    _check_front(document, rows)
    good = [p for p in points
            if p["compression"] >= 3 and p["accuracy"] >= baseline["accuracy"] - 0.01]
    assert len(good) >= 1, points
    # Issue 17: a useful point far below the budget, at ≥ 10× within 2 points of the baseline.
    tenfold = [p for p in points
               if p["compression"] >= 10 and p["accuracy"] >= baseline["accuracy"] - 0.02]
    assert len(tenfold) >= 1, points


def test_budget_0_2_is_never_exceeded(tmp_path):
    out = tmp_path / "run"
    assert main(["-q", "search", "--budget", "0.2", "--trials", "16", "--finetune-steps", "40",
                 "--out", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    document, rows = _read(out)
    assert document["baseline"]["params"] == DIGITS_CNN_PARAMS
    # int(0.2 * 25,978) = 5,195.
    limit = document["budget"]["limit"]
    assert limit == 5195
    # Every trial, not only the front: 16 completed, each within the limit, and the warm
    # starts skipped below a rung where their heuristic collapsed, each with its reason.
    assert [int(r["trial"]) for r in rows] == list(range(len(rows)))
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    assert len(complete) == 16
    assert all(r["state"] == "PRUNED" and r["fail_reason"].startswith("skipped: ")
               for r in rows if r["state"] != "COMPLETE"), rows
    assert all(int(r["params"]) <= limit and r["feasible"] == "1" for r in complete), rows
    assert len(document["points"]) >= 1
    _check_front(document, rows)
