"""The search strategy: what to sample, how to score it, and which trial comes next.

``spaces`` and ``params`` (presets and their Optuna parameters), ``objectives``, ``samplers``,
``runner`` (everything one trial needs, built once per worker), ``ask_tell`` (the one
controller every engine runs: jobs out, outcomes in), ``controller`` (stages and the trial
count), ``warm_starts``, ``promotion`` (the longer fine-tune of front trials),
``storage`` and ``study`` (Optuna storages and reading a stored study back), ``results_folder``
(what ``--out`` may hold) and ``faults`` (what ends a run).
"""

from __future__ import annotations

from lpsd_search.strategy.ask_tell import Job, SearchController
from lpsd_search.strategy.controller import choose_stage, completed_count, fail_dead_trials
from lpsd_search.strategy.objectives import ObjectiveSet, load_objectives
from lpsd_search.strategy.params import BoundSpace
from lpsd_search.strategy.runner import TrialOutcome, TrialRunner
from lpsd_search.strategy.samplers import SAMPLERS, FixingSampler, make_sampler
from lpsd_search.strategy.spaces import LayerRule, SearchSpace, load_space
from lpsd_search.strategy.storage import default_url, open_storage
from lpsd_search.strategy.study import load_study, report_from_storage
from lpsd_search.strategy.warm_starts import WARM_STARTS, enqueue_warm_starts

__all__ = [
    "SAMPLERS",
    "WARM_STARTS",
    "BoundSpace",
    "FixingSampler",
    "Job",
    "LayerRule",
    "ObjectiveSet",
    "SearchController",
    "SearchSpace",
    "TrialOutcome",
    "TrialRunner",
    "choose_stage",
    "completed_count",
    "default_url",
    "enqueue_warm_starts",
    "fail_dead_trials",
    "load_objectives",
    "load_space",
    "load_study",
    "make_sampler",
    "open_storage",
    "report_from_storage",
]
