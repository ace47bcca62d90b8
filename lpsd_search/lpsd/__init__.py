"""Low rank plus sparse layers, ``W ≈ L + S`` (LPSD), and ``decompose_layer`` for one layer.

``sparse`` holds the sparse branch (a masked dense copy of the layer), its honest sizes (values
plus indices) and the masks training keeps; ``layer`` fits ``L + S`` in one pass or by
alternating (ALPSD) and builds the two-branch module.
"""

from __future__ import annotations

from lpsd_search.lpsd.layer import (
    SparseFit,
    decompose_layer,
    decompose_low_rank_plus_sparse,
    fit_low_rank_plus_sparse,
)
from lpsd_search.lpsd.sparse import (
    AddBranches,
    enforce_masks,
    index_bytes,
    kept_entries,
    mask_gradients,
    masked_weights,
    sparse_bytes,
    sparse_flops,
    sparse_params,
    sparse_stage,
    top_entries_mask,
)

__all__ = [
    "AddBranches",
    "SparseFit",
    "decompose_layer",
    "decompose_low_rank_plus_sparse",
    "enforce_masks",
    "fit_low_rank_plus_sparse",
    "index_bytes",
    "kept_entries",
    "mask_gradients",
    "masked_weights",
    "sparse_bytes",
    "sparse_flops",
    "sparse_params",
    "sparse_stage",
    "top_entries_mask",
]
