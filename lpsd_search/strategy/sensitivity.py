"""Per-layer sensitivity: how much the validation loss rises when one layer alone is compressed.

The signal AIMET's greedy per-layer selection uses, measured once per method family and kept by
the search: each layer is decomposed on its own at ``PROBE_FRACTION`` of its parameters and the
fixed validation subset's loss is compared with the dense model's. A policy's ``sensitivity``
exponent turns it into per-layer multipliers of the error target of the error-balanced
allocation, so that layers the accuracy depends on keep more of their rank.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping

import torch
from torch import nn

from lpsd_search.decompositions.base import get_method
from lpsd_search.decompositions.cache import FactorCache
from lpsd_search.plan.apply import apply_plan
from lpsd_search.plan.choices import LayerChoice, Plan
from lpsd_search.plan.layers import TargetLayer

logger = logging.getLogger(__name__)

PROBE_FRACTION = 0.1
"""Each layer is compressed to this share of its parameters to measure its sensitivity."""

FLOOR = 1e-4
"""Losses rises below this (noise of a fixed subset) count as this."""

WEIGHT_RANGE = (0.1, 10.0)
"""Error-target multipliers are clipped to this range."""


def layer_sensitivity(model: nn.Module, methods: Mapping[str, str],
                      targets: Mapping[str, TargetLayer],
                      loss: Callable[[nn.Module], float],
                      cache: FactorCache | None = None) -> dict[str, float]:
    """The validation-loss rise of compressing each layer alone with its method.

    Args:
        model: the dense model (not modified).
        methods: per layer the low-rank method to probe with.
        targets: the model's compressible layers by name (their geometries).
        loss: the validation loss of a model (``trial.evaluate.validation_loss``).
        cache: factors shared with the search's later builds.
    """
    dense = loss(model)
    rises = {}
    with torch.no_grad():
        for name, method in methods.items():
            geom = targets[name].geometry
            rank = get_method(method).resolve_rank(geom, PROBE_FRACTION)
            probe = apply_plan(model, Plan({name: LayerChoice(method, rank)}), cache)
            rises[name] = max(loss(probe) - dense, FLOOR)
    logger.info("layer sensitivity (validation loss rise at %.0f%% of a layer): %s",
                100 * PROBE_FRACTION, {n: round(v, 4) for n, v in rises.items()})
    return rises


def sensitivity_weights(rises: Mapping[str, float], exponent: float) -> dict[str, float]:
    """Error-target multipliers ``(rise / geometric mean) ** -exponent``, clipped.

    Exponent 0 gives every layer weight 1 (plain error balance); 1 holds a layer twice as
    sensitive as the typical one to half the error.
    """
    if not rises or exponent == 0:
        return dict.fromkeys(rises, 1.0)
    mean = math.exp(sum(math.log(v) for v in rises.values()) / len(rises))
    low, high = WEIGHT_RANGE
    return {name: min(max((value / mean) ** -exponent, low), high)
            for name, value in rises.items()}
