"""Plain-module builders shared by the decompositions (Conv2d / Linear / Sequential only).

Why the stages may be split the way the methods split them: a 1×1 convolution without bias acts
on each pixel alone, so it commutes with zero, reflect, replicate and circular padding and may
run before the spatial stage at the input resolution. A ``kh×kw`` kernel that is a sum of
``kh×1`` times ``1×kw`` products can run as a ``kh×1`` stage (vertical stride, padding and
dilation) followed by a ``1×kw`` stage (the horizontal ones): every padding mode pads each axis
by an index map of that axis alone, so padding the width after the vertical stage gives the same
numbers as padding both axes first.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from lpsd_search.decompositions.base import Compressible

Axis = Literal["both", "height", "width"]


def _axis_settings(layer: nn.Conv2d, axis: Axis) -> tuple[
        tuple[int, int], str | tuple[int, int], tuple[int, int]]:
    """Stride, padding and dilation of ``layer`` restricted to one axis (the other left alone)."""
    stride, dilation = layer.stride, layer.dilation
    padding: str | tuple[int, ...] = layer.padding
    if axis == "both":
        pad = padding if isinstance(padding, str) else (padding[0], padding[1])
        return (stride[0], stride[1]), pad, (dilation[0], dilation[1])
    keep = 0 if axis == "height" else 1

    def pick(values: tuple[int, ...]) -> tuple[int, int]:
        return (values[0], 1) if keep == 0 else (1, values[1])

    if isinstance(padding, str):
        # 'same' / 'valid' are computed per axis from that axis' kernel size, so they split.
        pad_out: str | tuple[int, int] = padding
    else:
        pad_out = (padding[0], 0) if keep == 0 else (0, padding[1])
    return pick(stride), pad_out, pick(dilation)


def conv_stage(layer: nn.Conv2d, in_channels: int, out_channels: int, groups: int,
               weight: torch.Tensor, bias: torch.Tensor | None = None,
               axis: Axis = "both") -> nn.Conv2d:
    """A Conv2d with ``weight``'s kernel and the layer's spatial settings along ``axis``.

    Args:
        layer: the dense conv being replaced (its stride, padding, dilation and padding mode).
        in_channels: input channels of the stage.
        out_channels: output channels of the stage.
        groups: groups of the stage.
        weight: ``out × in/groups × kh × kw``.
        bias: optional bias of the stage.
        axis: ``"both"`` copies all settings; ``"height"`` / ``"width"`` only that axis'.
    """
    stride, padding, dilation = _axis_settings(layer, axis)
    conv = nn.Conv2d(
        in_channels, out_channels, (int(weight.shape[-2]), int(weight.shape[-1])),
        stride=stride, padding=padding, dilation=dilation, groups=groups,
        bias=bias is not None, padding_mode=layer.padding_mode,
        device=layer.weight.device, dtype=layer.weight.dtype,
    )
    conv.weight.data.copy_(weight)
    if bias is not None and conv.bias is not None:
        conv.bias.data.copy_(bias)
    return conv


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
    return conv_stage(layer, in_channels, out_channels, groups, weight, bias)


def pointwise_stage(layer: Compressible, in_channels: int, out_channels: int, groups: int,
                    weight: torch.Tensor, bias: torch.Tensor | None = None) -> nn.Module:
    """A 1×1 stage (no stride or padding): a 1×1 Conv2d, or a Linear for Linear layers.

    A 1×1 convolution without bias commutes with zero, reflect and circular padding, which is
    why the stride and padding can live on the spatial stage alone.
    """
    if isinstance(layer, nn.Linear):
        if groups != 1:
            raise ValueError("a Linear stage cannot have groups")  # internal invariant
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


def unit_conv(layer: Compressible, dims: int, in_channels: int, out_channels: int,
               groups: int, weight: torch.Tensor,
               bias: torch.Tensor | None = None) -> nn.Conv2d | nn.Conv3d:
    """A 1×1 (``dims`` = 2) or 1×1×1 (``dims`` = 3) convolution holding ``weight``.

    The Conv3d form contracts the channels while sharing its weight over a "depth" axis (the
    tensor-train stages use it for the modes not consumed yet).
    """
    settings: dict[str, Any] = {"groups": groups, "bias": bias is not None,
                                "device": layer.weight.device, "dtype": layer.weight.dtype}
    conv: nn.Conv2d | nn.Conv3d
    if dims == 3:
        conv = nn.Conv3d(in_channels, out_channels, 1, **settings)
    else:
        conv = nn.Conv2d(in_channels, out_channels, 1, **settings)
    conv.weight.data.copy_(weight.reshape(conv.weight.shape))
    if bias is not None and conv.bias is not None:
        conv.bias.data.copy_(bias)
    return conv
