"""Results on disk (``pareto.json``, ``trials.csv``) and the terminal table, read from a study."""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from rich.console import Console
from rich.table import Table

from lpsd_search.pareto import non_dominated
from lpsd_search.plan import Plan

MEASURES = ("params", "bytes", "flops", "accuracy", "test_accuracy")


@dataclass(frozen=True)
class TrialRow:
    """One trial as the reports show it."""

    trial: int
    state: str
    measures: dict[str, float]
    plan: dict[str, Any]
    reason: str
    seconds: float

    def feasible(self, limit: int) -> bool:
        return self.state == "COMPLETE" and self.measures.get("params", limit + 1) <= limit


def trial_rows(study: optuna.Study) -> list[TrialRow]:
    """Every trial of ``study`` in number order."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        rows.append(TrialRow(
            trial=trial.number,
            state=trial.state.name,
            measures={k: attrs[k] for k in MEASURES if k in attrs},
            plan=attrs.get("plan", {}),
            reason=str(attrs.get("fail_reason", "")),
            seconds=float(attrs.get("seconds", 0.0)),
        ))
    return rows


def front(rows: Sequence[TrialRow], limit: int) -> list[TrialRow]:
    """Non-dominated feasible trials (max accuracy, min params), smallest model first."""
    feasible = [row for row in rows if row.feasible(limit)]
    if not feasible:
        return []
    values = np.array([[r.measures["accuracy"], r.measures["params"]] for r in feasible])
    mask = non_dominated(values, [True, False])
    points = [row for row, keep in zip(feasible, mask, strict=True) if keep]
    return sorted(points, key=lambda r: r.measures["params"])


def _atomic_write(path: Path, text: str) -> None:
    # Written next to the target and renamed, so a killed run never leaves a torn file.
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def pareto_document(study: optuna.Study) -> dict[str, Any]:
    """The ``pareto.json`` contract: baseline, budget and the non-dominated points."""
    baseline = study.user_attrs["baseline"]
    budget = study.user_attrs["budget"]
    points = []
    for row in front(trial_rows(study), int(budget["limit"])):
        point: dict[str, Any] = {"trial": row.trial}
        point.update({k: row.measures[k] for k in MEASURES})
        point["compression"] = baseline["params"] / row.measures["params"]
        point["plan"] = row.plan
        points.append(point)
    return {
        "study": study.study_name,
        "config": study.user_attrs.get("config", {}),
        "baseline": {k: baseline[k] for k in MEASURES},
        "budget": budget,
        "points": points,
    }


def write_results(study: optuna.Study, out_dir: Path) -> dict[str, Any]:
    """Write ``pareto.json`` and ``trials.csv`` into ``out_dir``; return the pareto document."""
    out_dir.mkdir(parents=True, exist_ok=True)
    document = pareto_document(study)
    _atomic_write(out_dir / "pareto.json", json.dumps(document, indent=2) + "\n")
    baseline_params = document["baseline"]["params"]
    limit = int(document["budget"]["limit"])
    front_trials = {p["trial"] for p in document["points"]}
    lines: list[list[Any]] = [["trial", "state", *MEASURES, "compression", "feasible",
                               "pareto", "seconds", "plan", "fail_reason"]]
    for row in trial_rows(study):
        params = row.measures.get("params")
        lines.append([
            row.trial, row.state, *(row.measures.get(k, "") for k in MEASURES),
            f"{baseline_params / params:.4f}" if params else "",
            int(row.feasible(limit)), int(row.trial in front_trials), f"{row.seconds:.3f}",
            Plan.from_dict(row.plan).summary() if row.plan else "", row.reason,
        ])
    temporary = out_dir / "trials.csv.tmp"
    with temporary.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(lines)
    os.replace(temporary, out_dir / "trials.csv")
    return document


def print_front(document: dict[str, Any], console: Console | None = None) -> None:
    """The Pareto front as a table on the terminal."""
    # Off a terminal rich would wrap at 80 columns and fold the plan column beyond reading.
    console = console or Console(width=None if sys.stdout.isatty() else 200)
    baseline = document["baseline"]
    table = Table(title=f"Pareto front ({len(document['points'])} points, budget "
                        f"{document['budget']['limit']} params)")
    for column in ("trial", "params", "compression", "val acc", "Δ val", "test acc", "MFLOPs",
                   "plan"):
        table.add_column(column, justify="left" if column == "plan" else "right")
    table.add_row("baseline", f"{baseline['params']:,}", "1.0×", f"{baseline['accuracy']:.2%}",
                  "", f"{baseline['test_accuracy']:.2%}", f"{baseline['flops'] / 1e6:.3f}",
                  "dense")
    for point in document["points"]:
        delta = 100 * (point["accuracy"] - baseline["accuracy"])
        table.add_row(
            str(point["trial"]), f"{point['params']:,}", f"{point['compression']:.1f}×",
            f"{point['accuracy']:.2%}", f"{delta:+.2f}", f"{point['test_accuracy']:.2%}",
            f"{point['flops'] / 1e6:.3f}", Plan.from_dict(point["plan"]).summary(),
        )
    console.print(table)
