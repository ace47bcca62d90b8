"""Measured size of a built model: parameters, deployed bytes and multiply-accumulates."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ModelSize:
    """What a deployed model stores and computes.

    Attributes:
        params: number of stored parameter values.
        bytes: bytes a deployed file holds: parameter values at their dtype plus the floating
            buffers inference needs (BatchNorm running statistics).
        flops: multiply-accumulates of every Conv2d and Linear for one sample.
    """

    params: int
    bytes: int
    flops: int


def count_params(model: nn.Module) -> int:
    """Stored parameter values."""
    return sum(p.numel() for p in model.parameters())


def count_bytes(model: nn.Module) -> int:
    """Bytes of parameters plus floating-point buffers (integer counters are not deployed)."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    total += sum(b.numel() * b.element_size() for b in model.buffers() if b.is_floating_point())
    return total


def count_flops(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of all Conv2d and Linear layers for one sample of ``example``."""
    total = 0
    handles = []

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        batch = inputs[0].shape[0] if inputs[0].dim() > 1 else 1
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups
            per_output *= module.kernel_size[0] * module.kernel_size[1]
        else:
            per_output = module.in_features  # type: ignore[assignment]
        total += output.numel() // batch * int(per_output)

    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            handles.append(module.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return total


def measure(model: nn.Module, example: torch.Tensor) -> ModelSize:
    """Params, bytes and FLOPs of ``model`` at the input size of ``example`` (batch of one)."""
    return ModelSize(count_params(model), count_bytes(model), count_flops(model, example))
