"""Whole-model LPSD without a search: Sparsification and ALPSD (Lin, NTHU thesis; PAKDD 2024).

Both start the same way. The compressible layers' parameter budget (what the budget leaves after
everything that is not compressed) is split: ``1 − sparse_share`` for the low-rank parts, chosen
by error-balanced allocation (``allocation.balanced_ranks``, the ALDS idea), and the rest for
the sparse residuals. Then:

* **Sparsification** (``lpsd``): ``S`` is the largest-magnitude entries of all residuals
  ``W − L`` together, selected by one *global* threshold (global L1 sparsification), so each
  layer's sparsity emerges from the threshold.
* **ALPSD** (``alpsd``): the same global selection fixes each layer's count; every layer is then
  fitted by alternating ``L ← lowrank(W − S)``, ``S ← top(W − L)``; finally **local selection**
  visits the layers in turn and tries moving a share of one layer's entries to (or from) the
  layer that gains most (loses least) at the same total, keeping a move only when the objective
  improves: the validation loss of the compressed model when data are given, else the sum of
  the layers' squared relative errors.
* ``lowrank``: the allocation alone, with the whole budget (for comparisons).

The result is a ``Plan`` that ``apply_plan`` rebuilds exactly and a search can start from.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from lpsd_search.config import CompressConfig
from lpsd_search.decompositions import LayerGeometry
from lpsd_search.decompositions.base import get_method, prepare_weight
from lpsd_search.decompositions.ranks import suggest_rank
from lpsd_search.errors import UserInputError
from lpsd_search.lpsd.layer import fit_low_rank_plus_sparse
from lpsd_search.plan.budget import Budget, Pricer
from lpsd_search.plan.choices import LayerChoice, Plan
from lpsd_search.plan.layers import find_layers
from lpsd_search.plan.measure import measure
from lpsd_search.procedures.allocation import Candidate, allocate, ladder
from lpsd_search.procedures.scoring import CopyTracker, TrackingObjective

logger = logging.getLogger(__name__)

@dataclass
class _Layer:
    """Working state of one compressible layer."""

    module: nn.Module
    geom: LayerGeometry
    weight: torch.Tensor
    choice: LayerChoice
    kept: int = 0
    residual: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    mask: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))
    error: float = 0.0
    approx: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    """``L + S`` as one dense weight, the one the rebuilt layer computes with."""


@dataclass(frozen=True)
class CompressResult:
    """What a procedure produced.

    Attributes:
        plan: per-layer method, rank, sparsity (and the alternating flag for ALPSD).
        errors: relative weight error ``‖W − L − S‖ / ‖W‖`` per layer.
        objective: the final objective (validation loss, or the summed squared errors).
        moves: local-selection moves that were kept, as ``(from layer, to layer, entries)``.
    """

    plan: Plan
    errors: dict[str, float]
    objective: float
    moves: tuple[tuple[str, str, int], ...]


def _fit(layer: _Layer, method: str, alternating: bool) -> None:
    """(Re)fit ``L + S`` of one layer at its current rank and count.

    The alternating fit uses the library's default rounds and tolerance, which is what
    ``apply_plan`` uses when it rebuilds the plan, so the rebuilt model is this one.
    """
    assert layer.choice.rank is not None
    fit = fit_low_rank_plus_sparse(layer.weight, layer.geom, method, layer.choice.rank,
                                   layer.kept, alternating=alternating)
    low = get_method(method).reconstruct(fit.factors, layer.geom, layer.choice.rank)
    layer.residual, layer.mask = layer.weight - low, fit.mask
    layer.approx = low + fit.residual
    layer.error = float((layer.residual - fit.residual).norm() / layer.weight.norm())
    entries = layer.weight.numel()
    layer.choice = replace(layer.choice, sparsity=layer.kept / entries,
                           alternating=alternating and layer.kept > 0)


def _global_counts(layers: dict[str, _Layer], total: int) -> dict[str, int]:
    """How many of the ``total`` largest residual magnitudes (over all layers) each layer holds."""
    if total <= 0:
        return dict.fromkeys(layers, 0)
    magnitudes = torch.cat([layer.residual.abs().flatten().cpu() for layer in layers.values()])
    total = min(total, magnitudes.numel())
    threshold = magnitudes.topk(total, sorted=False).values.min()
    counts = {name: int((layer.residual.abs() > threshold).sum())
              for name, layer in layers.items()}
    # Entries equal to the threshold fill what is left, in layer order (ties are rare).
    left = total - sum(counts.values())
    for name, layer in layers.items():
        ties = int((layer.residual.abs() == threshold).sum())
        counts[name] += min(ties, left)
        left -= min(ties, left)
    return counts


class LadderCache:
    """Ladders and VBMF sizes of one model's layers, computed once and reused.

    A search builds many plans of the same model; a ladder costs one factorisation per rung
    (seconds for CP), so the runner keeps one cache for all of them.
    """

    def __init__(self) -> None:
        self._ladders: dict[tuple[str, str], list[Candidate]] = {}
        self._vbmf: dict[tuple[str, str], float] = {}

    def ladder(self, name: str, module: nn.Module, method: str) -> list[Candidate]:
        key = (name, method)
        if key not in self._ladders:
            self._ladders[key] = ladder(module, method)
        return self._ladders[key]

    def vbmf_params(self, name: str, module: nn.Module, geom: LayerGeometry,
                    method: str) -> float:
        """Parameters of the layer at the rank EVBMF finds for ``method``."""
        key = (name, method)
        if key not in self._vbmf:
            rank = suggest_rank(module, method, "vbmf")
            self._vbmf[key] = float(get_method(method).params(geom, rank))
        return self._vbmf[key]


def _methods(pricer: Pricer, config: CompressConfig,
             methods: Mapping[str, str] | None) -> dict[str, str]:
    """Each compressed layer's low-rank method: the given ones, else ``config.low_rank``
    wherever it applies."""
    if methods is not None:
        return {name: method for name, method in methods.items() if name in pricer.targets}
    method = get_method(config.low_rank)
    return {name: config.low_rank for name, target in pricer.targets.items()
            if method.supports(target.geometry)}


def compress_model(model: nn.Module, example: torch.Tensor, budget: Budget,
                   config: CompressConfig,
                   objective: Callable[[nn.Module], float] | None = None, *,
                   methods: Mapping[str, str] | None = None,
                   weights: Mapping[str, float] | None = None,
                   ladders: LadderCache | None = None) -> CompressResult:
    """Run Sparsification, ALPSD or low-rank allocation on ``model`` for ``budget``.

    Args:
        model: the trained dense model (not modified).
        example: one input batch (fixes the spatial sizes, as in a search).
        budget: the parameter budget of the whole compressed model.
        config: the procedure and its settings (``allocation`` picks the rank rule).
        objective: lower is better, measured on a compressed model (e.g. validation loss);
            used by ALPSD's local selection. None uses the summed squared relative errors.
        methods: per layer the low-rank method to use; layers left out stay dense. Default:
            ``config.low_rank`` on every layer it can compress.
        weights: per-layer multipliers of the error target of the ``balanced`` rule.
        ladders: ladders kept between calls (a search's plans share them).

    Raises:
        UserInputError: the budget cannot hold the uncompressed layers plus the smallest
            low-rank parts.
    """
    pricer = Pricer(find_layers(model, example), measure(model, example))
    modules = dict(model.named_modules())
    chosen = _methods(pricer, config, methods)
    layers = {name: _Layer(modules[name], pricer.targets[name].geometry,
                           prepare_weight(modules[name]), LayerChoice())
              for name in chosen}
    if not layers:
        raise UserInputError(f"{config.low_rank} cannot compress any layer of this model")
    ladders = ladders if ladders is not None else LadderCache()
    fixed = pricer.baseline.params - sum(layer.geom.dense_params for layer in layers.values())
    available = budget.limit - fixed
    steps = {name: ladders.ladder(name, layer.module, chosen[name])
             for name, layer in layers.items()}
    share = _sparse_share(config, steps, available)
    scale = None
    if config.allocation == "uniform":
        scale = {name: float(layer.geom.dense_params) for name, layer in layers.items()}
    elif config.allocation == "vbmf":
        scale = {name: ladders.vbmf_params(name, layer.module, layer.geom, chosen[name])
                 for name, layer in layers.items()}
    allocated = allocate(steps, int((1 - share) * available), config.allocation,
                         weights=weights, scale=scale)
    for name, candidate in allocated.items():
        layers[name].choice = LayerChoice(chosen[name], candidate.rank)
        _fit(layers[name], chosen[name], False)
    sparse_total = available - sum(c.params for c in allocated.values())
    if config.procedure != "lowrank":
        counts = _global_counts(layers, sparse_total)
        alternating = config.procedure == "alpsd"
        for name, layer in layers.items():
            layer.kept = counts[name]
            _fit(layer, chosen[name], alternating)
    score = _objective_fn(model, layers, objective)
    current = score()
    moves: list[tuple[str, str, int]] = []
    if config.procedure == "alpsd":
        for _ in range(config.local_passes):
            current = _local_selection(layers, chosen, config, score, current, moves)
    plan = Plan({name: layer.choice for name, layer in layers.items()})
    logger.info("%s: %d params predicted, objective %.4f, %d local moves", config.procedure,
                pricer.size(plan).params, current, len(moves))
    return CompressResult(plan, {n: layer.error for n, layer in layers.items()}, current,
                          tuple(moves))


def _sparse_share(config: CompressConfig, steps: Mapping[str, Sequence[Candidate]],
                  available: int) -> float:
    """The sparse part's share of ``available``: the configured one, shrunk when the low-rank
    part's cheapest ranks would not fit beside it (small models at high compression)."""
    share = 0.0 if config.procedure == "lowrank" else config.sparse_share
    cheapest = sum(candidates[0].params for candidates in steps.values())
    if share > 0 and cheapest > (1 - share) * available and cheapest < available:
        shrunk = max(0.0, 1 - cheapest / available)
        logger.info("sparse share %.2f leaves too little for the low-rank part; using %.3f",
                    share, shrunk)
        return shrunk
    return share


def _objective_fn(model: nn.Module, layers: dict[str, _Layer],
                  objective: Callable[[nn.Module], float] | None) -> Callable[[], float]:
    """The objective of the current fits.

    With data it scores one dense copy of ``model`` whose compressed layers carry ``L + S`` as
    their weight: convolution is linear in its weight, so this is the model ``apply_plan``
    builds (to rounding), at a dense layer's cost instead of a low-rank stage plus a dense
    sparse branch, and without rebuilding a model per candidate move. Only the layers whose
    fit changed since the last score are written, and a ``TrackingObjective`` recomputes only
    what they feed.
    """
    if objective is None:
        return lambda: sum(layer.error**2 for layer in layers.values())
    tracker = (objective.tracking(model) if isinstance(objective, TrackingObjective)
               else CopyTracker(model, objective))
    written: dict[str, torch.Tensor] = {}  # each layer's fit now in the scored copy

    def score() -> float:
        for name, layer in layers.items():
            if written.get(name) is not layer.approx:
                tracker.set_weight(name, layer.approx)
                written[name] = layer.approx
        return tracker.loss()

    return score


def _room(layer: _Layer) -> int:
    """Entries of the layer's weight that its sparse part does not hold yet."""
    return layer.weight.numel() - layer.kept


def _gain(layer: _Layer, entries: int) -> float:
    """Relative squared error removed by keeping ``entries`` more residual entries."""
    outside = (layer.residual * ~layer.mask).abs().flatten()
    entries = min(entries, outside.numel())
    top = outside.topk(entries, sorted=False).values if entries else outside[:0]
    return float(top.square().sum() / layer.weight.square().sum())


def _loss(layer: _Layer, entries: int) -> float:
    """Relative squared error added by dropping the ``entries`` smallest kept entries."""
    kept = layer.residual[layer.mask].abs()
    entries = min(entries, kept.numel())
    low = kept.topk(entries, largest=False, sorted=False).values if entries else kept[:0]
    return float(low.square().sum() / layer.weight.square().sum())


def _local_selection(layers: dict[str, _Layer], methods: Mapping[str, str],
                     config: CompressConfig, score: Callable[[], float], current: float,
                     moves: list[tuple[str, str, int]]) -> float:
    """One pass of ALPSD's local selection; returns the objective after it."""
    for name in sorted(layers, key=lambda n: -layers[n].geom.dense_params):
        layer = layers[name]
        step = max(1, round(config.local_step * max(layer.kept, 1)))
        others = [n for n in layers if n != name]
        if not others:
            break
        candidates = []
        # A layer can only receive entries it has room for: ``kept`` never exceeds the weight's
        # entries (a small layer such as a 1-channel stem fills up; topk would then fail).
        receivers = [n for n in others if _room(layers[n]) >= step]
        if layer.kept >= step and receivers:  # give: to the layer that gains most
            partner = max(receivers, key=lambda n: _gain(layers[n], step))
            candidates.append((name, partner))
        donors = [n for n in others if layers[n].kept >= step]
        if donors and _room(layer) >= step:  # take: from the layer that loses least
            partner = min(donors, key=lambda n: _loss(layers[n], step))
            candidates.append((partner, name))
        for source, target in candidates:
            saved = {n: replace(layers[n]) for n in (source, target)}
            layers[source].kept -= step
            layers[target].kept += step
            for n in (source, target):
                _fit(layers[n], methods[n], True)
            trial = score()
            if trial < current:
                current = trial
                moves.append((source, target, step))
                logger.debug("local move %s -> %s (%d): objective %.5f", source, target,
                             step, trial)
                break
            layers.update(saved)  # rejected: both layers back to their fits before the move
    return current
