"""The Tensor-Train decomposition: shapes, sizes, exactness, options and export."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import nn

from lpsd_search.decompositions import DECOMPOSITIONS, Compressible, LayerGeometry
from lpsd_search.decompositions.tt import TensorTrain, balanced_modes, tt_svd
from lpsd_search.errors import UserInputError
from lpsd_search.plan.measure import count_flops

TT = TensorTrain()

# (layer factory, input shape): every Conv2d setting the spatial core must carry, and Linear.
CASES: dict[str, tuple[Callable[[], Compressible], tuple[int, ...]]] = {
    "stride2": (lambda: nn.Conv2d(12, 16, 3, stride=2, padding=1), (2, 12, 9, 9)),
    "same": (lambda: nn.Conv2d(12, 16, 3, padding="same", bias=False), (2, 12, 8, 7)),
    "dilation2": (lambda: nn.Conv2d(12, 16, 3, dilation=2, padding=2), (2, 12, 9, 9)),
    "non_square_reflect": (lambda: nn.Conv2d(12, 16, (3, 5), padding=(1, 2),
                                             padding_mode="reflect"), (2, 12, 9, 9)),
    "no_bias_stride_w": (lambda: nn.Conv2d(8, 18, (1, 3), stride=(1, 2), bias=False),
                         (2, 8, 6, 9)),
    "1x1_stride2": (lambda: nn.Conv2d(12, 16, 1, stride=2), (2, 12, 9, 9)),
    "1x1_padded": (lambda: nn.Conv2d(12, 16, 1, padding=1, bias=False), (2, 12, 5, 5)),
    "groups2": (lambda: nn.Conv2d(12, 16, 3, padding=1, groups=2), (2, 12, 6, 6)),
    "linear": (lambda: nn.Linear(24, 20), (3, 24)),
    "linear_no_bias": (lambda: nn.Linear(30, 12, bias=False), (3, 30)),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # These shapes are tiny: on a busy machine intra-op threads only spin (≈100x slower).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _case(name: str) -> tuple[Compressible, torch.Tensor]:
    torch.manual_seed(0)
    factory, shape = CASES[name]
    return factory(), torch.randn(*shape)


def _geometry(layer: nn.Module, x: torch.Tensor, y: torch.Tensor) -> LayerGeometry:
    if isinstance(layer, nn.Linear):
        return LayerGeometry.of(layer)
    return LayerGeometry.of(layer, in_size=(x.shape[-2], x.shape[-1]),
                            out_size=(y.shape[-2], y.shape[-1]))


def _relative_error(small: nn.Module, dense: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        y = dense(x)
        return float((small(x) - y).norm() / y.norm())


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("rank", [1, 3])
def test_shape_params_and_flops_match_the_formulas(name: str, rank: int) -> None:
    layer, x = _case(name)
    small = TT.decompose(layer, rank)
    with torch.no_grad():
        y = layer(x)
        assert small(x).shape == y.shape
    geom = _geometry(layer, x, y)
    assert sum(p.numel() for p in small.parameters()) == TT.params(geom, rank)
    assert count_flops(small, x[:1]) == TT.flops(geom, rank)
    assert TT.params(geom, rank) < geom.dense_params
    assert all(type(m).__module__.startswith("torch.nn") for m in small.modules())


@pytest.mark.parametrize("name", sorted(CASES))
def test_full_rank_reproduces_the_dense_layer(name: str) -> None:
    layer, x = _case(name)
    top = TT.max_rank(LayerGeometry.of(layer))
    assert _relative_error(TT.decompose(layer, top), layer, x) < 1e-4


@pytest.mark.parametrize("options", [{}, {"in_modes": (3, 2, 2), "out_modes": (2, 8)}])
def test_error_never_increases_with_rank(options: dict[str, object]) -> None:
    layer, x = _case("stride2")
    top = max(TT.max_rank(LayerGeometry.of(layer), **options))
    errors = [_relative_error(TT.decompose(layer, r, **options), layer, x)
              for r in range(1, top + 1)]
    assert all(b <= a + 1e-6 for a, b in itertools.pairwise(errors)), errors
    assert errors[0] > 0.3 and errors[-1] < 1e-4


def test_a_kernel_of_low_tt_rank_is_recovered_at_that_rank() -> None:
    torch.manual_seed(2)
    layer = nn.Conv2d(12, 16, 3, padding=1, bias=False)
    ranks = (2, 3, 3, 2)  # modes (4, 3, 9, 4, 4): i₁, i₂, s, o₂, o₁
    cores = [torch.randn(left, mode, right)
             for left, mode, right in zip((1, *ranks), (4, 3, 9, 4, 4), (*ranks, 1), strict=True)]
    train = torch.einsum("xia,ajb,bsc,cqd,dpz->ijsqp", *cores)
    with torch.no_grad():
        layer.weight.copy_(train.permute(4, 3, 0, 1, 2).reshape(16, 12, 3, 3))
    x = torch.randn(2, 12, 6, 6)
    assert _relative_error(TT.decompose(layer, ranks), layer, x) < 1e-4
    assert _relative_error(TT.decompose(layer, (2, 3, 2, 2)), layer, x) > 1e-2


def test_tt_svd_is_exact_at_full_rank_and_orthonormal() -> None:
    torch.manual_seed(1)
    tensor = torch.randn(2, 3, 4, 5)
    cores = tt_svd(tensor, (3, 5))
    rebuilt = torch.einsum("gxia,gajb,gbkz->gijk", *cores)
    assert torch.allclose(rebuilt, tensor, atol=1e-5)
    first = cores[0].reshape(2, 3, 3)
    assert torch.allclose(first.transpose(1, 2) @ first, torch.eye(3).expand(2, 3, 3), atol=1e-5)
    # A rank the unfolding cannot use (4 > 3·1) gets zero columns, still exact.
    padded = tt_svd(tensor, (4, 5))
    assert padded[0].shape == (2, 1, 3, 4)
    assert torch.allclose(torch.einsum("gxia,gajb,gbkz->gijk", *padded), tensor, atol=1e-5)


def test_default_modes_are_balanced() -> None:
    assert balanced_modes(256, 2) == (16, 16)
    assert balanced_modes(96, 3) == (6, 4, 4)
    assert balanced_modes(13, 2) == (13,)  # a prime count gets a single mode
    assert balanced_modes(1, 2) == (1,)
    geom = LayerGeometry.of(nn.Conv2d(256, 64, 3))
    assert TT.layout(geom, {}).modes == (16, 16, 9, 8, 8)
    assert TT.max_rank(geom) == (16, 256, 64, 8)
    assert TT.layout(geom, {"d": 3}).modes == (8, 8, 4, 9, 4, 4, 4)


def test_explicit_modes_and_rank_forms() -> None:
    layer, x = _case("stride2")  # 12 → 16
    options = {"in_modes": (3, 2, 2), "out_modes": [2, 8]}
    geom = LayerGeometry.of(layer)
    assert TT.layout(geom, options).modes == (3, 2, 2, 9, 8, 2)
    top = TT.max_rank(geom, **options)
    assert top == (3, 6, 12, 16, 2)
    small = TT.decompose(layer, top, **options)
    assert _relative_error(small, layer, x) < 1e-4
    assert sum(p.numel() for p in small.parameters()) == TT.params(geom, top, **options)
    assert TT.check_rank(geom, 4, **options) == (3, 4, 4, 4, 2)
    # A full train is larger than this dense layer, so the whole budget buys a smaller rank.
    assert TT.params(geom, top, **options) > geom.dense_params
    budget = TT.resolve_rank(geom, 1.0, **options)
    assert budget == (3, 6, 12, 12, 2)
    assert TT.params(geom, budget, **options) <= geom.dense_params < TT.params(geom, 13, **options)


def test_rank_for_params_is_the_largest_uniform_rank_within_the_budget() -> None:
    geom = LayerGeometry.of(nn.Conv2d(64, 64, 3, bias=False))
    target = geom.dense_params / 10
    rank = TT.rank_for_params(geom, target)
    assert rank == (8, 14, 14, 8)  # 128 + 128·14 + 9·14² = 3684 ≤ 3686.4
    assert TT.params(geom, rank) <= target < TT.params(geom, 15)
    assert TT.rank_for_params(geom, 1.0) == (1, 1, 1, 1)  # never below the minimum


@pytest.mark.parametrize(("options", "needle"), [
    ({"in_modes": (5, 3)}, "in_modes=(5, 3) is invalid for 12 input channels per group"),
    ({"out_modes": (4, 0, 4)}, "product is 16"),
    ({"out_modes": 16}, "out_modes=16"),
    ({"d": 0}, "d=0"),
    ({"modes": (4, 4)}, "unknown options ['modes']"),
])
def test_bad_options_are_one_line_errors(options: dict[str, object], needle: str) -> None:
    layer, _ = _case("stride2")
    with pytest.raises(UserInputError) as caught:
        TT.decompose(layer, 2, **options)
    message = str(caught.value)
    assert needle in message and "valid:" in message and "\n" not in message


@pytest.mark.parametrize("rank", [0, (1, 2), (1, 2, 3, 99), True])
def test_bad_ranks_are_one_line_errors(rank: object) -> None:
    layer, _ = _case("stride2")
    with pytest.raises(UserInputError, match=r"tt rank .* valid: a positive int, a tuple of 4"):
        TT.decompose(layer, rank)  # type: ignore[arg-type]


def test_unsupported_layers() -> None:
    assert DECOMPOSITIONS.get("tt") is TensorTrain  # registered under its name
    depthwise = nn.Conv2d(8, 8, 3, groups=8)
    assert not TT.supports(LayerGeometry.of(depthwise))
    with pytest.raises(UserInputError, match="tt cannot compress"):
        TT.decompose(depthwise, 1)
    # A Linear run over extra positions (N × T × I) cannot be moved onto channels.
    assert TT.supports(LayerGeometry.of(nn.Linear(24, 20)))
    assert not TT.supports(LayerGeometry.of(nn.Linear(24, 20), in_positions=7, out_positions=7))


@pytest.mark.parametrize("name", ["non_square_reflect", "1x1_stride2", "groups2", "linear"])
def test_script_and_export_match_eager(name: str) -> None:
    layer, x = _case(name)
    small = TT.decompose(layer, 3).eval()
    with torch.no_grad():
        eager = small(x)
        scripted = torch.jit.script(small)(x)
        exported = torch.export.export(small, (x,)).module()(x)
    assert torch.allclose(scripted, eager, atol=1e-6)
    assert torch.allclose(exported, eager, atol=1e-6)


def test_count_flops_counts_every_convolution() -> None:
    model = nn.Sequential(nn.Unflatten(1, (2, 3)), nn.Conv3d(2, 4, (1, 3, 3), groups=2),
                          nn.Flatten(1, 2), nn.Conv2d(12, 5, 1))
    x = torch.randn(2, 6, 7, 7)
    # Conv3d: 4·3·5·5 outputs × (2/2)·9; Conv2d: 5·5·5 outputs × 12.
    assert count_flops(model, x) == 4 * 3 * 25 * 9 + 5 * 25 * 12
    conv1d = nn.Conv1d(3, 4, 5)
    assert count_flops(conv1d, torch.randn(2, 3, 10)) == 4 * 6 * 3 * 5
    assert count_flops(conv1d, torch.randn(3, 10)) == 4 * 6 * 3 * 5  # unbatched input
