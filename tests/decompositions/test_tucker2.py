"""The Tucker-2 fit: Chebyshev-filtered HOOI sweeps, their stopping rule and their safeguard."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from lpsd_search.decompositions import tucker2 as tucker2_module
from lpsd_search.decompositions.svd import filter_subspace
from lpsd_search.decompositions.tucker2 import tucker2_fit


def _exact_hooi_error(blocks: torch.Tensor, out_rank: int, in_rank: int, sweeps: int) -> float:
    """Textbook HOOI (exact eigendecompositions, float64) as the reference optimum."""
    w = blocks[0].double()  # O × I × S
    n_out, n_in, area = w.shape
    unfolded = w.permute(1, 0, 2).reshape(n_in, n_out * area)
    u_in = torch.linalg.eigh(unfolded @ unfolded.T)[1][:, -in_rank:]
    kept = 0.0
    for _ in range(sweeps):
        projected = torch.einsum("ois,ij->osj", w, u_in).reshape(n_out, -1)
        u_out = torch.linalg.eigh(projected @ projected.T)[1][:, -out_rank:]
        projected = torch.einsum("ois,or->isr", w, u_out).reshape(n_in, -1)
        values, vectors = torch.linalg.eigh(projected @ projected.T)
        u_in, kept = vectors[:, -in_rank:], float(values[-in_rank:].sum())
    norm2 = float(w.square().sum())
    return math.sqrt(max(norm2 - kept, 0.0) / norm2)


def _reconstruction_error(blocks: torch.Tensor, fit: tuple) -> float:
    u_out, core, u_in, _ = fit
    approx = torch.einsum("goa,gabs,gib->gois", u_out, core, u_in)
    return float((approx - blocks).norm() / blocks.norm())


def _low_rank_plus_noise(generator: torch.Generator) -> torch.Tensor:
    core = torch.randn(12, 10, 9, generator=generator)
    left = torch.linalg.qr(torch.randn(48, 12, generator=generator)).Q
    right = torch.linalg.qr(torch.randn(40, 10, generator=generator)).Q
    clean = torch.einsum("abs,oa,ib->ois", core, left, right)
    noise = torch.randn(clean.shape, generator=generator)
    return (clean + 0.3 * clean.norm() / noise.norm() * noise)[None]


def test_filtered_subspace_steps_converge_to_the_leading_eigenvectors():
    generator = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(60, 60, generator=generator)).Q
    values = torch.cat([torch.linspace(10, 5, 8), torch.linspace(3, 0.1, 52)])
    gram = ((basis * values) @ basis.T)[None]
    x = torch.linalg.qr(torch.randn(1, 60, 8, generator=generator)).Q
    for _ in range(60):
        x = filter_subspace(gram, x)
    top = basis[:, :8]
    assert torch.allclose(x[0].T @ x[0], torch.eye(8), atol=1e-5)
    # The projectors agree: the filtered span is the leading eigenspace.
    assert torch.allclose(x[0] @ x[0].T, top @ top.T, atol=1e-4)


def test_a_singular_block_takes_the_safe_step_and_stays_orthonormal():
    generator = torch.Generator().manual_seed(1)
    vectors = torch.randn(30, 3, generator=generator)
    gram = (vectors @ vectors.T)[None]  # rank 3 < the 5 columns asked for
    x = torch.linalg.qr(torch.randn(1, 30, 5, generator=generator)).Q
    step = filter_subspace(gram, x)
    assert torch.isfinite(step).all()
    assert torch.allclose(step[0].T @ step[0], torch.eye(5), atol=1e-5)
    # The range of the Gram matrix is inside the new span.
    inside = step[0] @ (step[0].T @ vectors)
    assert torch.allclose(inside, vectors, atol=1e-4)


@pytest.mark.parametrize("kind", ["random", "low-rank+noise", "grouped"])
def test_the_reported_error_is_the_error_of_the_returned_factors(kind):
    generator = torch.Generator().manual_seed(2)
    blocks = {
        "random": torch.randn(1, 64, 48, 9, generator=generator),
        "low-rank+noise": _low_rank_plus_noise(generator),
        "grouped": torch.randn(4, 16, 16, 9, generator=generator),
    }[kind]
    fit = tucker2_fit(blocks, 10, 9)
    assert fit[3] == pytest.approx(_reconstruction_error(blocks, fit), abs=1e-5)


def test_more_sweeps_never_raise_the_error():
    blocks = torch.randn(1, 64, 64, 9, generator=torch.Generator().manual_seed(3))
    errors = [tucker2_fit(blocks, 14, 14, iters=sweeps, tol=0.0)[3] for sweeps in range(8)]
    assert all(later <= earlier for earlier, later in itertools.pairwise(errors)), errors
    assert errors[-1] < errors[0] - 1e-3  # the sweeps do improve on the ST-HOSVD start


@pytest.mark.parametrize("kind", ["random", "low-rank+noise"])
def test_the_fit_reaches_the_error_of_converged_exact_hooi(kind):
    generator = torch.Generator().manual_seed(4)
    blocks = (torch.randn(1, 48, 40, 9, generator=generator) if kind == "random"
              else _low_rank_plus_noise(generator))
    reference = _exact_hooi_error(blocks, 10, 9, sweeps=200)
    ours = tucker2_fit(blocks, 10, 9, iters=200, tol=0.0)[3]
    assert ours <= reference + 1e-4, (ours, reference)


def test_the_stopping_rule_is_relative_to_the_error():
    blocks = _low_rank_plus_noise(torch.Generator().manual_seed(5))
    loose = tucker2_fit(blocks, 12, 10, tol=1e-2)[3]
    tight = tucker2_fit(blocks, 12, 10, tol=1e-7)[3]
    reference = _exact_hooi_error(blocks, 12, 10, sweeps=200)
    assert tight <= reference + 1e-5
    assert tight <= loose


def test_an_overshooting_step_falls_back_to_monotone_sweeps(monkeypatch):
    """If a filtered step raises the error, the fit resumes from the best pair with exact steps."""
    generator = torch.Generator().manual_seed(6)
    blocks = torch.randn(1, 48, 40, 9, generator=generator)
    start_error = tucker2_fit(blocks, 10, 9, iters=0)[3]

    def scrambled(gram: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        return torch.linalg.qr(torch.randn(start.shape, generator=generator)).Q

    monkeypatch.setattr(tucker2_module, "filter_subspace", scrambled)
    error = tucker2_fit(blocks, 10, 9, iters=200, tol=0.0)[3]
    reference = _exact_hooi_error(blocks, 10, 9, sweeps=200)
    assert error < start_error
    assert error <= reference + 1e-4, (error, reference)


def test_an_exact_fit_stops_at_once(monkeypatch):
    """Error 0 gains nothing per sweep: the scale-free rule must still stop (not run 20 sweeps)."""
    blocks = torch.zeros(1, 32, 32, 9)
    blocks[0, :4, :4] = torch.randn(4, 4, 9, generator=torch.Generator().manual_seed(7))
    sweeps = []
    real_gram = tucker2_module._gram
    monkeypatch.setattr(tucker2_module, "_gram", lambda m: sweeps.append(1) or real_gram(m))
    error = tucker2_fit(blocks, 8, 8, iters=20)[3]
    assert error < 1e-6
    # two Grams at the start, two per sweep: at most two sweeps
    assert len(sweeps) <= 2 + 2 * 2, len(sweeps)
