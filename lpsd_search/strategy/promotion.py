"""Multi-fidelity: trials on (or near) the front get a longer fine-tune, and the front reports it.

Optuna cannot prune multi-objective studies, so the rule is ours: when the search has its trials,
every feasible trial that would be non-dominated if its validation accuracy were ``margin``
higher is re-run from its plan with ``promote_steps`` fine-tune steps. The promoted measurements
are stored in the study (user attribute ``promoted:<trial>``), so a re-run or ``lpsd-search
report`` sees them, and a trial is never promoted twice.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import optuna

from lpsd_search.report.pareto import non_dominated
from lpsd_search.report.results import (
    front_numbers,
    study_budgets,
    study_objectives,
    trial_rows,
    write_results,
)
from lpsd_search.trial.evaluate import measurement_attrs
from lpsd_search.trial.export import prune_models

if TYPE_CHECKING:
    from lpsd_search.config import SearchConfig
    from lpsd_search.strategy.runner import TrialRunner

logger = logging.getLogger(__name__)


def candidates(study: optuna.Study, margin: float) -> list[int]:
    """Feasible trials that are non-dominated once their accuracy gets ``margin`` more
    (on their short fine-tune, whether or not they were promoted already)."""
    objectives = study_objectives(study)
    keys = [o["key"] for o in objectives]
    maximize = [o["direction"] == "maximize" for o in objectives]
    budgets = study_budgets(study)
    rows = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        attrs = trial.user_attrs
        if all(k in attrs for k in keys) and all(
                attrs.get(b["metric"], float("inf")) <= b["limit"] for b in budgets):
            rows.append((trial.number, [float(attrs[k]) for k in keys]))
    chosen = []
    values = np.array([v for _, v in rows], dtype=float)
    for index, (number, own) in enumerate(rows):
        boosted = values.copy()
        boosted[index] = [v + margin if k == "accuracy" else v - margin if k == "loss" else v
                          for k, v in zip(keys, own, strict=True)]
        if non_dominated(boosted, maximize)[index]:
            chosen.append(number)
    return chosen


def promote(study: optuna.Study, runner: TrialRunner, config: SearchConfig,
            out_dir: Path) -> list[int]:
    """Re-run the candidates with the longer fine-tune; returns the trials promoted now."""
    done = []
    for number in candidates(study, config.promote_margin):
        key = f"promoted:{number}"
        if key in study.user_attrs:
            continue
        trial = study.trials[number]
        logger.info("promoting trial %d to %d fine-tune steps", number, config.promote_steps)
        try:
            outcome = runner.run(trial.params, trial.user_attrs, steps=config.promote_steps)
        except Exception as error:  # the short measurement stands; the search result is kept
            logger.warning("promotion of trial %d failed: %s", number, error)
            continue
        assert outcome.measured is not None
        study.set_user_attr(key, measurement_attrs(outcome.measured))
        done.append(number)
        if config.save_models and outcome.model is not None:
            runner.save_model(number, outcome.model, {**outcome.attrs, "promoted": True})
        write_results(study, out_dir)
    if config.save_models:
        prune_models(out_dir, front_numbers(study))
    logger.info("promoted %d trials; front now %s", len(done),
                sorted(row.trial for row in trial_rows(study) if row.short is not None))
    return done
