"""Options by name: how the command line, the TOML config and the Python API fill ``config``.

A search's options have one name each (the ``lpsd-search search`` dest and the
``lpsd_search.search`` parameter); ``OPTIONS`` names the ``SearchOptions`` fields each one sets,
``search_options`` builds the dataclasses from them, and every default comes from the
dataclasses in ``config`` (the demo's few differences are ``DEMO``).
"""

from __future__ import annotations

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
    "seed": ("search.seed", "finetune.seed", "baseline.seed"),
    "trials": ("search.trials",),
    "finetune_steps": ("finetune.steps",),
    "finetune_lr": ("finetune.lr",),
    "batch_size": ("finetune.batch_size",),
    "distill": ("finetune.distill_alpha",),
    "distill_temperature": ("finetune.distill_temperature",),
    "sampler": ("search.sampler",),
    "strategy": ("search.strategy",),
    "global_share": ("search.global_share",),
    "warm_starts": ("search.warm_starts",),
    "promote_steps": ("search.promote_steps",),
    "promote_margin": ("search.promote_margin",),
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
    "baseline.lr", "baseline.batch_size", "baseline.weight_decay",
})
"""``SearchOptions`` fields no option sets: build the dataclasses directly to change them."""


DEMO: dict[str, Any] = {
    "budget": ("0.5",),
    "trials": 20,
    "finetune_steps": 150,
    "global_share": 0.25,
    "out": Path("lpsd-demo"),
}
"""Where ``lpsd-search demo`` departs from the defaults (its options keep their names): half the
parameters, a shorter fine-tune so that 20 trials fit in minutes, and a shorter global stage."""


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


def search_options(**values: Any) -> SearchOptions:
    """The ``SearchOptions`` of a search given by option name (see ``OPTIONS``).

    Options left out, or given as None, take the dataclasses' defaults; ``budget`` may be one
    value or a sequence, ``warm_starts`` a comma list or a sequence, ``no_warm_start=True``
    clears the warm starts.

    Raises:
        UserInputError: an unknown option, no budget, or an invalid value.
    """
    unknown = sorted(set(values) - set(OPTIONS) - {"no_warm_start"})
    if unknown:
        raise UserInputError(f"unknown option {unknown[0]!r}; valid: "
                             f"{', '.join([*OPTIONS, 'no_warm_start'])}")
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
