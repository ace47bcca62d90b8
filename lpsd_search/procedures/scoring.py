"""How ALPSD's local selection scores candidate fits: a model followed through weight changes.

``compress_model`` writes each layer's ``L + S`` into one dense copy of the model and asks for
the objective after every candidate move. A ``TrackingObjective`` (the validation loss,
``trial.evaluate.ValidationLoss``) supplies its own ``Tracker`` that recomputes only what the
written layers feed; any other objective is scored on a whole copy (``CopyTracker``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Protocol, cast, runtime_checkable

import torch
from torch import nn


class Tracker(Protocol):
    """A model followed through changes of its layers' weights (``trial.evaluate.Tracked``)."""

    def set_weight(self, name: str, weight: torch.Tensor) -> None: ...

    def loss(self) -> float: ...


@runtime_checkable
class TrackingObjective(Protocol):
    """An objective that can also follow one model through weight changes, recomputing only
    what the changed layers feed (``trial.evaluate.ValidationLoss``)."""

    def __call__(self, model: nn.Module) -> float: ...

    def tracking(self, model: nn.Module) -> Tracker: ...


class CopyTracker:
    """A ``Tracker`` for any objective: a channels-last copy of the model scored whole (the
    same fp32 arithmetic, 1.4-1.6x faster on CPU convolutions, measured on vgg11/resnet20)."""

    def __init__(self, model: nn.Module, objective: Callable[[nn.Module], float]) -> None:
        self.model = copy.deepcopy(model).to(memory_format=torch.channels_last)
        self.objective = objective

    def set_weight(self, name: str, weight: torch.Tensor) -> None:
        target = cast(torch.Tensor, self.model.get_submodule(name).weight)
        with torch.no_grad():
            target.copy_(weight.reshape(target.shape))

    def loss(self) -> float:
        return self.objective(self.model)
