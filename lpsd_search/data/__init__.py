"""Datasets: disjoint splits fixed by the data (``splits``), their input normalisation
(``normalise``), on-disk readers (``readers``, ``images``) and a user's torch datasets
(``torch_datasets``, found by spec through ``objects``)."""

from __future__ import annotations

from lpsd_search.data.normalise import Preprocessing
from lpsd_search.data.splits import DataSplits, load_data, stratified_split

__all__ = [
    "DataSplits",
    "Preprocessing",
    "load_data",
    "stratified_split",
]
