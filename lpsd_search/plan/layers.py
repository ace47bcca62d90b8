"""Find the compressible layers of a model and swap modules by qualified name."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from lpsd_search.decompositions import LayerGeometry
from lpsd_search.errors import UserInputError


@dataclass(frozen=True)
class TargetLayer:
    """A compressible layer: its qualified name and its geometry at the model's input size."""

    name: str
    geometry: LayerGeometry


def layer_positions(model: nn.Module, example: torch.Tensor) -> dict[str, tuple[int, int]]:
    """Input and output spatial positions per sample of every Conv2d / Linear, from one forward.

    Args:
        model: the model (left in the training mode it was in).
        example: a batch of one input, on the model's device.

    Returns:
        ``{qualified name: (in_positions, out_positions)}``.
    """
    positions: dict[str, tuple[int, int]] = {}

    def record(name: str) -> Hook:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...],
                 output: torch.Tensor) -> None:
            assert isinstance(module, (nn.Conv2d, nn.Linear))
            if isinstance(module, nn.Conv2d):
                features, out_features = module.in_channels, module.out_channels
            else:
                features, out_features = module.in_features, module.out_features
            batch = inputs[0].shape[0] if inputs[0].dim() > 1 else 1
            positions[name] = (
                inputs[0].numel() // (batch * int(features)),
                output.numel() // (batch * int(out_features)),
            )

        return hook

    hooked_forward(model, example, [(module, record(name))
                                    for name, module in model.named_modules()
                                    if isinstance(module, (nn.Conv2d, nn.Linear))])
    return positions


Hook = Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], None]


def hooked_forward(model: nn.Module, example: torch.Tensor,
                   hooks: Iterable[tuple[nn.Module, Hook]]) -> None:
    """One no-grad forward of ``model`` in eval mode with forward ``hooks`` attached.

    The hooks are removed and the model's training mode restored afterwards, even on error.
    """
    handles = [module.register_forward_hook(hook) for module, hook in hooks]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()


def find_layers(model: nn.Module, example: torch.Tensor, include: str | None = None,
                exclude: str | None = None) -> list[TargetLayer]:
    """The Conv2d and Linear layers of ``model`` that a forward pass uses, in call order.

    Args:
        model: the dense model.
        example: a batch of one input (fixes the spatial sizes behind the FLOPs figures).
        include: optional regex; only layers whose qualified name matches are kept.
        exclude: optional regex; layers whose qualified name matches are dropped.
    """
    positions = layer_positions(model, example)
    modules = dict(model.named_modules())
    targets = []
    for name, (in_pos, out_pos) in positions.items():
        if include is not None and not re.search(include, name):
            continue
        if exclude is not None and re.search(exclude, name):
            continue
        targets.append(TargetLayer(name, LayerGeometry.of(modules[name], in_pos, out_pos)))
    return targets


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at qualified name ``name`` by ``module``."""
    parent_name, _, child = name.rpartition(".")
    try:
        parent = model.get_submodule(parent_name) if parent_name else model
    except AttributeError:
        raise UserInputError(f"the model has no layer {name!r}") from None
    if not hasattr(parent, child):
        raise UserInputError(f"the model has no layer {name!r}")
    setattr(parent, child, module)
