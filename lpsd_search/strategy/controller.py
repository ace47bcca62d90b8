"""The search strategy: which stage the next trial is in, and what it keeps fixed.

Global → local: the first ``global_share`` of the trials sample only the global knobs (every
layer follows the global family, rank and sparsity); the rest refine a base trial taken in turn
from the current feasible front, re-sampling the per-layer choices of a random subset of layers
while everything else keeps the base's values. The trial count, orphan handling and the stage
choice live here; the engines (``backends``) only execute the trials.
"""

from __future__ import annotations

import datetime
import logging
import math
import os
import random
import socket
import time
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from lpsd_search.config import SearchConfig
from lpsd_search.report.record import (
    FLAT,
    GLOBAL,
    LADDER,
    LOCAL,
    has_worker,
    trial_stage,
    trial_worker,
)
from lpsd_search.report.results import (
    TrialRow,
    front,
    study_budgets,
    study_objectives,
    trial_rows,
)

if TYPE_CHECKING:
    from lpsd_search.strategy.runner import TrialRunner

logger = logging.getLogger(__name__)

ORPHAN_SECONDS = 60
"""A RUNNING trial with no worker attribute this old was asked by a process killed before it
could name itself (a live worker names its trial right after asking)."""


ORPHAN_OBSERVED_SECONDS = 10.0
"""An unnamed RUNNING trial that one process saw this long ago and sees still unnamed is an
orphan too, however recent its start time: the process that asked it would have named it at
once, and the interval is measured on this process's own clock (a start time is the asking
host's, hence ``ORPHAN_SECONDS``' margin for clock skew)."""


def fail_dead_trials(study: optuna.Study, unnamed: dict[int, float] | None = None) -> None:
    """Mark RUNNING trials whose worker process on this host is gone as failed.

    Args:
        study: the search's study.
        unnamed: kept by the caller between calls: when each unnamed RUNNING trial was first
            seen (``time.monotonic()``), so that a driver killed between asking a trial and
            naming it leaves no trial running once the next run has watched it for
            ``ORPHAN_OBSERVED_SECONDS``.
    """
    host = socket.gethostname()
    now, clock = datetime.datetime.now(), time.monotonic()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial_worker(trial)
        name, _, pid = worker.rpartition(":")
        watched = False
        if unnamed is not None and not has_worker(trial):
            watched = clock - unnamed.setdefault(trial.number, clock) >= ORPHAN_OBSERVED_SECONDS
        if (watched or _is_orphan(trial, now)
                or (name == host and pid.isdigit() and not _alive(int(pid)))):
            logger.warning("trial %d was left running by a dead process; marking it failed",
                           trial.number)
            study.tell(trial.number, state=TrialState.FAIL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid != os.getpid()


def completed_count(study: optuna.Study) -> int:
    """Trials that finished with measurements (failed or interrupted ones do not count)."""
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def claimed_count(study: optuna.Study) -> int:
    """Completed trials plus those other workers are running now (they will complete).

    A RUNNING trial without a worker attribute is left out: it is an orphan of a killed process
    (``fail_dead_trials`` fails it once it is old enough) or another worker's trial in the
    instant after its ask, which ``is_surplus`` catches.
    """
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
    return sum(1 for t in trials if t.state == TrialState.COMPLETE or has_worker(t))


def is_surplus(study: optuna.Study, number: int, trials: int) -> bool:
    """Whether completed or running trials numbered below ``number`` already make ``trials``.

    A running trial not yet named by its worker counts unless it is old enough to be an orphan:
    two workers asking for the last slot at once both see each other's trial, and only the one
    with the lower number may run it (the storage numbers trials atomically), whichever of them
    names its trial first.
    """
    now = datetime.datetime.now()
    earlier = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,
                                                                   TrialState.RUNNING))
               if t.number < number and (t.state == TrialState.COMPLETE or has_worker(t)
                                         or not _is_orphan(t, now))]
    return len(earlier) >= trials


def _is_orphan(trial: optuna.trial.FrozenTrial, now: datetime.datetime) -> bool:
    """A RUNNING trial nobody named within ``ORPHAN_SECONDS`` of its start."""
    started = trial.datetime_start or now
    return not has_worker(trial) and (now - started).total_seconds() > ORPHAN_SECONDS


def _bases(study: optuna.Study, margin: float) -> list[optuna.trial.FrozenTrial]:
    """Front trials worth refining: within ``margin`` of the front's best first objective.

    The front is the one of ``report.results.front`` on the trials' own (short fine-tune)
    values, with every trial of identical values kept, as Optuna's ``best_trials`` does. The far
    end of an accuracy/size front holds models that lost most of their accuracy; a per-layer
    refinement around them rarely helps, while one around the accurate models finds smaller ones
    that keep their accuracy.
    """
    objectives = study_objectives(study)
    rows = front(trial_rows(study), study_budgets(study), objectives, fidelity="short",
                 distinct=False)
    if not rows:
        return []
    first = objectives[0]
    sign = 1.0 if first["direction"] == "maximize" else -1.0
    scores = {row.trial: sign * float(row.measured[first["key"]]) for row in rows}
    best = max(scores.values())
    complete = {t.number: t for t in study.get_trials(deepcopy=False,
                                                      states=(TrialState.COMPLETE,))}
    return [complete[number] for number in sorted(scores) if scores[number] >= best - margin]


def joins_front(study: optuna.Study, number: int, measures: dict[str, Any],
                margin: float) -> bool:
    """Whether trial ``number``, measured ``measures``, would be on the study's feasible front
    (given ``margin`` more quality: the trials promotion would re-run) once complete.

    A search measures test accuracy only for these trials: it never chooses anything, and
    measuring it for every trial was most of a trial's evaluation.
    """
    rows = [row for row in trial_rows(study) if row.trial != number]
    rows.append(TrialRow(trial=number, state="COMPLETE", measured=measures, plan={},
                         reason="", seconds=0.0))
    found = front(rows, study_budgets(study), study_objectives(study), fidelity="short",
                  margin=margin, distinct=False)
    return any(row.trial == number for row in found)


def choose_stage(study: optuna.Study, runner: TrialRunner, config: SearchConfig,
                 rng: random.Random) -> tuple[str, dict[str, Any], int | None]:
    """The next trial's stage, the parameters it fixes, and its base trial (local stage)."""
    if config.strategy == "flat":
        return FLAT, {}, None
    if config.strategy == "ladder":
        return LADDER, {}, None
    done = completed_count(study)
    if done < math.ceil(config.global_share * config.trials):
        return GLOBAL, runner.space.neutral_local(), None
    bases = _bases(study, config.base_margin)
    if not bases:
        return GLOBAL, runner.space.neutral_local(), None
    local_done = sum(1 for t in study.get_trials(deepcopy=False) if trial_stage(t) == LOCAL)
    base = bases[local_done % len(bases)]
    layers = list(runner.space.allowed)
    chosen = set(rng.sample(layers, max(1, round(config.local_share * len(layers)))))
    fixed = {key: value for key, value in base.params.items()
             if key in runner.distributions() and key.split(":")[0] not in chosen}
    return LOCAL, fixed, base.number


