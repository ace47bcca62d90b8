"""Applying a plan to a model: factorised copies for trials, empty skeletons for loading.

``apply_plan`` decomposes every planned layer of a copy of the dense model; ``build_skeleton``
builds the same structure with zero weights and no factorisation, which is all that loading a
saved compressed model needs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from lpsd_search.decompositions.base import get_method
from lpsd_search.errors import UserInputError
from lpsd_search.lpsd.layer import decompose_layer
from lpsd_search.lpsd.sparse import AddBranches, sparse_stage
from lpsd_search.plan.choices import NONE, LayerChoice, Plan
from lpsd_search.plan.layers import set_submodule

if TYPE_CHECKING:
    from lpsd_search.decompositions.cache import FactorCache


def apply_plan(model: nn.Module, plan: Plan, cache: FactorCache | None = None) -> nn.Module:
    """A copy of ``model`` with every planned layer replaced by its decomposition.

    Args:
        model: the dense model (left untouched).
        plan: the per-layer choices.
        cache: factors shared between calls (the trials of a search reuse each other's).

    Returns:
        A new model built only from plain modules.
    """
    return _replace_layers(model, plan, lambda layer, choice: decompose_layer(
        layer, choice.method, choice.rank or 0, sparsity=choice.sparsity,
        alternating=choice.alternating, cache=cache, **choice.option_dict))


def _replace_layers(model: nn.Module, plan: Plan,
                    build: Callable[[nn.Conv2d | nn.Linear, LayerChoice], nn.Module],
                    ) -> nn.Module:
    """A copy of ``model`` with every layer the plan changes replaced by ``build``'s module."""
    compressed = copy.deepcopy(model)
    modules = dict(compressed.named_modules())
    for name, choice in plan.compressed().items():
        layer = modules.get(name)
        if not isinstance(layer, (nn.Conv2d, nn.Linear)):
            raise UserInputError(f"plan names {name!r}, which is not a Conv2d or Linear layer")
        set_submodule(compressed, name, build(layer, choice))
    return compressed


def build_skeleton(model: nn.Module, plan: Plan) -> nn.Module:
    """A copy of ``model`` with the structure ``apply_plan`` would give, weights left at zero.

    Nothing is factorised: this is what a saved compressed model's state dict is loaded into
    (``lpsd_search.load``), so loading costs no decomposition and runs no code from the file.
    """
    return _replace_layers(model, plan, skeleton_layer)


def skeleton_layer(layer: nn.Conv2d | nn.Linear, choice: LayerChoice) -> nn.Module:
    """The replacement of one layer for ``choice``, with zero weights (see ``build_skeleton``)."""
    weight = layer.weight.detach()
    no_mask = torch.zeros_like(weight, dtype=torch.bool)
    if choice.method == NONE:
        return sparse_stage(layer, torch.zeros_like(weight), no_mask, bias=layer.bias)
    assert choice.rank is not None  # guaranteed by LayerChoice
    low_rank = get_method(choice.method).skeleton(layer, choice.rank, **choice.option_dict)
    if not choice.sparsity:
        return low_rank
    return AddBranches(low_rank, sparse_stage(layer, torch.zeros_like(weight), no_mask))
