"""Measured size of a built model: parameters, deployed bytes and multiply-accumulates."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lpsd_search.lpsd.sparse import MASK, index_bytes
from lpsd_search.plan.layers import hooked_forward


@dataclass(frozen=True)
class ModelSize:
    """What a deployed model stores and computes.

    Attributes:
        params: number of stored parameter values (a sparse weight counts its kept entries).
        bytes: bytes a deployed file holds: parameter values at their dtype, the indices of
            sparse weights (the cheaper of CSR and a bitmap), and the floating buffers inference
            needs (BatchNorm running statistics).
        flops: multiply-accumulates of every convolution (1-D, 2-D, 3-D) and Linear for one
            sample.
    """

    params: int
    bytes: int
    flops: int


def _sparse_masks(model: nn.Module) -> dict[int, torch.Tensor]:
    """Masks of the sparse weights, keyed by the weight tensor's id."""
    masks = {}
    for module in model.modules():
        mask, weight = getattr(module, MASK, None), getattr(module, "weight", None)
        if isinstance(mask, torch.Tensor) and isinstance(weight, torch.Tensor):
            masks[id(weight)] = mask
    return masks


def count_params(model: nn.Module) -> int:
    """Stored parameter values; a sparse weight counts only the entries its mask keeps."""
    masks = _sparse_masks(model)
    return sum(int(masks[id(p)].sum()) if id(p) in masks else p.numel()
               for p in model.parameters())


def count_bytes(model: nn.Module) -> int:
    """Bytes a deployed file holds: values, sparse indices and floating-point buffers.

    A sparse weight stores its kept values plus the cheaper of a CSR index and a bitmap over its
    ``out × rest`` matricisation; its boolean mask is that index, so it is not counted again.
    Integer buffers (BatchNorm's batch counter) are not deployed.
    """
    masks = _sparse_masks(model)
    total = 0
    for parameter in model.parameters():
        mask = masks.get(id(parameter))
        if mask is None:
            total += parameter.numel() * parameter.element_size()
            continue
        kept = int(mask.sum())
        rows = mask.shape[0]
        total += kept * parameter.element_size() + index_bytes(rows, mask.numel() // rows, kept)
    total += sum(b.numel() * b.element_size() for b in model.buffers() if b.is_floating_point())
    return total


def count_flops(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of every convolution and Linear layer for one sample of ``example``.

    A ``Conv1d`` / ``Conv2d`` / ``Conv3d`` costs (output elements per sample) x
    ``in_channels / groups`` x ``prod(kernel_size)``; a ``Linear`` costs (output elements per
    sample) x ``in_features``. A sparse weight (one with a ``weight_mask``) costs its kept entries
    once per output position. Counting the 1-D and 3-D convolutions too is what lets the chains
    that use them (the ``tt`` decomposition runs its cores as ``Conv3d``) be measured. Other
    modules (activations, pooling, normalisation) are not counted.

    Args:
        model: the model; it runs once in eval mode and is restored to its training mode.
        example: an input batch; the count is divided by its first dimension.

    Returns:
        The multiply-accumulates per sample.
    """
    total = 0
    convolutions = (nn.Conv1d, nn.Conv2d, nn.Conv3d)

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, convolutions):
            # A convolution also accepts an unbatched input (one dim fewer than channels+spatial).
            batched = inputs[0].dim() == len(module.kernel_size) + 2
            per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
            out_features = module.out_channels
        else:
            batched = inputs[0].dim() > 1
            per_output = module.in_features  # type: ignore[assignment]
            out_features = module.out_features  # type: ignore[assignment]
        batch = inputs[0].shape[0] if batched else 1
        mask = getattr(module, MASK, None)
        if isinstance(mask, torch.Tensor):
            positions = output.numel() // batch // int(out_features)
            total += positions * int(mask.sum())
        else:
            total += output.numel() // batch * int(per_output)

    hooked_forward(model, example, [(module, hook) for module in model.modules()
                                    if isinstance(module, (*convolutions, nn.Linear))])
    return total


def measure(model: nn.Module, example: torch.Tensor) -> ModelSize:
    """Params, bytes and FLOPs of ``model`` at the input size of ``example`` (batch of one)."""
    return ModelSize(count_params(model), count_bytes(model), count_flops(model, example))
