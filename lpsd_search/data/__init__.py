"""Datasets: disjoint splits (``splits``) and on-disk readers (``readers``, ``images``)."""

from __future__ import annotations

from lpsd_search.data.splits import DataSplits, load_data, stratified_split

__all__ = [
    "DataSplits",
    "load_data",
    "stratified_split",
]
