"""How a kernel is laid out as a tensor train, and what each stage of the train costs.

The channels per group factor as ``I/g = i₁·…·i_a`` and ``O/g = o₁·…·o_b``; the kernel becomes
the train tensor of modes ``(i₁, …, i_a, s, o_b, …, o₁)`` with ``s = kh·kw`` (left out when 1).
Kept apart from ``tt`` (the fit and the built modules) because the size formulas, the layout
and the rank rules need only this part.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from lpsd_search.decompositions.geometry import LayerGeometry
from lpsd_search.errors import UserInputError

__all__ = ["TTLayout", "balanced_modes", "feasible_ranks", "layout_of", "stage_costs"]


def _factorisations(n: int, count: int, low: int) -> Iterator[tuple[int, ...]]:
    """Every non-decreasing tuple of ``count`` factors ``≥ low`` whose product is ``n``."""
    if count == 1:
        if n >= low:
            yield (n,)
        return
    factor = low
    while factor**count <= n:
        if n % factor == 0:
            for rest in _factorisations(n // factor, count - 1, factor):
                yield (factor, *rest)
        factor += 1


def balanced_modes(n: int, d: int) -> tuple[int, ...]:
    """``n`` as ``d`` factors as equal as possible, largest first (fewer if n has fewer primes).

    Example:
        >>> balanced_modes(256, 2), balanced_modes(96, 3), balanced_modes(13, 2)
        ((16, 16), (6, 4, 4), (13,))
    """
    if n == 1:
        return (1,)
    primes, rest, p = 0, n, 2
    while p * p <= rest:
        while rest % p == 0:
            rest, primes = rest // p, primes + 1
        p += 1
    primes += rest > 1
    best = min(_factorisations(n, min(d, primes), 2), key=lambda f: (f[-1], f[::-1]))
    return best[::-1]


@dataclass(frozen=True)
class TTLayout:
    """How one layer's kernel is laid out as a train.

    Attributes:
        in_modes: ``(i₁, …, i_a)``, product ``I/g``.
        out_modes: ``(o₁, …, o_b)``, product ``O/g``.
        area: ``kh·kw``; the spatial mode exists only when it exceeds 1.
    """

    in_modes: tuple[int, ...]
    out_modes: tuple[int, ...]
    area: int

    @property
    def modes(self) -> tuple[int, ...]:
        """The train's modes in order: ``(i₁, …, i_a, s, o_b, …, o₁)``."""
        spatial = (self.area,) if self.area > 1 else ()
        return (*self.in_modes, *spatial, *self.out_modes[::-1])

    @property
    def max_ranks(self) -> tuple[int, ...]:
        """Per bond, ``min(∏ modes left of it, ∏ modes right of it)``: the exact TT ranks."""
        modes = self.modes
        return tuple(min(math.prod(modes[:k]), math.prod(modes[k:]))
                     for k in range(1, len(modes)))

    def _order(self) -> tuple[int, ...]:
        # The permutation (g, o₁…o_b, i₁…i_a, s) → (g, i₁…i_a, s, o_b…o₁).
        a, b = len(self.in_modes), len(self.out_modes)
        return (0, *range(b + 1, a + b + 1), a + b + 1, *range(b, 0, -1))

    def train_of(self, weight: torch.Tensor, groups: int) -> torch.Tensor:
        """A kernel ``O × I/g × kh × kw`` as ``g`` trains of shape ``modes`` (s dropped if 1)."""
        blocks = weight.reshape(groups, *self.out_modes, *self.in_modes, -1)
        return blocks.permute(self._order()).reshape(groups, *self.modes)

    def kernel_of(self, train: torch.Tensor, geom: LayerGeometry) -> torch.Tensor:
        """The inverse of ``train_of``: ``g`` trains back to the kernel ``O × I/g × kh × kw``."""
        order = self._order()
        inverse = sorted(range(len(order)), key=order.__getitem__)
        full = train.reshape(geom.groups, *self.in_modes, self.area, *self.out_modes[::-1])
        return full.permute(inverse).reshape(geom.out_channels, geom.in_per_group,
                                             *geom.kernel_size)


def feasible_ranks(ranks: list[int], modes: tuple[int, ...]) -> list[int]:
    """Trim bond ranks that their neighbours cannot feed (``r_k ≤ r_{k−1}·n_k ≤ …``)."""
    bonds = [1, *ranks, 1]
    for k in range(1, len(bonds) - 1):
        bonds[k] = min(bonds[k], bonds[k - 1] * modes[k - 1])
    for k in range(len(bonds) - 2, 0, -1):
        bonds[k] = min(bonds[k], bonds[k + 1] * modes[k])
    return bonds[1:-1]


def _checked_modes(options: dict[str, Any], key: str, channels: int, side: str) -> tuple[int, ...]:
    depth = options.get("d", 2)
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise UserInputError(f"tt d={depth!r} is invalid; valid: a positive int (default 2)")
    given = options.get(key)
    if given is None:
        return balanced_modes(channels, depth)
    if (isinstance(given, (tuple, list)) and len(given) > 0
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in given)
            and math.prod(given) == channels):
        return tuple(given)
    raise UserInputError(
        f"tt {key}={given!r} is invalid for {channels} {side} channels per group; valid: a "
        f"tuple of positive ints whose product is {channels}, e.g. {balanced_modes(channels, 2)}"
    )


def layout_of(geom: LayerGeometry, options: dict[str, Any]) -> TTLayout:
    """The validated layout of ``geom`` under the structural ``options``."""
    return TTLayout(_checked_modes(options, "in_modes", geom.in_per_group, "input"),
                    _checked_modes(options, "out_modes", geom.out_per_group, "output"),
                    geom.kernel_area)


def stage_costs(geom: LayerGeometry, layout: TTLayout,
                ranks: tuple[int, ...]) -> list[tuple[int, int]]:
    """``(params, multiply-accumulates per sample)`` of every stage ``build`` makes, in order.

    A core's stage runs its ``g·r_{k-1}·n_k·r_k`` weights once per position and per index of
    its depth (the input modes not consumed yet, or the output modes already emitted). Input
    stages run at the input resolution, except the one that carries the stride when there is
    no spatial core.
    """
    g, a, modes = geom.groups, len(layout.in_modes), layout.modes
    first_out = a + (1 if layout.area > 1 else 0)
    bonds = (1, *ranks, 1)
    costs = []
    for k, mode in enumerate(modes):
        core = g * bonds[k] * mode * bonds[k + 1]
        if k < a:
            depth = math.prod(layout.in_modes[k + 1:])
            carries_stride = k == a - 1 and first_out == a
            positions = geom.out_positions if carries_stride else geom.in_positions
        else:
            depth, positions = math.prod(modes[first_out:k]), geom.out_positions
        costs.append((core, positions * depth * core))
    if geom.bias:
        if len(layout.out_modes) > 1:  # the depthwise 1×1 bias stage: O weights and O biases
            costs.append((2 * geom.out_channels, geom.out_positions * geom.out_channels))
        else:
            costs.append((geom.out_channels, 0))
    return costs
