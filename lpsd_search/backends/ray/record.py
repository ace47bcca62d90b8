"""Driver-side glue between Ray Tune and the Optuna results study.

* ``make_searcher``: Tune's ``OptunaSearch`` over the runner's define-by-run space, seeded with
  the results study's finished trials (so a top-up or a switch of backend keeps the history) and
  with the warm starts enqueued in a fresh search;
* ``StudyRecorder``: copies each finished Tune trial into the results study exactly once;
* ``Record``: the Tune callback that calls it as trials finish.

Tune pickles its searcher and callbacks into the experiment state so that ``Tuner.restore`` can
rebuild them. The define-by-run space and the callback therefore hold only the search's key and
look the driver's runner and study up in ``_DRIVERS`` when called: the experiment state stays
small, and a restored experiment writes to the study of the driver that restored it.

This module imports Ray; only ``driver``'s functions import it, never ``import lpsd_search``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import optuna
from optuna.trial import TrialState
from ray.tune import Callback
from ray.tune.search.optuna import OptunaSearch

from lpsd_search.backends.ray.worker import (
    ATTRS_KEY,
    CONSTRAINTS_KEY,
    FAIL_KEY,
    NODE_KEY,
    OUTCOME_KEY,
    metric_name,
)
from lpsd_search.report.record import (
    FLAT,
    RAY_TRIAL_ID,
    failure_attrs,
    origin_attrs,
    placement_attrs,
    ray_trial_id,
)

if TYPE_CHECKING:
    from ray.tune import ResultGrid

    from lpsd_search.strategy.runner import TrialRunner

logger = logging.getLogger(__name__)


class StudyRecorder:
    """Copies finished Tune trials into the results study, once each (keyed on the trial id)."""

    _DRIVERS: ClassVar[dict[str, StudyRecorder]] = {}

    def __init__(self, study: optuna.Study, runner: TrialRunner) -> None:
        self.study = study
        self.runner = runner
        self.recorded: dict[TrialState, set[str]] = {TrialState.COMPLETE: set(),
                                                     TrialState.FAIL: set()}
        for trial in study.get_trials(deepcopy=False, states=tuple(self.recorded)):
            trial_id = ray_trial_id(trial)
            if trial_id is not None:
                self.recorded[trial.state].add(trial_id)

    @classmethod
    def register(cls, key: str, study: optuna.Study, runner: TrialRunner) -> StudyRecorder:
        cls._DRIVERS[key] = recorder = cls(study, runner)
        return recorder

    @classmethod
    def unregister(cls, key: str) -> None:
        cls._DRIVERS.pop(key, None)

    @classmethod
    def lookup(cls, key: str) -> StudyRecorder:
        try:
            return cls._DRIVERS[key]
        except KeyError:
            raise RuntimeError(f"no search {key!r} is running in this driver") from None

    def completed(self) -> int:
        return len(self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))

    def record(self, trial_id: str, config: Mapping[str, Any], result: Mapping[str, Any] | None,
               error: str | None = None) -> bool:
        """Add one finished Tune trial to the study; False when there is nothing to add.

        A trial stopped before it reported (an interrupted run) is not recorded: the restored
        experiment runs it again. A failed trial that later completes (``resume_errored``) is
        added again as COMPLETE; the failure stays in the study as history.
        """
        result = result or {}
        reason = error or result.get(FAIL_KEY)
        state = TrialState.FAIL if reason is not None else TrialState.COMPLETE
        if state == TrialState.COMPLETE and OUTCOME_KEY not in result:
            return False
        if trial_id in self.recorded[TrialState.COMPLETE] or trial_id in self.recorded[state]:
            return False
        distributions = self.runner.distributions()
        params = {k: v for k, v in config.items() if k in distributions}
        attrs: dict[str, Any] = {**origin_attrs(FLAT), **dict(config.get(ATTRS_KEY) or {}),
                                 RAY_TRIAL_ID: trial_id}
        if NODE_KEY in result:
            attrs.update(placement_attrs(result[NODE_KEY]))
        if reason is not None:
            attrs.update(failure_attrs(str(reason)))
            frozen = optuna.trial.create_trial(
                state=TrialState.FAIL, params=params, user_attrs=attrs,
                distributions={k: distributions[k] for k in params})
        else:
            attrs.update(json.loads(result[OUTCOME_KEY]))
            values = [float(result[metric_name(n)]) for n in self.runner.objective_names]
            constraints = {budget.metric: float(c) for budget, c in
                           zip(self.runner.budgets, result[CONSTRAINTS_KEY], strict=True)}
            frozen = optuna.trial.create_trial(
                values=values, params=params, user_attrs=attrs, constraints=constraints,
                distributions={k: distributions[k] for k in params})
        self.study.add_trial(frozen)
        self.recorded[state].add(trial_id)
        from lpsd_search.report.results import write_results

        write_results(self.study, self.runner.options.out)
        return True

    def sweep(self, grid: ResultGrid) -> None:
        """Record every trial of a finished ``Tuner.fit`` the callback did not see."""
        for index in range(len(grid)):
            result = grid[index]
            metrics = result.metrics or {}
            trial_id = metrics.get("trial_id")
            if trial_id is None:
                continue
            error = error_reason(result.error) if result.error is not None else None
            self.record(str(trial_id), result.config or {}, metrics, error)


def error_reason(error: BaseException | None) -> str:
    """One line naming a Tune trial's error."""
    if error is None:
        return "the trial's worker failed"
    return f"{type(error).__name__}: {error}".strip().splitlines()[0][:500]


class Record(Callback):
    """Tune callback: copy each trial into the results study as it finishes."""

    def __init__(self, key: str) -> None:
        self.key = key

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any,
                          **info: Any) -> None:
        StudyRecorder.lookup(self.key).record(trial.trial_id, trial.config, trial.last_result)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        # Called once the retries (FailureConfig) are spent.
        try:
            error = trial.get_pickled_error()
        except Exception:  # the error file may be unreadable; the reason is only for people
            error = None
        StudyRecorder.lookup(self.key).record(trial.trial_id, trial.config, trial.last_result,
                                              error_reason(error))


class ConstrainedOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that tells failed trials as FAIL and passes the budgets' constraints.

    Args:
        key: the search's key (its runner knows the budgets).
        **kwargs: ``OptunaSearch``'s arguments.
    """

    def __init__(self, key: str, **kwargs: Any) -> None:
        self.key = key
        super().__init__(**kwargs)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        if result and FAIL_KEY in result:
            result, error = None, True
        elif result and CONSTRAINTS_KEY in result and trial_id in self._ot_trials:
            trial = self._ot_trials[trial_id]
            budgets = StudyRecorder.lookup(self.key).runner.budgets
            for budget, excess in zip(budgets, result[CONSTRAINTS_KEY], strict=True):
                if not math.isnan(excess):
                    trial.set_constraint(budget.metric, excess)
        super().on_trial_complete(trial_id, result, error)


class Suggest:
    """Define-by-run space for ``OptunaSearch``: the driver's runner samples every parameter."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __call__(self, trial: optuna.Trial) -> dict[str, Any] | None:
        StudyRecorder.lookup(self.key).runner.suggest(trial)
        # A warm start's attributes (its exact plan) travel to the worker in the config.
        attrs = dict(trial.user_attrs)
        return {ATTRS_KEY: attrs} if attrs else None


def history_storage(runner: TrialRunner, finished: Iterable[optuna.trial.FrozenTrial],
                    name: str) -> optuna.storages.InMemoryStorage:
    """An in-memory study ``name`` holding ``finished`` trials, for the searcher to learn from."""
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, directions=runner.directions, study_name=name)
    distributions = runner.distributions()
    for trial in finished:
        params = {k: v for k, v in trial.params.items() if k in distributions}
        study.add_trial(optuna.trial.create_trial(
            values=trial.values, params=params, constraints=trial.constraints or None,
            distributions={k: distributions[k] for k in params}))
    return storage


def make_searcher(runner: TrialRunner, results: optuna.Study, key: str) -> OptunaSearch:
    """``OptunaSearch`` over the runner's space, aware of the results study's history.

    The warm starts are enqueued when the results study is still empty, as the Optuna backend
    does; their exact plans reach the workers through the config (``Suggest``).
    """
    from lpsd_search.strategy.samplers import make_sampler
    from lpsd_search.strategy.warm_starts import enqueue_warm_starts

    config = runner.options.search
    name = "lpsd-ray-searcher"
    finished = results.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    storage = history_storage(runner, finished, name)
    if config.warm_starts and not results.get_trials(deepcopy=False):
        enqueue_warm_starts(optuna.load_study(study_name=name, storage=storage), runner,
                            config.warm_starts)
    modes = ["max" if d == "maximize" else "min" for d in runner.directions]
    return ConstrainedOptunaSearch(
        key, space=Suggest(key), metric=[metric_name(n) for n in runner.objective_names],
        mode=modes, sampler=make_sampler(config.sampler, config.seed), storage=storage,
        study_name=name)
