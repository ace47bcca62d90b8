"""The issue's acceptance runs: the demo's front, and a 0.2 budget that is never broken."""

from __future__ import annotations

import json

import pytest

from lpsd_search.cli.main import main

pytestmark = pytest.mark.slow


def test_demo_front_has_a_3x_smaller_point_within_one_point(tmp_path):
    out = tmp_path / "demo"
    assert main(["-q", "demo", "--out", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    document = json.loads((out / "pareto.json").read_text())
    baseline = document["baseline"]
    points = document["points"]
    assert len(points) >= 3
    good = [p for p in points
            if p["compression"] >= 3 and p["accuracy"] >= baseline["accuracy"] - 0.01]
    assert good, points


def test_budget_0_2_is_never_exceeded(tmp_path):
    out = tmp_path / "run"
    assert main(["-q", "search", "--budget", "0.2", "--trials", "16", "--finetune-steps", "40",
                 "--out", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    document = json.loads((out / "pareto.json").read_text())
    limit = 0.2 * document["baseline"]["params"]
    assert document["points"]
    assert all(p["params"] <= limit for p in document["points"])
    rows = (out / "trials.csv").read_text().splitlines()[1:]
    assert len(rows) == 16
