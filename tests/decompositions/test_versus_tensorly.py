"""At equal ranks our Tucker-2 and CP fits are no worse than tensorly's defaults (within 2 %).

tensorly is the reference implementation users compare against (``partial_tucker`` over the two
channel modes, ``parafac`` over all four); the benchmarks time the same calls on VGG16. Kernels:
trained digits-CNN convs (decaying spectra) and random ones (flat spectra, the hard case for
iterative fits).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lpsd_search.decompositions import LayerGeometry
from lpsd_search.decompositions.base import get_method

# tensorly is the reference these tests cross-check against; it comes with the dev extra, not
# with the package, which never imports it.
tl = pytest.importorskip("tensorly")
from tensorly.decomposition import parafac, partial_tucker  # noqa: E402

TOLERANCE = 1.02


def _kernels(digits_model: nn.Module) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "trained-conv2": digits_model.conv2.weight.detach().clone(),
        "trained-conv3": digits_model.conv3.weight.detach().clone(),
        "random-48x32": torch.randn(48, 32, 3, 3, generator=generator),
    }


def _ours(weight: torch.Tensor, method: str, fraction: float) -> tuple[float, object]:
    decomposition = get_method(method)
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], weight.shape[2:], bias=False)
    geom = LayerGeometry.of(conv)
    rank = decomposition.resolve_rank(geom, fraction)
    factors = decomposition.factorize(weight, geom, rank)
    approx = decomposition.reconstruct(factors, geom, rank)
    return float((weight - approx).norm() / weight.norm()), rank


@pytest.mark.parametrize("fraction", [0.1, 0.3])
def test_tucker2_error_is_no_worse_than_partial_tucker(digits_model, fraction):
    for name, weight in _kernels(digits_model).items():
        ours, rank = _ours(weight, "tucker2", fraction)
        assert isinstance(rank, tuple)
        with tl.backend_context("pytorch"):
            (core, factors), _ = partial_tucker(weight, rank=list(rank), modes=[0, 1])
            approx = tl.tenalg.multi_mode_dot(core, factors, modes=[0, 1])
        theirs = float((weight - approx).norm() / weight.norm())
        assert ours <= theirs * TOLERANCE, (name, rank, ours, theirs)


@pytest.mark.parametrize("fraction", [0.1, 0.3])
def test_cp_error_is_no_worse_than_parafac(digits_model, fraction):
    for name, weight in _kernels(digits_model).items():
        ours, rank = _ours(weight, "cp", fraction)
        assert isinstance(rank, int)
        with tl.backend_context("pytorch"):
            approx = tl.cp_to_tensor(parafac(weight, rank=rank))
        theirs = float((weight - approx).norm() / weight.norm())
        assert ours <= theirs * TOLERANCE, (name, rank, ours, theirs)
