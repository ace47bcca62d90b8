"""The Optuna controller: an ask/tell loop over the trial runner, stored so that it can resume.

Global → local: the first ``global_share`` of the trials sample only the global knobs (every
layer follows the global family, rank and sparsity); the rest refine a base trial taken in turn
from the current feasible front, re-sampling the per-layer choices of a random subset of layers
while everything else keeps the base's values. Every trial is repaired to the budgets before it
runs, and results are rewritten after every trial, so a killed run loses nothing finished.
"""

from __future__ import annotations

import datetime
import logging
import math
import os
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from lpsd_search.errors import UserInputError
from lpsd_search.export import prune_models
from lpsd_search.report import write_results
from lpsd_search.samplers import FixingSampler
from lpsd_search.storage import fail_stale, heartbeat

if TYPE_CHECKING:
    from lpsd_search.runner import TrialOutcome, TrialRunner

logger = logging.getLogger(__name__)

MAX_CONSECUTIVE_FAILURES = 5
STRATEGIES = ("global-local", "flat")


@dataclass(frozen=True)
class SearchConfig:
    """How the controller runs.

    Attributes:
        trials: completed trials the study should hold at the end (a re-run tops it up); failed
            and interrupted trials are kept in the study but do not count.
        seed: sampler seed.
        storage: Optuna storage URL, or None for ``<out>/study.db``.
        study_name: name of the study inside the storage.
        warm_starts: heuristics enqueued as the first trials (``warm_starts.WARM_STARTS``).
        sampler: ``tpe``, ``nsga2`` or ``random``.
        strategy: ``global-local`` or ``flat`` (every parameter sampled in every trial).
        global_share: share of the trials in the global stage.
        local_share: share of the layers a local trial re-samples.
        promote_steps: fine-tune steps of the promoted (front) trials; 0 disables promotion.
        promote_margin: trials within this much validation accuracy of the front are promoted.
        save_models: keep the fine-tuned weights of front trials under ``OUT/models``.
        base_margin: local trials refine front trials within this much of the front's best
            first objective (validation accuracy).
    """

    trials: int = 20
    seed: int = 0
    storage: str | None = None
    study_name: str = "lpsd-search"
    warm_starts: tuple[str, ...] = ("uniform", "vbmf", "alds", "lpsd", "alpsd")
    sampler: str = "tpe"
    strategy: str = "global-local"
    global_share: float = 0.4
    local_share: float = 0.3
    promote_steps: int = 0
    promote_margin: float = 0.005
    save_models: bool = True
    base_margin: float = 0.02

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise UserInputError(f"unknown strategy {self.strategy!r}; valid: "
                                 f"{', '.join(STRATEGIES)}")
        if not 0.0 <= self.global_share <= 1.0 or not 0.0 < self.local_share <= 1.0:
            raise UserInputError("global share must be in [0, 1] and local share in (0, 1]")


ORPHAN_SECONDS = 60
"""A RUNNING trial with no worker attribute this old was asked by a process killed before it
could name itself (a live worker names its trial right after asking)."""


def fail_dead_trials(study: optuna.Study) -> None:
    """Mark RUNNING trials whose worker process on this host is gone as failed."""
    host = socket.gethostname()
    now = datetime.datetime.now()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = str(trial.user_attrs.get("worker", ""))
        name, _, pid = worker.rpartition(":")
        started = trial.datetime_start or now
        orphan = not worker and (now - started).total_seconds() > ORPHAN_SECONDS
        if orphan or (name == host and pid.isdigit() and not _alive(int(pid))):
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


def _claimed(study: optuna.Study) -> int:
    """Completed trials plus those other workers are running now (they will complete).

    A RUNNING trial without a worker attribute is left out: it is an orphan of a killed process
    (``fail_dead_trials`` fails it once it is old enough) or another worker's trial in the
    instant after its ask, which ``_surplus`` catches.
    """
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
    return sum(1 for t in trials if t.state == TrialState.COMPLETE or "worker" in t.user_attrs)


def _surplus(study: optuna.Study, number: int, trials: int) -> bool:
    """Whether completed or running trials numbered below ``number`` already make ``trials``."""
    earlier = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,
                                                                   TrialState.RUNNING))
               if t.number < number
               and (t.state == TrialState.COMPLETE or "worker" in t.user_attrs)]
    return len(earlier) >= trials


def _bases(study: optuna.Study, runner: TrialRunner,
           margin: float) -> list[optuna.trial.FrozenTrial]:
    """Front trials worth refining: within ``margin`` of the front's best first objective.

    The far end of an accuracy/size front holds models that lost most of their accuracy; a
    per-layer refinement around them rarely helps, while one around the accurate models finds
    smaller ones that keep their accuracy.
    """
    front = [t for t in study.best_trials if t.state == TrialState.COMPLETE]
    if not front:
        return []
    sign = 1.0 if runner.objectives.directions[0] == "maximize" else -1.0
    best = max(sign * t.values[0] for t in front)
    return [t for t in front if sign * t.values[0] >= best - margin]


def choose_stage(study: optuna.Study, runner: TrialRunner, config: SearchConfig,
                 rng: random.Random) -> tuple[str, dict[str, Any], int | None]:
    """The next trial's stage, the parameters it fixes, and its base trial (local stage)."""
    if config.strategy == "flat":
        return "flat", {}, None
    done = completed_count(study)
    if done < math.ceil(config.global_share * config.trials):
        return "global", runner.space.neutral_local(), None
    bases = _bases(study, runner, config.base_margin)
    if not bases:
        return "global", runner.space.neutral_local(), None
    local_done = sum(1 for t in study.get_trials(deepcopy=False)
                     if t.user_attrs.get("stage") == "local")
    base = sorted(bases, key=lambda t: t.number)[local_done % len(bases)]
    layers = list(runner.space.allowed)
    chosen = set(rng.sample(layers, max(1, round(config.local_share * len(layers)))))
    fixed = {key: value for key, value in base.params.items()
             if key in runner.distributions() and key.split(":")[0] not in chosen}
    return "local", fixed, base.number


def run_search(study: optuna.Study, runner: TrialRunner, config: SearchConfig,
               out_dir: Path, on_trial: Callable[[optuna.Study], None] | None = None) -> None:
    """Run trials until the study holds ``config.trials`` completed ones, then promote.

    Args:
        study: the opened study; its sampler must be a ``FixingSampler``.
        runner: builds, fine-tunes and measures trials.
        config: trial count, stages, warm starts, promotion.
        out_dir: where results are rewritten after every trial.
        on_trial: called after every finished trial (progress display).
    """
    from lpsd_search.warm_starts import enqueue_warm_starts

    sampler = study.sampler
    if not isinstance(sampler, FixingSampler):
        raise TypeError("run_search needs a study whose sampler is a FixingSampler")
    fail_dead_trials(study)
    fail_stale(study)
    if config.warm_starts and runner.created_study and not study.trials:
        enqueue_warm_starts(study, runner, config.warm_starts)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    failures = 0
    while _claimed(study) < config.trials:
        rng = random.Random(config.seed * 100_003 + len(study.trials))
        stage, fixed, base = choose_stage(study, runner, config, rng)
        sampler.fixed = fixed
        try:
            trial = study.ask()
            params = runner.suggest(trial)
        finally:
            sampler.fixed = {}
        trial.set_user_attr("worker", worker)
        if _surplus(study, trial.number, config.trials):
            # Another worker asked between our count and our ask: the study has its trials.
            trial.set_user_attr("fail_reason", "surplus: the study already had its trials")
            study.tell(trial, state=TrialState.FAIL)
            time.sleep(1.0)
            continue
        if "stage" not in trial.user_attrs:
            trial.set_user_attr("stage", stage)
            trial.set_user_attr("source", "sampled")
            if base is not None:
                trial.set_user_attr("base_trial", base)
        outcome = _attempt(study, trial, runner, params, out_dir)
        if outcome is None:
            failures += 1
            if failures >= MAX_CONSECUTIVE_FAILURES:
                write_results(study, out_dir)
                reason = study.trials[-1].user_attrs.get("fail_reason", "")
                raise RuntimeError(f"{failures} trials failed in a row; last reason: {reason}")
        else:
            failures = 0
        document = write_results(study, out_dir)
        if outcome is not None and config.save_models:
            _keep_front_models(runner, out_dir, trial.number, outcome,
                               {point["trial"] for point in document["points"]})
        if on_trial is not None:
            on_trial(study)
    fail_dead_trials(study)
    if config.promote_steps > 0:
        from lpsd_search.promotion import promote

        promote(study, runner, config, out_dir)
    write_results(study, out_dir)


def _attempt(study: optuna.Study, trial: optuna.Trial, runner: TrialRunner,
             params: dict[str, Any], out_dir: Path) -> TrialOutcome | None:
    """Run one trial and tell the study; a failure is recorded with its reason."""
    try:
        with heartbeat(study, trial):
            outcome = runner.run(params, trial.user_attrs)
    except KeyboardInterrupt:
        trial.set_user_attr("fail_reason", "interrupted")
        study.tell(trial, state=TrialState.FAIL)
        write_results(study, out_dir)
        raise
    except UserInputError:
        study.tell(trial, state=TrialState.FAIL)
        raise
    except Exception as error:  # a failed trial is recorded and the search goes on
        reason = f"{type(error).__name__}: {error}".splitlines()[0][:500]
        logger.warning("trial %d failed: %s", trial.number, reason)
        trial.set_user_attr("fail_reason", reason)
        study.tell(trial, state=TrialState.FAIL)
        return None
    for key, value in outcome.attrs.items():
        trial.set_user_attr(key, value)
    for budget, excess in zip(runner.budgets, outcome.constraints, strict=True):
        trial.set_constraint(budget.metric, excess)
    study.tell(trial, outcome.values)
    return outcome


def _keep_front_models(runner: TrialRunner, out_dir: Path, number: int,
                       outcome: TrialOutcome, numbers: set[int]) -> None:
    """Save the trial's weights when it is on the front; drop those that fell off it."""
    if number in numbers and outcome.model is not None:
        runner.save_model(number, outcome.model, outcome.attrs)
    prune_models(out_dir, numbers)
