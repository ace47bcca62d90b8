"""What the closed-form size formulas know about a dense layer: its ``LayerGeometry``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from torch import nn

from lpsd_search.errors import UserInputError


@dataclass(frozen=True)
class LayerGeometry:
    """Everything the size formulas need to know about a dense layer.

    Attributes:
        kind: ``"conv"`` or ``"linear"``.
        out_channels: O (out_features for Linear).
        in_channels: I (in_features for Linear).
        kernel_size: (kh, kw); (1, 1) for Linear.
        groups: g; 1 for Linear.
        bias: whether the layer has a bias.
        in_positions: spatial positions of the input per sample (H_in·W_in; 1 for a plain Linear).
        out_positions: spatial positions of the output per sample (H_out·W_out).
        in_size: optional ``(H_in, W_in)``; only the FLOPs of the methods that split a kernel
            into a ``kh×1`` and a ``1×kw`` stage (cp, tt) use it, see ``mid_positions``.
        out_size: optional ``(H_out, W_out)``.
    """

    kind: Literal["conv", "linear"]
    out_channels: int
    in_channels: int
    kernel_size: tuple[int, int]
    groups: int
    bias: bool
    in_positions: int = 1
    out_positions: int = 1
    in_size: tuple[int, int] | None = None
    out_size: tuple[int, int] | None = None

    @classmethod
    def of(cls, layer: nn.Module, in_positions: int = 1, out_positions: int = 1, *,
           in_size: tuple[int, int] | None = None,
           out_size: tuple[int, int] | None = None) -> LayerGeometry:
        """Read the geometry of ``layer`` (positions come from a forward pass, see layers.py).

        ``in_size`` / ``out_size``, when given, override the positions with their products.
        """
        if in_size is not None:
            in_positions = in_size[0] * in_size[1]
        if out_size is not None:
            out_positions = out_size[0] * out_size[1]
        if isinstance(layer, nn.Conv2d):
            kh, kw = layer.kernel_size
            return cls("conv", layer.out_channels, layer.in_channels, (kh, kw), layer.groups,
                       layer.bias is not None, in_positions, out_positions, in_size, out_size)
        if isinstance(layer, nn.Linear):
            return cls("linear", layer.out_features, layer.in_features, (1, 1), 1,
                       layer.bias is not None, in_positions, out_positions, in_size, out_size)
        raise UserInputError(
            f"cannot decompose a {type(layer).__name__}; valid layers: Conv2d, Linear"
        )

    @property
    def kernel_area(self) -> int:
        return self.kernel_size[0] * self.kernel_size[1]

    @property
    def in_per_group(self) -> int:
        return self.in_channels // self.groups

    @property
    def out_per_group(self) -> int:
        return self.out_channels // self.groups

    @property
    def bias_params(self) -> int:
        return self.out_channels if self.bias else 0

    @property
    def dense_params(self) -> int:
        return self.out_channels * self.in_per_group * self.kernel_area + self.bias_params

    @property
    def dense_flops(self) -> int:
        """Multiply-accumulates of the dense layer for one sample."""
        return self.out_positions * self.out_channels * self.in_per_group * self.kernel_area

    @property
    def mid_positions(self) -> int:
        """Positions after a ``kh×1`` stage that applies the vertical stride only: H_out·W_in.

        Exact when ``in_size`` and ``out_size`` are known; otherwise ``√(in·out)``, which is exact
        whenever height and width shrink by the same factor (square strides, 'same' padding).
        """
        if self.in_size is not None and self.out_size is not None:
            return self.out_size[0] * self.in_size[1]
        return round(math.sqrt(self.in_positions * self.out_positions))

    def dense_bytes(self, dtype_bytes: int = 4) -> int:
        """Bytes of the dense layer's parameters at ``dtype_bytes`` per value."""
        return self.dense_params * dtype_bytes
