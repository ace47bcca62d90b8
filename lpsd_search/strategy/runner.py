"""Everything one trial needs, built once per worker: parameters in, measurements out.

``TrialRunner`` is the seam between the search engines and the work: the Optuna controller and
the Ray Tune backend both sample ``distributions()`` (or call ``suggest``) and hand the
parameters to ``run``, which maps them to a plan (a pure function), repairs the plan to the
budgets in closed form, builds, fine-tunes and measures it. Nothing in here knows which engine
is driving.
"""

from __future__ import annotations

import hashlib
import logging
import math
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import optuna
import torch
from optuna.distributions import BaseDistribution
from optuna.storages import BaseStorage
from torch import nn

from lpsd_search.config import SearchOptions
from lpsd_search.data.splits import DataSplits, load_data
from lpsd_search.errors import UserInputError
from lpsd_search.plan.budget import SPARSE, Budget, Pricer, parse_budgets
from lpsd_search.plan.choices import Plan
from lpsd_search.plan.layers import TargetLayer, find_layers
from lpsd_search.plan.measure import ModelSize, measure
from lpsd_search.report.record import (
    PLAN,
    measurement_attrs,
    name_metrics,
    outcome_attrs,
    plan_override,
    set_min_accuracy,
    study_config,
    write_study_header,
)
from lpsd_search.strategy.ladder import LadderPlanner
from lpsd_search.strategy.objectives import ObjectiveSet, load_objectives
from lpsd_search.strategy.params import BoundSpace, suggest
from lpsd_search.strategy.policies import RUNG
from lpsd_search.strategy.results_folder import check_results_folder
from lpsd_search.strategy.spaces import SearchSpace, load_space
from lpsd_search.strategy.storage import check_url, default_url, open_storage
from lpsd_search.trial.baseline import new_model, prepare_baseline
from lpsd_search.trial.device import resolve_device
from lpsd_search.trial.evaluate import Evaluator, Measurement
from lpsd_search.trial.preflight import check_output_dir
from lpsd_search.trial.runtime import resolve_runtime

logger = logging.getLogger(__name__)


@dataclass
class TrialOutcome:
    """What a trial produced.

    Attributes:
        values: objective values in study order.
        constraints: one per budget, ≤ 0 when the built model meets it.
        attrs: user attributes for the trial (plan, measurements, source …).
        measured: the measurements.
        model: the fine-tuned compressed model (not stored in the study).
    """

    values: list[float]
    constraints: list[float]
    attrs: dict[str, Any] = field(default_factory=dict)
    measured: Measurement | None = None
    model: nn.Module | None = None


class TrialRunner:
    """Data, dense model, evaluator, pricer and bound space of one search.

    Args:
        options: the search's options.
        data: loaded splits.
        model: the dense model to compress.
    """

    def __init__(self, options: SearchOptions, data: DataSplits, model: nn.Module) -> None:
        self.options = options
        self.data = data
        self.device = resolve_device(options.device)
        self.runtime = resolve_runtime(options.runtime, self.device)
        self.objectives: ObjectiveSet = load_objectives(options.objectives,
                                                        options.latency_batch)
        self.evaluator = Evaluator(
            model, data, options.finetune, self.device,
            latency_batch=self.objectives.latency_batch if self.objectives.needs_latency
            else None, latency_runs=self.objectives.latency_runs, runtime=self.runtime)
        self.baseline = self.evaluator.baseline()
        fitted = _fit_space(options, self.evaluator.model, self.evaluator.example)
        self.budgets: list[Budget] = fitted.budgets
        space, targets, allowed, self.pricer = (fitted.space, fitted.targets, fitted.allowed,
                                                fitted.pricer)
        modules = dict(self.evaluator.model.named_modules())
        self.space = BoundSpace(space, targets, allowed, modules)
        self.ladder: LadderPlanner | None = None
        if options.search.strategy == "ladder":
            self.ladder = LadderPlanner(
                self.evaluator.model, self.evaluator.example, data, self.device, self.pricer,
                allowed, self.space.small, self.budgets, self.evaluator.cache,
                sparse=space.has_sparsity or any(SPARSE in m for m in allowed.values()))
        self.node = socket.gethostname()
        self.created_study = False
        self.storage: BaseStorage | None = None
        """The study's storage, once ``open_study`` opened it."""

    @classmethod
    def from_options(cls, options: SearchOptions) -> TrialRunner:
        """Load data and model (training and caching a baseline without a checkpoint)."""
        parse_budgets(options.budgets)  # cheap checks first: bad input fails before loading
        load_space(options.space)
        objectives = load_objectives(options.objectives, options.latency_batch)
        if options.latency_batch is not None and not objectives.needs_latency:
            raise UserInputError(
                f"--latency-batch {options.latency_batch} has no effect: no objective of "
                f"{options.objectives!r} measures latency; valid: --objectives with latency "
                "(latency, accuracy,latency, …), or no --latency-batch")
        check_output_dir(options.out)  # created and probed: results are written after each trial
        url = options.search.storage or default_url(options.out)
        check_url(url)
        check_results_folder(options.out, url, options.search.study_name)
        device = resolve_device(options.device)
        data = load_data(options.data)
        # Sizes need no trained weights: a model that does not fit the data (``new_model``
        # runs one batch through it), a space that selects no layer or a budget no plan meets
        # fails here, before a baseline is trained.
        untrained = new_model(options.model, data, options.baseline.seed)
        height, width = data.input_size
        _fit_space(options, untrained, torch.zeros(1, data.in_channels, height, width))
        # Threads first: a baseline trained at torch's default thread count beside other jobs
        # ran ten times slower than at the cores this process has (issue 16).
        resolve_runtime(options.runtime, device)
        model = prepare_baseline(options.model, data, options.checkpoint, options.baseline,
                                 device, options.cache_dir)
        return cls(options, data, model)

    # -- what engines need ----------------------------------------------------------------

    @property
    def directions(self) -> list[Literal["maximize", "minimize"]]:
        return self.objectives.directions

    @property
    def objective_names(self) -> list[str]:
        return [o.name for o in self.objectives.objectives]

    def distributions(self) -> dict[str, BaseDistribution]:
        """The parameters of a trial: a rung and a policy (ladder), else the space's."""
        if self.ladder is not None:
            return self.ladder.space.distributions()
        return self.space.distributions()

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        if self.ladder is not None:
            return {key: suggest(trial, key, dist) for key, dist in self.distributions().items()}
        return self.space.suggest(trial)

    def identity(self) -> dict[str, Any]:
        """Settings that must match for a stored study to be continued."""
        options = self.options
        identity: dict[str, Any] = {
            "model": options.model, "data": self.data.spec, "space": self.space.space.name,
            "budget": ",".join(b.requested for b in self.budgets),
            "objectives": ",".join(self.objective_names),
            "finetune_steps": options.finetune.steps, "finetune_lr": options.finetune.lr,
            "distill": options.finetune.distill_alpha, "seed": options.search.seed,
            "checkpoint": file_digest(options.checkpoint) if options.checkpoint else "trained",
        }
        # Recorded only where they differ from what older studies ran (global-local, no
        # training-time methods), so those stay continuable with the same options.
        if options.search.strategy != "global-local":
            identity["strategy"] = options.search.strategy
        methods = options.finetune.method_settings()
        if methods["admm_steps"] or methods["orth_reg"]:
            identity.update(methods)
        return identity

    def storage_url(self) -> str:
        return self.options.search.storage or default_url(self.options.out)

    def open_study(self, sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
        """Create the study, or load it when it exists and was made with the same settings.

        Raises:
            UserInputError: ``--out`` holds another study's results, or the stored study was
                made with other settings.
        """
        url = self.storage_url()
        name = self.options.search.study_name
        # Before anything is written: results of another study in --out are never overwritten.
        check_results_folder(self.options.out, url, name)
        self.options.out.mkdir(parents=True, exist_ok=True)
        storage = self.storage = open_storage(url)
        try:
            study = optuna.create_study(storage=storage, study_name=name,
                                        directions=self.objectives.directions, sampler=sampler)
            self.created_study = True  # only the creator enqueues warm starts
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
            if [d.name.lower() for d in study.directions] != list(self.objectives.directions):
                raise UserInputError(f"study {name!r} in {url} has other objectives; valid: "
                                     "the same --objectives, or a new --study") from None
        except ValueError as error:
            raise UserInputError(f"cannot open study {name!r} in {url}: {error}") from None
        identity = self.identity()
        stored = study_config(study)
        if stored is None:
            write_study_header(study, config=identity, baseline=self.baseline,
                               budgets=[b.to_dict() for b in self.budgets],
                               objectives=self.objectives.to_dict(),
                               layers=dict(self.space.allowed))
        elif stored == identity and getattr(study, "metric_names", None) is None:
            name_metrics(study, self.objectives.to_dict())  # a study made before they were named
        elif stored != identity:
            changed = sorted(k for k in set(stored) | set(identity)
                             if stored.get(k) != identity.get(k))
            raise UserInputError(
                f"study {name!r} in {url} was made with other settings ({', '.join(changed)} "
                "differ); valid: the same options, or a new --study / --out"
            )
        if self.options.search.min_accuracy is not None:  # a report setting: may change
            set_min_accuracy(study, self.options.search.min_accuracy)
        return study

    def save_model(self, number: int, model: nn.Module, attrs: Mapping[str, Any]) -> None:
        """Keep a trial's fine-tuned weights for ``lpsd-search export``."""
        from lpsd_search.trial.export import save_trial_model

        save_trial_model(self.options.out, number, model, plan=attrs[PLAN],
                         measures=attrs, model_spec=self.options.model, data=self.data)

    # -- one trial --------------------------------------------------------------------------

    def plan_for(self, params: Mapping[str, Any],
                 override: Mapping[str, Any] | None = None) -> Plan:
        """The repaired plan of ``params`` (or of a warm start's plan, if it fits)."""
        if override is not None:
            plan = Plan.from_dict(override)
            if self.pricer.fits(plan, self.budgets):
                return plan
        if self.ladder is not None and RUNG in params:
            return self.ladder.plan(params)
        requests = self.space.requests(params)
        return self.pricer.fit(requests, self.budgets, self.space.allowed)

    def run(self, params: Mapping[str, Any], attrs: Mapping[str, Any] | None = None,
            steps: int | None = None, *, test: bool = True) -> TrialOutcome:
        """Repair, build, fine-tune and measure the plan of ``params``.

        Args:
            params: the sampled parameters (see ``BoundSpace``).
            attrs: the trial's user attributes so far (a warm start's ``plan_override``).
            steps: fine-tune steps (default: the search's).
            test: measure the test accuracy now (else ``measure_test`` may add it later).
        """
        began = time.perf_counter()
        plan = self.plan_for(params, plan_override(attrs or {}))
        planned = time.perf_counter() - began  # an allocation (ALPSD's local moves) counts
        predicted = self.pricer.size(plan)
        measured, model = self.evaluator.evaluate(plan, steps, test=test)
        measured = replace(measured, seconds=measured.seconds + planned,
                           build_seconds=measured.build_seconds + planned,
                           plan_seconds=planned)
        if (measured.params, measured.bytes, measured.flops) != (
                predicted.params, predicted.bytes, predicted.flops):
            logger.warning("closed-form size %s differs from the built model's %s",
                           predicted, measured)
        values = [float(getattr(measured, key)) for key in self.objectives.keys]
        if any(math.isnan(v) for v in values):
            named = dict(zip(self.objectives.keys, values, strict=True))
            raise RuntimeError(f"an objective is NaN: {named}")
        # Constraints use what was measured on the built model, never the prediction.
        built = ModelSize(measured.params, measured.bytes, measured.flops)
        constraints = [budget.excess(built) for budget in self.budgets]
        out = outcome_attrs(plan=plan.to_dict(), predicted_params=predicted.params,
                            node=self.node, measured=measured,
                            runtime=self.runtime.describe())
        return TrialOutcome(values, constraints, out, measured, model)

    def measure_test(self, outcome: TrialOutcome) -> None:
        """Add the test accuracy to an outcome measured without it (in place); its time counts
        as the trial's evaluation."""
        assert outcome.measured is not None and outcome.model is not None
        start = time.perf_counter()
        accuracy = self.evaluator.test_accuracy(outcome.model)
        spent = time.perf_counter() - start
        measured = outcome.measured
        outcome.measured = replace(measured, test_accuracy=accuracy,
                                   seconds=measured.seconds + spent,
                                   eval_seconds=measured.eval_seconds + spent)
        outcome.attrs = {**outcome.attrs, **measurement_attrs(outcome.measured)}


@dataclass(frozen=True)
class _FittedSpace:
    budgets: list[Budget]
    space: SearchSpace
    targets: list[TargetLayer]
    allowed: dict[str, list[str]]
    pricer: Pricer


def _fit_space(options: SearchOptions, model: nn.Module, example: torch.Tensor) -> _FittedSpace:
    """The budgets, space and pricer of ``model``; fails when the space selects no layer or
    no plan of it meets the budgets."""
    size = measure(model, example)
    budgets = [spec.resolve(size) for spec in parse_budgets(options.budgets)]
    space = load_space(options.space)
    targets = find_layers(model, example)
    allowed = space.allowed(targets)
    if not allowed:
        raise UserInputError(
            f"search space {space.name!r} selects no compressible layer of {options.model!r}"
        )
    pricer = Pricer(targets, size)
    pricer.check_reachable(budgets, allowed)
    return _FittedSpace(budgets, space, targets, allowed, pricer)


def file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]
