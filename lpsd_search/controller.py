"""The Optuna controller: an ask/tell loop over the evaluator, stored so that it can resume.

Every trial samples a request from the search space, is repaired to the budget in closed form
before it runs, is evaluated, and is told to the study with its plan and measurements stored as
user attributes. Results are rewritten after every trial, so a killed run loses nothing.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from lpsd_search.budget import Budget, Pricer
from lpsd_search.errors import UserInputError
from lpsd_search.evaluate import Evaluator, Measurement
from lpsd_search.plan import NONE
from lpsd_search.report import write_results
from lpsd_search.spaces import SearchSpace

logger = logging.getLogger(__name__)

MAX_CONSECUTIVE_FAILURES = 5
SMALL_LAYER_SHARE = 0.05


@dataclass(frozen=True)
class SearchConfig:
    """How the controller runs.

    Attributes:
        trials: completed trials the study should hold at the end (a re-run tops it up); failed
            and interrupted trials are kept in the study but do not count.
        seed: sampler seed.
        storage: Optuna storage URL (``sqlite:///…``), or None for ``<out>/study.db``.
        study_name: name of the study inside the storage.
        warm_start: enqueue uniform-rank plans meeting the budget as the first trials.
    """

    trials: int = 20
    seed: int = 0
    storage: str | None = None
    study_name: str = "lpsd-search"
    warm_start: bool = True


def open_study(config: SearchConfig, out_dir: Path, identity: Mapping[str, Any]) -> optuna.Study:
    """Create the study, or load it when it exists and was made with the same settings."""
    out_dir.mkdir(parents=True, exist_ok=True)
    storage = config.storage or f"sqlite:///{(out_dir / 'study.db').resolve()}"
    sampler = optuna.samplers.TPESampler(seed=config.seed, multivariate=True,
                                         n_startup_trials=8)
    try:
        study = optuna.create_study(storage=storage, study_name=config.study_name,
                                    directions=["maximize", "minimize"], sampler=sampler,
                                    load_if_exists=True)
    except (ValueError, ImportError, optuna.exceptions.StorageInternalError) as error:
        raise UserInputError(f"cannot open storage {storage!r}: {error}") from None
    stored = study.user_attrs.get("config")
    if stored is None:
        study.set_user_attr("config", dict(identity))
    elif stored != dict(identity):
        keys = set(stored) | set(identity)
        changed = sorted(k for k in keys if stored.get(k) != identity.get(k))
        raise UserInputError(
            f"study {config.study_name!r} in {storage} was made with other settings "
            f"({', '.join(changed)} differ); valid: the same options, or a new --study / --out"
        )
    return study


def fail_dead_trials(study: optuna.Study) -> None:
    """Mark RUNNING trials whose worker process on this host is gone as failed."""
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        worker = str(trial.user_attrs.get("worker", ""))
        name, _, pid = worker.rpartition(":")
        if name == host and pid.isdigit() and not _alive(int(pid)):
            logger.warning("trial %d was left running by a dead process; marking it failed",
                           trial.number)
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid != os.getpid()


def enqueue_warm_starts(study: optuna.Study, allowed: Mapping[str, Sequence[str]],
                        space: SearchSpace, budget: Budget, pricer: Pricer) -> None:
    """Uniform plans (one method, one rank fraction near the budget) as the first trials.

    Layers holding under ``SMALL_LAYER_SHARE`` of the searchable parameters stay dense in these
    plans: compressing them saves almost nothing, and thin first layers lose the most accuracy.
    """
    sizes = {name: pricer.targets[name].geometry.dense_params for name in allowed}
    total = sum(sizes.values())
    methods = sorted({m for ms in allowed.values() for m in ms if m != NONE})
    for method in methods:
        for share in (1.0, 0.5):
            params: dict[str, Any] = {}
            for name, layer_methods in allowed.items():
                rule = space.rule_for(name)
                assert rule is not None
                low, high = rule.rank_range
                small = sizes[name] < SMALL_LAYER_SHARE * total
                compress = method in layer_methods and not small
                params[f"{name}:method"] = method if compress else NONE
                params[f"{name}:rank"] = min(high, max(low, budget.fraction * share))
            study.enqueue_trial(params, user_attrs={"warm_start": f"uniform {method}"},
                                skip_if_exists=True)


def completed_count(study: optuna.Study) -> int:
    """Trials that finished with measurements (failed or interrupted ones do not count)."""
    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


def run_search(study: optuna.Study, evaluator: Evaluator, pricer: Pricer, space: SearchSpace,
               allowed: Mapping[str, Sequence[str]], budget: Budget, config: SearchConfig,
               out_dir: Path, on_trial: Callable[[optuna.Study], None] | None = None) -> None:
    """Run trials until the study holds ``config.trials`` completed ones.

    Args:
        study: the opened study (its user attributes hold baseline and budget).
        evaluator: builds, fine-tunes and measures plans.
        pricer: closed-form sizes and budget repair.
        space: the search space.
        allowed: searchable layers and their methods.
        budget: the hard parameter budget.
        config: trial count, seed, warm starts.
        out_dir: where results are rewritten after every trial.
        on_trial: called after every finished trial (progress display).
    """
    fail_dead_trials(study)
    if config.warm_start and not study.trials:
        enqueue_warm_starts(study, allowed, space, budget, pricer)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    failures = 0
    while completed_count(study) < config.trials:
        trial = study.ask()
        trial.set_user_attr("worker", worker)
        try:
            measured = _run_trial(trial, evaluator, pricer, space, allowed, budget)
        except KeyboardInterrupt:
            trial.set_user_attr("fail_reason", "interrupted")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            write_results(study, out_dir)
            raise
        except UserInputError:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        except Exception as error:  # a failed trial is recorded and the search goes on
            reason = f"{type(error).__name__}: {error}".splitlines()[0][:500]
            logger.warning("trial %d failed: %s", trial.number, reason)
            trial.set_user_attr("fail_reason", reason)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            failures += 1
            if failures >= MAX_CONSECUTIVE_FAILURES:
                write_results(study, out_dir)
                raise RuntimeError(
                    f"{failures} trials failed in a row; last reason: {reason}"
                ) from error
        else:
            failures = 0
            study.tell(trial, [measured.accuracy, measured.params])
        write_results(study, out_dir)
        if on_trial is not None:
            on_trial(study)


def _run_trial(trial: optuna.Trial, evaluator: Evaluator, pricer: Pricer, space: SearchSpace,
               allowed: Mapping[str, Sequence[str]], budget: Budget) -> Measurement:
    requests = space.sample(trial, allowed)
    plan = pricer.fit(requests, budget, allowed)
    predicted = pricer.size(plan)
    trial.set_user_attr("plan", plan.to_dict())
    trial.set_user_attr("predicted_params", predicted.params)
    measured, _ = evaluator.evaluate(plan)
    if measured.params != predicted.params:
        logger.warning("trial %d: closed-form params %d differ from the built model's %d",
                       trial.number, predicted.params, measured.params)
    # The constraint uses what was measured on the built model, never the prediction.
    trial.set_constraint("params", measured.params - budget.limit)
    for key, value in measured.to_dict().items():
        trial.set_user_attr(key, value)
    return measured
