"""A bounded, thread-safe cache of factorisations shared by all trials of a search.

A search builds the same (layer, method, rank, options) many times: every trial that picks
``svd`` at rank 12 for ``layer3.0.conv1`` needs the same factors, and a CP-ALS or HOOI fit can
cost far more than the rest of the build. ``Decomposition.decompose(..., cache=...)`` and the
low-rank-plus-sparse fit ask the cache before factorising, through ``base.cached``:

    key = cache.key(weight, method, concrete_rank, options)
    factors = cache.get_or_compute(key, weight.device, lambda: factorize(...))

which factorises on a miss only, once per key however many threads miss at the same time.

Keys are a digest of the weight's bytes (with its shape and dtype), so a fine-tuned or different
model never hits another one's factors. The cache owns private copies: ``put`` stores detached
clones and ``get`` hands out fresh copies, so neither training a built module in place nor
editing a returned tensor can change what later trials receive. There is deliberately no global
instance: whoever runs the search creates one and passes it down.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from lpsd_search.decompositions.base import Factors, Rank
from lpsd_search.errors import UserInputError

__all__ = ["CacheStats", "FactorCache", "weight_digest"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 1 << 30
"""1 GiB: room for the factors of every layer of a ResNet-50 at a few dozen ranks each."""


def weight_digest(weight: torch.Tensor) -> str:
    """SHA-256 of a tensor's shape, dtype and values (its bytes as a contiguous CPU array).

    SHA-256 rather than blake2b: with the SHA extensions that current x86 and ARM CPUs have it
    hashes about twice as fast (≈ 5–9 ms for a 512×4608 float32 weight, 9.4 MB, against
    ≈ 10–14 ms for blake2b on the development machine), and collisions are out of the question.
    A GPU weight is copied to the host first, which costs less than the hash.
    """
    flat = weight.detach().reshape(-1).contiguous().cpu()
    hasher = hashlib.sha256(f"{tuple(weight.shape)}|{weight.dtype}|".encode())
    # A uint8 view is a free reinterpretation and works for every dtype numpy lacks (bfloat16).
    hasher.update(flat.view(torch.uint8).numpy().data)
    return hasher.hexdigest()


def _canonical(value: Any) -> Any:
    """A stable, order-independent form of an option value for ``repr`` (lists become tuples)."""
    if isinstance(value, dict):
        return tuple(sorted((str(k), _canonical(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_canonical(v) for v in value)
    return value


def _nbytes(factors: Factors) -> int:
    return sum(t.element_size() * t.nelement() for t in factors)


@dataclass(frozen=True)
class CacheStats:
    """A snapshot of a ``FactorCache``'s counters.

    Attributes:
        hits: ``get`` calls that found their key.
        misses: ``get`` calls that did not.
        evictions: entries dropped to stay within ``max_bytes``.
        entries: entries held now.
        bytes: bytes of the tensors held now.
        max_bytes: the budget.
    """

    hits: int
    misses: int
    evictions: int
    entries: int
    bytes: int
    max_bytes: int

    @property
    def hit_rate(self) -> float:
        """Hits over lookups (0 before the first lookup)."""
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0


class FactorCache:
    """Least-recently-used store of factor tuples, bounded by their total bytes.

    Args:
        max_bytes: budget for the stored tensors, counted on whatever device they live on; the
            least recently used entries are evicted to stay within it. An entry larger than
            the whole budget is not stored.
        store_on_cpu: keep the stored copies in host memory (saves accelerator memory at the
            price of a host-device copy per hit); by default they stay on the device they were
            computed on.

    Example:
        >>> import torch
        >>> from lpsd_search.decompositions import get_method
        >>> cache = FactorCache(max_bytes=1 << 20)
        >>> conv = torch.nn.Conv2d(8, 16, 3)
        >>> first = get_method("svd").decompose(conv, 4, cache=cache)
        >>> second = get_method("svd").decompose(conv, 4, cache=cache)
        >>> cache.stats().hits, cache.stats().misses
        (1, 1)
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES, *, store_on_cpu: bool = False) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise UserInputError(
                f"factor cache max_bytes={max_bytes!r} is invalid; valid: an int >= 0"
            )
        self.max_bytes = max_bytes
        self.store_on_cpu = store_on_cpu
        self._entries: OrderedDict[str, Factors] = OrderedDict()
        self._bytes = 0
        self._hits = 0
        self._misses = 0
        self._evictions = 0
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[threading.Lock, int]] = {}

    def key(self, weight: torch.Tensor, method: str, rank: Rank,
            options: dict[str, Any]) -> str:
        """The key of factorising ``weight`` with ``method`` at ``rank`` under ``options``.

        Option order does not matter; every option counts, fit options included, since they
        change the factors.
        """
        settings = repr((method, _canonical(rank), _canonical(options)))
        return hashlib.sha256(f"{settings}|{weight_digest(weight)}".encode()).hexdigest()

    def get(self, key: str, device: torch.device | str) -> Factors | None:
        """Fresh copies of the factors stored under ``key`` on ``device``, or None on a miss."""
        with self._lock:
            stored = self._entries.get(key)
            if stored is None:
                self._misses += 1
                return None
            self._entries.move_to_end(key)
            self._hits += 1
        # Copied outside the lock: stored tensors are never mutated, only replaced or dropped.
        return tuple(t.to(device, copy=True) for t in stored)

    def put(self, key: str, factors: Factors) -> None:
        """Store detached clones of ``factors`` under ``key``, evicting the least recent."""
        target = torch.device("cpu") if self.store_on_cpu else None
        copies = tuple(t.detach().to(target or t.device, copy=True) for t in factors)
        size = _nbytes(copies)
        if size > self.max_bytes:
            logger.debug("factor cache: %d bytes exceed the budget of %d; not stored",
                         size, self.max_bytes)
            return
        with self._lock:
            previous = self._entries.pop(key, None)
            if previous is not None:
                self._bytes -= _nbytes(previous)
            self._entries[key] = copies
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= _nbytes(dropped)
                self._evictions += 1

    def get_or_compute(self, key: str, device: torch.device | str,
                       compute: Callable[[], Factors]) -> Factors:
        """``get``, and on a miss ``compute()`` and ``put``, computing each key only once.

        Concurrent callers with the same key wait for the first one's result instead of all
        factorising (``get`` then ``put`` would let every thread that misses compute); other
        keys proceed in parallel. If ``compute`` raises, the next waiter computes.
        """
        with self._exclusive(key):
            found = self.get(key, device)
            if found is not None:
                return found
            factors = compute()
            self.put(key, factors)
            return factors

    @contextmanager
    def _exclusive(self, key: str) -> Iterator[None]:
        """Hold a per-key lock; the lock is dropped once nobody holds or waits for it."""
        with self._lock:
            lock, users = self._pending.get(key, (threading.Lock(), 0))
            self._pending[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._lock:
                lock, users = self._pending[key]
                if users == 1:
                    del self._pending[key]
                else:
                    self._pending[key] = (lock, users - 1)

    def stats(self) -> CacheStats:
        """The counters and the current size."""
        with self._lock:
            return CacheStats(self._hits, self._misses, self._evictions, len(self._entries),
                              self._bytes, self.max_bytes)

    @property
    def hits(self) -> int:
        return self._hits

    @property
    def misses(self) -> int:
        return self._misses

    def clear(self) -> None:
        """Drop every entry (the counters are kept)."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __getstate__(self) -> dict[str, Any]:
        # Locks cannot be pickled; a copy sent to another process gets its own.
        state = self.__dict__.copy()
        del state["_lock"], state["_pending"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._pending = {}
