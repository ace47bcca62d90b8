"""Rank choice without a search: empirical VBMF and an energy threshold on kernel unfoldings.

Both rules give a *starting point* for a search, never the answer: they look at the weights
alone, not at the accuracy a rank keeps.

* ``evbmf``: the analytic empirical variational Bayesian matrix factorisation of Nakajima,
  Sugiyama, Babacan & Tomioka (JMLR 2013, "Global analytic solution of fully-observed
  variational Bayesian matrix factorization"), with the noise variance chosen by minimising
  the free energy between the analytic bounds of Nakajima, Tomioka, Sugiyama & Babacan (JMLR
  2015, "Condition for perfect dimensionality recovery by variational Bayesian PCA"). Kim et al.
  (ICLR 2016) use it on the channel-mode unfoldings of a kernel to pick Tucker-2 ranks.
* ``energy_rank``: the smallest rank keeping a fraction of ``Σσ²``.

``suggest_rank`` applies either rule to the unfoldings a registered method truncates (its
``Decomposition.unfoldings``) and lets the method assemble and clip the rank
(``rank_from_unfoldings``); ``fraction_rank`` turns a parameter fraction into a rank
through the method's own ``resolve_rank``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from lpsd_search.decompositions.base import Rank, get_method, prepare_weight
from lpsd_search.decompositions.geometry import LayerGeometry
from lpsd_search.errors import UserInputError

__all__ = ["RULES", "EVBMFPosterior", "energy_rank", "evbmf", "fraction_rank", "suggest_rank"]

RULES = ("vbmf", "energy")
GRID_POINTS = 200
"""Log-spaced noise variances tried before the local refinement (the free energy is not convex)."""


@dataclass(frozen=True)
class EVBMFPosterior:
    """What ``evbmf`` found besides the rank.

    Attributes:
        noise_variance: the estimated per-entry noise variance σ².
        threshold: singular values above it are kept (``√(M·σ²·x̲)``, M the longer side).
        singular_values: every singular value of the matrix, largest first.
        estimates: the EVB estimates (shrunk singular values) of the kept components.
    """

    noise_variance: float
    threshold: float
    singular_values: tuple[float, ...]
    estimates: tuple[float, ...]


def _spectra(matrices: torch.Tensor) -> np.ndarray:
    """Singular values of a batch ``b × m × n``, largest first, as float64 ``b × min(m, n)``."""
    batch = matrices.detach().to(torch.float64)
    if batch.shape[1] > batch.shape[2]:
        batch = batch.transpose(1, 2)
    # eigvalsh of the short side's Gram matrix: tens of times faster than svdvals on CPU, and
    # in float64 exact down to ~1e-8·σ_max, far below any noise level VBMF could detect.
    values = torch.linalg.eigvalsh(batch @ batch.transpose(1, 2)).flip(-1).clamp_min(0).sqrt()
    return values.cpu().numpy()


def _evb_tau_bar(alpha: float) -> float:
    """τ̲: the zero of ``log(1+τ) + α·log(1+τ/α) − τ`` above √α (2.5129 at α = 1).

    Below ``x̲ = (1+τ̲)(1+α/τ̲)`` the null solution has the lower free energy. Common code uses
    the approximation ``2.5129·√α``, exact only at α = 1; bisection gives the exact zero (the
    function decreases for τ > √α), which keeps the free energy continuous at the threshold.
    """
    def excess(tau: float) -> float:
        return math.log1p(tau) + alpha * math.log1p(tau / alpha) - tau

    low, high = math.sqrt(alpha), 4.0 * math.sqrt(alpha) + 4.0
    for _ in range(200):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if excess(middle) > 0 else (low, middle)
    return 0.5 * (low + high)


def _free_energy_gain(x: np.ndarray, alpha: float, x_bar: float) -> np.ndarray:
    """ψ₁(x) for x > x̲ (a component's free-energy gain, ≤ 0), 0 elsewhere."""
    # Evaluated at max(x, x̲) so that τ stays positive where the result is masked out anyway.
    shifted = np.maximum(x, x_bar) - (1.0 + alpha)
    tau = 0.5 * (shifted + np.sqrt(np.maximum(shifted * shifted - 4.0 * alpha, 0.0)))
    gain = np.log1p(tau) + alpha * np.log1p(tau / alpha) - tau
    return np.where(x > x_bar, gain, 0.0)


def _evbmf_of_spectrum(values: np.ndarray, rows: int, cols: int) -> tuple[int, EVBMFPosterior]:
    """EVBMF of a matrix given all its singular values (largest first)."""
    short, long = min(rows, cols), max(rows, cols)
    alpha = short / long
    squares = values * values
    total = float(squares.sum())
    spectrum = tuple(float(v) for v in values)
    if not total > 0.0:
        return 0, EVBMFPosterior(0.0, 0.0, spectrum, ())
    tau_bar = _evb_tau_bar(alpha)
    x_bar = (1.0 + tau_bar) * (1.0 + alpha / tau_bar)
    # Analytic bounds on σ² (Nakajima et al. 2015): at most H̄ = ⌈L/(1+α)⌉ − 1 components can be
    # kept, so the singular values past H̄ bound the noise from below; the mean energy per
    # entry bounds it from above.
    kept_at_most = math.ceil(short / (1.0 + alpha)) - 1
    upper = total / (short * long)
    lower = max(squares[kept_at_most] / (long * x_bar), squares[kept_at_most:].mean() / long)
    lower = min(max(lower, upper * 1e-24), upper)

    def free_energy(variance: np.ndarray) -> np.ndarray:
        # Σ_h ψ₀(x_h) with ψ₀(x) = x − log x, less its σ²-free part, plus the kept components' ψ₁.
        x = squares[None, :] / (long * variance[:, None])
        gains = _free_energy_gain(x, alpha, x_bar).sum(axis=1)
        return total / (long * variance) + short * np.log(variance) + gains

    grid = np.geomspace(lower, upper, GRID_POINTS) if lower < upper else np.array([upper])
    energies = free_energy(grid)
    best = int(np.argmin(energies))
    variance = float(grid[best])
    if len(grid) > 1:
        from scipy.optimize import minimize_scalar  # imported here: only EVBMF needs scipy

        bracket = (math.log(grid[max(best - 1, 0)]), math.log(grid[min(best + 1, len(grid) - 1)]))
        refined = minimize_scalar(lambda t: float(free_energy(np.array([math.exp(t)]))[0]),
                                  bounds=bracket, method="bounded", options={"xatol": 1e-10})
        if float(refined.fun) < float(energies[best]):
            variance = math.exp(float(refined.x))
    threshold = math.sqrt(long * variance * x_bar)
    kept = values[values > threshold]
    # The EVB estimate of each kept singular value (Nakajima et al. 2013, Theorem 2's γ̂).
    ratio = (short + long) * variance / kept**2
    root = np.sqrt(np.maximum((1 - ratio) ** 2 - 4 * short * long * variance**2 / kept**4, 0.0))
    estimates = 0.5 * kept * (1 - ratio + root)
    return len(kept), EVBMFPosterior(variance, threshold, spectrum,
                                     tuple(float(e) for e in estimates))


def _as_tensor(values: torch.Tensor | np.ndarray, dims: tuple[int, ...],
               what: str) -> torch.Tensor:
    tensor = torch.as_tensor(values)
    if tensor.dim() not in dims or tensor.numel() == 0:
        raise UserInputError(
            f"{what} of shape {tuple(tensor.shape)} is invalid; valid: a non-empty "
            + " or ".join(f"{d}-D" for d in dims) + " array"
        )
    if not bool(torch.isfinite(tensor).all()):
        raise UserInputError(f"{what} has non-finite entries; valid: finite values only")
    return tensor


def evbmf(matrix: torch.Tensor | np.ndarray) -> tuple[int, EVBMFPosterior]:
    """The rank that analytic empirical VBMF keeps (Nakajima et al., JMLR 2013).

    The matrix is modelled as a low-rank signal plus i.i.d. Gaussian noise of unknown variance;
    the free energy of the global VB solution is minimised over the noise variance between its
    analytic bounds (Nakajima et al., JMLR 2015), by a log-spaced grid refined with Brent's
    method, and every singular value above the EVB threshold is kept.

    A pure-noise matrix gives rank 0 (its largest singular value sits near the Marchenko–Pastur
    edge ``σ(√L + √M)``, below the threshold); so does any matrix with one row or column.

    Args:
        matrix: a 2-D tensor or array (any orientation, any device).

    Returns:
        ``(rank, posterior)``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> signal = torch.randn(40, 3, generator=g) @ torch.randn(3, 60, generator=g)
        >>> evbmf(signal + 0.01 * torch.randn(40, 60, generator=g))[0]
        3
    """
    tensor = _as_tensor(matrix, (2,), "matrix")
    return _evbmf_of_spectrum(_spectra(tensor[None])[0], *tensor.shape)


def _energy_rank_of_squares(squares: np.ndarray, keep: float) -> int:
    """Smallest r whose top-r entries of the non-increasing ``squares`` reach ``keep`` of all."""
    cumulative = np.cumsum(squares)
    if not cumulative[-1] > 0:
        return 0
    return int(np.searchsorted(cumulative, keep * cumulative[-1], side="left")) + 1


def _check_keep(keep: float) -> float:
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0.0 < keep <= 1.0:
        raise UserInputError(f"energy keep={keep!r} is invalid; valid: a number in (0, 1]")
    return float(keep)


def energy_rank(values: torch.Tensor | np.ndarray, keep: float) -> int:
    """Smallest r with ``Σ_{h≤r} σ_h² ≥ keep · Σ_h σ_h²`` (0 for an all-zero input).

    Args:
        values: singular values (1-D, any order) or a matrix (2-D) whose singular values are used.
        keep: the fraction of the energy to keep, in (0, 1].

    Example:
        >>> energy_rank(torch.tensor([3.0, 2.0, 1.0]), 0.9)  # 9 + 4 ≥ 0.9 · 14
        2
    """
    keep = _check_keep(keep)
    tensor = _as_tensor(values, (1, 2), "singular values or matrix")
    if tensor.dim() == 2:
        sigma = _spectra(tensor[None])[0]
    else:
        sigma = np.sort(np.abs(tensor.detach().cpu().numpy().astype(np.float64)))[::-1]
    return _energy_rank_of_squares(sigma * sigma, keep)


def _rule_rank(matrices: torch.Tensor, rule: str, keep: float) -> int:
    """The rule's rank for a batch of matrices that share one rank (groups, ALDS chunks)."""
    spectra = _spectra(matrices)
    if rule == "energy":
        # One rank for every matrix: keep `keep` of the batch's total energy.
        return _energy_rank_of_squares((spectra * spectra).sum(axis=0), keep)
    # VBMF per matrix; the largest keeps every group's detected signal.
    rows, cols = matrices.shape[1:]
    return max(_evbmf_of_spectrum(values, rows, cols)[0] for values in spectra)


def suggest_rank(layer: nn.Module, method: str, rule: str = "vbmf", keep: float = 0.9,
                 **options: Any) -> Rank:
    """The natural rank of ``method`` for ``layer`` by VBMF or an energy threshold.

    The rule runs on the matrices the method truncates: the per-group ``O/g × (I/g·kh·kw)``
    matricisation for svd, the per-chunk blocks for alds, the mode-0 and mode-1 unfoldings for
    tucker2 (``(r_out, r_in)``, Kim et al., ICLR 2016) and cp (the larger of the two: a CP rank
    is at least every unfolding's rank), and every bond's unfolding for tt. Matrices that share
    one rank (groups, chunks) take the largest VBMF rank, or the smallest rank keeping ``keep``
    of their total energy. The result is clipped to the method's ``[min_rank, max_rank]``; it
    does not check that the method makes the layer smaller (``Decomposition.supports``).

    Args:
        layer: an ``nn.Conv2d`` or ``nn.Linear``.
        method: a registered method name.
        rule: ``"vbmf"`` (``evbmf``) or ``"energy"`` (``energy_rank``).
        keep: the energy fraction for ``rule="energy"``, in (0, 1].
        **options: the method's options (structural ones such as alds ``k`` change the answer).

    Example:
        >>> conv = torch.nn.Conv2d(16, 32, 3)
        >>> suggest_rank(conv, "tucker2", rule="energy", keep=1.0)
        (32, 16)
    """
    if rule not in RULES:
        raise UserInputError(f"rank rule {rule!r} is invalid; valid: {', '.join(RULES)}")
    keep = _check_keep(keep)
    decomposition = get_method(method)
    decomposition.check_options(options)
    structural = {k: v for k, v in options.items() if k in decomposition.structural_options}
    geom = LayerGeometry.of(layer)  # the one-line error for anything but Conv2d / Linear
    batches = decomposition.unfoldings(prepare_weight(layer), geom, **structural)
    ranks = [_rule_rank(batch, rule, keep) for batch in batches]
    return decomposition.rank_from_unfoldings(ranks, geom, **structural)


def fraction_rank(layer: nn.Module, method: str, fraction: float, **options: Any) -> Rank:
    """The natural rank of ``method`` that spends ``fraction`` of ``layer``'s parameters.

    The same code path as ``decompose(layer, fraction)``: the method's ``resolve_rank``.

    Example:
        >>> fraction_rank(torch.nn.Conv2d(16, 32, 3), "svd", 0.5)  # 176·r + 32 ≤ 2320
        13
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise UserInputError(f"rank fraction {fraction!r} is invalid; valid: a float in (0, 1]")
    decomposition = get_method(method)
    decomposition.check_options(options)
    structural = {k: v for k, v in options.items() if k in decomposition.structural_options}
    return decomposition.resolve_rank(LayerGeometry.of(layer), float(fraction), **structural)
