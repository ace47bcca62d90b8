"""Hard size budgets: parsing, closed-form pricing of plans, and repair before a trial runs."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from lpsd_search.decompositions import LayerGeometry
from lpsd_search.decompositions.base import get_method
from lpsd_search.errors import UserInputError
from lpsd_search.lpsd.sparse import sparse_bytes, sparse_flops, sparse_params
from lpsd_search.plan.choices import NONE, LayerChoice, Plan
from lpsd_search.plan.layers import TargetLayer
from lpsd_search.plan.measure import ModelSize

_WHOLE = re.compile(r"^\s*\d+\s*$")
METRICS = ("params", "bytes", "flops")
SPARSE = "sparse"
"""Pseudo-method of a search space: no low-rank part, only the sparse residual (pruning)."""
TINY = 1e-9


@dataclass(frozen=True)
class Budget:
    """An upper bound on one size metric of the compressed model.

    Attributes:
        limit: the largest allowed value of ``metric``.
        fraction: ``limit`` as a fraction of the baseline's value.
        requested: the text the user gave (``"0.1"``, ``"50000"``, ``"flops=0.3"``).
        metric: ``params``, ``bytes`` or ``flops``.
    """

    limit: int
    fraction: float
    requested: str
    metric: str = "params"

    def to_dict(self) -> dict[str, object]:
        return {"metric": self.metric, "requested": self.requested, "limit": self.limit,
                "fraction": self.fraction}

    def allows(self, size: ModelSize) -> bool:
        """Whether ``size`` is within this budget."""
        return getattr(size, self.metric) <= self.limit

    def excess(self, size: ModelSize) -> float:
        """Constraint value: ≤ 0 when ``size`` is within budget (relative to the limit)."""
        return (getattr(size, self.metric) - self.limit) / max(self.limit, 1)


@dataclass(frozen=True)
class BudgetSpec:
    """A budget as the user wrote it, checked but not yet tied to a model.

    Attributes:
        requested: the text (``"0.1"``, ``"50000"``, ``"bytes=0.05"``).
        fraction: set for a fraction of the baseline's value.
        absolute: set for an absolute value.
        metric: ``params``, ``bytes`` or ``flops``.
    """

    requested: str
    fraction: float | None = None
    absolute: int | None = None
    metric: str = "params"

    def resolve(self, baseline: int | ModelSize) -> Budget:
        """The budget for a baseline of this size (an int is its parameter count)."""
        if isinstance(baseline, ModelSize):
            base = int(getattr(baseline, self.metric))
        else:
            if self.metric != "params":
                raise ValueError("a non-params budget needs the baseline's ModelSize")
            base = int(baseline)
        if self.absolute is not None:
            if self.absolute > base:  # as a fraction above 1, which parse_budget refuses
                raise UserInputError(
                    f"budget {self.requested!r} is more than the baseline's {base:,} "
                    f"{self.metric}, so nothing would be compressed; valid: at most {base}, or "
                    "a fraction in (0, 1]")
            return Budget(self.absolute, self.absolute / base, self.requested, self.metric)
        assert self.fraction is not None
        return Budget(int(self.fraction * base), self.fraction, self.requested, self.metric)


def parse_budget(text: str | float) -> BudgetSpec:
    """Read a budget: ``[METRIC=]VALUE`` where METRIC is params (default), bytes or flops and
    VALUE a fraction in (0, 1] of the baseline or a whole number ≥ 1.

    Raises:
        UserInputError: for anything else.
    """
    raw = str(text).strip()
    metric, _, value = raw.rpartition("=")
    metric = metric.strip() or "params"
    if metric not in METRICS:
        raise UserInputError(
            f"budget {raw!r} names unknown metric {metric!r}; valid: {', '.join(METRICS)}"
        )
    value = value.strip()
    valid = (f"valid: [{'|'.join(METRICS)}=]VALUE with VALUE a fraction in (0, 1] such as 0.1, "
             "or a whole number ≥ 1")
    if _WHOLE.match(value):
        if int(value) < 1:
            raise UserInputError(f"budget {raw!r} is invalid; {valid}")
        return BudgetSpec(raw, absolute=int(value), metric=metric)
    try:
        fraction = float(value)
    except ValueError:
        raise UserInputError(f"budget {raw!r} is not a number; {valid}") from None
    if not 0.0 < fraction <= 1.0:
        raise UserInputError(f"budget {raw!r} is out of range; {valid}")
    return BudgetSpec(raw, fraction=fraction, metric=metric)


def parse_budgets(texts: Sequence[str | float]) -> list[BudgetSpec]:
    """Several budgets; at most one per metric."""
    specs = [parse_budget(text) for text in texts]
    if not specs:
        raise UserInputError("no budget given; valid: at least one --budget such as 0.1")
    metrics = [spec.metric for spec in specs]
    for metric in METRICS:
        if metrics.count(metric) > 1:
            raise UserInputError(f"two budgets on {metric}; valid: at most one per metric")
    return specs


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


class Request(NamedTuple):
    """What a search asks of one layer, before repair.

    Attributes:
        method: a registered method, ``"none"`` (dense) or ``"sparse"`` (sparse residual only).
        fraction: the low-rank part's params as a fraction of the dense layer's.
        sparsity: fraction of the dense weight's entries kept in the sparse residual.
        alternating: fit L and S by alternation (ALPSD).
        options: the method's options as ``(name, value)`` pairs.
    """

    method: str
    fraction: float = 1.0
    sparsity: float = 0.0
    alternating: bool = False
    options: tuple[tuple[str, Any], ...] = ()


Budgets = Budget | Sequence[Budget]


def as_budgets(budgets: Budgets) -> list[Budget]:
    """One budget or several, as a list."""
    return [budgets] if isinstance(budgets, Budget) else list(budgets)


def _describe(budgets: Sequence[Budget]) -> str:
    return ", ".join(f"{b.metric} ≤ {b.limit:,} ({b.requested})" for b in budgets)


class Pricer:
    """Prices plans in closed form and repairs requests that break the budgets.

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

    def choice(self, name: str, request: Request | tuple[Any, ...], scale: float = 1.0,
               ) -> LayerChoice:
        """The concrete choice for one layer's request, rank and sparsity times ``scale``."""
        request = Request(*request)
        sparsity = min(1.0, max(request.sparsity * scale, 0.0))
        if request.method in (NONE, SPARSE):
            if request.method == NONE or sparsity <= 0.0:
                return LayerChoice()
            return LayerChoice(NONE, sparsity=max(sparsity, TINY))
        geom = self.targets[name].geometry
        method = get_method(request.method)
        options = dict(request.options)
        structural = {k: v for k, v in options.items() if k in method.structural_options}
        rank = method.rank_for_params(geom, request.fraction * scale * geom.dense_params,
                                      **structural)
        alternating = request.alternating and sparsity > 0.0
        return LayerChoice(request.method, rank, sparsity, alternating, tuple(options.items()))

    def resolve(self, requests: Mapping[str, Request | tuple[Any, ...]],
                scale: float = 1.0) -> Plan:
        """Concrete ranks for ``requests``, every fraction and sparsity multiplied by ``scale``."""
        return Plan({name: self.choice(name, request, scale)
                     for name, request in requests.items()})

    def _cheapest(self, name: str, methods: Sequence[str]) -> Request | None:
        geom = self.targets[name].geometry
        options: list[tuple[int, Request]] = []
        for m in methods:
            if m == SPARSE:
                options.append((geom.bias_params, Request(SPARSE, 1.0, TINY)))
            elif m != NONE:
                method = get_method(m)
                options.append((method.params(geom, method.min_rank(geom)), Request(m, TINY)))
        return min(options, key=lambda item: item[0])[1] if options else None

    def smallest_size(self, allowed: Mapping[str, Sequence[str]]) -> ModelSize:
        """Size of the model where every layer takes its cheapest allowed choice."""
        requests = {}
        for name, methods in allowed.items():
            cheapest = self._cheapest(name, methods)
            requests[name] = cheapest if cheapest is not None else Request(NONE)
        return self.size(self.resolve(requests))

    def smallest(self, allowed: Mapping[str, Sequence[str]]) -> int:
        """The fewest parameters reachable when every layer takes its cheapest allowed choice."""
        return min(self.smallest_size(allowed).params, self.baseline.params)

    def check_reachable(self, budgets: Budgets, allowed: Mapping[str, Sequence[str]]) -> None:
        """Fail up front when no plan of the space can meet every budget."""
        smallest = self.smallest_size(allowed)
        for budget in as_budgets(budgets):
            low = getattr(smallest, budget.metric)
            if low > budget.limit:
                base = getattr(self.baseline, budget.metric)
                raise UserInputError(
                    f"budget {budget.requested} ({budget.limit} {budget.metric}) cannot be met: "
                    f"the smallest reachable model has {low} {budget.metric}; valid: a budget "
                    f"≥ {low} (≥ {low / base:.4f} as a fraction)"
                )

    def fits(self, plan: Plan, budgets: Budgets) -> bool:
        """Whether ``plan`` meets every budget (closed form)."""
        size = self.size(plan)
        return all(budget.allows(size) for budget in as_budgets(budgets))

    def fit(self, requests: Mapping[str, Request | tuple[Any, ...]], budgets: Budgets,
            allowed: Mapping[str, Sequence[str]]) -> Plan:
        """The plan for ``requests``, repaired so that it meets every budget.

        Repair keeps the sampled methods and shrinks every rank and every sparsity by one
        common factor (found by bisection on the closed-form sizes). If even the smallest ones
        do not fit, the largest dense layers are switched to their cheapest allowed method,
        one at a time.
        """
        budgets = as_budgets(budgets)
        current = {name: Request(*request) for name, request in requests.items()}
        plan = self.resolve(current)
        if self.fits(plan, budgets):
            return plan
        dense = sorted((n for n, r in current.items() if r.method == NONE),
                       key=lambda n: -self.targets[n].geometry.dense_params)
        while True:
            if self.fits(self.resolve(current, TINY), budgets):
                return self._shrink(current, budgets)
            if not dense:
                break
            name = dense.pop(0)
            cheapest = self._cheapest(name, allowed.get(name, ()))
            if cheapest is not None:
                # Start from a full-size request; the shrink below scales it down to fit.
                current[name] = cheapest._replace(
                    fraction=1.0, sparsity=0.01 if cheapest.method == SPARSE else 0.0)
        raise UserInputError(f"budgets {_describe(budgets)} cannot be met by this space")

    def _shrink(self, requests: Mapping[str, Request], budgets: Sequence[Budget]) -> Plan:
        low, high = 0.0, 1.0  # invariant: scale `low` fits (as TINY), `high` does not
        for _ in range(40):
            middle = (low + high) / 2
            if self.fits(self.resolve(requests, middle), budgets):
                low = middle
            else:
                high = middle
        return self.resolve(requests, max(low, TINY))


def plan_requests(pricer: Pricer, plan: Plan,
                  allowed: Mapping[str, Sequence[str]]) -> dict[str, Request]:
    """A concrete plan as requests (rank fraction of each layer's parameters), for a repair."""
    requests = {}
    for name in allowed:
        choice = plan.layers.get(name)
        if choice is None or (choice.method == NONE and not choice.sparsity):
            requests[name] = Request(NONE)
        elif choice.method == NONE:
            requests[name] = Request(SPARSE, 1.0, choice.sparsity)
        else:
            assert choice.rank is not None
            geom = pricer.targets[name].geometry
            method = get_method(choice.method)
            structural = {k: v for k, v in choice.options if k in method.structural_options}
            fraction = method.params(geom, choice.rank, **structural) / geom.dense_params
            requests[name] = Request(choice.method, fraction, choice.sparsity,
                                     choice.alternating, choice.options)
    return requests
