"""One search strategy for every engine: a controller that hands out jobs and is told outcomes.

The strategy lives here, once: warm starts, the stage of each trial (``controller.choose_stage``),
the trial count shared by several workers, the promotions to a longer fine-tune (during a ladder
search, at the end of the others), the saved front models and the failure streak. An engine only
executes the jobs:

* in-process (``backends.optuna``): each worker process loops ``ask`` → ``TrialRunner.run`` →
  ``tell`` on the shared storage;
* Ray Tune (``backends.ray``): a Tune ``Searcher`` asks for one job per Tune trial, a remote
  worker runs it, and the searcher tells the outcome on the driver.

The Optuna study stays the one record of a search on both engines: a job's trial is asked from
the study (``RUNNING``, named after the process that asked), and told there.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from lpsd_search.errors import RunFault, UserInputError
from lpsd_search.report.claims import release_claim
from lpsd_search.report.record import (
    has_origin,
    is_promoted,
    rebuild_attrs,
    set_fail_reason,
    set_promoted,
    set_trial_origin,
    set_worker,
    trial_source,
    trial_worker,
    write_attrs,
)
from lpsd_search.report.results import write_results
from lpsd_search.strategy.controller import (
    choose_stage,
    claimed_count,
    completed_count,
    fail_dead_trials,
    is_surplus,
    joins_front,
)
from lpsd_search.strategy.faults import (
    FailureStreak,
    is_out_of_memory,
    release_memory,
    write_fault_message,
    writing,
)
from lpsd_search.strategy.promotion import (
    RUNG_MINIMUM_FACTOR,
    candidates,
    claim_promotion,
    rung_candidates,
    warm_starts_done,
)
from lpsd_search.strategy.results_folder import prune_front_models
from lpsd_search.strategy.skips import skip_reason
from lpsd_search.strategy.storage import fail_stale
from lpsd_search.strategy.warm_starts import enqueue_warm_starts
from lpsd_search.trial.evaluate import Measurement

if TYPE_CHECKING:
    from lpsd_search.config import SearchConfig
    from lpsd_search.strategy.runner import TrialOutcome, TrialRunner
    from lpsd_search.strategy.samplers import FixingSampler

logger = logging.getLogger(__name__)

MEASUREMENT_FIELDS = frozenset(field.name for field in dataclasses.fields(Measurement))


@dataclass(frozen=True)
class Job:
    """One unit of work: a new trial's short fine-tune, or a finished trial's promotion.

    Attributes:
        number: the Optuna trial number.
        params: its sampled parameters.
        attrs: its user attributes when asked (a warm start's exact plan travels here).
        steps: fine-tune steps; None: the search's short fine-tune.
        promotion: the longer fine-tune of a finished trial.
        test: measure the test accuracy with the job (else ``SearchController.wants_test``
            decides once the outcome is known).
        save: keep the fine-tuned weights for ``lpsd-search export`` (``models/trial-N.pt``).
    """

    number: int
    params: dict[str, Any]
    attrs: dict[str, Any]
    steps: int | None = None
    promotion: bool = False
    test: bool = False
    save: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain data (a Tune trial's config carries it to the worker)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        return cls(**data)


class SearchController:
    """The search strategy behind an ask/tell interface, on one study.

    Args:
        study: the search's study (its storage is shared by every worker).
        runner: builds plans and knows the space, budgets and objectives; engines run its
            ``run`` on the jobs.
        config: the strategy's settings.
        out_dir: the results folder (``pareto.json``, ``trials.csv``, ``models/``).
        sampler: the study's sampler, which ``choose_stage`` fixes parameters through.
        lazy_test: measure the test accuracy of a short trial only when it joins the front
            (``wants_test``, in-process); else every short trial of a strategy that reports
            short trials measures it with the job (a remote worker cannot ask the study).
        on_trial: called after every told trial (progress display).
    """

    def __init__(self, study: optuna.Study, runner: TrialRunner, config: SearchConfig,
                 out_dir: Path, sampler: FixingSampler, *, lazy_test: bool = True,
                 on_trial: Callable[[optuna.Study], None] | None = None) -> None:
        if runner.storage is None:
            raise ValueError("the study must be opened by runner.open_study")
        self.storage = runner.storage
        self.study = study
        self.runner = runner
        self.config = config
        self.out_dir = out_dir
        self.sampler = sampler
        self.lazy_test = lazy_test
        self.on_trial = on_trial
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.streak = FailureStreak(runner.options.finetune.lr,
                                    runner.options.finetune.batch_size)
        self.done = False
        """Whether no job is left for this controller (``ask`` returns None from then on)."""
        self._trials: dict[int, optuna.Trial] = {}
        self._claims: dict[int, optuna.Study] = {}
        self._tried: set[int] = set()
        # When each unnamed RUNNING trial was first seen (orphans of a killed driver).
        self._unnamed: dict[int, float] = {}

    @property
    def reports_promoted(self) -> bool:
        """A ladder search reports promoted trials only: their promotion measures the test
        accuracy and keeps the weights."""
        return self.config.strategy == "ladder" and bool(self.config.promote_steps)

    @property
    def in_flight(self) -> int:
        """Jobs handed out and not told yet."""
        return len(self._trials) + len(self._claims)

    def start(self) -> None:
        """Fail what dead workers left running; enqueue the warm starts of a new study."""
        fail_dead_trials(self.study, self._unnamed)
        fail_stale(self.storage, self.study)
        if self.config.warm_starts and self.runner.created_study and not self.study.trials:
            enqueue_warm_starts(self.study, self.runner, self.config.warm_starts,
                                self.config.trials)

    # -- ask --------------------------------------------------------------------------------

    def ask(self) -> Job | None:
        """The next job, or None when there is none now (``done`` tells whether for good).

        A ladder search's promotions come first, as soon as a rung's best are known, so the
        front grows while the search runs; then new trials until the study holds its count
        (completed plus running); then the final promotions, once this controller's trials are
        told.
        """
        if self.done:
            return None
        if self.reports_promoted and warm_starts_done(self.study):
            job = self._promotion(final=False)
            if job is not None:
                return job
        if claimed_count(self.study) < self.config.trials:
            return self._new_trial()
        if self._trials:  # the last trials run: promote once they are measured
            return None
        fail_dead_trials(self.study, self._unnamed)
        if self.config.promote_steps:
            job = self._promotion(final=True)
            if job is not None:
                return job
        if not self.in_flight:
            self.done = True
        return None

    def _new_trial(self) -> Job | None:
        rng = random.Random(self.config.seed * 100_003 + len(self.study.trials))
        stage, fixed, base = choose_stage(self.study, self.runner, self.config, rng)
        self.sampler.fixed = fixed
        try:
            trial = self.study.ask()
            set_worker(trial, self.worker)  # at once: is_surplus of other workers sees it
            params = self.runner.suggest(trial)
        finally:
            self.sampler.fixed = {}
        if is_surplus(self.study, trial.number, self.config.trials):
            # Another worker asked between our count and our ask: the study has its trials.
            set_fail_reason(trial, "surplus: the study already had its trials")
            self.study.tell(trial, state=TrialState.FAIL)
            return None
        reason = skip_reason(self.study, params, trial.user_attrs)
        if reason is not None:  # a heuristic that collapsed at a larger size: the next trial
            logger.info("trial %d (%s) %s", trial.number, trial_source(trial), reason)
            set_fail_reason(trial, reason)
            self.study.tell(trial, state=TrialState.PRUNED)
            return self._new_trial()
        if not has_origin(trial):  # a warm start's origin came with its enqueueing
            set_trial_origin(trial, stage=stage, base=base)
        self._trials[trial.number] = trial
        test = not self.reports_promoted and not self.lazy_test
        save = self.config.save_models and not self.reports_promoted
        return Job(trial.number, dict(params), dict(trial.user_attrs), test=test, save=save)

    def _promotion(self, final: bool) -> Job | None:
        config = self.config
        if config.strategy == "ladder":
            minimum = 1 if final else RUNG_MINIMUM_FACTOR * config.promote_top + 1
            chosen = rung_candidates(self.study, config.promote_top, minimum)
        elif final:
            chosen = candidates(self.study, config.promote_margin)
        else:
            return None
        for number in chosen:
            if number in self._tried or is_promoted(self.study, number):
                continue
            claim = claim_promotion(self.study, number, self.worker, self.storage)
            # Checked again once claimed: a void claim may be that of a worker that promoted
            # the trial and then ended.
            if claim is None or is_promoted(self.study, number):
                continue
            self._tried.add(number)
            self._claims[number] = claim
            trial = self.study.trials[number]
            logger.info("promoting trial %d to %d fine-tune steps", number,
                        config.promote_steps)
            return Job(number, dict(trial.params), rebuild_attrs(trial.user_attrs),
                       steps=config.promote_steps, promotion=True, test=True,
                       save=config.save_models)
        return None

    # -- tell -------------------------------------------------------------------------------

    def wants_test(self, job: Job, outcome: TrialOutcome) -> bool:
        """Whether a short trial measured without its test accuracy should measure it now:
        it joins the reported front (``controller.joins_front``)."""
        return (not job.test and not job.promotion and not self.reports_promoted
                and joins_front(self.study, job.number, outcome.attrs,
                                self.config.promote_margin))

    def tell(self, job: Job, result: TrialOutcome | BaseException,
             save: Callable[[], None] | None = None) -> None:
        """Record a job's outcome, or the error it ended with.

        Args:
            job: a job this controller handed out.
            result: the outcome, or the exception the job raised.
            save: writes the job's weights to ``models/trial-N.pt`` (jobs with ``save``);
                called before the study is told, so a complete trial has its weights.

        Raises:
            UserInputError: the job failed on bad input (every job would).
            RunFault: weights or results cannot be written, or jobs keep failing.
        """
        if job.promotion:
            self._tell_promotion(job, result, save)
        else:
            self._tell_trial(job, result, save)

    def abandon(self) -> None:
        """Record that this controller stops on Ctrl-C: every trial it asked and has not told
        fails as interrupted, its promotion claims are released, and the results are written.

        The signal can land anywhere in the loop, not only in a job: between asking a trial and
        handing it out, or while a finished one is told. So the trials to fail are those the
        study holds RUNNING under this process's name, not only the jobs handed out.
        """
        for claim in self._claims.values():
            release_claim(claim)
        self._claims.clear()
        self._trials.clear()
        study_id = self.storage.get_study_id_from_name(self.study.study_name)
        for frozen in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial_worker(frozen) == self.worker:
                trial_id = self.storage.get_trial_id_from_study_id_trial_number(study_id,
                                                                                 frozen.number)
                trial = optuna.Trial(self.study, trial_id)
                set_fail_reason(trial, "interrupted")
                self.study.tell(trial, state=TrialState.FAIL)
        write_results(self.study, self.out_dir)

    def _tell_trial(self, job: Job, result: TrialOutcome | BaseException,
                    save: Callable[[], None] | None) -> None:
        trial = self._trials.pop(job.number)
        if isinstance(result, UserInputError):  # every trial would fail alike: the run ends
            self.study.tell(trial, state=TrialState.FAIL)
            raise result
        if isinstance(result, BaseException):
            self._fail(trial, result)
        else:
            write_attrs(trial, result.attrs)
            if job.save and save is not None:
                try:
                    save()
                except OSError as error:
                    set_fail_reason(trial, f"its weights could not be saved: {error}"[:500])
                    self.study.tell(trial, state=TrialState.FAIL)
                    raise RunFault(write_fault_message(error, self.out_dir)) from error
            for budget, excess in zip(self.runner.budgets, result.constraints, strict=True):
                trial.set_constraint(budget.metric, excess)
            self.study.tell(trial, result.values)
        self._write()
        if self.on_trial is not None:
            self.on_trial(self.study)
        if isinstance(result, BaseException):
            self.streak.failed(result)
        else:
            self.streak.succeeded()

    def _fail(self, trial: optuna.Trial, error: BaseException) -> None:
        reason = f"{type(error).__name__}: {error}".splitlines()[0][:500]
        logger.warning("trial %d failed: %s", trial.number, reason)
        set_fail_reason(trial, reason)
        self.study.tell(trial, state=TrialState.FAIL)
        if is_out_of_memory(error):
            release_memory()

    def _tell_promotion(self, job: Job, result: TrialOutcome | BaseException,
                        save: Callable[[], None] | None) -> None:
        claim = self._claims.pop(job.number)
        if isinstance(result, BaseException):  # the short measurement stands
            logger.warning("promotion of trial %d failed: %s", job.number, result)
            release_claim(claim)
            return
        if job.save and save is not None:
            # Saved before the study records the promotion: a promoted trial has its weights.
            try:
                with writing(self.out_dir):
                    save()
            except BaseException:
                release_claim(claim)
                raise
        measured = (result.measured if result.measured is not None
                    else {k: v for k, v in result.attrs.items() if k in MEASUREMENT_FIELDS})
        set_promoted(self.study, job.number, measured, after=completed_count(self.study))
        self._write()
        logger.info("promoted trial %d", job.number)

    def _write(self) -> None:
        with writing(self.out_dir):
            write_results(self.study, self.out_dir)
            if self.config.save_models:
                prune_front_models(self.study, self.out_dir)
