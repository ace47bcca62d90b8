"""Rank rules: EVBMF recovers planted ranks, the energy rule counts, suggestions are clipped."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from lpsd_search import UserInputError
from lpsd_search.decompositions import LayerGeometry
from lpsd_search.decompositions.base import DECOMPOSITIONS, Decomposition, get_method
from lpsd_search.decompositions.ranks import (
    _evb_tau_bar,
    energy_rank,
    evbmf,
    fraction_rank,
    suggest_rank,
)
from lpsd_search.decompositions.svd import SVD
from lpsd_search.decompositions.tt_layout import feasible_ranks


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _orthonormal(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(rows, cols, generator=gen, dtype=torch.float64))[0]


def _planted(rows: int, cols: int, values: list[float], gen: torch.Generator) -> torch.Tensor:
    """A ``rows × cols`` matrix with exactly the singular values ``values``."""
    k = len(values)
    middle = torch.diag(torch.tensor(values, dtype=torch.float64))
    return _orthonormal(rows, k, gen) @ middle @ _orthonormal(cols, k, gen).T


# --- evbmf -----------------------------------------------------------------------------------


def test_evbmf_recovers_a_planted_rank_and_the_noise() -> None:
    gen = _gen(0)
    signal = _planted(64, 128, [10.0, 8.0, 6.0, 4.0, 3.0], gen)
    noisy = signal + 0.01 * torch.randn(64, 128, generator=gen, dtype=torch.float64)
    rank, posterior = evbmf(noisy)
    assert rank == 5
    assert math.sqrt(posterior.noise_variance) == pytest.approx(0.01, rel=0.05)
    # The EVB estimates shrink the observed singular values towards the planted ones.
    assert posterior.estimates == pytest.approx([10.0, 8.0, 6.0, 4.0, 3.0], rel=0.01)
    assert len(posterior.singular_values) == 64
    assert posterior.singular_values[4] > posterior.threshold > posterior.singular_values[5]
    # Orientation and container do not matter.
    assert evbmf(noisy.T.numpy())[0] == 5


def test_evbmf_leaves_a_signal_below_the_noise_threshold_out() -> None:
    gen = _gen(1)
    signal = _planted(64, 128, [10.0, 8.0, 6.0, 4.0, 3.0], gen)
    # σ = 0.2: the threshold √(M·σ²·x̲) ≈ 4.3 lies between the observed 4th and 5th values.
    noisy = signal + 0.2 * torch.randn(64, 128, generator=gen, dtype=torch.float64)
    rank, posterior = evbmf(noisy)
    assert rank == 4
    assert posterior.singular_values[3] > posterior.threshold == pytest.approx(4.3, abs=0.1)
    assert posterior.threshold > posterior.singular_values[4]


@pytest.mark.parametrize("shape", [(64, 128), (128, 64), (50, 50), (20, 300), (3, 7)])
def test_evbmf_of_pure_noise_is_rank_zero(shape: tuple[int, int]) -> None:
    for seed in range(3):
        assert evbmf(torch.randn(*shape, generator=_gen(seed)))[0] == 0


def test_evbmf_rank_grows_as_the_noise_shrinks() -> None:
    gen = _gen(2)
    signal = _planted(64, 128, [2.0**-k for k in range(16)], gen)
    noise = torch.randn(64, 128, generator=gen, dtype=torch.float64)
    ranks = [evbmf(signal + level * noise)[0] for level in (1e-1, 1e-2, 1e-3, 1e-4)]
    assert ranks == sorted(ranks) and len(set(ranks)) == 4, ranks
    assert ranks[0] == 0 and ranks[-1] >= 9


def test_evbmf_degenerate_inputs() -> None:
    assert evbmf(torch.zeros(5, 8))[0] == 0
    assert evbmf(torch.randn(1, 30, generator=_gen(0)))[0] == 0  # one row: never a component
    with pytest.raises(UserInputError, match="2-D"):
        evbmf(torch.zeros(3, 4, 5))
    with pytest.raises(UserInputError, match="non-finite"):
        evbmf(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))


def test_evb_threshold_constant_is_exact() -> None:
    # 2.5129 at α = 1 (Nakajima et al. 2013); away from it the √α scaling is only approximate.
    assert _evb_tau_bar(1.0) == pytest.approx(2.5129, abs=1e-4)
    for alpha in (0.01, 0.25, 1.0):
        tau = _evb_tau_bar(alpha)
        assert math.log1p(tau) + alpha * math.log1p(tau / alpha) - tau == pytest.approx(
            0.0, abs=1e-12)
    assert _evb_tau_bar(0.01) / 0.1 == pytest.approx(2.8288, abs=1e-3)


# --- energy_rank ----------------------------------------------------------------------------


def test_energy_rank_counts_squared_values() -> None:
    values = torch.tensor([3.0, 2.0, 1.0])  # energies 9, 4, 1 of 14
    assert energy_rank(values, 0.6) == 1  # 9 ≥ 8.4
    assert energy_rank(values, 0.9) == 2  # 13 ≥ 12.6
    assert energy_rank(values, 0.95) == 3  # 13 < 13.3
    assert energy_rank(np.array([1.0, 3.0, 2.0]), 0.9) == 2  # any order
    assert energy_rank(torch.zeros(4), 0.5) == 0


def test_energy_rank_of_a_matrix_uses_its_singular_values() -> None:
    matrix = _planted(20, 30, [4.0, 2.0, 1.0], _gen(3))
    assert energy_rank(matrix, 0.75) == 1  # 16 / 21 = 0.76
    assert energy_rank(matrix, 0.96) == 3  # 20 / 21 = 0.952
    assert energy_rank(matrix, 0.999999) == 3  # the other 17 values are rounding noise


@pytest.mark.parametrize("keep", [0.0, 1.5, -0.1, True, "0.9"])
def test_energy_rank_rejects_bad_keep(keep: object) -> None:
    with pytest.raises(UserInputError, match=r"keep=.*valid: a number in \(0, 1\]"):
        energy_rank(torch.ones(3), keep)  # type: ignore[arg-type]


# --- suggest_rank ---------------------------------------------------------------------------


def _set_weight(layer: nn.Conv2d | nn.Linear, weight: torch.Tensor, noise: float,
                gen: torch.Generator) -> None:
    with torch.no_grad():
        weight = weight + noise * torch.randn(weight.shape, generator=gen, dtype=weight.dtype)
        layer.weight.copy_(weight.reshape(layer.weight.shape))


def test_svd_suggestion_takes_the_largest_group_rank() -> None:
    gen = _gen(4)
    conv = nn.Conv2d(16, 32, 3, groups=2)  # per group 16 × (8·9)
    groups = [_planted(16, 72, [5.0, 4.0, 3.0, 2.0][:r] + [2.0] * max(r - 4, 0), gen)
              for r in (4, 6)]
    _set_weight(conv, torch.cat(groups).reshape(32, 8, 3, 3), 1e-3, gen)
    assert suggest_rank(conv, "svd") == 6
    # The energy rule shares one rank across groups: pooled energies 50, 32, 18, … of 116.
    assert suggest_rank(conv, "svd", rule="energy", keep=0.5) == 2


def test_tucker2_and_cp_suggestions_read_both_channel_modes() -> None:
    gen = _gen(5)
    conv = nn.Conv2d(12, 24, 3)
    core = torch.randn(5, 3, 3, 3, generator=gen, dtype=torch.float64)
    u_out, u_in = _orthonormal(24, 5, gen), _orthonormal(12, 3, gen)
    kernel = torch.einsum("abst,oa,ib->oist", core, u_out, u_in)
    _set_weight(conv, kernel, 1e-4, gen)
    assert suggest_rank(conv, "tucker2") == (5, 3)
    assert suggest_rank(conv, "cp") == 5  # the larger of the two, as a CP rank must be
    assert suggest_rank(conv, "tucker2", rule="energy", keep=0.999) == (5, 3)


def test_alds_suggestion_works_per_chunk() -> None:
    gen = _gen(6)
    conv = nn.Conv2d(16, 16, 3)
    # k = 2 chunks of 8 input channels, each a rank-3 block 16 × 72.
    chunks = [_planted(16, 72, [3.0, 2.0, 1.0], gen).reshape(16, 8, 9) for _ in range(2)]
    _set_weight(conv, torch.cat(chunks, dim=1).reshape(16, 16, 3, 3), 1e-4, gen)
    assert suggest_rank(conv, "alds", k=2) == 3
    assert suggest_rank(conv, "svd") == 6  # the whole matricisation holds both chunks


def test_tt_suggestion_recovers_planted_bond_ranks() -> None:
    gen = _gen(7)
    conv = nn.Conv2d(16, 16, 3)  # modes (4, 4, 9, 4, 4), maximal bonds (4, 16, 16, 4)
    method, geom = get_method("tt"), LayerGeometry.of(conv)
    bonds = (1, 2, 3, 3, 2, 1)
    cores = tuple(torch.randn(1, bonds[k], n, bonds[k + 1], generator=gen, dtype=torch.float64)
                  for k, n in enumerate((4, 4, 9, 4, 4)))
    _set_weight(conv, method.reconstruct(cores, geom, bonds[1:-1]), 1e-6, gen)
    assert suggest_rank(conv, "tt") == (2, 3, 3, 2)
    assert feasible_ranks([4, 16, 16, 4], (4, 4, 9, 4, 4)) == [4, 16, 16, 4]
    assert feasible_ranks([9, 50, 50, 1], (4, 4, 9, 4, 4)) == [4, 16, 4, 1]


def test_suggestions_are_clipped_to_the_valid_ranks() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 32, 3)
    with torch.no_grad():
        conv.weight.normal_()  # pure noise: VBMF keeps nothing, so the minimum rank comes back
    assert suggest_rank(conv, "svd") == 1
    assert suggest_rank(conv, "tucker2") == (1, 1)
    assert suggest_rank(conv, "tt") == (1, 1, 1, 1)
    # Keeping all of the energy needs the full rank, which is the maximum.
    geom = LayerGeometry.of(conv)
    for method in ("svd", "tucker2", "tt"):
        assert suggest_rank(conv, method, rule="energy", keep=1.0) == get_method(
            method).max_rank(geom)


def test_linear_layers_are_supported() -> None:
    gen = _gen(8)
    linear = nn.Linear(40, 60)
    _set_weight(linear, _planted(60, 40, [3.0, 2.0, 1.0], gen).float(), 1e-3, gen)
    assert suggest_rank(linear, "svd") == 3
    assert suggest_rank(linear, "tucker2") == (3, 3)


def test_suggest_rank_rejects_bad_input_in_one_line() -> None:
    conv = nn.Conv2d(8, 8, 3)
    with pytest.raises(UserInputError) as error:
        suggest_rank(conv, "svd", rule="median")
    assert str(error.value) == "rank rule 'median' is invalid; valid: vbmf, energy"
    with pytest.raises(UserInputError, match="valid: svd"):
        suggest_rank(conv, "nope")
    with pytest.raises(UserInputError, match="unknown options"):
        suggest_rank(conv, "svd", k=2)
    with pytest.raises(UserInputError, match="keep"):
        suggest_rank(conv, "svd", rule="energy", keep=2.0)
    with pytest.raises(UserInputError, match="valid layers: Conv2d, Linear"):
        suggest_rank(nn.Conv1d(4, 4, 3), "svd")


# --- pinned suggestions: every method's unfoldings ------------------------------------------


def _decaying(rows: int, cols: int, seed: int) -> torch.Tensor:
    """A seeded ``rows × cols`` matrix with singular values ``0.75^k`` plus noise ``1e-3``."""
    gen = _gen(seed)
    left = _orthonormal(rows, rows, gen)
    right = _orthonormal(cols, rows, gen)
    values = 0.75 ** torch.arange(rows, dtype=torch.float64)
    return (left * values) @ right.T + 1e-3 * torch.randn(rows, cols, generator=gen,
                                                          dtype=torch.float64)


def _seeded_layers() -> dict[str, nn.Conv2d | nn.Linear]:
    conv, grouped, linear = nn.Conv2d(16, 32, 3), nn.Conv2d(24, 24, 3, groups=2), nn.Linear(40, 60)
    with torch.no_grad():
        conv.weight.copy_(_decaying(32, 144, 0).reshape(32, 16, 3, 3))
        grouped.weight.copy_(torch.cat([_decaying(12, 108, s) for s in (1, 2)])
                             .reshape(24, 12, 3, 3))
        linear.weight.copy_(_decaying(40, 60, 3).T)
    return {"conv": conv, "grouped": grouped, "linear": linear}


# (layer, method, options, (vbmf, energy keep=0.9, energy keep=0.5)), computed by the rank rules
# as they were before the methods provided their own unfoldings (branches on method names).
PINNED: list[tuple[str, str, dict[str, object], tuple[object, object, object]]] = [
    ("conv", "svd", {}, (14, 5, 2)),
    ("conv", "alds", {}, (11, 4, 2)),
    ("conv", "alds", {"k": 2}, (13, 4, 2)),
    ("conv", "tucker2", {}, ((14, 4), (5, 12), (2, 5))),
    ("conv", "cp", {}, (14, 12, 5)),
    ("conv", "cp", {"variant": "cp3"}, (14, 12, 5)),
    ("conv", "tt", {}, ((1, 4, 14, 6), (4, 12, 5, 6), (2, 5, 2, 2))),
    ("conv", "tt", {"d": 3}, ((1, 2, 4, 8, 4, 1), (4, 7, 12, 5, 7, 4), (2, 3, 5, 2, 2, 2))),
    ("grouped", "svd", {}, (8, 4, 2)),
    ("grouped", "alds", {}, (7, 4, 2)),
    ("grouped", "alds", {"k": 2}, (7, 4, 2)),
    ("grouped", "tucker2", {}, ((8, 2), (4, 9), (2, 4))),
    ("grouped", "cp", {}, (8, 9, 4)),
    ("grouped", "cp", {"variant": "cp3"}, (8, 9, 4)),
    ("grouped", "tt", {}, ((1, 2, 6, 2), (4, 9, 4, 4), (2, 4, 2, 2))),
    ("grouped", "tt", {"d": 3}, ((1, 1, 2, 8, 4, 2), (3, 5, 9, 4, 5, 3), (2, 3, 4, 2, 2, 2))),
    ("linear", "svd", {}, (14, 5, 2)),
    ("linear", "alds", {}, (14, 5, 2)),
    ("linear", "tucker2", {}, ((14, 14), (5, 5), (2, 2))),
    ("linear", "cp", {}, (14, 5, 2)),
    ("linear", "cp", {"variant": "cp3"}, (14, 5, 2)),
    ("linear", "tt", {}, ((3, 14, 5), (6, 5, 7), (2, 2, 3))),
    ("linear", "tt", {"d": 3}, ((3, 12, 14, 8, 2), (4, 7, 5, 9, 5), (2, 2, 2, 3, 2))),
]


@pytest.mark.parametrize(("layer", "method", "options", "expected"), PINNED,
                         ids=[f"{row[0]}-{row[1]}-{row[2]}" for row in PINNED])
def test_suggestions_are_pinned_for_every_method(layer: str, method: str,
                                                 options: dict[str, object],
                                                 expected: tuple[object, object, object]) -> None:
    conv = _seeded_layers()[layer]
    found = tuple(suggest_rank(conv, method, rule=rule, keep=keep, **options)
                  for rule, keep in (("vbmf", 0.9), ("energy", 0.9), ("energy", 0.5)))
    assert found == expected


def test_every_registered_method_is_pinned_and_gives_unfoldings() -> None:
    assert {method for _, method, _, _ in PINNED} == set(DECOMPOSITIONS.names())
    conv = _seeded_layers()["conv"]
    geom, weight = LayerGeometry.of(conv), conv.weight.detach()
    for name in DECOMPOSITIONS.names():
        method = get_method(name)
        batches = method.unfoldings(weight, geom)
        top = method.max_rank(geom)
        assert all(batch.dim() == 3 for batch in batches)
        # A tuple rank takes one batch per entry; every matrix holds the whole kernel.
        assert isinstance(top, int) or len(batches) == len(top)
        assert all(batch[0].numel() * batch.shape[0] == weight.numel() for batch in batches)


def test_a_method_without_unfoldings_has_no_rank_rule() -> None:
    class NoRule(SVD):
        name = "norule"
        unfoldings = Decomposition.unfoldings

    conv = nn.Conv2d(8, 8, 3)
    with pytest.raises(UserInputError) as error:
        NoRule().unfoldings(conv.weight.detach(), LayerGeometry.of(conv))
    assert str(error.value) == (
        "no rank rule for method 'norule'; valid: " + ", ".join(DECOMPOSITIONS.names()))


# --- fraction_rank --------------------------------------------------------------------------


def test_fraction_rank_is_the_methods_resolve_rank() -> None:
    conv = nn.Conv2d(16, 32, 3)
    assert fraction_rank(conv, "svd", 0.5) == 13  # 176·13 + 32 = 2320 = half of 4640
    geom = LayerGeometry.of(conv)
    for method, options in (("tucker2", {}), ("alds", {"k": 2}), ("cp", {"variant": "cp3"})):
        expected = get_method(method).resolve_rank(geom, 0.3, **options)
        assert fraction_rank(conv, method, 0.3, **options) == expected
    assert fraction_rank(conv, "svd", 1) == 26  # an int 1 means 100 % of the params, not rank 1
    with pytest.raises(UserInputError, match="out of range"):
        fraction_rank(conv, "svd", 0.0)
    with pytest.raises(UserInputError, match="rank fraction True"):
        fraction_rank(conv, "svd", True)
