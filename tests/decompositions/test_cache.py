"""FactorCache: hits skip the factorisation, keys tell configurations apart, the byte budget
holds, and nothing a caller does to a built module or a returned tensor reaches the cache."""

from __future__ import annotations

import pickle
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

from lpsd_search import UserInputError
from lpsd_search.decompositions import DECOMPOSITIONS
from lpsd_search.decompositions.base import Decomposition, Factors, Rank, get_method
from lpsd_search.decompositions.cache import FactorCache, weight_digest
from lpsd_search.decompositions.geometry import LayerGeometry
from lpsd_search.lpsd.layer import decompose_layer

# Small fits: the point is the cache, not the decomposition.
CASES: dict[str, tuple[Rank, dict[str, Any]]] = {
    "svd": (3, {}),
    "alds": (2, {"k": 2}),
    "tucker2": ((3, 2), {"iters": 2}),
    "cp": (3, {"iters": 3}),
    "tt": (2, {}),
}


def _counting(original: Any, counts: dict[str, int]) -> Any:
    def factorize(self: Decomposition, weight: torch.Tensor, geom: LayerGeometry, rank: Rank,
                  **options: Any) -> Factors:
        counts[self.name] = counts.get(self.name, 0) + 1
        factors: Factors = original(self, weight, geom, rank, **options)
        return factors

    return factorize


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """Counts ``factorize`` calls per method, patched on every registered class."""
    counts: dict[str, int] = {}
    for name in DECOMPOSITIONS.names():
        cls = DECOMPOSITIONS.get(name)
        monkeypatch.setattr(cls, "factorize", _counting(cls.factorize, counts))
    yield counts


def _conv(seed: int = 0) -> nn.Conv2d:
    torch.manual_seed(seed)
    return nn.Conv2d(8, 16, 3, padding=1)


def _state(module: nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for t in module.state_dict().values()]


@pytest.mark.parametrize("method", sorted(CASES))
def test_second_decompose_is_a_hit_with_identical_factors(method: str,
                                                          calls: dict[str, int]) -> None:
    rank, options = CASES[method]
    cache, conv = FactorCache(), _conv()
    first = get_method(method).decompose(conv, rank, cache=cache, **options)
    second = get_method(method).decompose(conv, rank, cache=cache, **options)
    assert calls[method] == 1
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.entries) == (1, 1, 1)
    assert stats.hit_rate == 0.5
    for a, b in zip(_state(first), _state(second), strict=True):
        assert torch.equal(a, b)
    x = torch.randn(2, 8, 6, 6)
    assert torch.equal(first(x), second(x))


def test_different_rank_options_or_weights_miss(calls: dict[str, int]) -> None:
    cache, conv = FactorCache(), _conv()
    tucker2 = get_method("tucker2")
    tucker2.decompose(conv, (3, 2), cache=cache, iters=1)
    tucker2.decompose(conv, (3, 3), cache=cache, iters=1)  # rank
    tucker2.decompose(conv, (3, 2), cache=cache, iters=2)  # fit option
    tucker2.decompose(conv, 0.5, cache=cache, iters=1)  # a fraction resolves to another rank
    get_method("svd").decompose(conv, 3, cache=cache)  # method
    with torch.no_grad():
        conv.weight[0, 0, 0, 0] += 1.0  # one value changed: a fine-tuned weight
    tucker2.decompose(conv, (3, 2), cache=cache, iters=1)
    assert calls == {"tucker2": 5, "svd": 1}
    assert cache.stats().misses == 6 and cache.stats().hits == 0 and len(cache) == 6


def test_key_depends_on_values_shape_dtype_and_settings_only() -> None:
    cache = FactorCache()
    weight = torch.randn(4, 3, 3, 3)
    key = cache.key(weight, "cp", 3, {"variant": "cp4", "iters": 5})
    assert key == cache.key(weight.clone(), "cp", 3, {"iters": 5, "variant": "cp4"})
    assert key == cache.key(weight.permute(1, 0, 2, 3).permute(1, 0, 2, 3), "cp", 3,
                            {"iters": 5, "variant": "cp4"})  # strides do not matter
    others = {
        cache.key(weight.double(), "cp", 3, {"variant": "cp4", "iters": 5}),
        cache.key(weight.reshape(2, 6, 3, 3), "cp", 3, {"variant": "cp4", "iters": 5}),
        cache.key(weight, "cp", 4, {"variant": "cp4", "iters": 5}),
        cache.key(weight, "cp", 3, {"variant": "cp3", "iters": 5}),
        cache.key(weight, "cp", 3, {"variant": "cp4"}),
        cache.key(weight, "svd", 3, {"variant": "cp4", "iters": 5}),
    }
    assert key not in others and len(others) == 6
    assert cache.key(weight, "tt", (2, 3), {"in_modes": [2, 2]}) == cache.key(
        weight, "tt", [2, 3], {"in_modes": (2, 2)})  # lists and tuples are the same setting


def test_lru_eviction_respects_max_bytes() -> None:
    entry = (torch.zeros(10), torch.zeros(15))  # 100 bytes in float32
    cache = FactorCache(max_bytes=250)
    cache.put("a", entry)
    cache.put("b", entry)
    assert cache.get("a", "cpu") is not None  # "a" is now the most recent
    cache.put("c", entry)
    stats = cache.stats()
    assert "b" not in cache and "a" in cache and "c" in cache
    assert (stats.entries, stats.bytes, stats.evictions) == (2, 200, 1)
    cache.put("c", (torch.zeros(5),))  # replacing an entry frees its old bytes
    assert cache.stats().bytes == 120
    cache.put("huge", (torch.zeros(100),))  # 400 bytes: larger than the budget, not stored
    assert "huge" not in cache and cache.stats().bytes == 120
    cache.clear()
    assert len(cache) == 0 and cache.stats().bytes == 0 and cache.stats().hits == 1


def test_a_real_search_stays_within_the_budget() -> None:
    conv = _conv()
    one = FactorCache()
    get_method("svd").decompose(conv, 4, cache=one)
    per_entry = one.stats().bytes
    assert per_entry == 4 * (16 * 4 + 4 * 8 * 9)  # left 16×4, right 4×72, float32
    cache = FactorCache(max_bytes=3 * per_entry)
    for rank in (1, 2, 3, 4, 5, 6):
        get_method("svd").decompose(conv, 4, cache=cache)
        get_method("svd").decompose(conv, rank, cache=cache)
        assert cache.stats().bytes <= 3 * per_entry
    # Rank r holds 352·r bytes. Rank 5 evicts ranks 1 and 2 (3 + 4 + 5 = 12 ≤ 12 units of 352),
    # rank 6 evicts 3 and 5; rank 4, used on every step, is never the least recent.
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.evictions, stats.entries) == (6, 6, 4, 2)
    assert stats.bytes == 352 * (4 + 6)
    assert cache.key(conv.weight.detach(), "svd", 4, {}) in cache


def test_training_a_built_module_does_not_touch_the_cache() -> None:
    cache, conv = FactorCache(), _conv()
    built = get_method("tucker2").decompose(conv, (4, 3), cache=cache)
    pristine = _state(built)
    key = cache.key(conv.weight.detach(), "tucker2", (4, 3), {})
    stored = [t.clone() for t in cache.get(key, "cpu") or ()]
    optimizer = torch.optim.SGD(built.parameters(), lr=1.0)
    built(torch.randn(4, 8, 6, 6)).square().sum().backward()
    optimizer.step()
    assert not torch.equal(_state(built)[0], pristine[0])  # the step did change the module
    again = cache.get(key, "cpu")
    assert again is not None
    for a, b in zip(stored, again, strict=True):
        assert torch.equal(a, b)
    rebuilt = get_method("tucker2").decompose(conv, (4, 3), cache=cache)
    for a, b in zip(pristine, _state(rebuilt), strict=True):
        assert torch.equal(a, b)


def test_returned_tensors_are_private_copies() -> None:
    cache = FactorCache()
    source = torch.ones(3)
    cache.put("k", (source,))
    source.add_(1.0)  # editing what was put ...
    got = cache.get("k", "cpu")
    assert got is not None and torch.equal(got[0], torch.ones(3))
    got[0].mul_(5.0)  # ... or what was returned changes nothing stored
    again = cache.get("k", "cpu")
    assert again is not None and torch.equal(again[0], torch.ones(3))


def test_low_rank_plus_sparse_fits_are_cached_too(calls: dict[str, int]) -> None:
    cache, conv = FactorCache(), _conv()
    first = decompose_layer(conv, "svd", 2, sparsity=0.1, cache=cache)
    second = decompose_layer(conv, "svd", 2, sparsity=0.1, cache=cache)
    assert calls["svd"] == 1
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.entries) == (1, 1, 1)
    # One entry holds the whole fit: svd's two factors, then the mask and the values of S.
    (stored,) = cache._entries.values()
    assert [tuple(t.shape) for t in stored] == [(1, 16, 2), (1, 2, 72), (16, 8, 3, 3),
                                                (16, 8, 3, 3)]
    assert int(stored[2].sum()) == round(0.1 * conv.weight.numel())  # 115 of 1152 entries
    for a, b in zip(_state(first), _state(second), strict=True):
        assert torch.equal(a, b)
    x = torch.randn(1, 8, 5, 5)
    assert torch.equal(first(x), second(x))
    # Another sparsity, or the alternating fit, is another fit; plain low rank another entry.
    decompose_layer(conv, "svd", 2, sparsity=0.2, cache=cache)
    decompose_layer(conv, "svd", 2, sparsity=0.1, alternating=True, cache=cache)
    decompose_layer(conv, "svd", 2, cache=cache)
    assert cache.stats().misses == 4 and len(cache) == 4


def test_concurrent_decompositions_factorise_once(monkeypatch: pytest.MonkeyPatch,
                                                  calls: dict[str, int]) -> None:
    # Threads that miss at once wait for the first one's factors (get_or_compute) instead of
    # all factorising: one miss, five hits, identical modules.
    cache, conv = FactorCache(), _conv()
    svd = type(get_method("svd"))
    counted = svd.factorize

    def slow(self: Decomposition, weight: torch.Tensor, geom: LayerGeometry, rank: Rank,
             **options: Any) -> Factors:
        time.sleep(0.05)  # long enough for every other thread to arrive and wait
        factors: Factors = counted(self, weight, geom, rank, **options)
        return factors

    monkeypatch.setattr(svd, "factorize", slow)
    start = threading.Barrier(6)
    outputs: list[nn.Module] = []

    def work() -> None:
        start.wait()
        outputs.append(get_method("svd").decompose(conv, 3, cache=cache))

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == {"svd": 1}
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.entries) == (5, 1, 1)
    assert cache._pending == {}
    x = torch.randn(1, 8, 5, 5)
    assert len(outputs) == 6 and all(torch.equal(outputs[0](x), module(x)) for module in outputs)


def test_get_or_compute_computes_each_key_once() -> None:
    cache = FactorCache()
    computed: list[str] = []
    results: list[Factors] = []

    def compute(name: str) -> Factors:
        computed.append(name)
        time.sleep(0.05)  # long enough for every other thread to arrive and wait
        return (torch.full((3,), float(len(name))),)

    def work(name: str) -> None:
        results.append(cache.get_or_compute(name, "cpu", lambda: compute(name)))

    threads = [threading.Thread(target=work, args=(name,)) for name in ["a"] * 5 + ["bb"] * 3]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(computed) == ["a", "bb"]
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.entries) == (6, 2, 2)
    assert sorted(float(r[0][0]) for r in results) == [1.0] * 5 + [2.0] * 3
    assert cache._pending == {}  # per-key locks are released

    def fail() -> Factors:
        raise RuntimeError("fit diverged")

    with pytest.raises(RuntimeError, match="diverged"):
        cache.get_or_compute("c", "cpu", fail)
    got = cache.get_or_compute("c", "cpu", lambda: (torch.ones(1),))  # no deadlock, computed
    assert torch.equal(got[0], torch.ones(1)) and "c" in cache


def test_store_on_cpu_and_pickling() -> None:
    cache = FactorCache(max_bytes=1000, store_on_cpu=True)
    cache.put("k", (torch.arange(4.0),))
    restored = pickle.loads(pickle.dumps(cache))
    got = restored.get("k", torch.device("cpu"))
    assert got is not None and torch.equal(got[0], torch.arange(4.0))
    assert restored.stats().hits == 1 and restored.max_bytes == 1000


@pytest.mark.parametrize("bad", [-1, 1.5, True, "1GB"])
def test_bad_budget_is_rejected(bad: object) -> None:
    with pytest.raises(UserInputError, match=r"max_bytes=.*valid: an int >= 0"):
        FactorCache(max_bytes=bad)  # type: ignore[arg-type]


def test_digest_depends_on_values_shape_and_dtype() -> None:
    # Its speed is measured in benchmarks/factor_cache.py, not asserted here.
    weight = torch.randn(512, 4608)
    assert weight_digest(weight) == weight_digest(weight.clone())
    assert weight_digest(weight) == weight_digest(weight.T.contiguous().T)  # strides do not count
    assert weight_digest(weight) != weight_digest(weight.reshape(4608, 512))
    changed = weight.clone()
    changed[-1, -1] += 1.0
    assert weight_digest(weight) != weight_digest(changed)
    assert weight_digest(torch.zeros(2, dtype=torch.bfloat16)) != weight_digest(
        torch.zeros(2, dtype=torch.float16))
    assert len(weight_digest(weight)) == 64  # SHA-256, hex


@pytest.mark.gpu
def test_factors_stay_on_their_device() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    conv = _conv().cuda()
    for on_cpu, expected in ((False, "cuda"), (True, "cpu")):
        cache = FactorCache(store_on_cpu=on_cpu)
        built = get_method("svd").decompose(conv, 3, cache=cache)
        again = get_method("svd").decompose(conv, 3, cache=cache)
        (stored,) = cache._entries.values()
        assert {t.device.type for t in stored} == {expected}
        assert cache.stats().hits == 1
        x = torch.randn(1, 8, 5, 5, device="cuda")
        assert torch.equal(built(x), again(x))
