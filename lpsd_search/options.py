"""Options by name: how the command line, the TOML config and the Python API fill ``config``.

A search's options have one name each (the ``lpsd-search search`` dest and the
``lpsd_search.search`` parameter); ``OPTIONS`` names the ``SearchOptions`` fields each one sets,
``search_options`` builds the dataclasses from them, and every default comes from the
dataclasses in ``config`` (the demo's few differences are ``DEMO``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from lpsd_search.config import (
    BaselineConfig,
    RuntimeConfig,
    SearchConfig,
    SearchOptions,
    TrainConfig,
)
from lpsd_search.errors import UserInputError
from lpsd_search.presets import load_preset

OPTIONS: dict[str, tuple[str, ...]] = {
    "model": ("model",),
    "data": ("data",),
    "budget": ("budget",),
    "out": ("out",),
    "checkpoint": ("checkpoint",),
    "space": ("space",),
    "objectives": ("objectives",),
    "latency_batch": ("latency_batch",),
    "device": ("device",),
    "cache_dir": ("cache_dir",),
    # Not the baseline's: a search's seed varies the search and its fine-tunes, never the dense
    # model they start from (nor the data split, which the data fix).
    "seed": ("search.seed", "finetune.seed"),
    "trials": ("search.trials",),
    "finetune_steps": ("finetune.steps",),
    "finetune_lr": ("finetune.lr",),
    "batch_size": ("finetune.batch_size",),
    "distill": ("finetune.distill_alpha",),
    "distill_temperature": ("finetune.distill_temperature",),
    "admm_steps": ("finetune.admm_steps",),
    "admm_rho": ("finetune.admm_rho",),
    "admm_rho_growth": ("finetune.admm_rho_growth",),
    "orth_reg": ("finetune.orth_reg",),
    "sampler": ("search.sampler",),
    "strategy": ("search.strategy",),
    "global_share": ("search.global_share",),
    "warm_starts": ("search.warm_starts",),
    "promote_steps": ("search.promote_steps",),
    "promote_margin": ("search.promote_margin",),
    "promote_top": ("search.promote_top",),
    "min_accuracy": ("search.min_accuracy",),
    "storage": ("search.storage",),
    "study": ("search.study_name",),
    "train_epochs": ("baseline.epochs",),
    "precision": ("runtime.precision",),
    "channels_last": ("runtime.channels_last",),
    "compile": ("runtime.compile",),
    "threads": ("runtime.threads",),
    "workers": ("runtime.workers",),
}
"""The options of a search (``lpsd-search search``'s dests, ``lpsd_search.search``'s parameters)
and the ``SearchOptions`` fields each sets (``section.field``). ``no_warm_start`` (no warm
starts) is an option too, a shorthand for ``warm_starts=()``."""


UNMAPPED: frozenset[str] = frozenset({
    "finetune.weight_decay", "search.local_share", "search.save_models", "search.base_margin",
    "baseline.lr", "baseline.batch_size", "baseline.weight_decay", "baseline.seed",
})
"""``SearchOptions`` fields no option sets: build the dataclasses directly to change them."""


DEMO: dict[str, Any] = {
    "budget": ("0.5",),
    "trials": 30,
    "finetune_steps": 100,
    "global_share": 0.25,
    "out": Path("lpsd-demo"),
}
"""Where ``lpsd-search demo`` departs from the defaults (its options keep their names): half the
parameters, a shorter fine-tune so that 30 trials fit in minutes, and a shorter global stage
(for ``--strategy global-local``)."""


_SECTIONS: dict[str, type[Any]] = {
    "finetune": TrainConfig, "search": SearchConfig, "baseline": BaselineConfig,
    "runtime": RuntimeConfig,
}


def field_default(path: str) -> Any:
    """The dataclass default of a ``SearchOptions`` field (``"search.trials"``); None if none."""
    section, _, name = path.rpartition(".")
    owner = _SECTIONS[section] if section else SearchOptions
    for item in fields(owner):
        if item.name == name:
            if item.default is not MISSING:
                return item.default
            return item.default_factory() if item.default_factory is not MISSING else None
    raise KeyError(path)


def option_default(name: str) -> Any:
    """The default of an option as the command line and the API spell it.

    That is the default of the field it sets (None for an automatic ``promote_steps``).
    """
    return field_default(OPTIONS[name][0])


def _budgets(value: Any) -> tuple[str, ...]:
    if isinstance(value, (str, int, float)):
        return (str(value),)
    return tuple(str(item) for item in value or ())


def _convert(name: str, value: Any) -> Any:
    if name == "warm_starts":
        names = value.split(",") if isinstance(value, str) else value
        return tuple(str(item).strip() for item in names if str(item).strip())
    if name in ("out", "cache_dir"):
        return Path(value)
    return value


SPACE_TRAINING: tuple[str, ...] = ("admm_steps", "admm_rho", "admm_rho_growth", "orth_reg")
"""The options a search space's ``[training]`` table may set: the training-time methods that
belong with its decompositions (``tt-admm``, ``vbmf-orth``). An option given explicitly wins."""


def space_training(space: str) -> dict[str, Any]:
    """The settings of the ``[training]`` table of search space ``space`` (preset or file).

    A space that cannot be read gives ``{}`` here: the search reports it, in its own order.

    Raises:
        UserInputError: the table is not a table, names another key, or holds a bad value.
    """
    try:
        name, data = load_preset("search_spaces", space)
    except UserInputError:
        return {}
    table = data.get("training", {})
    where = f"search space {name!r}: training"
    if not isinstance(table, Mapping):
        raise UserInputError(f"{where} {table!r} is invalid; valid: a table of "
                             f"{', '.join(SPACE_TRAINING)}")
    settings = {str(key).replace("-", "_"): value for key, value in table.items()}
    unknown = sorted(set(settings) - set(SPACE_TRAINING))
    if unknown:
        raise UserInputError(f"{where}: unknown key {unknown[0]!r}; valid: "
                             f"{', '.join(SPACE_TRAINING)}")
    try:
        TrainConfig(**settings)  # the values are checked as the options' are
    except UserInputError as error:
        raise UserInputError(f"{where}: {error}") from None
    return settings


def search_options(**values: Any) -> SearchOptions:
    """The ``SearchOptions`` of a search given by option name (see ``OPTIONS``).

    Options left out, or given as None, take the dataclasses' defaults; ``budget`` may be one
    value or a sequence, ``warm_starts`` a comma list or a sequence, ``no_warm_start=True``
    clears the warm starts. The training-time methods (``SPACE_TRAINING``) left out take the
    search space's ``[training]`` table first.

    Raises:
        UserInputError: an unknown option, no budget, or an invalid value.
    """
    unknown = sorted(set(values) - set(OPTIONS) - {"no_warm_start"})
    if unknown:
        raise UserInputError(f"unknown option {unknown[0]!r}; valid: "
                             f"{', '.join([*OPTIONS, 'no_warm_start'])}")
    space = values.get("space") or option_default("space")
    for name, value in space_training(str(space)).items():
        if values.get(name) is None:
            values[name] = value
    if values.pop("no_warm_start", False):
        values["warm_starts"] = ()
    budget = _budgets(values.pop("budget", None))
    parts: dict[str, dict[str, Any]] = {section: {} for section in ("", *_SECTIONS)}
    for name, value in values.items():
        if value is None:
            continue
        for path in OPTIONS[name]:
            section, _, target = path.rpartition(".")
            parts[section][target] = _convert(name, value)
    built = {section: make(**parts[section]) for section, make in _SECTIONS.items()}
    return SearchOptions(budget=budget, **parts[""], **built)
