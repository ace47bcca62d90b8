"""Ray Tune's side of the search controller: a ``Searcher`` that asks it for jobs.

Each Tune trial is one job of ``strategy.ask_tell.SearchController`` (a new trial's short
fine-tune, or a promotion): ``suggest`` asks the controller and hands the job to Tune as the
trial's config; ``on_trial_complete`` tells the controller the worker's result on the driver,
which records it in the Optuna study and copies the job's saved weights from the trial's Tune
checkpoint to ``OUT/models``. Tune keeps what it is made for: scheduling on the cluster's
resources, retries of trials whose worker or node died (``FailureConfig``), the concurrency
limit. The study, not Tune's experiment state, is the record of the search: a driver restarted
with the same command starts a new Tune experiment and the controller goes on from the study.

This module imports Ray; only ``driver``'s functions import it, never ``import lpsd_search``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray.tune.search import Searcher

from lpsd_search.backends.ray.worker import (
    CONSTRAINTS_KEY,
    ERROR_KEY,
    FAIL_KEY,
    JOB_KEY,
    MODEL_FILE,
    NODE_ID_KEY,
    NODE_KEY,
    OUTCOME_KEY,
    VALUES_KEY,
    trial_folder,
)
from lpsd_search.errors import RunFault, UserInputError
from lpsd_search.report.record import RAY_NODE_ID, RAY_TRIAL_ID, placement_attrs
from lpsd_search.strategy.ask_tell import Job, SearchController
from lpsd_search.strategy.runner import TrialOutcome
from lpsd_search.trial.export import model_path
from lpsd_search.trial.train import TrainingDiverged

logger = logging.getLogger(__name__)

CHECKPOINT_DIR_KEY = "checkpoint_dir_name"
"""The result key under which Tune names the checkpoint a report persisted."""


class TrialFailed(RuntimeError):
    """A job that failed on its worker."""


def remote_error(kind: str, message: str) -> Exception:
    """The error a job raised on its worker, as the driver's controller should see it.

    Bad input and divergence keep their class (the search stops on the one and names the
    other's cause); any other error is a ``TrialFailed`` under the worker's class name, so
    its recorded reason reads as in-process (``TypeName: message``).
    """
    if kind == UserInputError.__name__:
        return UserInputError(message)
    if kind == TrainingDiverged.__name__:
        return TrainingDiverged(message)
    return type(kind, (TrialFailed,), {})(message)


class ControllerSearcher(Searcher):
    """Tune ``Searcher`` over a ``SearchController``.

    Args:
        controller: the search's controller (on the driver).
        experiment_dir: the Tune experiment's folder (trial checkpoints live under it).
    """

    def __init__(self, controller: SearchController, experiment_dir: Path) -> None:
        super().__init__()
        self.controller: SearchController | None = controller
        self.experiment_dir = experiment_dir
        self.jobs: dict[str, Job] = {}
        self.fault: BaseException | None = None
        """A ``RunFault`` or ``UserInputError`` that ended the search (raised after ``fit``)."""

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles the searcher into its experiment state; the controller (study, model,
        # data) stays on the driver: the study is the search's record, not this pickle.
        return {**self.__dict__, "controller": None, "jobs": {}}

    def set_search_properties(self, metric: str | None, mode: str | None,
                              config: dict[str, Any], **spec: Any) -> bool:
        return True  # the controller knows its objectives; Tune's metric is not used

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        controller = self.controller
        if controller is None or self.fault is not None:
            return Searcher.FINISHED
        try:
            job = controller.ask()
        except (RunFault, UserInputError) as error:
            self.fault = error
            return Searcher.FINISHED
        if job is None:
            return Searcher.FINISHED if controller.done else None
        self.jobs[trial_id] = job
        return {JOB_KEY: job.to_dict()}

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        job = self.jobs.pop(trial_id, None)
        if job is None or self.controller is None:
            return
        outcome: TrialOutcome | BaseException
        save = None
        if error or not result:
            outcome = TrialFailed("the trial's worker failed (Ray Tune gave up on it after "
                                  "its retries)")
        elif FAIL_KEY in result:
            outcome = remote_error(str(result.get(ERROR_KEY)), str(result[FAIL_KEY]))
        else:
            attrs = {**json.loads(result[OUTCOME_KEY]), **placement_attrs(result[NODE_KEY]),
                     RAY_TRIAL_ID: trial_id, RAY_NODE_ID: result.get(NODE_ID_KEY)}
            outcome = TrialOutcome([float(v) for v in result[VALUES_KEY]],
                                   [float(c) for c in result[CONSTRAINTS_KEY]], attrs)
            folder = result.get(CHECKPOINT_DIR_KEY)
            if job.save and folder:
                saved = self.experiment_dir / trial_folder(trial_id) / folder / MODEL_FILE
                save = _copier(saved, model_path(self.controller.out_dir, job.number))
        try:
            self.controller.tell(job, outcome, save)
        except (RunFault, UserInputError) as error:
            self.fault = error

    def interrupt(self) -> None:
        """Fail the jobs still running (the driver was interrupted), and a trial the controller
        asked but Tune never started (``SearchController.abandon``)."""
        if self.controller is None:
            return
        self.controller.abandon()
        self.jobs.clear()


def _copier(source: Path, target: Path) -> Callable[[], None]:
    def copy() -> None:
        # Whole or not at all, as the in-process engine writes it.
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.part")
        shutil.copyfile(source, partial)
        os.replace(partial, target)

    return copy
