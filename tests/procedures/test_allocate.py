"""The generalised allocator: every rank rule at any size, and ALPSD that shrinks its share."""

from __future__ import annotations

import pytest
import torch

from lpsd_search.config import CompressConfig
from lpsd_search.decompositions.base import get_method
from lpsd_search.decompositions.ranks import suggest_rank
from lpsd_search.plan.budget import Pricer, parse_budget
from lpsd_search.plan.layers import find_layers
from lpsd_search.plan.measure import measure
from lpsd_search.procedures.allocation import Candidate, allocate
from lpsd_search.procedures.compress import LadderCache, compress_model

EXAMPLE = torch.zeros(1, 1, 8, 8)


def _ladders() -> dict[str, list[Candidate]]:
    # Two layers of 1000 dense params; errors fall with size, layer b's faster.
    sizes = [10, 50, 100, 200, 400, 800]
    return {"a": [Candidate(s, s, 1.0 - s / 1000) for s in sizes],
            "b": [Candidate(s, s, (1.0 - s / 1000) ** 3) for s in sizes]}


def test_uniform_takes_one_fraction_of_every_layer():
    chosen = allocate(_ladders(), 400, "uniform", scale={"a": 1000.0, "b": 1000.0})
    assert (chosen["a"].params, chosen["b"].params) == (200, 200)


def test_vbmf_takes_one_multiple_of_every_layer_reference():
    # Layer a's VBMF size is 4× b's: a common multiple gives a four times b's share.
    chosen = allocate(_ladders(), 500, "vbmf", scale={"a": 400.0, "b": 100.0})
    assert (chosen["a"].params, chosen["b"].params) == (400, 100)


def test_weights_hold_a_sensitive_layer_to_a_smaller_error():
    plain = allocate(_ladders(), 600, "balanced", weights={"a": 1.0, "b": 1.0})
    tighter = allocate(_ladders(), 600, "balanced", weights={"a": 1.0, "b": 0.05})
    assert tighter["b"].params > plain["b"].params
    for chosen in (plain, tighter):
        assert sum(c.params for c in chosen.values()) <= 600


@pytest.mark.parametrize("allocation", ["balanced", "uniform", "vbmf"])
@pytest.mark.parametrize("fraction", [0.5, 0.2, 0.1])
def test_every_rule_fills_the_budget_without_exceeding_it(digits_model, allocation, fraction):
    budget = parse_budget(str(fraction)).resolve(measure(digits_model, EXAMPLE).params)
    config = CompressConfig(procedure="lowrank", low_rank="tucker2", allocation=allocation)
    result = compress_model(digits_model, EXAMPLE, budget, config, ladders=LadderCache())
    pricer = Pricer(find_layers(digits_model, EXAMPLE), measure(digits_model, EXAMPLE))
    params = pricer.size(result.plan).params
    # Within the budget, and close to it: the ladder's rungs are 1.26× apart per layer.
    assert 0.8 * budget.limit <= params <= budget.limit, (allocation, params, budget.limit)


def test_vbmf_rule_follows_the_vbmf_ranks(digits_model):
    budget = parse_budget("0.3").resolve(measure(digits_model, EXAMPLE).params)
    config = CompressConfig(procedure="lowrank", low_rank="svd", allocation="vbmf")
    result = compress_model(digits_model, EXAMPLE, budget, config)
    modules = dict(digits_model.named_modules())
    ratios = []
    targets = {t.name: t for t in find_layers(digits_model, EXAMPLE)}
    for name, choice in result.plan.layers.items():
        geom = targets[name].geometry
        vbmf = get_method("svd").params(geom, suggest_rank(modules[name], "svd", "vbmf"))
        ratios.append(get_method("svd").params(geom, choice.rank) / vbmf)
    # One common multiple, up to the ladder's resolution and the layers' bounds.
    assert max(ratios) / min(ratios) < 4


def test_alpsd_shrinks_its_sparse_share_at_a_size_its_default_share_cannot_hold(digits_model):
    # At 10× the default 30 % sparse share leaves too little for digits-cnn's low-rank parts:
    # the procedure takes a smaller share instead of failing.
    budget = parse_budget("0.1").resolve(measure(digits_model, EXAMPLE).params)
    config = CompressConfig(procedure="alpsd", low_rank="alds", sparse_share=0.9, local_passes=0)
    result = compress_model(digits_model, EXAMPLE, budget, config)
    pricer = Pricer(find_layers(digits_model, EXAMPLE), measure(digits_model, EXAMPLE))
    assert pricer.size(result.plan).params <= budget.limit
    assert any(choice.sparsity > 0 for choice in result.plan.layers.values())
