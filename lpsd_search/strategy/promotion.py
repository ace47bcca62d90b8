"""Multi-fidelity: trials on (or near) the front get a longer fine-tune, and the front reports it.

Optuna cannot prune multi-objective studies, so the rule is ours. A ladder search halves within
size buckets during the run: once its warm starts are measured, the best ``promote_top`` trials
of each size rung (by the first objective after the short fine-tune; every trial of a rung has
about the rung's size) are re-run with ``promote_steps`` fine-tune steps, and again whenever a
new trial enters a rung's best. The other strategies promote when the search has its trials:
every feasible trial that would be non-dominated if its validation accuracy were ``margin``
higher (its validation loss ``margin`` lower) is re-run from its plan with ``promote_steps``
fine-tune steps. The promoted measurements are stored in the study
(``report.record.set_promoted``), so a re-run or ``lpsd-search report`` sees them, and a trial
is never promoted twice, even by workers promoting at the same time (``claim_promotion``).
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import optuna

from lpsd_search.report.record import (
    claim_study_name,
    claimant,
    is_promoted,
    is_released,
    release_claim,
    set_claimant,
    set_promoted,
)
from lpsd_search.report.results import (
    front,
    study_budgets,
    study_objectives,
    trial_rows,
    write_results,
)
from lpsd_search.strategy.faults import writing
from lpsd_search.strategy.policies import RUNG
from lpsd_search.strategy.results_folder import prune_front_models

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


def rung_candidates(study: optuna.Study, top: int, minimum: int = 1) -> list[int]:
    """The best ``top`` feasible completed trials of each size rung holding at least
    ``minimum`` of them, by number.

    Ranked by the first objective on the trials' short fine-tune (ties: the earlier trial).
    A rung with fewer trials has no ranking worth a long fine-tune yet (every trial would be
    among its best); the end of the search promotes every rung's best (``minimum`` 1).
    """
    objectives = study_objectives(study)
    first = objectives[0]
    sign = 1.0 if first["direction"] == "maximize" else -1.0
    budgets = study_budgets(study)
    params = {t.number: t.params for t in study.get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))}
    by_rung: dict[float, list[tuple[float, int]]] = {}
    for row in trial_rows(study):
        rung = params.get(row.trial, {}).get(RUNG)
        value = row.measured.get(first["key"])
        if rung is None or value is None or not row.feasible(budgets, "short"):
            continue
        by_rung.setdefault(float(rung), []).append((-sign * float(value), row.trial))
    chosen = [number for ranked in by_rung.values() if len(ranked) >= minimum
              for _, number in sorted(ranked)[:top]]
    return sorted(chosen)


def warm_starts_done(study: optuna.Study) -> bool:
    """Whether no enqueued trial (warm start) waits to be run."""
    return not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))


def claim_promotion(study: optuna.Study, number: int, worker: str) -> optuna.Study | None:
    """Claim the promotion of trial ``number`` for ``worker``; the claim, or None if taken.

    Optuna's storages offer no compare-and-set on attributes (two workers that read "not
    promoted" and then write would both promote), but every one of them creates studies
    atomically under a unique name: an RDB storage (SQLite, PostgreSQL, MySQL) inserts the row
    under the unique constraint on ``study_name``, the journal appends the creation to one
    ordered log under its file lock and only the first creation of a name counts, the in-memory
    storage holds a lock. So the claim is the creation of a marker study named after the trial
    (``report.record.claim_study_name``): exactly one worker's creation succeeds, the others get
    ``DuplicatedStudyError``. A claim is never deleted, since a deletion raced by a re-creation
    could remove a live claim: a claim given up (``release_claim``) or left by a process that
    died on this host is void, and the next worker claims the next generation of the name, whose
    creation is again atomic.

    Args:
        study: the search's study (its storage holds the claims).
        number: the trial to promote.
        worker: ``host:pid`` of the claiming process.
    """
    storage = study._storage
    for generation in itertools.count():
        name = claim_study_name(study.study_name, number, generation)
        try:
            claim = optuna.create_study(storage=storage, study_name=name)
        except optuna.exceptions.DuplicatedStudyError:
            held = optuna.load_study(study_name=name, storage=storage)
            if is_released(held) or _gone(claimant(held)):
                continue
            return None
        set_claimant(claim, worker)
        return claim
    raise AssertionError("unreachable")


def _gone(worker: str | None) -> bool:
    """Whether the claimant was a process of this host that no longer runs (a claim not yet
    named, another host's, or this process's own counts as held)."""
    if not worker:
        return False
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


RUNG_MINIMUM_FACTOR = 2
"""During a ladder search a rung's best are promoted once it holds more than this many times
``promote_top`` trials (its heuristics, or random trials of a search without warm starts)."""


def promote(study: optuna.Study, runner: TrialRunner, config: SearchConfig,
            out_dir: Path, *, final: bool = True) -> list[int]:
    """Re-run the candidates with the longer fine-tune; returns the trials promoted now.

    ``final`` False (a ladder search's promotions during the run) promotes only in rungs that
    already hold enough trials to rank.

    Raises:
        RunFault: a promoted model or the results could not be written.
    """
    done = []
    worker = f"{socket.gethostname()}:{os.getpid()}"
    minimum = 1 if final else RUNG_MINIMUM_FACTOR * config.promote_top + 1
    chosen = (rung_candidates(study, config.promote_top, minimum)
              if config.strategy == "ladder" else candidates(study, config.promote_margin))
    for number in chosen:
        if is_promoted(study, number):
            continue
        claim = claim_promotion(study, number, worker)
        # Checked again once claimed: a void claim may be that of a worker that promoted the
        # trial and then ended.
        if claim is None or is_promoted(study, number):
            continue
        trial = study.trials[number]
        logger.info("promoting trial %d to %d fine-tune steps", number, config.promote_steps)
        try:
            outcome = runner.run(trial.params, trial.user_attrs, steps=config.promote_steps)
        except Exception as error:  # the short measurement stands; the search result is kept
            logger.warning("promotion of trial %d failed: %s", number, error)
            release_claim(claim)
            continue
        assert outcome.measured is not None
        if config.save_models and outcome.model is not None:
            # Saved before the study records the promotion: a promoted trial has its weights.
            try:
                with writing(out_dir):
                    runner.save_model(number, outcome.model, outcome.attrs)
            except BaseException:
                release_claim(claim)
                raise
        completed = len(study.get_trials(deepcopy=False,
                                         states=(optuna.trial.TrialState.COMPLETE,)))
        set_promoted(study, number, outcome.measured, after=completed)
        done.append(number)
        with writing(out_dir):
            write_results(study, out_dir)
    if not done:  # called after every trial of a ladder search: nothing changed, nothing to do
        return done
    if config.save_models:
        with writing(out_dir):
            prune_front_models(study, out_dir)
    logger.info("promoted %d trials; promoted now: %s", len(done),
                sorted(row.trial for row in trial_rows(study) if row.promoted is not None))
    return done
