"""CP decomposition (Lebedev et al., ICLR 2015): built sizes, fit quality, cp4 and cp3 variants."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import nn

from lpsd_search import LayerGeometry, UserInputError, decompose_layer
from lpsd_search.decompositions.base import get_method
from lpsd_search.plan.measure import count_flops, count_params

CP = get_method("cp")
VARIANTS = ["cp4", "cp3"]

# name -> (factory, input shape without batch)
LAYERS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "stride2": (lambda: nn.Conv2d(6, 10, 3, stride=2, padding=1), (6, 11, 11)),
    "stride2x1-tuple-pad": (lambda: nn.Conv2d(6, 10, 3, stride=(2, 1), padding=(1, 2)),
                            (6, 11, 10)),
    "same-dilated": (lambda: nn.Conv2d(6, 10, 3, padding="same", dilation=2, bias=False),
                     (6, 10, 10)),
    "same-even": (lambda: nn.Conv2d(6, 10, (2, 4), padding="same", dilation=(1, 2)),
                  (6, 9, 10)),
    "valid-3x5": (lambda: nn.Conv2d(6, 10, (3, 5), padding="valid", bias=False), (6, 10, 12)),
    "reflect": (lambda: nn.Conv2d(6, 10, 3, padding=1, padding_mode="reflect"), (6, 7, 9)),
    "reflect-same-3x5": (lambda: nn.Conv2d(6, 10, (3, 5), padding="same",
                                           padding_mode="reflect"), (6, 7, 9)),
    "circular-dilated": (lambda: nn.Conv2d(6, 10, 3, padding=2, dilation=2,
                                           padding_mode="circular"), (6, 8, 8)),
    "kernel1x3": (lambda: nn.Conv2d(6, 10, (1, 3), stride=2, padding=(1, 1)), (6, 9, 9)),
    "kernel3x1": (lambda: nn.Conv2d(6, 10, (3, 1), stride=(1, 2), padding=1,
                                    padding_mode="reflect"), (6, 9, 9)),
    "kernel1x1": (lambda: nn.Conv2d(6, 10, 1), (6, 5, 5)),
    "kernel1x1-stride-pad": (lambda: nn.Conv2d(6, 10, 1, stride=2, padding=1, bias=False),
                             (6, 5, 5)),
    "grouped": (lambda: nn.Conv2d(8, 12, 3, padding=1, groups=2, stride=2), (8, 7, 7)),
    "grouped1x1": (lambda: nn.Conv2d(8, 12, 1, groups=4), (8, 5, 5)),
    "depthwise-multiplier": (lambda: nn.Conv2d(4, 8, 3, padding=1, groups=4), (4, 6, 6)),
    "depthwise5x5": (lambda: nn.Conv2d(4, 4, 5, padding=2, groups=4), (4, 6, 6)),
    "linear": (lambda: nn.Linear(20, 12), (20,)),
    "linear-nobias": (lambda: nn.Linear(20, 30, bias=False), (20,)),
}

# Depthwise kernels CP cannot shrink: per channel a 1×1×kh×kw tensor whose rank-1 CP costs
# 2 + kh + kw values (cp4) or 2 + kh·kw (cp3), against kh·kw dense.
UNSUPPORTED = [
    ("cp4", lambda: nn.Conv2d(8, 8, (3, 1), padding=1, groups=8)),
    ("cp4", lambda: nn.Conv2d(8, 8, 1, groups=8)),
    ("cp3", lambda: nn.Conv2d(8, 8, 3, padding=1, groups=8)),
    ("cp3", lambda: nn.Conv2d(8, 8, 5, padding=2, groups=8)),
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # ALS on tiny kernels is a chain of tiny ops: on a busy machine intra-op threads only wait
    # for each other (measured 20-100x slower with 2 threads than with 1).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _layer(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    factory, shape = LAYERS[name]
    return factory().eval(), torch.randn(2, *shape)


def _geometry(layer: nn.Module, x: torch.Tensor) -> LayerGeometry:
    if isinstance(layer, nn.Linear):
        return LayerGeometry.of(layer)
    with torch.no_grad():
        out = layer(x)
    return LayerGeometry.of(layer, in_size=(x.shape[-2], x.shape[-1]),
                            out_size=(out.shape[-2], out.shape[-1]))


def _output_error(module: nn.Module, layer: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        reference = layer(x)
        return float((module(x) - reference).norm() / reference.norm())


def _cp_kernel(shape: tuple[int, int, int, int], rank: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    a, b, c, d = (torch.randn(n, rank, generator=generator, dtype=torch.float64) for n in shape)
    return torch.einsum("or,ir,yr,xr->oiyx", a, b, c, d).float()


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", list(LAYERS))
def test_built_shape_params_and_flops_match_the_closed_forms(name, variant):
    layer, x = _layer(name)
    geom = _geometry(layer, x)
    # A 5×5 depthwise kernel as one 25-tap stage plus two 1×1 stages is larger than dense.
    supported = (name, variant) != ("depthwise5x5", "cp3")
    assert CP.supports(geom, variant=variant) == supported
    if not supported:
        return
    top = CP.max_rank(geom, variant=variant)
    for rank in sorted({1, min(3, top), top}):
        built = decompose_layer(layer, "cp", rank, variant=variant)
        with torch.no_grad():
            assert built(x).shape == layer(x).shape
        assert count_params(built) == CP.params(geom, rank, variant=variant)
        assert count_flops(built, x[:1]) == CP.flops(geom, rank, variant=variant)
        assert all(type(m).__module__.startswith("torch.nn") for m in built.modules())


@pytest.mark.parametrize(("variant", "factory"), UNSUPPORTED)
def test_depthwise_convs_cp_cannot_shrink_are_unsupported(variant, factory):
    layer = factory()
    geom = LayerGeometry.of(layer)
    assert CP.params(geom, 1, variant=variant) >= geom.dense_params
    assert not CP.supports(geom, variant=variant)
    with pytest.raises(UserInputError, match="valid: leave it dense") as info:
        decompose_layer(layer, "cp", 1, variant=variant)
    assert "\n" not in str(info.value)


def test_cp3_and_cp4_params_formulas():
    # R·(I + O) + g·R·(kh + kw) + O for cp4, R·(I + O) + g·R·kh·kw + O for cp3.
    layer = nn.Conv2d(16, 32, (3, 5), groups=2)
    geom = LayerGeometry.of(layer)
    assert CP.params(geom, 5, variant="cp4") == 5 * 48 + 2 * 5 * 8 + 32 == 352
    assert CP.params(geom, 5, variant="cp3") == 5 * 48 + 2 * 5 * 15 + 32 == 422
    assert CP.params(geom, 5) == 352  # cp4 is the default
    for variant, expected in (("cp4", 352), ("cp3", 422)):
        assert count_params(decompose_layer(layer, "cp", 5, variant=variant)) == expected
    # A spatial axis of size 1 gets no stage, so both variants coincide on 3×1 and 1×1 kernels.
    for kernel, per_rank in (((3, 1), 16 + 32 + 2 * 3), (1, 16 + 32)):
        geom = LayerGeometry.of(nn.Conv2d(16, 32, kernel, groups=2, bias=False))
        assert CP.params(geom, 4, variant="cp4") == CP.params(geom, 4, variant="cp3")
        assert CP.params(geom, 4) == 4 * per_rank


def test_max_rank_is_the_generic_cp_rank_bound():
    # Product of the mode sizes over the largest one.
    assert CP.max_rank(LayerGeometry.of(nn.Conv2d(8, 12, 3))) == 12 * 8 * 9 // 12
    assert CP.max_rank(LayerGeometry.of(nn.Conv2d(8, 12, 3)), variant="cp3") == 8 * 9
    assert CP.max_rank(LayerGeometry.of(nn.Conv2d(4, 4, 3, groups=4))) == 3
    assert CP.max_rank(LayerGeometry.of(nn.Conv2d(8, 12, 1))) == 8
    assert CP.max_rank(LayerGeometry.of(nn.Linear(20, 12))) == 12


@pytest.mark.parametrize("variant", VARIANTS)
def test_error_never_increases_with_rank(variant):
    torch.manual_seed(1)
    layer = nn.Conv2d(6, 10, 3, padding=1, bias=False)
    x = torch.randn(2, 6, 8, 8)
    top = CP.max_rank(LayerGeometry.of(layer), variant=variant)
    errors = [_output_error(decompose_layer(layer, "cp", r, variant=variant), layer, x)
              for r in (1, 2, 4, 6, 8, 12, 16, 24, top)]
    assert all(later <= earlier * (1 + 1e-6) + 1e-7
               for earlier, later in itertools.pairwise(errors)), errors
    assert errors[0] > 0.8
    assert errors[-1] < 1e-2  # at the rank bound an exact CP exists; ALS gets close to it


@pytest.mark.parametrize("rank", [3, 8])
def test_the_fit_does_not_depend_on_the_kernel_scale(rank):
    # Rank 8 exceeds O = 4: the components beyond the O × I·S unfolding's rank start random and
    # must grow into the fit at any weight scale (once they stayed at zero for small weights).
    torch.manual_seed(2)
    layer = nn.Conv2d(10, 4, 3, bias=False)
    x = torch.randn(2, 10, 7, 7)
    errors = []
    for scale in (1.0, 1e-3):
        scaled = nn.Conv2d(10, 4, 3, bias=False)
        with torch.no_grad():
            scaled.weight.copy_(layer.weight * scale)
        errors.append(_output_error(decompose_layer(scaled, "cp", rank), scaled, x))
    assert errors[1] == pytest.approx(errors[0], rel=1e-3)
    if rank > 4:
        assert errors[0] < 0.9 * _output_error(decompose_layer(layer, "cp", 4), layer, x)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(("shape", "rank"), [((10, 8, 3, 3), 5), ((12, 6, 3, 5), 6)])
def test_an_exact_cp_kernel_is_recovered(shape, rank, variant):
    layer = nn.Conv2d(shape[1], shape[0], shape[2:], padding=1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(_cp_kernel(shape, rank))
    x = torch.randn(2, shape[1], 9, 9, generator=torch.Generator().manual_seed(3))
    assert _output_error(decompose_layer(layer, "cp", rank, variant=variant), layer, x) < 1e-3


def test_the_bias_ends_up_unchanged_in_the_last_stage():
    layer = nn.Conv2d(6, 10, 3, padding=1, groups=2)
    built = decompose_layer(layer, "cp", 3)
    assert isinstance(built, nn.Sequential) and len(built) == 4
    assert all(stage.bias is None for stage in built[:-1])
    assert torch.equal(built[-1].bias, layer.bias)
    linear = nn.Linear(20, 12)
    assert torch.equal(decompose_layer(linear, "cp", 3)[-1].bias, linear.bias)


@pytest.mark.parametrize(("options", "message"), [
    ({"variant": "cp5"}, r"cp variant 'cp5' is invalid; valid: cp4, cp3"),
    ({"iters": -1}, r"cp iters=-1 is invalid"),
    ({"tol": "low"}, r"cp tol='low' is invalid"),
    ({"sweeps": 3}, r"cp got unknown options \['sweeps'\]"),
])
def test_bad_options_are_one_line_errors(options, message):
    with pytest.raises(UserInputError, match=message) as info:
        decompose_layer(nn.Conv2d(6, 10, 3), "cp", 2, **options)
    assert "\n" not in str(info.value)


def test_more_sweeps_never_fit_worse():
    torch.manual_seed(4)
    layer = nn.Conv2d(8, 8, 3, bias=False)
    x = torch.randn(2, 8, 7, 7)
    errors = [_output_error(decompose_layer(layer, "cp", 12, iters=n), layer, x)
              for n in (0, 3, 100)]
    assert errors[0] > errors[1] > errors[2]


@pytest.mark.parametrize("variant", VARIANTS)
def test_scripted_module_gives_the_same_output(variant):
    layer, x = _layer("stride2x1-tuple-pad")
    built = decompose_layer(layer, "cp", 4, variant=variant).eval()
    with torch.no_grad():
        expected = built(x)
        torch.testing.assert_close(torch.jit.script(built)(x), expected)
