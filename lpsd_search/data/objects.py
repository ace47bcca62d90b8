"""Data sets given to the Python API as torch datasets, found again by their spec.

``lpsd_search.search(model, (train, test), …)`` turns the datasets into ``DataSplits``
(``data.torch_datasets``) and hands them to the search under a ``python:`` spec: the spec is what
the study, the cache and the saved models record, and ``load_data`` finds the splits by it for as
long as the call runs. Nothing is registered at import time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lpsd_search.data.splits import DataSplits

PYTHON_PREFIX = "python:"
"""Specs of objects given from Python (``python:TensorDataset@3f2a…``)."""

_GIVEN: dict[str, DataSplits] = {}


def given_splits(spec: str) -> DataSplits | None:
    """The splits registered under ``spec`` by ``given``, or None."""
    return _GIVEN.get(spec.strip())


@contextmanager
def given(splits: DataSplits) -> Iterator[str]:
    """Make ``splits`` loadable by their spec (``load_data(splits.spec)``) inside the block."""
    previous = _GIVEN.get(splits.spec)
    _GIVEN[splits.spec] = splits
    try:
        yield splits.spec
    finally:
        if previous is None:
            _GIVEN.pop(splits.spec, None)
        else:
            _GIVEN[splits.spec] = previous
