"""Sparse residual branches for low-rank plus sparse layers (LPSD: ``W ≈ L + S``).

The sparse part ``S`` of a layer is stored as an ordinary ``nn.Conv2d`` / ``nn.Linear`` with the
dense layer's spatial settings and no bias, whose weight is zero outside a fixed boolean mask held
in a ``weight_mask`` buffer. The forward is a dense convolution (fast everywhere and exportable);
the *size* figures describe the sparse storage a deployed model would hold: the kept values plus
their indices in whichever of CSR or a bitmap is smaller (Huang, Sie, Lin & Lee, PAKDD 2024).

A low-rank branch and a sparse branch add their outputs through ``AddBranches``, the only
container of ours in a compressed model; it is a two-line ``forward`` that TorchScript,
``torch.export`` and ONNX handle like any ``nn.Sequential``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lpsd_search.decompositions.base import Compressible
from lpsd_search.decompositions.geometry import LayerGeometry
from lpsd_search.decompositions.modules import conv_stage
from lpsd_search.errors import UserInputError

MASK = "weight_mask"
"""Name of the boolean buffer that marks the stored entries of a sparse weight."""


class AddBranches(nn.Module):
    """``y = low_rank(x) + sparse(x)``: the two branches of a low-rank plus sparse layer."""

    def __init__(self, low_rank: nn.Module, sparse: nn.Module) -> None:
        super().__init__()
        self.low_rank = low_rank
        self.sparse = sparse

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.low_rank(x) + self.sparse(x)


def weight_entries(geom: LayerGeometry) -> int:
    """Entries of the dense weight (bias excluded): ``O · I/g · kh · kw``."""
    return geom.out_channels * geom.in_per_group * geom.kernel_area


def kept_entries(geom: LayerGeometry, sparsity: float) -> int:
    """Entries of ``S`` for a ``sparsity`` (fraction of the dense weight's entries kept)."""
    if not 0.0 <= sparsity <= 1.0:
        raise UserInputError(f"sparsity {sparsity} is invalid; valid: a float in [0, 1]")
    return round(sparsity * weight_entries(geom))


def _index_width(largest: int) -> int:
    """Bytes of the narrowest unsigned integer (1, 2, 4 or 8 bytes) that holds ``largest``."""
    for width in (1, 2, 4):
        if largest < 256**width:
            return width
    return 8


def index_bytes(rows: int, columns: int, kept: int) -> int:
    """Bytes of the cheaper index of a ``rows × columns`` sparse matrix with ``kept`` entries.

    CSR stores a column index per entry and ``rows + 1`` row pointers, each in the narrowest
    unsigned integer that holds its largest value; a bitmap stores one bit per entry.
    """
    if kept == 0:
        return 0
    csr = kept * _index_width(columns - 1) + (rows + 1) * _index_width(kept)
    bitmap = math.ceil(rows * columns / 8)
    return min(csr, bitmap)


def sparse_params(geom: LayerGeometry, sparsity: float) -> int:
    """Stored values of the sparse branch."""
    return kept_entries(geom, sparsity)


def sparse_bytes(geom: LayerGeometry, sparsity: float, dtype_bytes: int = 4) -> int:
    """Bytes of the sparse branch: values plus the cheaper index (the weight as ``O × rest``)."""
    kept = kept_entries(geom, sparsity)
    return kept * dtype_bytes + index_bytes(geom.out_channels, weight_entries(geom)
                                            // geom.out_channels, kept)


def sparse_flops(geom: LayerGeometry, sparsity: float) -> int:
    """Multiply-accumulates of the sparse branch: every kept entry once per output position."""
    return kept_entries(geom, sparsity) * geom.out_positions


def top_entries_mask(values: torch.Tensor, kept: int) -> torch.Tensor:
    """Boolean mask of exactly ``kept`` entries of ``values`` with the largest magnitudes."""
    mask = torch.zeros(values.numel(), dtype=torch.bool, device=values.device)
    if kept > 0:
        mask[values.detach().abs().flatten().topk(kept, sorted=False).indices] = True
    return mask.reshape(values.shape)


def sparse_stage(layer: Compressible, values: torch.Tensor, mask: torch.Tensor,
                 bias: torch.Tensor | None = None) -> nn.Module:
    """A copy of ``layer``'s geometry holding ``values`` on ``mask`` and zeros elsewhere.

    Args:
        layer: the dense layer being replaced (stride, padding, dilation, groups are copied).
        values: a tensor shaped like ``layer.weight``.
        mask: boolean, shaped like ``layer.weight``; stored as the ``weight_mask`` buffer.
        bias: optional bias (a sparse branch beside a low-rank one has none: that one has it).
    """
    weight = torch.where(mask, values, torch.zeros_like(values)).to(layer.weight.dtype)
    bias = None if bias is None else bias.detach()
    stage: nn.Module
    if isinstance(layer, nn.Linear):
        linear = nn.Linear(layer.in_features, layer.out_features, bias=bias is not None,
                           device=layer.weight.device, dtype=layer.weight.dtype)
        linear.weight.data.copy_(weight)
        if bias is not None:
            linear.bias.data.copy_(bias)
        stage = linear
    else:
        stage = conv_stage(layer, layer.in_channels, layer.out_channels, layer.groups, weight,
                           bias)
    stage.register_buffer(MASK, mask.to(device=layer.weight.device, dtype=torch.bool))
    return stage


def masked_weights(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(weight, mask)`` of every sparse stage in ``model``."""
    pairs = []
    for module in model.modules():
        mask = getattr(module, MASK, None)
        weight = getattr(module, "weight", None)
        if isinstance(mask, torch.Tensor) and isinstance(weight, torch.Tensor):
            pairs.append((weight, mask))
    return pairs


@torch.no_grad()
def enforce_masks(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Zero every sparse weight outside its mask (after an optimiser step)."""
    for weight, mask in pairs:
        weight.mul_(mask)


@torch.no_grad()
def mask_gradients(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Zero the gradients outside the masks, so optimiser moments never leave the pattern."""
    for weight, mask in pairs:
        if weight.grad is not None:
            weight.grad.mul_(mask)
