"""Hard size budgets: parsing, closed-form pricing of plans, and repair before a trial runs."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from lpsd_search.decompositions import LayerGeometry, get_method
from lpsd_search.errors import UserInputError
from lpsd_search.layers import TargetLayer
from lpsd_search.measure import ModelSize
from lpsd_search.plan import NONE, LayerChoice, Plan
from lpsd_search.sparse import sparse_bytes, sparse_flops, sparse_params

_WHOLE = re.compile(r"^\s*\d+\s*$")


@dataclass(frozen=True)
class Budget:
    """An upper bound on the compressed model's parameters.

    Attributes:
        limit: the largest allowed parameter count.
        fraction: ``limit`` as a fraction of the baseline's parameters.
        requested: the text the user gave (``"0.1"`` or ``"50000"``).
    """

    limit: int
    fraction: float
    requested: str

    def to_dict(self) -> dict[str, object]:
        return {"metric": "params", "requested": self.requested, "limit": self.limit,
                "fraction": self.fraction}


@dataclass(frozen=True)
class BudgetSpec:
    """A budget as the user wrote it, checked but not yet tied to a model.

    Attributes:
        requested: the text (``"0.1"`` or ``"50000"``).
        fraction: set for a fraction of the baseline's parameters.
        absolute: set for a whole number of parameters.
    """

    requested: str
    fraction: float | None = None
    absolute: int | None = None

    def resolve(self, baseline_params: int) -> Budget:
        """The budget for a model with ``baseline_params`` parameters."""
        if self.absolute is not None:
            return Budget(self.absolute, self.absolute / baseline_params, self.requested)
        assert self.fraction is not None
        return Budget(int(self.fraction * baseline_params), self.fraction, self.requested)


def parse_budget(text: str | float) -> BudgetSpec:
    """Read a budget: a fraction in (0, 1] of the baseline, or a whole number of parameters ≥ 1.

    Raises:
        UserInputError: for anything else.
    """
    raw = str(text).strip()
    valid = "valid: a fraction in (0, 1] such as 0.1, or a whole number of parameters ≥ 1"
    if _WHOLE.match(raw):
        if int(raw) < 1:
            raise UserInputError(f"budget {raw!r} is invalid; {valid}")
        return BudgetSpec(raw, absolute=int(raw))
    try:
        fraction = float(raw)
    except ValueError:
        raise UserInputError(f"budget {raw!r} is not a number; {valid}") from None
    if not 0.0 < fraction <= 1.0:
        raise UserInputError(f"budget {raw!r} is out of range; {valid}")
    return BudgetSpec(raw, fraction=fraction)


def choice_size(geom: LayerGeometry, choice: LayerChoice, dtype_bytes: int = 4) -> ModelSize:
    """Params, bytes and FLOPs of one layer built as ``choice`` (closed form, nothing built).

    The low-rank part is priced by its method; a sparse residual adds its kept values, their
    index (the cheaper of CSR and a bitmap) and one multiply-add per kept entry and output
    position. A layer that is only sparsified keeps its bias in the sparse stage.
    """
    params = bytes_ = flops = 0
    if choice.method != NONE:
        assert choice.rank is not None  # guaranteed by LayerChoice
        method = get_method(choice.method)
        options = {k: v for k, v in choice.options if k in method.structural_options}
        params = method.params(geom, choice.rank, **options)
        bytes_ = method.bytes(geom, choice.rank, dtype_bytes, **options)
        flops = method.flops(geom, choice.rank, **options)
    elif choice.sparsity:
        params, bytes_ = geom.bias_params, geom.bias_params * dtype_bytes
    else:
        return ModelSize(geom.dense_params, geom.dense_bytes(dtype_bytes), geom.dense_flops)
    if choice.sparsity:
        params += sparse_params(geom, choice.sparsity)
        bytes_ += sparse_bytes(geom, choice.sparsity, dtype_bytes)
        flops += sparse_flops(geom, choice.sparsity)
    return ModelSize(params, bytes_, flops)


Request = tuple[str, float]
"""What a search samples for one layer: (method, rank as a fraction of the layer's params)."""


class Pricer:
    """Prices plans in closed form and repairs requests that break the budget.

    Args:
        targets: the compressible layers with their geometry.
        baseline: measured size of the dense model.
        dtype_bytes: bytes per stored value (4 for float32).
    """

    def __init__(self, targets: Sequence[TargetLayer], baseline: ModelSize,
                 dtype_bytes: int = 4) -> None:
        self.targets = {t.name: t for t in targets}
        self.baseline = baseline
        self.dtype_bytes = dtype_bytes

    def size(self, plan: Plan) -> ModelSize:
        """Params, bytes and FLOPs the built model will have."""
        params, bytes_, flops = self.baseline.params, self.baseline.bytes, self.baseline.flops
        for name, choice in plan.compressed().items():
            geom = self.targets[name].geometry
            layer = choice_size(geom, choice, self.dtype_bytes)
            params += layer.params - geom.dense_params
            bytes_ += layer.bytes - geom.dense_bytes(self.dtype_bytes)
            flops += layer.flops - geom.dense_flops
        return ModelSize(params, bytes_, flops)

    def resolve(self, requests: Mapping[str, Request], scale: float = 1.0) -> Plan:
        """Concrete ranks for ``requests``, every fraction multiplied by ``scale``."""
        layers = {}
        for name, (method_name, fraction) in requests.items():
            if method_name == NONE:
                layers[name] = LayerChoice()
                continue
            geom = self.targets[name].geometry
            method = get_method(method_name)
            rank = method.rank_for_params(geom, fraction * scale * geom.dense_params)
            layers[name] = LayerChoice(method_name, rank)
        return Plan(layers)

    def smallest(self, allowed: Mapping[str, Sequence[str]]) -> int:
        """The fewest parameters reachable when every layer takes its cheapest allowed choice."""
        params = self.baseline.params
        for name, methods in allowed.items():
            geom = self.targets[name].geometry
            cheapest = min(
                (get_method(m).params(geom, get_method(m).min_rank(geom))
                 for m in methods if m != NONE),
                default=geom.dense_params,
            )
            params -= geom.dense_params - min(cheapest, geom.dense_params)
        return params

    def check_reachable(self, budget: Budget, allowed: Mapping[str, Sequence[str]]) -> None:
        """Fail up front when no plan of the space can meet ``budget``."""
        smallest = self.smallest(allowed)
        if smallest > budget.limit:
            raise UserInputError(
                f"budget {budget.requested} ({budget.limit} params) cannot be met: the smallest "
                f"reachable model has {smallest} params; valid: a budget ≥ {smallest} "
                f"(≥ {smallest / self.baseline.params:.4f} as a fraction)"
            )

    def fit(self, requests: Mapping[str, Request], budget: Budget,
            allowed: Mapping[str, Sequence[str]]) -> Plan:
        """The plan for ``requests``, repaired so that it meets ``budget``.

        Repair keeps the sampled methods and shrinks every rank by one common factor (found by
        bisection on the closed-form size). If even the smallest ranks do not fit, the largest
        dense layers are switched to their cheapest allowed method, one at a time.
        """
        plan = self.resolve(requests)
        if self.size(plan).params <= budget.limit:
            return plan
        current = dict(requests)
        dense = sorted((n for n, (m, _) in current.items() if m == NONE),
                       key=lambda n: -self.targets[n].geometry.dense_params)
        while True:
            if self.size(self.resolve(current, 1e-9)).params <= budget.limit:
                return self._shrink(current, budget)
            if not dense:
                break
            name = dense.pop(0)
            methods = [m for m in allowed.get(name, ()) if m != NONE]
            if methods:
                geom = self.targets[name].geometry
                method = min(methods, key=lambda m: get_method(m).params(
                    geom, get_method(m).min_rank(geom)))
                current[name] = (method, 1.0)
        raise UserInputError(
            f"budget {budget.requested} ({budget.limit} params) cannot be met by this space"
        )

    def _shrink(self, requests: Mapping[str, Request], budget: Budget) -> Plan:
        low, high = 0.0, 1.0  # invariant: scale `low` fits (as 1e-9), `high` does not
        for _ in range(40):
            middle = (low + high) / 2
            if self.size(self.resolve(requests, middle)).params <= budget.limit:
                low = middle
            else:
                high = middle
        return self.resolve(requests, max(low, 1e-9))
