"""Whole-model one-shot procedures: no search, one command, one plan.

``allocation`` (ALDS-style error-balanced ranks: minimise the worst layer's error under a
budget), ``compress`` (Sparsification and ALPSD of Huang et al., and plain low rank) and ``run``
(``lpsd-search compress``: data → model → procedure → fine-tune → ``plan.json``). The search
uses the same procedures as warm starts.
"""

from __future__ import annotations

from lpsd_search.procedures.allocation import Candidate, balanced_ranks, ladder, layer_weight
from lpsd_search.procedures.compress import CompressResult, compress_model
from lpsd_search.procedures.run import run_compress

__all__ = [
    "Candidate",
    "CompressResult",
    "balanced_ranks",
    "compress_model",
    "ladder",
    "layer_weight",
    "run_compress",
]
