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
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import torch
from torch import nn

from lpsd_search.config import CompressConfig
from lpsd_search.decompositions import LayerGeometry
from lpsd_search.decompositions.base import get_method, prepare_weight
from lpsd_search.errors import UserInputError
from lpsd_search.lpsd.layer import fit_low_rank_plus_sparse
from lpsd_search.plan.apply import apply_plan
from lpsd_search.plan.budget import Budget, Pricer
from lpsd_search.plan.choices import LayerChoice, Plan
from lpsd_search.plan.layers import find_layers
from lpsd_search.plan.measure import measure
from lpsd_search.procedures.allocation import balanced_ranks, ladder

if TYPE_CHECKING:
    from lpsd_search.decompositions.cache import FactorCache

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


def compress_model(model: nn.Module, example: torch.Tensor, budget: Budget,
                   config: CompressConfig,
                   objective: Callable[[nn.Module], float] | None = None,
                   cache: FactorCache | None = None) -> CompressResult:
    """Run Sparsification, ALPSD or low-rank allocation on ``model`` for ``budget``.

    Args:
        model: the trained dense model (not modified).
        example: one input batch (fixes the spatial sizes, as in a search).
        budget: the parameter budget of the whole compressed model.
        config: the procedure and its settings.
        objective: lower is better, measured on a compressed model (e.g. validation loss);
            used by ALPSD's local selection. None uses the summed squared relative errors.
        cache: factors shared with later builds of the plan.

    Raises:
        UserInputError: the budget cannot hold the uncompressed layers plus the smallest
            low-rank parts.
    """
    method = get_method(config.low_rank)
    pricer = Pricer(find_layers(model, example), measure(model, example))
    modules = dict(model.named_modules())
    layers = {name: _Layer(modules[name], target.geometry, prepare_weight(modules[name]),
                           LayerChoice())
              for name, target in pricer.targets.items() if method.supports(target.geometry)}
    if not layers:
        raise UserInputError(f"{config.low_rank} cannot compress any layer of this model")
    fixed = pricer.baseline.params - sum(layer.geom.dense_params for layer in layers.values())
    available = budget.limit - fixed
    share = 0.0 if config.procedure == "lowrank" else config.sparse_share
    ladders = {name: ladder(layer.module, config.low_rank) for name, layer in layers.items()}
    allocated = balanced_ranks(ladders, int((1 - share) * available))
    for name, candidate in allocated.items():
        layers[name].choice = LayerChoice(config.low_rank, candidate.rank)
        _fit(layers[name], config.low_rank, False)
    sparse_total = available - sum(c.params for c in allocated.values())
    if config.procedure != "lowrank":
        counts = _global_counts(layers, sparse_total)
        alternating = config.procedure == "alpsd"
        for name, layer in layers.items():
            layer.kept = counts[name]
            _fit(layer, config.low_rank, alternating)
    score = _objective_fn(model, layers, objective, cache)
    current = score()
    moves: list[tuple[str, str, int]] = []
    if config.procedure == "alpsd":
        for _ in range(config.local_passes):
            current = _local_selection(layers, config, score, current, moves)
    plan = Plan({name: layer.choice for name, layer in layers.items()})
    logger.info("%s: %d params predicted, objective %.4f, %d local moves", config.procedure,
                pricer.size(plan).params, current, len(moves))
    return CompressResult(plan, {n: layer.error for n, layer in layers.items()}, current,
                          tuple(moves))


def _objective_fn(model: nn.Module, layers: dict[str, _Layer],
                  objective: Callable[[nn.Module], float] | None,
                  cache: FactorCache | None) -> Callable[[], float]:
    def score() -> float:
        if objective is None:
            return sum(layer.error**2 for layer in layers.values())
        plan = Plan({name: layer.choice for name, layer in layers.items()})
        return objective(apply_plan(model, plan, cache))

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


def _local_selection(layers: dict[str, _Layer], config: CompressConfig,
                     score: Callable[[], float], current: float,
                     moves: list[tuple[str, str, int]]) -> float:
    """One pass of ALPSD's local selection; returns the objective after it."""
    method = config.low_rank
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
            saved = {n: (layers[n].kept, layers[n].residual, layers[n].mask, layers[n].error,
                         layers[n].choice) for n in (source, target)}
            layers[source].kept -= step
            layers[target].kept += step
            for n in (source, target):
                _fit(layers[n], method, True)
            trial = score()
            if trial < current:
                current = trial
                moves.append((source, target, step))
                logger.debug("local move %s -> %s (%d): objective %.5f", source, target,
                             step, trial)
                break
            for n, (kept, residual, mask, error, choice) in saved.items():
                layers[n].kept, layers[n].residual, layers[n].mask = kept, residual, mask
                layers[n].error, layers[n].choice = error, choice
    return current
