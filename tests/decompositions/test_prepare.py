"""The decomposition pipeline's shared steps: ``prepare_weight``, ``Decomposition.prepare`` and
``cached``, and that ``decompose``, the L + S path and the allocator all go through them."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from lpsd_search import UserInputError
from lpsd_search.decompositions.base import (
    Factors,
    PreparedLayer,
    cached,
    get_method,
    prepare_weight,
)
from lpsd_search.decompositions.cache import FactorCache
from lpsd_search.decompositions.geometry import LayerGeometry
from lpsd_search.lpsd.layer import decompose_layer
from lpsd_search.procedures.allocation import ladder, layer_weight


def test_prepare_weight_shapes_detaches_and_widens() -> None:
    torch.manual_seed(0)
    conv, linear = nn.Conv2d(4, 6, (3, 2), groups=2), nn.Linear(5, 7)
    weight = prepare_weight(conv)
    assert weight.shape == (6, 2, 3, 2) and not weight.requires_grad
    assert weight.data_ptr() == conv.weight.data_ptr()  # a view: no copy for float32
    assert prepare_weight(linear).shape == (7, 5, 1, 1)
    assert torch.equal(prepare_weight(linear)[:, :, 0, 0], linear.weight.detach())
    for dtype in (torch.float16, torch.bfloat16):
        half = nn.Linear(5, 7).to(dtype)
        widened = prepare_weight(half)
        assert widened.dtype == torch.float32
        assert torch.equal(widened[:, :, 0, 0], half.weight.detach().float())
    assert prepare_weight(nn.Linear(3, 2).double()).dtype == torch.float64
    with pytest.raises(UserInputError) as error:
        prepare_weight(nn.Conv1d(3, 3, 3))
    assert str(error.value) == "cannot decompose a Conv1d; valid layers: Conv2d, Linear"
    assert torch.equal(layer_weight(conv), weight)  # the allocator's public name for it


def test_prepare_resolves_everything_a_factorisation_needs() -> None:
    conv = nn.Conv2d(16, 32, 3)
    prepared = get_method("alds").prepare(conv, 0.5, {"k": 2})
    assert isinstance(prepared, PreparedLayer)
    geom, rank, structural, weight = prepared
    assert geom == LayerGeometry.of(conv)
    assert rank == 11  # r·(16·9 + 2·32) + 32 ≤ 2320: r = 11
    assert structural == {"k": 2} and weight.shape == (32, 16, 3, 3)
    tucker2 = get_method("tucker2").prepare(conv, (4, 3), {"iters": 2, "tol": 0.0})
    assert tucker2.rank == (4, 3) and tucker2.structural == {}  # fit options are not structural


@pytest.mark.parametrize(("call", "message"), [
    (lambda conv: get_method("svd").prepare(conv, 2, {"k": 2}),
     "svd got unknown options ['k']; valid: none"),
    (lambda conv: get_method("svd").prepare(conv, 2, {}),
     "svd cannot compress a layer of shape (8, 1, 3, 3) (groups=8); valid: leave it dense "
     "(method 'none')"),
    (lambda conv: get_method("svd").decompose(conv, 2),
     "svd cannot compress a layer of shape (8, 1, 3, 3) (groups=8); valid: leave it dense "
     "(method 'none')"),
    (lambda conv: decompose_layer(conv, "svd", 2, sparsity=0.1),
     "svd cannot compress a layer of shape (8, 1, 3, 3) (groups=8); valid: method 'none' with "
     "a sparsity"),
    (lambda conv: ladder(conv, "svd"),
     "svd cannot compress a layer of shape (8, 1, 3, 3) (groups=8); valid: leave it dense "
     "(method 'none')"),
    (lambda conv: get_method("svd").prepare(nn.Conv2d(8, 8, 3), 0.0, {}),
     "rank fraction 0.0 is out of range; valid: a float in (0, 1]"),
])
def test_every_path_rejects_in_one_line(call: Any, message: str) -> None:
    depthwise = nn.Conv2d(8, 8, 3, groups=8)
    with pytest.raises(UserInputError) as error:
        call(depthwise)
    assert str(error.value) == message


def test_cached_computes_once_per_key_and_without_a_cache_always() -> None:
    weight = torch.arange(6.0).reshape(2, 3, 1, 1)
    runs: list[int] = []

    def compute() -> Factors:
        runs.append(1)
        return (weight * 2,)

    assert torch.equal(cached(None, weight, "m", 1, {}, compute)[0], weight * 2)
    assert torch.equal(cached(None, weight, "m", 1, {}, compute)[0], weight * 2)
    assert len(runs) == 2
    cache = FactorCache()
    for _ in range(3):
        assert torch.equal(cached(cache, weight, "m", 1, {"a": 1}, compute)[0], weight * 2)
    cached(cache, weight, "m", 2, {"a": 1}, compute)  # another rank
    cached(cache, weight, "m", 1, {"a": 2}, compute)  # another setting
    cached(cache, weight, "other", 1, {"a": 1}, compute)  # another name
    assert len(runs) == 2 + 4
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.entries) == (2, 4, 4)
    assert cache.key(weight, "m", 1, {"a": 1}) in cache


def test_half_precision_layers_decompose_like_their_float_copies() -> None:
    torch.manual_seed(0)
    half = nn.Conv2d(8, 16, 3).half()
    single = nn.Conv2d(8, 16, 3)
    single.load_state_dict({k: v.float() for k, v in half.state_dict().items()})
    for method, rank in (("svd", 3), ("tucker2", (4, 3))):
        from_half = get_method(method).decompose(half, rank)
        from_single = get_method(method).decompose(single, rank)
        for a, b in zip(from_half.state_dict().values(), from_single.state_dict().values(),
                        strict=True):
            assert a.dtype == torch.float16 and torch.equal(a, b.half())
