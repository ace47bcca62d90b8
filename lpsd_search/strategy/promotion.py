"""Multi-fidelity: trials on (or near) the front get a longer fine-tune, and the front reports it.

Optuna cannot prune multi-objective studies, so the rule is ours: when the search has its trials,
every feasible trial that would be non-dominated if its validation accuracy were ``margin``
higher (its validation loss ``margin`` lower) is re-run from its plan with ``promote_steps``
fine-tune steps. The promoted measurements are stored in the study
(``report.record.set_promoted``), so a re-run or ``lpsd-search report`` sees them, and a trial
is never promoted twice.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import optuna

from lpsd_search.report.record import is_promoted, set_promoted
from lpsd_search.report.results import (
    front,
    front_numbers,
    study_budgets,
    study_objectives,
    trial_rows,
    write_results,
)
from lpsd_search.trial.export import prune_models

if TYPE_CHECKING:
    from lpsd_search.config import SearchConfig
    from lpsd_search.strategy.runner import TrialRunner

logger = logging.getLogger(__name__)


def candidates(study: optuna.Study, margin: float) -> list[int]:
    """Feasible trials that are non-dominated once given ``margin`` more quality, by number.

    Computed on the trials' short fine-tune, whether or not they were promoted already. The
    margin improves the objectives a longer fine-tune changes, each in its direction (validation
    accuracy ``+margin``, validation loss ``-margin``; see ``report.results.front``).
    """
    rows = front(trial_rows(study), study_budgets(study), study_objectives(study),
                 fidelity="short", margin=margin)
    # Promoted in trial order, as they finished.
    return sorted(row.trial for row in rows)


def promote(study: optuna.Study, runner: TrialRunner, config: SearchConfig,
            out_dir: Path) -> list[int]:
    """Re-run the candidates with the longer fine-tune; returns the trials promoted now."""
    done = []
    for number in candidates(study, config.promote_margin):
        if is_promoted(study, number):
            continue
        trial = study.trials[number]
        logger.info("promoting trial %d to %d fine-tune steps", number, config.promote_steps)
        try:
            outcome = runner.run(trial.params, trial.user_attrs, steps=config.promote_steps)
        except Exception as error:  # the short measurement stands; the search result is kept
            logger.warning("promotion of trial %d failed: %s", number, error)
            continue
        assert outcome.measured is not None
        set_promoted(study, number, outcome.measured)
        done.append(number)
        if config.save_models and outcome.model is not None:
            runner.save_model(number, outcome.model, outcome.attrs)
        write_results(study, out_dir)
    if config.save_models:
        prune_models(out_dir, front_numbers(study))
    logger.info("promoted %d trials; promoted now: %s", len(done),
                sorted(row.trial for row in trial_rows(study) if row.promoted is not None))
    return done
