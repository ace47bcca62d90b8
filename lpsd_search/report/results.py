"""Results on disk (``pareto.json``, ``trials.csv``) and the terminal table, read from a study.

Everything here is computed from the study alone (its user attributes hold the baseline,
budgets and objectives; each trial holds its plan and measurements), so ``lpsd-search report``
re-creates the same files from any storage. Promoted trials (longer fine-tune) are reported with
their promoted measurements; the front is computed over the objectives of the study, among the
trials that meet every budget on the built model.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from lpsd_search.plan.choices import Plan
from lpsd_search.report.pareto import non_dominated

MEASURES = ("params", "bytes", "flops", "accuracy", "test_accuracy")
EXTRA = ("loss", "latency_ms")
DEFAULT_OBJECTIVES = [{"name": "accuracy", "key": "accuracy", "direction": "maximize"},
                      {"name": "params", "key": "params", "direction": "minimize"}]


@dataclass(frozen=True)
class TrialRow:
    """One trial as the reports show it (promoted measurements where there are any)."""

    trial: int
    state: str
    measures: dict[str, float]
    plan: dict[str, Any]
    reason: str
    seconds: float
    source: str = "sampled"
    stage: str = ""
    node: str = ""
    short: dict[str, float] | None = None

    def feasible(self, budgets: int | Sequence[dict[str, Any]]) -> bool:
        """Completed and within every budget (an int is a parameter limit)."""
        if self.state != "COMPLETE":
            return False
        if isinstance(budgets, int):
            budgets = [{"metric": "params", "limit": budgets}]
        return all(self.measures.get(b["metric"], float("inf")) <= b["limit"] for b in budgets)


def study_budgets(study: optuna.Study) -> list[dict[str, Any]]:
    return list(study.user_attrs.get("budgets") or [study.user_attrs["budget"]])


def study_objectives(study: optuna.Study) -> list[dict[str, Any]]:
    objectives = study.user_attrs.get("objectives")
    return list(objectives["objectives"]) if objectives else DEFAULT_OBJECTIVES


def trial_rows(study: optuna.Study) -> list[TrialRow]:
    """Every trial of ``study`` in number order."""
    promoted = {k.partition(":")[2]: v for k, v in study.user_attrs.items()
                if k.startswith("promoted:")}
    rows = []
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        measures = {k: attrs[k] for k in (*MEASURES, *EXTRA) if k in attrs}
        short: dict[str, float] | None = None
        if str(trial.number) in promoted and trial.state.name == "COMPLETE":
            short = {k: float(measures[k]) for k in ("accuracy", "test_accuracy")
                     if k in measures}
            measures = {**measures, **{k: v for k, v in promoted[str(trial.number)].items()
                                       if k in (*MEASURES, *EXTRA)}}
        rows.append(TrialRow(
            trial=trial.number, state=trial.state.name, measures=measures,
            plan=attrs.get("plan", {}), reason=str(attrs.get("fail_reason", "")),
            seconds=float(attrs.get("seconds", 0.0)), source=str(attrs.get("source", "sampled")),
            stage=str(attrs.get("stage", "")), node=str(attrs.get("node", "")), short=short,
        ))
    return rows


def front(rows: Sequence[TrialRow], budgets: int | Sequence[dict[str, Any]],
          objectives: Sequence[dict[str, Any]] | None = None) -> list[TrialRow]:
    """Non-dominated feasible trials over ``objectives``, smallest model first."""
    objectives = objectives or DEFAULT_OBJECTIVES
    keys = [o["key"] for o in objectives]
    feasible = [row for row in rows
                if row.feasible(budgets) and all(k in row.measures for k in keys)]
    if not feasible:
        return []
    values = np.array([[r.measures[k] for k in keys] for r in feasible], dtype=float)
    mask = non_dominated(values, [o["direction"] == "maximize" for o in objectives])
    points = [row for row, keep in zip(feasible, mask, strict=True) if keep]
    return sorted(points, key=lambda r: r.measures["params"])


def front_numbers(study: optuna.Study) -> set[int]:
    """Trial numbers on the study's current reported front."""
    return {row.trial for row in front(trial_rows(study), study_budgets(study),
                                       study_objectives(study))}


def _atomic_write(path: Path, text: str) -> None:
    # Written next to the target and renamed, so a killed run never leaves a torn file.
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def pareto_document(study: optuna.Study) -> dict[str, Any]:
    """The ``pareto.json`` contract: baseline, budget(s), objectives and the front."""
    baseline = study.user_attrs["baseline"]
    budgets = study_budgets(study)
    objectives = study_objectives(study)
    points = []
    for row in front(trial_rows(study), budgets, objectives):
        point: dict[str, Any] = {"trial": row.trial}
        point.update({k: row.measures[k] for k in MEASURES})
        point.update({k: row.measures[k] for k in EXTRA if k in row.measures})
        point["compression"] = baseline["params"] / row.measures["params"]
        point["source"] = row.source
        if row.short is not None:
            point["promoted"] = True
            point["short_finetune"] = row.short
        point["plan"] = row.plan
        points.append(point)
    return {
        "study": study.study_name,
        "config": study.user_attrs.get("config", {}),
        "baseline": {k: baseline[k] for k in (*MEASURES, *EXTRA) if k in baseline},
        "budget": study.user_attrs["budget"],
        "budgets": budgets,
        "objectives": objectives,
        "layers": study.user_attrs.get("layers", {}),
        "points": points,
    }


def write_results(study: optuna.Study, out_dir: Path) -> dict[str, Any]:
    """Write ``pareto.json`` and ``trials.csv`` into ``out_dir``; return the pareto document."""
    out_dir.mkdir(parents=True, exist_ok=True)
    document = pareto_document(study)
    _atomic_write(out_dir / "pareto.json", json.dumps(document, indent=2) + "\n")
    baseline_params = document["baseline"]["params"]
    front_trials = {p["trial"] for p in document["points"]}
    lines: list[list[Any]] = [["trial", "state", *MEASURES, *EXTRA, "compression", "feasible",
                               "pareto", "promoted", "seconds", "source", "stage", "node",
                               "plan", "fail_reason"]]
    for row in trial_rows(study):
        params = row.measures.get("params")
        lines.append([
            row.trial, row.state, *(row.measures.get(k, "") for k in (*MEASURES, *EXTRA)),
            f"{baseline_params / params:.4f}" if params else "",
            int(row.feasible(document["budgets"])), int(row.trial in front_trials),
            int(row.short is not None), f"{row.seconds:.3f}", row.source, row.stage, row.node,
            Plan.from_dict(row.plan).summary() if row.plan else "", row.reason,
        ])
    temporary = out_dir / f"trials.csv.{os.getpid()}.tmp"
    with temporary.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(lines)
    os.replace(temporary, out_dir / "trials.csv")
    return document
