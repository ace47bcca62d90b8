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
from typing import TYPE_CHECKING

import optuna

from lpsd_search.report.claims import (
    claim_study_name,
    claimant,
    is_released,
    set_claimant,
)
from lpsd_search.report.results import (
    front,
    study_budgets,
    study_objectives,
    trial_rows,
)
from lpsd_search.strategy.policies import RUNG

if TYPE_CHECKING:
    pass

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


def claim_promotion(study: optuna.Study, number: int, worker: str,
                    storage: optuna.storages.BaseStorage) -> optuna.Study | None:
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
        storage: the study's storage (the claims live beside it).
    """
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
