"""The decomposition contract: closed-form sizes, rank resolution, factorisation and building.

A decomposition turns one dense ``nn.Conv2d`` or ``nn.Linear`` into a short chain of plain
modules. Sizes are closed-form functions of the layer's geometry, the rank and the method's
*structural* options (those that change the module, e.g. ALDS ``k`` or CP ``variant``), so the
search and the budget can price a configuration without building it; the contract tests check
that every formula equals what the built module really holds. *Fit* options (iteration caps,
tolerances) change only how the factors are computed, never the size.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, TypeAlias, cast

import torch
from torch import nn

from lpsd_search.decompositions.geometry import LayerGeometry
from lpsd_search.errors import UserInputError
from lpsd_search.registry import Registry

if TYPE_CHECKING:
    from lpsd_search.decompositions.cache import FactorCache

Rank: TypeAlias = int | tuple[int, ...]
"""A method's natural rank: an int, or a tuple where the method has several (tucker2)."""

RankSpec: TypeAlias = int | tuple[int, ...] | float
"""A rank as users give it: a natural rank, or a float in (0, 1], a fraction of the params."""

Compressible: TypeAlias = nn.Conv2d | nn.Linear

Factors: TypeAlias = tuple[torch.Tensor, ...]


def prepare_weight(layer: nn.Module) -> torch.Tensor:
    """The weight every method factorises: detached, ``O × I/g × kh × kw``, float32 or better.

    A Linear weight gets two trailing unit dims (a 1×1 kernel); half precision is widened
    because the linear algebra kernels (``eigh``, QR, Cholesky) need float32 or better.

    Raises:
        UserInputError: ``layer`` is not a Conv2d or Linear (the one-line error of
            ``LayerGeometry.of``).
    """
    geom = LayerGeometry.of(layer)  # the one-line error for anything but Conv2d / Linear
    weight = cast(torch.Tensor, layer.weight).detach()
    if geom.kind == "linear":
        weight = weight[:, :, None, None]
    if weight.dtype in (torch.float16, torch.bfloat16):
        weight = weight.float()
    return weight


class PreparedLayer(NamedTuple):
    """What ``Decomposition.prepare`` hands to a factorisation.

    Attributes:
        geom: the layer's geometry.
        rank: the concrete natural rank.
        structural: the structural options alone (what ``build`` and the size formulas take).
        weight: the weight as ``prepare_weight`` returns it.
    """

    geom: LayerGeometry
    rank: Rank
    structural: dict[str, Any]
    weight: torch.Tensor


def cached(cache: FactorCache | None, weight: torch.Tensor, name: str, rank: Rank,
           settings: dict[str, Any], compute: Callable[[], Factors]) -> Factors:
    """``compute()``, through ``cache`` when one is given (``FactorCache.get_or_compute``).

    Args:
        cache: an optional ``FactorCache``; a hit returns fresh copies on the weight's device.
        weight: the prepared weight (its values are part of the key).
        name: what is computed, e.g. a method name, or ``"lpsd:svd"`` for an ``L + S`` fit.
        rank: the concrete rank.
        settings: every option that changes the result, fit options included.
        compute: the factorisation to run on a miss (once per key, however many threads ask).
    """
    if cache is None:
        return compute()
    key = cache.key(weight, name, rank, settings)
    return cache.get_or_compute(key, weight.device, compute)


class Decomposition(ABC):
    """Base class of every low-rank method.

    Life cycle: ``prepare`` checks the options and the layer, turns what the user asked for
    into a concrete rank (``resolve_rank``) and the weight into ``O × I/g × kh × kw``
    (``prepare_weight``); ``factorize`` computes the factors (on the weight's device), ``build``
    wraps them into plain modules that keep the layer's stride, padding, dilation, groups, bias
    and output shape. ``decompose`` runs the chain, through ``cached``. ``params``, ``bytes`` and
    ``flops`` price a (geometry, rank, options) triple in closed form; ``unfoldings`` hands the
    rank rules the matrices whose ranks the method truncates.

    Every size-related method takes the method's structural options as keywords; leaving them out
    means the defaults ``decompose`` uses, so ``params(geom, rank)`` always prices
    ``decompose(layer, rank)``.
    """

    name: ClassVar[str]
    structural_options: ClassVar[tuple[str, ...]] = ()
    """Options that change the built module (and so its size)."""
    fit_options: ClassVar[tuple[str, ...]] = ()
    """Options that change only how the factors are computed."""

    def check_options(self, options: dict[str, Any], *, fit: bool = True) -> None:
        """Reject option names the method does not know (the error lists the valid ones)."""
        valid = self.structural_options + (self.fit_options if fit else ())
        unknown = sorted(set(options) - set(valid))
        if unknown:
            listed = ", ".join(valid) if valid else "none"
            raise UserInputError(f"{self.name} got unknown options {unknown}; valid: {listed}")

    def supports(self, geom: LayerGeometry, **options: Any) -> bool:
        """Whether the method can make this layer smaller at all (depthwise convs cannot)."""
        return self.params(geom, self.min_rank(geom, **options), **options) < geom.dense_params

    @abstractmethod
    def max_rank(self, geom: LayerGeometry, **options: Any) -> Rank:
        """The rank at which the method is exact (or saturates, for cp)."""

    def min_rank(self, geom: LayerGeometry, **options: Any) -> Rank:
        """The smallest rank the method accepts."""
        top = self.max_rank(geom, **options)
        return 1 if isinstance(top, int) else tuple(1 for _ in top)

    @abstractmethod
    def params(self, geom: LayerGeometry, rank: Rank, **options: Any) -> int:
        """Parameters of the built module, bias included."""

    def bytes(self, geom: LayerGeometry, rank: Rank, dtype_bytes: int = 4,
              **options: Any) -> int:
        """Bytes of the built module's parameters at ``dtype_bytes`` per value."""
        return self.params(geom, rank, **options) * dtype_bytes

    @abstractmethod
    def flops(self, geom: LayerGeometry, rank: Rank, **options: Any) -> int:
        """Multiply-accumulates of the built module for one sample."""

    @abstractmethod
    def rank_for_params(self, geom: LayerGeometry, target: float, **options: Any) -> Rank:
        """The largest rank whose ``params`` do not exceed ``target`` (never below min_rank)."""

    @abstractmethod
    def factorize(self, weight: torch.Tensor, geom: LayerGeometry, rank: Rank,
                  **options: Any) -> Factors:
        """Compute the factors of ``weight`` (shape ``O × I/g × kh × kw``) at ``rank``."""

    @abstractmethod
    def build(self, layer: Compressible, factors: Factors, rank: Rank,
              **options: Any) -> nn.Module:
        """Wrap ``factors`` into plain modules equivalent to ``layer`` at that rank."""

    @abstractmethod
    def factor_shapes(self, geom: LayerGeometry, rank: Rank,
                      **options: Any) -> list[tuple[int, ...]]:
        """Shapes of the tensors ``factorize`` returns for this geometry and concrete rank."""

    def skeleton(self, layer: Compressible, rank: Rank, **options: Any) -> nn.Module:
        """The module ``decompose`` would build, with zero weights and no factorisation.

        What loading a saved compressed model needs: the structure, into which a state dict is
        then loaded. The bias is copied (a layer's own bias is kept by every method).
        """
        structural = {k: v for k, v in options.items() if k in self.structural_options}
        geom = LayerGeometry.of(layer)
        concrete = self.check_rank(geom, rank, **structural)
        weight = layer.weight
        factors = tuple(torch.zeros(shape, dtype=weight.dtype, device=weight.device)
                        for shape in self.factor_shapes(geom, concrete, **structural))
        with torch.no_grad():
            return self.build(layer, factors, concrete, **structural)

    def reconstruct(self, factors: Factors, geom: LayerGeometry, rank: Rank,
                    **options: Any) -> torch.Tensor:
        """The dense kernel ``O × I/g × kh × kw`` that ``factors`` represent.

        The built module computes exactly the convolution with this kernel (plus the bias), so
        ``W − reconstruct(...)`` is the residual a sparse branch has to capture (LPSD).
        """
        raise NotImplementedError(f"{self.name} cannot reconstruct its kernel")

    def resolve_rank(self, geom: LayerGeometry, rank: RankSpec, **options: Any) -> Rank:
        """Turn a user rank (natural rank or parameter fraction) into a valid natural rank."""
        if isinstance(rank, float):
            if not 0.0 < rank <= 1.0:
                raise UserInputError(
                    f"rank fraction {rank} is out of range; valid: a float in (0, 1]"
                )
            return self.rank_for_params(geom, rank * geom.dense_params, **options)
        return self.check_rank(geom, rank, **options)

    def check_rank(self, geom: LayerGeometry, rank: Rank, **options: Any) -> Rank:
        """Validate a natural rank against ``[min_rank, max_rank]``."""
        top = self.max_rank(geom, **options)
        if isinstance(top, int):
            if isinstance(rank, int) and not isinstance(rank, bool) and 1 <= rank <= top:
                return rank
            raise UserInputError(
                f"{self.name} rank {rank!r} is invalid for this layer; valid: an int in [1, {top}]"
                " or a float in (0, 1]"
            )
        values = tuple(rank) if isinstance(rank, (tuple, list)) else ()
        if len(values) == len(top) and all(
            isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= t
            for v, t in zip(values, top, strict=True)
        ):
            return values
        raise UserInputError(
            f"{self.name} rank {rank!r} is invalid for this layer; valid: a tuple of "
            f"{len(top)} ints up to {top} or a float in (0, 1]"
        )

    def unfoldings(self, weight: torch.Tensor, geom: LayerGeometry,
                   **options: Any) -> list[torch.Tensor]:
        """Batches ``b × m × n`` of the matrices whose ranks the method truncates.

        One batch per entry of a tuple rank, in order; for an int rank every batch bounds the
        one rank (see ``rank_from_unfoldings``). The matrices of a batch (groups, chunks) share
        one rank. ``weight`` is ``O × I/g × kh × kw``; ``options`` the structural ones.

        Raises:
            UserInputError: the method has no natural unfolding (the default).
        """
        valid = ", ".join(n for n in DECOMPOSITIONS.names()
                          if DECOMPOSITIONS.get(n).unfoldings is not Decomposition.unfoldings)
        raise UserInputError(f"no rank rule for method {self.name!r}; valid: {valid}")

    def rank_from_unfoldings(self, ranks: list[int], geom: LayerGeometry,
                             **options: Any) -> Rank:
        """The natural rank that per-unfolding ranks (one per ``unfoldings`` batch) suggest.

        An int-rank method takes the largest of them (every batch bounds its one rank); a tuple
        rank takes them in order. Each is clipped to ``[1, max_rank]``.
        """
        top = self.max_rank(geom, **options)
        if isinstance(top, int):
            return self.check_rank(geom, min(max(max(ranks), 1), top), **options)
        clipped = tuple(min(max(r, 1), t) for r, t in zip(ranks, top, strict=True))
        return self.check_rank(geom, clipped, **options)

    def prepare(self, layer: Compressible, rank: RankSpec, options: dict[str, Any], *,
                remedy: str = "leave it dense (method 'none')") -> PreparedLayer:
        """Everything before a factorisation: options, support, rank and weight.

        Args:
            layer: the dense layer.
            rank: a natural rank or a parameter fraction in (0, 1].
            options: the method's structural and fit options (unknown names are rejected).
            remedy: what the error for an unsupported layer suggests instead.

        Raises:
            UserInputError: an unknown option, a layer the method cannot make smaller, or an
                invalid rank, each in one line.
        """
        self.check_options(options)
        structural = {k: v for k, v in options.items() if k in self.structural_options}
        geom = LayerGeometry.of(layer)
        if not self.supports(geom, **structural):
            raise UserInputError(
                f"{self.name} cannot compress a layer of shape {tuple(layer.weight.shape)} "
                f"(groups={geom.groups}); valid: {remedy}"
            )
        concrete = self.resolve_rank(geom, rank, **structural)
        return PreparedLayer(geom, concrete, structural, prepare_weight(layer))

    def decompose(self, layer: Compressible, rank: RankSpec, *, cache: FactorCache | None = None,
                  **options: Any) -> nn.Module:
        """Factorise ``layer`` at ``rank`` and return the replacement module.

        Args:
            layer: the dense layer; the factors are computed on its weight's device.
            rank: a natural rank or a parameter fraction in (0, 1].
            cache: an optional ``FactorCache``; a hit skips the factorisation.
            **options: the method's structural and fit options.
        """
        geom, concrete, structural, weight = self.prepare(layer, rank, options)
        with torch.no_grad():
            factors = cached(cache, weight, self.name, concrete, options,
                             lambda: self.factorize(weight, geom, concrete, **options))
            return self.build(layer, factors, concrete, **structural)


DECOMPOSITIONS: Registry[type[Decomposition]] = Registry("decomposition method")
"""Every low-rank method by name; ``@DECOMPOSITIONS.register("svd")`` on the class."""


def get_method(name: str) -> Decomposition:
    """An instance of the registered method ``name`` (the error lists the valid names)."""
    return DECOMPOSITIONS.get(name)()
