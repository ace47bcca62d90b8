"""Objectives: what a search optimises, as a registry and declarative presets (``objectives/``).

An objective names one measurement of a trial and its direction. A preset (TOML) lists two or
more of them, e.g. ``objectives = ["accuracy", "params"]``, plus the latency settings when the
measured latency is one of them. On the command line a comma list (``accuracy,flops``) works too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from lpsd_search.errors import UserInputError
from lpsd_search.presets import load_preset, preset_names
from lpsd_search.registry import Registry


@dataclass(frozen=True)
class Objective:
    """One optimised measurement.

    Attributes:
        name: registry key.
        key: the measurement it reads (``Measurement`` field).
        direction: ``maximize`` or ``minimize``.
        label: axis / column label.
    """

    name: str
    key: str
    direction: Literal["maximize", "minimize"]
    label: str


OBJECTIVES: Registry[Objective] = Registry("objective")
for _objective in (
    Objective("accuracy", "accuracy", "maximize", "validation accuracy"),
    Objective("loss", "loss", "minimize", "validation loss"),
    Objective("params", "params", "minimize", "parameters"),
    Objective("bytes", "bytes", "minimize", "deployed bytes"),
    Objective("flops", "flops", "minimize", "multiply-accumulates"),
    Objective("latency", "latency_ms", "minimize", "latency (ms)"),
):
    OBJECTIVES.register(_objective.name)(_objective)


@dataclass(frozen=True)
class ObjectiveSet:
    """The objectives of one search.

    Attributes:
        name: preset name, or the comma list as given.
        objectives: two or more objectives, in study order.
        latency_batch: batch size of the latency measurement.
        latency_runs: timed forward passes (the median is kept).
    """

    name: str
    objectives: tuple[Objective, ...]
    latency_batch: int = 1
    latency_runs: int = 20

    @property
    def directions(self) -> list[Literal["maximize", "minimize"]]:
        return [o.direction for o in self.objectives]

    @property
    def keys(self) -> list[str]:
        return [o.key for o in self.objectives]

    @property
    def needs_latency(self) -> bool:
        return any(o.name == "latency" for o in self.objectives)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "latency_batch": self.latency_batch,
                "objectives": [{"name": o.name, "key": o.key, "direction": o.direction}
                               for o in self.objectives]}


def objective_set(name: str, names: list[str], latency_batch: int = 1,
                  latency_runs: int = 20) -> ObjectiveSet:
    """Validate a list of objective names."""
    objectives = tuple(OBJECTIVES.get(str(n).strip()) for n in names)
    if len(objectives) < 2:
        raise UserInputError(f"objectives {name!r} list {len(objectives)}; valid: two or more "
                             f"of {', '.join(OBJECTIVES.names())}")
    if len({o.name for o in objectives}) != len(objectives):
        raise UserInputError(f"objectives {name!r} repeat a name; valid: each at most once")
    if latency_batch < 1 or latency_runs < 1:
        raise UserInputError(f"objectives {name!r}: latency batch and runs must be ≥ 1")
    return ObjectiveSet(name, objectives, latency_batch, latency_runs)


def load_objectives(spec: str, latency_batch: int | None = None) -> ObjectiveSet:
    """A preset by name or path, or a comma list such as ``accuracy,latency``.

    Args:
        spec: preset name (``default``, ``latency`` …), TOML path, or comma list.
        latency_batch: overrides the preset's latency batch size.
    """
    if "," in spec or (spec in OBJECTIVES and spec not in preset_names("objectives")):
        names = [n for n in spec.split(",") if n.strip()]
        return objective_set(spec, names, latency_batch or 1)
    name, data = load_preset("objectives", spec)
    latency = dict(data.get("latency", {}))
    return objective_set(name, list(data.get("objectives", [])),
                         latency_batch or int(latency.get("batch_size", 1)),
                         int(latency.get("runs", 20)))
