"""The decomposition contract, checked for every registered method on every layer variant.

Each method must keep the output shape, build exactly the parameters, bytes and FLOPs its closed
forms promise, keep the bias, never lose accuracy as the rank grows, be exact at full rank where
the method is exact (svd, alds, tucker2, tt), and build modules that TorchScript, torch.export and
ONNX (run by onnxruntime) reproduce.
"""

from __future__ import annotations

import copy
import io
import itertools
import warnings
from collections.abc import Callable

import pytest
import torch
from torch import nn

from lpsd_search import DECOMPOSITIONS, LayerGeometry, UserInputError, decompose_layer
from lpsd_search.decompositions.base import get_method
from lpsd_search.plan.measure import count_bytes, count_flops, count_params

METHODS = DECOMPOSITIONS.names()
EXACT_AT_FULL_RANK = [m for m in ("svd", "alds", "tucker2", "tt") if m in METHODS]

# name -> (factory, input shape without batch)
LAYERS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "conv3x3": (lambda: nn.Conv2d(16, 24, 3, padding=1), (16, 9, 9)),
    "stride2": (lambda: nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), (16, 11, 11)),
    "same-dilated": (lambda: nn.Conv2d(12, 20, 3, padding="same", dilation=2), (12, 10, 10)),
    "valid-nonsquare": (lambda: nn.Conv2d(16, 24, (3, 5), stride=(2, 1), padding="valid"),
                        (16, 12, 13)),
    "asymmetric-pad": (lambda: nn.Conv2d(8, 16, (5, 3), stride=(1, 2), padding=(2, 0),
                                         dilation=(1, 2)), (8, 9, 14)),
    "reflect": (lambda: nn.Conv2d(8, 16, 3, padding=1, padding_mode="reflect"), (8, 7, 7)),
    "circular": (lambda: nn.Conv2d(8, 12, 3, padding=2, dilation=2, padding_mode="circular"),
                 (8, 8, 8)),
    "pointwise": (lambda: nn.Conv2d(32, 24, 1), (32, 5, 5)),
    "grouped": (lambda: nn.Conv2d(16, 32, 3, padding=1, groups=2), (16, 6, 6)),
    "depthwise": (lambda: nn.Conv2d(16, 16, 3, padding=1, groups=16), (16, 6, 6)),
    "linear": (lambda: nn.Linear(48, 20), (48,)),
    "linear-nobias": (lambda: nn.Linear(30, 40, bias=False), (30,)),
}


def _layer(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    factory, shape = LAYERS[name]
    return factory().eval(), torch.randn(2, *shape)


def _geometry(layer: nn.Module, x: torch.Tensor) -> LayerGeometry:
    if isinstance(layer, nn.Linear):
        return LayerGeometry.of(layer)
    out = layer(x)
    return LayerGeometry.of(layer, in_size=tuple(x.shape[-2:]), out_size=tuple(out.shape[-2:]))


def _cases() -> list[tuple[str, str]]:
    cases = []
    for method in METHODS:
        for name in LAYERS:
            layer, _ = _layer(name)
            if get_method(method).supports(LayerGeometry.of(layer)):
                cases.append((method, name))
    return cases


CASES = _cases()


def _relative_error(module: nn.Module, layer: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        reference = layer(x)
        return float((module(x) - reference).norm() / reference.norm())


def test_every_method_supports_plain_convs_and_linears():
    supported = {(m, n) for m, n in CASES}
    for method in METHODS:
        for name in ("conv3x3", "stride2", "valid-nonsquare", "linear"):
            assert (method, name) in supported, (method, name)


@pytest.mark.parametrize(("method", "name"), CASES)
@pytest.mark.parametrize("fraction", [0.05, 0.3])
def test_shape_and_closed_form_sizes_match_the_built_module(method, name, fraction):
    layer, x = _layer(name)
    built = decompose_layer(layer, method, fraction)
    geom = _geometry(layer, x)
    decomposition = get_method(method)
    rank = decomposition.resolve_rank(geom, fraction)
    with torch.no_grad():
        assert built(x).shape == layer(x).shape
    assert count_params(built) == decomposition.params(geom, rank)
    assert count_bytes(built) == decomposition.bytes(geom, rank)
    assert count_flops(built, x[:1]) == decomposition.flops(geom, rank)
    assert decomposition.params(geom, rank) <= max(fraction * geom.dense_params,
                                                   decomposition.params(
                                                       geom, decomposition.min_rank(geom)))
    # Only standard modules: what torch.save / TorchScript / ONNX know how to handle.
    assert all(type(m).__module__.startswith("torch.nn") for m in built.modules())


@pytest.mark.parametrize(("method", "name"), CASES)
def test_bias_is_preserved_exactly(method, name):
    layer, _ = _layer(name)
    built = decompose_layer(layer, method, 0.3)
    biases = [m.bias for m in built.modules() if getattr(m, "bias", None) is not None]
    if layer.bias is None:
        assert biases == []
    else:
        assert len(biases) == 1
        assert torch.equal(biases[0], layer.bias)


@pytest.mark.parametrize(("method", "name"), CASES)
def test_reconstruct_is_the_kernel_the_built_module_computes(method, name):
    # LPSD's sparse branch fits W − reconstruct(...): that must be what the low-rank chain does.
    layer, x = _layer(name)
    decomposition = get_method(method)
    geom = LayerGeometry.of(layer)
    rank = decomposition.resolve_rank(geom, 0.3)
    weight = layer.weight.detach()
    weight = weight[:, :, None, None] if isinstance(layer, nn.Linear) else weight
    factors = decomposition.factorize(weight, geom, rank)
    kernel = decomposition.reconstruct(factors, geom, rank)
    assert kernel.shape == weight.shape
    equivalent = copy.deepcopy(layer)
    equivalent.weight.data = kernel.reshape(layer.weight.shape)
    built = decomposition.build(layer, factors, rank)
    with torch.no_grad():
        torch.testing.assert_close(built(x), equivalent(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("method", "name"), CASES)
def test_skeleton_has_the_structure_of_the_decomposition(method, name):
    # Loading a saved compressed model builds skeletons and loads the weights into them.
    layer, x = _layer(name)
    decomposition = get_method(method)
    geom = LayerGeometry.of(layer)
    rank = decomposition.resolve_rank(geom, 0.2)
    weight = layer.weight.detach()
    weight = weight[:, :, None, None] if isinstance(layer, nn.Linear) else weight
    shapes = [tuple(f.shape) for f in decomposition.factorize(weight, geom, rank)]
    assert shapes == decomposition.factor_shapes(geom, rank)
    built = decompose_layer(layer, method, rank)
    skeleton = decomposition.skeleton(layer, rank)
    expected = {k: v.shape for k, v in built.state_dict().items()}
    assert {k: v.shape for k, v in skeleton.state_dict().items()} == expected
    skeleton.load_state_dict(built.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(skeleton(x), built(x))


@pytest.mark.parametrize("method", EXACT_AT_FULL_RANK)
@pytest.mark.parametrize("name", list(LAYERS))
def test_full_rank_reproduces_the_dense_layer(method, name):
    layer, x = _layer(name)
    decomposition = get_method(method)
    geom = LayerGeometry.of(layer)
    if not decomposition.supports(geom):
        pytest.skip(f"{method} does not compress {name}")
    built = decompose_layer(layer, method, decomposition.max_rank(geom))
    assert _relative_error(built, layer, x) < 1e-4


@pytest.mark.parametrize(("method", "name"), [c for c in CASES if c[1] in
                                              ("conv3x3", "grouped", "linear", "stride2")])
def test_error_never_increases_with_rank(method, name):
    layer, x = _layer(name)
    errors = [_relative_error(decompose_layer(layer, method, f), layer, x)
              for f in (0.05, 0.1, 0.2, 0.4, 0.7)]
    assert all(later <= earlier * (1 + 1e-6) + 1e-7
               for earlier, later in itertools.pairwise(errors)), errors
    assert errors[-1] < errors[0]


@pytest.mark.parametrize("method", METHODS)
def test_scripted_and_exported_modules_match_eager(method):
    layer, x = _layer("valid-nonsquare")
    built = decompose_layer(layer, method, 0.3).eval()
    with torch.no_grad():
        expected = built(x)
        scripted = torch.jit.script(built)
        torch.testing.assert_close(scripted(x), expected)
        exported = torch.export.export(built, (x,))
        torch.testing.assert_close(exported.module()(x), expected)
    buffer = io.BytesIO()
    torch.save(built, buffer)
    buffer.seek(0)
    torch.testing.assert_close(torch.load(buffer, weights_only=False)(x), expected)


@pytest.mark.parametrize("method", METHODS)
def test_onnx_export_runs_in_onnxruntime(method):
    onnxruntime = pytest.importorskip("onnxruntime")
    layer, x = _layer("stride2")
    built = decompose_layer(layer, method, 0.3).eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(built, (x,), buffer, dynamo=False)
    session = onnxruntime.InferenceSession(buffer.getvalue())
    (output,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(output), built(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", [m for m in METHODS if m != "cp"])
def test_depthwise_convs_are_left_dense_with_a_clear_error(method):
    # Per channel a depthwise kernel is a 1 × 1 × kh × kw tensor: a matrix method cannot shrink
    # it (cp can, by making the kernel separable, so it is held to the contract above instead).
    depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16)
    assert not get_method(method).supports(LayerGeometry.of(depthwise))
    with pytest.raises(UserInputError, match="valid: leave it dense") as info:
        decompose_layer(depthwise, method, 0.5)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("method", METHODS)
def test_double_precision_layers_stay_double(method):
    layer = nn.Conv2d(8, 12, 3, padding=1).double()
    built = decompose_layer(layer, method, 0.5)
    assert all(p.dtype == torch.float64 for p in built.parameters())
    x = torch.randn(1, 8, 6, 6, dtype=torch.float64)
    assert built(x).dtype == torch.float64


@pytest.mark.parametrize(("rank", "message"), [
    (0.0, "rank fraction 0.0 is out of range"),
    (1.5, "rank fraction 1.5 is out of range"),
    (10_000, "is invalid for this layer"),
    (0, "is invalid for this layer"),
])
def test_bad_ranks_are_one_line_errors(rank, message):
    with pytest.raises(UserInputError, match=message) as info:
        decompose_layer(nn.Conv2d(8, 12, 3), "svd", rank)
    assert "\n" not in str(info.value)


def test_unknown_method_and_layer_type_are_one_line_errors():
    with pytest.raises(UserInputError, match=r"unknown decomposition method 'magic'; valid: "):
        decompose_layer(nn.Conv2d(8, 12, 3), "magic", 0.5)
    with pytest.raises(UserInputError, match="cannot decompose a BatchNorm2d; valid layers"):
        decompose_layer(nn.BatchNorm2d(8), "svd", 0.5)


@pytest.mark.gpu
@pytest.mark.parametrize("method", METHODS)
def test_decomposition_runs_on_the_layers_device(method):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    layer = nn.Conv2d(32, 64, 3, padding=1).cuda()
    built = decompose_layer(layer, method, 0.2)
    assert all(p.device.type == "cuda" for p in built.parameters())
    x = torch.randn(2, 32, 8, 8, device="cuda")
    assert built(x).shape == layer(x).shape
