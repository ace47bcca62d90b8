"""The study's record schema: every user-attribute key a search writes, and typed access to it.

A search keeps everything in its Optuna study, so that any process can continue or report it
from the storage alone:

* the study's header: ``config`` (the settings that must match to continue it), ``baseline``
  (the dense model's measurements), ``budgets`` (plus ``budget``, the first of them, which older
  readers and ``pareto.json`` still use), ``objectives`` and the searchable ``layers``;
* one ``promoted:<trial>`` attribute per promoted trial: the measurements of its longer
  fine-tune (the trial's own attributes keep the short one); the claim on a promotion is a
  marker study of its own (``report.claims``, which spells its keys);
* per trial: its ``plan`` (and a warm start's exact ``plan_override``), where it came from
  (``stage``, ``source``, ``base_trial``), where it ran (``worker``, ``node``, and on Ray
  ``ray_trial_id`` / ``ray_node_id``), its ``predicted_params``, its measurements (the fields of
  ``trial.evaluate.Measurement``) or its ``fail_reason``.

Only this module spells the keys (the promotion claims' own: ``report.claims``); the rest of
the package reads and writes through it. The keys never change, so studies written by earlier
versions stay readable.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any, Protocol

# -- keys -----------------------------------------------------------------------------------------

CONFIG = "config"
BASELINE = "baseline"
BUDGETS = "budgets"
BUDGET = "budget"
OBJECTIVES = "objectives"
LAYERS = "layers"
PROMOTED_PREFIX = "promoted:"
MIN_ACCURACY = "min_accuracy"
"""The user's usefulness floor for reports (``--min-accuracy``), when one was given."""
STUDY_KEYS = (CONFIG, BASELINE, BUDGETS, BUDGET, OBJECTIVES, LAYERS)
"""The study header's keys (``promoted:<n>`` keys come on top)."""

PLAN = "plan"
PLAN_OVERRIDE = "plan_override"
PREDICTED_PARAMS = "predicted_params"
STAGE = "stage"
SOURCE = "source"
BASE_TRIAL = "base_trial"
WORKER = "worker"
NODE = "node"
FAIL_REASON = "fail_reason"
RAY_TRIAL_ID = "ray_trial_id"
RAY_NODE_ID = "ray_node_id"
RUNTIME = "runtime"
TRIAL_KEYS = (PLAN, PLAN_OVERRIDE, PREDICTED_PARAMS, STAGE, SOURCE, BASE_TRIAL, WORKER, NODE,
              FAIL_REASON, RAY_TRIAL_ID, RAY_NODE_ID, RUNTIME)
"""A trial's keys besides its measurements."""

MEASURES = ("params", "bytes", "flops", "accuracy", "test_accuracy")
"""Measurements every report shows."""
EXTRA = ("loss", "latency_ms")
"""Measurements reports show when a trial has them (NaN ones are not stored)."""
SECONDS = "seconds"
PHASES = ("build_seconds", "finetune_seconds", "eval_seconds")
"""Where a trial's ``seconds`` went (trials measured before they were recorded lack them)."""
TRAINING_METHODS = ("admm_steps", "admm_rho", "admm_rho_growth", "orth_reg")
"""How the trial's model was trained besides its fine-tune: ADMM steps and schedule before it
was decomposed (``trial.admm``; ρ and its growth are stored only when ADMM ran) and the weight of
the orthogonality penalty in its fine-tune (``trial.orthogonal``)."""
PLAN_SECONDS = "plan_seconds"
"""Of ``build_seconds``, choosing the plan (an allocator's, ALPSD's local selection above all)."""
MEASUREMENT_KEYS = (*MEASURES, SECONDS, *EXTRA, "finetune_steps", *PHASES, PLAN_SECONDS,
                    *TRAINING_METHODS)
"""The fields of ``trial.evaluate.Measurement``, stored one attribute each."""
FINETUNED = ("accuracy", "test_accuracy", "loss")
"""Measurements a longer fine-tune changes; the others are fixed by the plan."""

# -- values ---------------------------------------------------------------------------------------

FLAT, GLOBAL, LOCAL, WARM, LADDER = "flat", "global", "local", "warm", "ladder"
"""Stages: every knob sampled; global knobs only; one base trial refined; a warm start."""
SAMPLED = "sampled"
"""The source of a trial its sampler chose (a warm start's source is its label)."""

DEFAULT_OBJECTIVES: list[dict[str, Any]] = [
    {"name": "accuracy", "key": "accuracy", "direction": "maximize"},
    {"name": "params", "key": "params", "direction": "minimize"},
]
"""What studies written before objectives were configurable optimised."""


class Attributed(Protocol):
    """Anything with user attributes: a study, a live trial or a frozen trial."""

    @property
    def user_attrs(self) -> dict[str, Any]: ...


class Writable(Attributed, Protocol):
    """A study or trial whose user attributes can be set."""

    def set_user_attr(self, key: str, value: Any) -> None: ...


class Measured(Protocol):
    """A measurement object (``trial.evaluate.Measurement``)."""

    def to_dict(self) -> dict[str, float | int]: ...


def measurement_attrs(measured: Measured | Mapping[str, Any]) -> dict[str, Any]:
    """A measurement as JSON-safe attributes; NaN fields (not measured) are left out.

    Args:
        measured: a ``Measurement`` or its dictionary.

    Returns:
        One entry per measured field.
    """
    values = measured.items() if isinstance(measured, Mapping) else measured.to_dict().items()
    return {k: v for k, v in values if not (isinstance(v, float) and math.isnan(v))}


def write_attrs(target: Writable, attrs: Mapping[str, Any]) -> None:
    """Set every entry of ``attrs`` on a study or trial."""
    for key, value in attrs.items():
        target.set_user_attr(key, value)


# -- the study ------------------------------------------------------------------------------------


def write_study_header(study: Writable, *, config: Mapping[str, Any],
                       baseline: Measured | Mapping[str, Any],
                       budgets: list[dict[str, Any]], objectives: Mapping[str, Any],
                       layers: Mapping[str, Any]) -> None:
    """Store what a search is (see the module docstring).

    Args:
        study: a fresh study.
        config: the settings that must match to continue it (``TrialRunner.identity``).
        baseline: the dense model's measurements.
        budgets: the resolved budgets (``Budget.to_dict``), at least one.
        objectives: ``ObjectiveSet.to_dict()``.
        layers: searchable layer → allowed methods.
    """
    study.set_user_attr(BASELINE, measurement_attrs(baseline))
    study.set_user_attr(BUDGETS, list(budgets))
    study.set_user_attr(BUDGET, budgets[0])
    study.set_user_attr(OBJECTIVES, dict(objectives))
    study.set_user_attr(LAYERS, dict(layers))
    name_metrics(study, objectives)
    # Written last: another worker that sees the config sees the whole header.
    study.set_user_attr(CONFIG, dict(config))


def name_metrics(study: Writable, objectives: Mapping[str, Any]) -> None:
    """Name the study's values after its objectives, so optuna-dashboard (and Optuna's plots)
    show ``accuracy`` / ``params`` rather than ``Objective 0`` / ``Objective 1``."""
    names = [str(o.get("name", o.get("key"))) for o in objectives.get("objectives", [])]
    setter = getattr(study, "set_metric_names", None)
    if names and callable(setter):
        with warnings.catch_warnings():  # experimental in Optuna 3 to 5; stable in behaviour
            warnings.simplefilter("ignore")
            setter(names)


def study_config(study: Attributed) -> dict[str, Any] | None:
    """The stored settings, or None when the header was never written."""
    config = study.user_attrs.get(CONFIG)
    return None if config is None else dict(config)


def set_min_accuracy(study: Writable, value: float) -> None:
    """Store the usefulness floor reports use (the last one given wins)."""
    study.set_user_attr(MIN_ACCURACY, float(value))


def study_min_accuracy(study: Attributed) -> float | None:
    """The usefulness floor given to the search or a report, or None (the default floor)."""
    value = study.user_attrs.get(MIN_ACCURACY)
    return None if value is None else float(value)


def has_header(study: Attributed) -> bool:
    """Whether the study was made by lpsd-search (it has a baseline and a budget)."""
    attrs = study.user_attrs
    return BASELINE in attrs and (BUDGETS in attrs or BUDGET in attrs)


def study_baseline(study: Attributed) -> dict[str, Any]:
    """The dense model's measurements (``KeyError`` for a study without a header)."""
    return dict(study.user_attrs[BASELINE])


def study_budgets(study: Attributed) -> list[dict[str, Any]]:
    """The budgets (``metric``, ``limit`` …); studies from before several budgets hold one."""
    return list(study.user_attrs.get(BUDGETS) or [study.user_attrs[BUDGET]])


def study_budget(study: Attributed) -> dict[str, Any]:
    """The first budget (``pareto.json``'s ``budget``)."""
    return dict(study.user_attrs.get(BUDGET) or study_budgets(study)[0])


def study_objectives(study: Attributed) -> list[dict[str, Any]]:
    """The objectives (``name``, ``key``, ``direction``) in study order."""
    objectives = study.user_attrs.get(OBJECTIVES)
    return list(objectives["objectives"]) if objectives else list(DEFAULT_OBJECTIVES)


def study_layers(study: Attributed) -> dict[str, Any]:
    """Searchable layer → allowed methods (empty for studies that did not store them)."""
    return dict(study.user_attrs.get(LAYERS, {}))


def promoted_measures(study: Attributed) -> dict[int, dict[str, Any]]:
    """Trial number → the measurements of its longer fine-tune, for every promoted trial."""
    return {int(key[len(PROMOTED_PREFIX):]): dict(value)
            for key, value in study.user_attrs.items() if key.startswith(PROMOTED_PREFIX)}


def is_promoted(study: Attributed, number: int) -> bool:
    """Whether trial ``number`` was promoted already."""
    return f"{PROMOTED_PREFIX}{number}" in study.user_attrs


PROMOTED_AFTER = "after_trials"  # how many trials were complete when a promotion was made


def set_promoted(study: Writable, number: int, measured: Measured | Mapping[str, Any],
                 after: int) -> None:
    """Store the measurements of trial ``number``'s longer fine-tune, made after ``after``
    completed trials (a search's compute over time)."""
    study.set_user_attr(f"{PROMOTED_PREFIX}{number}",
                        {**measurement_attrs(measured), PROMOTED_AFTER: after})


# -- one trial ------------------------------------------------------------------------------------


def origin_attrs(stage: str, source: str = SAMPLED, base: int | None = None) -> dict[str, Any]:
    """Where a trial came from: its stage, its source and (local stage) its base trial."""
    attrs: dict[str, Any] = {STAGE: stage, SOURCE: source}
    if base is not None:
        attrs[BASE_TRIAL] = base
    return attrs


def set_trial_origin(trial: Writable, *, stage: str, source: str = SAMPLED,
                     base: int | None = None) -> None:
    """Store where ``trial`` came from (see ``origin_attrs``)."""
    write_attrs(trial, origin_attrs(stage, source, base))


def warm_start_attrs(label: str, plan: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The attributes a warm start is enqueued with: its label and its exact plan (none for
    a ladder warm start, whose parameters give its plan exactly)."""
    attrs = origin_attrs(WARM, label)
    return attrs if plan is None else {**attrs, PLAN_OVERRIDE: dict(plan)}


def has_origin(trial: Attributed) -> bool:
    """Whether the trial's origin is stored (a warm start's is, from its enqueueing)."""
    return STAGE in trial.user_attrs


def trial_stage(trial: Attributed) -> str:
    return str(trial.user_attrs.get(STAGE, ""))


def trial_source(trial: Attributed) -> str:
    return str(trial.user_attrs.get(SOURCE, SAMPLED))


def base_trial(trial: Attributed) -> int | None:
    """The trial a local trial refines, or None."""
    base = trial.user_attrs.get(BASE_TRIAL)
    return None if base is None else int(base)


def rebuild_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """A promotion's attributes: the trial's, with the plan it built as the exact plan to
    build again (an allocator's plan, ALPSD's local selection above all, is not recomputed)."""
    plan = attrs.get(PLAN)
    return dict(attrs) if not plan else {**attrs, PLAN_OVERRIDE: dict(plan)}


def plan_override(attrs: Mapping[str, Any]) -> dict[str, Any] | None:
    """A warm start's exact plan, from a trial's user attributes."""
    plan = attrs.get(PLAN_OVERRIDE)
    return None if plan is None else dict(plan)


def trial_plan(trial: Attributed) -> dict[str, Any]:
    """The plan the trial built (empty when it failed before one was chosen)."""
    return dict(trial.user_attrs.get(PLAN, {}))


def set_worker(trial: Writable, worker: str) -> None:
    """Name the process running ``trial`` (``host:pid``), right after asking for it."""
    trial.set_user_attr(WORKER, worker)


def trial_worker(trial: Attributed) -> str:
    return str(trial.user_attrs.get(WORKER, ""))


def has_worker(trial: Attributed) -> bool:
    return WORKER in trial.user_attrs


def placement_attrs(node: str) -> dict[str, Any]:
    """Where a Ray trial ran; the driver never sees the worker process, so it names the node."""
    return {NODE: node, WORKER: node}


def trial_node(trial: Attributed) -> str:
    return str(trial.user_attrs.get(NODE, ""))


def ray_trial_id(trial: Attributed) -> str | None:
    """The Tune trial id a Ray trial was copied from, or None."""
    found = trial.user_attrs.get(RAY_TRIAL_ID)
    return None if found is None else str(found)


def failure_attrs(reason: str) -> dict[str, Any]:
    return {FAIL_REASON: reason}


def set_fail_reason(trial: Writable, reason: str) -> None:
    """Store why ``trial`` failed (one line, for people)."""
    write_attrs(trial, failure_attrs(reason))


def fail_reason(trial: Attributed) -> str:
    return str(trial.user_attrs.get(FAIL_REASON, ""))


def outcome_attrs(*, plan: Mapping[str, Any], predicted_params: int, node: str,
                  measured: Measured | Mapping[str, Any],
                  runtime: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a finished trial stores: its plan, the predicted size, its node, how it ran
    (``trial.runtime.Runtime.describe``) and its measurements."""
    attrs = {PLAN: dict(plan), PREDICTED_PARAMS: predicted_params, NODE: node,
             **measurement_attrs(measured)}
    if runtime is not None:
        attrs[RUNTIME] = dict(runtime)
    return attrs


def trial_runtime(trial: Attributed) -> dict[str, Any]:
    """How the trial ran (precision, threads, …); empty for trials recorded before that."""
    return dict(trial.user_attrs.get(RUNTIME, {}))


def trial_training(trial: Attributed) -> dict[str, Any]:
    """The trial's training-time methods (``TRAINING_METHODS``); empty for trials recorded
    before they existed."""
    return {k: trial.user_attrs[k] for k in TRAINING_METHODS if k in trial.user_attrs}


def trial_phases(trial: Attributed) -> dict[str, float]:
    """Where the trial's seconds went (``PHASES``); empty for trials recorded before that."""
    return {k: float(trial.user_attrs[k]) for k in PHASES if k in trial.user_attrs}


def trial_measures(trial: Attributed) -> dict[str, Any]:
    """The reported measurements the trial holds (its own, short fine-tune)."""
    attrs = trial.user_attrs
    return {k: attrs[k] for k in (*MEASURES, *EXTRA) if k in attrs}


def trial_seconds(trial: Attributed) -> float:
    return float(trial.user_attrs.get(SECONDS, 0.0))
