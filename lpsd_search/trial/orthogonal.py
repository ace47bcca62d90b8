"""Orthogonal regularisation of the factor matrices of decomposed layers.

He, Jiang and Wu (arXiv 2408.16289, 2024) fine-tune decomposed networks with a penalty
``λ·Σ‖UᵀU − I‖²_F`` on the factor matrices, so that they stay well-conditioned while their ranks
come from VBMF. The factors are the plain modules a decomposition builds, so the penalty is a
function of their weights, viewed as the matrices the decomposition made orthonormal:

* ``tucker2``: the input and output factors ``U_in`` and ``U_out`` (the core is free: it holds
  the scale);
* ``tt``: every core but the last, as its left unfolding ``(r_{k-1}·n_k) × r_k`` (TT-SVD makes
  them left-orthonormal; the last core holds the scale);
* ``svd`` and ``alds``: both factors, ``U√Σ`` and ``√ΣVᵀ`` per group or chunk. Their vectors are
  orthogonal but carry the singular values, so the penalty normalises them first (it then counts
  only the cosines between them, and is zero for the factors as built too);
* ``cp``: no factor of a CP decomposition is orthogonal; its layers are left out.

Each penalty starts at zero (up to rounding) on a freshly decomposed layer and measures how far
the fine-tune moves the factors from orthogonality.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lpsd_search.decompositions.alds import ALDS
from lpsd_search.decompositions.geometry import LayerGeometry
from lpsd_search.decompositions.tt import TensorTrain
from lpsd_search.lpsd.sparse import AddBranches
from lpsd_search.plan.choices import LayerChoice, Plan

logger = logging.getLogger(__name__)

REGULARISED = ("svd", "alds", "tucker2", "tt")
"""Methods whose factors the penalty covers (see the module docstring)."""

_STAGES = (nn.Conv2d, nn.Conv3d, nn.Linear)


def orthogonality_penalty(matrices: torch.Tensor, *, scale_free: bool = False) -> torch.Tensor:
    """``Σ_b ‖M_b·M_bᵀ − I‖²_F`` over a batch of matrices whose rows should be orthonormal.

    This is He et al.'s ``‖UᵀU − I‖²`` with ``U = M_bᵀ``. A matrix with more rows than columns
    cannot have orthonormal rows; its columns are taken instead (a tensor-train bond wider than
    what feeds it has zero rows, and orthonormal columns).

    Args:
        matrices: ``b × n × m``.
        scale_free: normalise the vectors first, so that only their directions count (factors
            that carry singular values, such as ``U√Σ``).

    Returns:
        A scalar (half precision is widened to float32), differentiable in ``matrices``.
    """
    vectors = matrices if matrices.shape[-2] <= matrices.shape[-1] else matrices.transpose(1, 2)
    if vectors.dtype in (torch.float16, torch.bfloat16):
        vectors = vectors.float()
    if scale_free:
        # A zero vector (a singular value of 0) stays zero: it adds 1 and has no direction.
        vectors = vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    gram = vectors @ vectors.transpose(1, 2)
    identity = torch.eye(gram.shape[-1], device=gram.device, dtype=gram.dtype)
    return (gram - identity).square().sum()


MatrixView = Callable[[torch.Tensor], torch.Tensor]
"""A stage weight → the batch of matrices whose rows should be orthonormal."""


@dataclass(frozen=True)
class Factor:
    """One factor matrix (or batch of them) of a decomposed layer.

    Attributes:
        weight: the stage's weight parameter.
        view: its matrices, rows to be orthonormal.
        scale_free: the vectors carry singular values (svd, alds).
    """

    weight: torch.Tensor
    view: MatrixView
    scale_free: bool = False

    def penalty(self) -> torch.Tensor:
        return orthogonality_penalty(self.view(self.weight), scale_free=self.scale_free)


def _groups(stage: nn.Module) -> int:
    return int(stage.groups) if isinstance(stage, (nn.Conv2d, nn.Conv3d)) else 1


def _rows(groups: int, per_group: int | None = None) -> MatrixView:
    """Rows are the stage's output channels of each group (or ``per_group`` leading ones)."""
    return lambda w: w.reshape(groups, per_group or w.shape[0] // groups, -1)


def _columns(groups: int) -> MatrixView:
    """Columns are the stage's input channels of each group (``U`` of an output factor)."""
    return lambda w: w.reshape(groups, w.shape[0] // groups, -1).transpose(1, 2)


def _alds_mixing(groups: int, splits: int) -> MatrixView:
    # The 1×1 stage reads the k chunks' rank-r outputs in chunk order: (O, k·r) per group holds
    # one U√Σ of O/g × r per chunk, orthogonal within its chunk only.
    def view(w: torch.Tensor) -> torch.Tensor:
        out = w.shape[0]
        blocks = w.reshape(groups, out // groups, splits, -1).transpose(1, 2)
        return blocks.reshape(groups * splits, out // groups, -1).transpose(1, 2)

    return view


def layer_factors(module: nn.Module, choice: LayerChoice, geom: LayerGeometry) -> list[Factor]:
    """The factor matrices of one decomposed layer (empty for a method not in ``REGULARISED``).

    Args:
        module: what the plan built for the layer (its low-rank branch is used when the layer
            also has a sparse residual).
        choice: the layer's plan entry.
        geom: the dense layer's geometry.
    """
    if choice.method not in REGULARISED or choice.rank is None:
        return []
    low_rank = module.low_rank if isinstance(module, AddBranches) else module
    stages = [m for m in low_rank.modules() if isinstance(m, _STAGES)]
    weights = [stage.weight for stage in stages]
    if choice.method == "tucker2":
        first, last = stages[0], stages[-1]
        return [Factor(first.weight, _rows(_groups(first))),
                Factor(last.weight, _columns(_groups(last)))]
    if choice.method in ("svd", "alds"):
        first, last = stages[0], stages[-1]
        second = (_alds_mixing(_groups(last), ALDS().splits(geom, choice.option_dict))
                  if choice.method == "alds" else _columns(_groups(last)))
        return [Factor(first.weight, _rows(_groups(first)), scale_free=True),
                Factor(last.weight, second, scale_free=True)]
    train = TensorTrain()
    structural = {k: v for k, v in choice.option_dict.items() if k in train.structural_options}
    bonds = train.check_rank(geom, choice.rank, **structural)
    # The first len(modes) weighted stages are the cores in order (a bias stage may follow);
    # core k's output channels are ordered (group, r_k, …), so its rows are (g, r_k).
    return [Factor(weight, _rows(geom.groups, bond))
            for weight, bond in zip(weights[:len(bonds)], bonds, strict=True)]


class OrthogonalRegulariser:
    """``λ·Σ‖UᵀU − I‖²`` over the factor matrices of a model built from a plan.

    A ``trial.train.Regulariser``: its term is a few small Gram matrices per layer, computed on
    the device with no host synchronisation.

    Args:
        model: the compressed model (as ``plan.apply.apply_plan`` built it).
        plan: its plan.
        geometries: the dense layers' geometries by name.
        weight: λ.
    """

    def __init__(self, model: nn.Module, plan: Plan, geometries: dict[str, LayerGeometry],
                 weight: float) -> None:
        self.weight = weight
        modules = dict(model.named_modules())
        self.factors: list[Factor] = []
        skipped = []
        for name, choice in plan.compressed().items():
            found = layer_factors(modules[name], choice, geometries[name])
            if not found and choice.method != "none":
                skipped.append(name)
            self.factors += found
        if skipped:
            logger.debug("no orthogonal factors in %s (methods outside %s)",
                         ", ".join(skipped), ", ".join(REGULARISED))

    def penalty(self) -> torch.Tensor:
        """``Σ‖UᵀU − I‖²`` without the weight λ (0 when the plan has no factor matrices)."""
        terms = [factor.penalty() for factor in self.factors]
        if not terms:
            return torch.zeros(())
        return torch.stack(terms).sum()

    def loss(self) -> torch.Tensor:
        return self.weight * self.penalty()

    def after_step(self, step: int) -> None:
        """Nothing to update between steps."""
