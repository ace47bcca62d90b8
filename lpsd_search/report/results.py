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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import optuna

from lpsd_search.plan.choices import Plan
from lpsd_search.report.pareto import as_losses, pareto_mask
from lpsd_search.report.record import (
    DEFAULT_OBJECTIVES,
    EXTRA,
    FINETUNED,
    MEASURES,
    PHASES,
    PROMOTED_AFTER,
    SAMPLED,
    fail_reason,
    promoted_measures,
    study_baseline,
    study_budget,
    study_budgets,
    study_config,
    study_layers,
    study_min_accuracy,
    study_objectives,
    trial_measures,
    trial_node,
    trial_phases,
    trial_plan,
    trial_runtime,
    trial_seconds,
    trial_source,
    trial_stage,
)
from lpsd_search.safe_json import json_safe

__all__ = [
    "DEFAULT_OBJECTIVES",
    "EXTRA",
    "MEASURES",
    "Fidelity",
    "TrialRow",
    "front",
    "front_numbers",
    "pareto_document",
    "study_budgets",
    "study_objectives",
    "trial_rows",
    "write_results",
]

Fidelity = Literal["short", "promoted"]
"""Which measurements a front is computed on: every trial's own (its short fine-tune), or the
promoted ones where a trial has them."""

SHORT_REPORTED = ("accuracy", "test_accuracy")
"""What ``pareto.json`` keeps of a promoted point's short fine-tune."""


@dataclass(frozen=True)
class TrialRow:
    """One trial as the reports show it.

    Attributes:
        trial: its number.
        state: its Optuna state's name.
        measured: its own measurements (the search's short fine-tune).
        plan: the plan it built.
        reason: why it failed (empty otherwise).
        seconds: its wall time.
        source: ``sampled`` or a warm start's label.
        stage: ``global``, ``local``, ``flat`` or ``warm``.
        node: the machine that ran it.
        promoted: the measurements of its longer fine-tune, when it was promoted.
        phases: where its seconds went (build, fine-tune, evaluation).
        runtime: how it ran (precision, memory format, compile, threads).
    """

    trial: int
    state: str
    measured: dict[str, float]
    plan: dict[str, Any]
    reason: str
    seconds: float
    source: str = SAMPLED
    stage: str = ""
    node: str = ""
    promoted: dict[str, float] | None = None
    phases: dict[str, float] = field(default_factory=dict)
    runtime: dict[str, Any] = field(default_factory=dict)

    @property
    def measures(self) -> dict[str, float]:
        """The reported measurements: promoted ones where there are any."""
        return self.at("promoted")

    @property
    def short(self) -> dict[str, float] | None:
        """The short fine-tune's accuracies of a promoted trial (None when not promoted)."""
        if self.promoted is None:
            return None
        return {k: float(self.measured[k]) for k in SHORT_REPORTED if k in self.measured}

    def at(self, fidelity: Fidelity) -> dict[str, float]:
        """The measurements at ``fidelity``."""
        if fidelity == "short" or self.promoted is None:
            return self.measured
        return {**self.measured, **self.promoted}

    def feasible(self, budgets: int | Sequence[dict[str, Any]],
                 fidelity: Fidelity = "promoted") -> bool:
        """Completed and within every budget (an int is a parameter limit)."""
        if self.state != "COMPLETE":
            return False
        if isinstance(budgets, int):
            budgets = [{"metric": "params", "limit": budgets}]
        measures = self.at(fidelity)
        return all(measures.get(b["metric"], float("inf")) <= b["limit"] for b in budgets)


def trial_rows(study: optuna.Study) -> list[TrialRow]:
    """Every trial of ``study`` in number order."""
    promoted = promoted_measures(study)
    rows = []
    for trial in study.get_trials(deepcopy=False):
        complete = trial.state.name == "COMPLETE"
        longer = promoted.get(trial.number) if complete else None
        rows.append(TrialRow(
            trial=trial.number, state=trial.state.name, measured=trial_measures(trial),
            plan=trial_plan(trial), reason=fail_reason(trial), seconds=trial_seconds(trial),
            source=trial_source(trial), stage=trial_stage(trial), node=trial_node(trial),
            promoted=None if longer is None else {k: v for k, v in longer.items()
                                                  if k in (*MEASURES, *EXTRA, PROMOTED_AFTER)},
            phases=trial_phases(trial), runtime=trial_runtime(trial),
        ))
    return rows


def _boost(objectives: Sequence[dict[str, Any]], margin: float) -> np.ndarray:
    """Per objective, how much a row's loss drops when it is given ``margin``.

    The margin is in the units of the measurements a longer fine-tune changes (validation
    accuracy, validation loss: ``record.FINETUNED``), and it improves each of them in its own
    direction: a maximised accuracy gets ``+margin``, a minimised loss ``-margin``, both a loss
    ``margin`` lower. Size, FLOPs and latency are fixed by the plan and get nothing.
    """
    return np.array([margin if o["key"] in FINETUNED else 0.0 for o in objectives])


def front(rows: Sequence[TrialRow], budgets: int | Sequence[dict[str, Any]],
          objectives: Sequence[dict[str, Any]] | None = None, *,
          fidelity: Fidelity = "promoted", margin: float = 0.0,
          distinct: bool = True) -> list[TrialRow]:
    """Non-dominated feasible trials over ``objectives``, smallest model first.

    The one Pareto front of the package: reports use it on promoted measurements, the controller
    (which base trials to refine) and the promotion (which trials to fine-tune longer) on the
    trials' own short fine-tune.

    Args:
        rows: the study's trials (``trial_rows``).
        budgets: the study's budgets; a trial is feasible when it completed within all of them.
        objectives: the study's objectives (default: accuracy and parameters).
        fidelity: ``promoted`` or ``short`` measurements (see ``Fidelity``).
        margin: a trial is kept when it would be non-dominated with this much more
            fine-tune-dependent quality (see ``_boost``); 0 is the plain front.
        distinct: keep only the first of trials with identical objective values (False: all,
            as Optuna's ``best_trials``).

    Returns:
        The front's rows, by parameters (ties in trial order).
    """
    objectives = objectives or DEFAULT_OBJECTIVES
    keys = [o["key"] for o in objectives]
    if fidelity == "promoted" and any(row.promoted is not None for row in rows):
        # One fidelity per front: once trials are promoted, the front holds only those (a
        # short fine-tune next to a long one would compare unlike measurements).
        rows = [row for row in rows if row.promoted is not None]
    values = np.full((len(rows), len(keys)), np.nan)
    feasible = np.zeros(len(rows), dtype=bool)
    for index, row in enumerate(rows):
        measures = row.at(fidelity)
        if row.feasible(budgets, fidelity) and all(k in measures for k in keys):
            values[index] = [measures[k] for k in keys]
            feasible[index] = not np.isnan(values[index]).any()
    losses = as_losses(values, [o["direction"] == "maximize" for o in objectives])
    mask = pareto_mask(losses, feasible, boost=_boost(objectives, margin), distinct=distinct)
    points = [row for row, keep in zip(rows, mask, strict=True) if keep]
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
    baseline = study_baseline(study)
    budgets = study_budgets(study)
    objectives = study_objectives(study)
    points = []
    for row in front(trial_rows(study), budgets, objectives):
        point: dict[str, Any] = {"trial": row.trial}
        point.update({k: row.measures[k] for k in MEASURES if k in row.measures})
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
        "config": study_config(study) or {},
        "baseline": {k: baseline[k] for k in (*MEASURES, *EXTRA) if k in baseline},
        "budget": study_budget(study),
        "budgets": budgets,
        "objectives": objectives,
        "layers": study_layers(study),
        "min_accuracy": study_min_accuracy(study),
        "points": points,
    }


def write_results(study: optuna.Study, out_dir: Path) -> dict[str, Any]:
    """Write ``pareto.json`` and ``trials.csv`` into ``out_dir``; return the pareto document."""
    out_dir.mkdir(parents=True, exist_ok=True)
    document = json_safe(pareto_document(study))
    _atomic_write(out_dir / "pareto.json",
                  json.dumps(document, indent=2, allow_nan=False) + "\n")
    baseline_params = document["baseline"]["params"]
    front_trials = {p["trial"] for p in document["points"]}
    lines: list[list[Any]] = [["trial", "state", *MEASURES, *EXTRA, "compression", "feasible",
                               "pareto", "promoted", "seconds", *PHASES, "source", "stage",
                               "node", "precision", "threads", "plan", "fail_reason"]]
    for row in trial_rows(study):
        params = row.measures.get("params")
        lines.append([
            row.trial, row.state, *(row.measures.get(k, "") for k in (*MEASURES, *EXTRA)),
            f"{baseline_params / params:.4f}" if params else "",
            int(row.feasible(document["budgets"])), int(row.trial in front_trials),
            int(row.short is not None), f"{row.seconds:.3f}",
            *(f"{row.phases[k]:.3f}" if k in row.phases else "" for k in PHASES),
            row.source, row.stage, row.node, row.runtime.get("precision", ""),
            row.runtime.get("threads", ""),
            Plan.from_dict(row.plan).summary() if row.plan else "", row.reason,
        ])
    temporary = out_dir / f"trials.csv.{os.getpid()}.tmp"
    with temporary.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(lines)
    os.replace(temporary, out_dir / "trials.csv")
    return document
