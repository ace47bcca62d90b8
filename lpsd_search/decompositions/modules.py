"""Plain-module builders shared by the decompositions (Conv2d / Linear / Sequential only)."""

from __future__ import annotations

import torch
from torch import nn

from lpsd_search.decompositions.base import Compressible


def spatial_stage(layer: Compressible, in_channels: int, out_channels: int, groups: int,
                  weight: torch.Tensor, bias: torch.Tensor | None = None) -> nn.Module:
    """A stage that carries the layer's kernel, stride, padding and dilation.

    Args:
        layer: the dense layer being replaced (its spatial settings are copied).
        in_channels: input channels of the stage.
        out_channels: output channels of the stage.
        groups: groups of the stage.
        weight: ``out × in/groups × kh × kw`` (the ``kh × kw`` dims are dropped for Linear).
        bias: optional bias of the stage.
    """
    if isinstance(layer, nn.Linear):
        return pointwise_stage(layer, in_channels, out_channels, groups, weight, bias)
    conv = nn.Conv2d(
        in_channels, out_channels, layer.kernel_size, stride=layer.stride,
        padding=layer.padding, dilation=layer.dilation, groups=groups,
        bias=bias is not None, padding_mode=layer.padding_mode,
        device=layer.weight.device, dtype=layer.weight.dtype,
    )
    conv.weight.data.copy_(weight)
    if bias is not None and conv.bias is not None:
        conv.bias.data.copy_(bias)
    return conv


def pointwise_stage(layer: Compressible, in_channels: int, out_channels: int, groups: int,
                    weight: torch.Tensor, bias: torch.Tensor | None = None) -> nn.Module:
    """A 1×1 stage (no stride or padding): a 1×1 Conv2d, or a Linear for Linear layers.

    A 1×1 convolution without bias commutes with zero, reflect and circular padding, which is
    why the stride and padding can live on the spatial stage alone.
    """
    if isinstance(layer, nn.Linear):
        linear = nn.Linear(in_channels, out_channels, bias=bias is not None,
                           device=layer.weight.device, dtype=layer.weight.dtype)
        linear.weight.data.copy_(weight.reshape(out_channels, in_channels))
        if bias is not None:
            linear.bias.data.copy_(bias)
        return linear
    conv = nn.Conv2d(in_channels, out_channels, 1, groups=groups, bias=bias is not None,
                     device=layer.weight.device, dtype=layer.weight.dtype)
    conv.weight.data.copy_(weight.reshape(out_channels, in_channels // groups, 1, 1))
    if bias is not None and conv.bias is not None:
        conv.bias.data.copy_(bias)
    return conv


def layer_bias(layer: Compressible) -> torch.Tensor | None:
    """The layer's bias, detached, or None."""
    return None if layer.bias is None else layer.bias.detach()
