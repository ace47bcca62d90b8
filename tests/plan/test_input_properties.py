"""Property tests of the parsers of user input: budgets, rank specs, search spaces, plan files.

Whatever a user types or a file holds, each parser either returns a valid value or raises the
one-line ``UserInputError``; never another exception (which the command line would show as a
traceback).
"""

from __future__ import annotations

import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from lpsd_search.decompositions import DECOMPOSITIONS, LayerGeometry
from lpsd_search.decompositions.base import get_method
from lpsd_search.errors import UserInputError
from lpsd_search.plan.budget import METRICS, parse_budget, parse_budgets
from lpsd_search.plan.choices import NONE, LayerChoice, Plan
from lpsd_search.strategy.spaces import space_from_dict

# No example database: the tests leave no .hypothesis folder in the working tree.
SETTINGS = settings(max_examples=300, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

# Text that looks like a budget often enough to reach every branch of the parser.
_numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-10**30, max_value=10**30).map(str),
    st.sampled_from(["nan", "inf", "-inf", "1e400", "0x10", "1_000", "½", "٣", "0.", ".5",
                     "1e-400", "+1", "--1", "", " ", "=", "1=2"]),
)
_metrics = st.sampled_from([*METRICS, "", "watts", "PARAMS", " flops ", "=", "params=params"])
budget_texts = st.one_of(
    st.text(max_size=30),
    st.builds(lambda metric, value: f"{metric}={value}", _metrics, _numbers),
    _numbers,
)

_json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6),
                          st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8))
json_values = st.recursive(
    _json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)


def _one_line(error: UserInputError) -> None:
    assert "\n" not in str(error)
    assert str(error)


@SETTINGS
@given(budget_texts)
def test_a_budget_parses_to_a_valid_spec_or_is_a_one_line_error(text: str) -> None:
    try:
        spec = parse_budget(text)
    except UserInputError as error:
        _one_line(error)
        return
    assert spec.metric in METRICS
    assert (spec.fraction is None) != (spec.absolute is None)
    if spec.fraction is not None:
        assert math.isfinite(spec.fraction) and 0.0 < spec.fraction <= 1.0
    else:
        assert spec.absolute is not None and spec.absolute >= 1


@SETTINGS
@given(budget_texts, st.integers(min_value=1, max_value=10**12))
def test_a_parsed_budget_resolves_or_is_a_one_line_error(text: str, baseline: int) -> None:
    try:
        spec = parse_budget(text)
        if spec.metric != "params":
            return
        budget = spec.resolve(baseline)
    except UserInputError as error:
        _one_line(error)
        return
    assert 0 <= budget.limit <= baseline
    assert 0.0 <= budget.fraction <= 1.0


@SETTINGS
@given(st.lists(budget_texts, max_size=4))
def test_a_budget_list_parses_or_is_a_one_line_error(texts: list[str]) -> None:
    try:
        specs = parse_budgets(texts)
    except UserInputError as error:
        _one_line(error)
        return
    metrics = [spec.metric for spec in specs]
    assert specs and len(set(metrics)) == len(metrics)


LAYERS = {
    "conv": nn.Conv2d(8, 16, 3, padding=1),
    "linear": nn.Linear(24, 10),
}
ranks = st.one_of(
    st.integers(-3, 300), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
    st.tuples(st.integers(-2, 40), st.integers(-2, 40)),
    st.tuples(st.integers(-2, 40), st.integers(-2, 40), st.integers(-2, 40)),
    st.text(max_size=4), st.none(), st.lists(st.integers(0, 20), max_size=3),
)


@SETTINGS
@given(st.sampled_from(sorted(LAYERS)), st.sampled_from(DECOMPOSITIONS.names()), ranks)
def test_a_rank_spec_resolves_to_a_valid_rank_or_is_a_one_line_error(
        layer: str, method: str, rank: Any) -> None:
    decomposition = get_method(method)
    geom = LayerGeometry.of(LAYERS[layer])
    if not decomposition.supports(geom):
        return
    try:
        resolved = decomposition.resolve_rank(geom, rank)
    except UserInputError as error:
        _one_line(error)
        return
    assert decomposition.check_rank(geom, resolved) == resolved
    assert decomposition.params(geom, resolved) >= 1


_rule_values = st.fixed_dictionaries({}, optional={
    "match": st.one_of(st.text(max_size=6), st.sampled_from(["conv.*", "(", "[", ".*"]),
                       json_values),
    "methods": st.one_of(st.lists(st.sampled_from([NONE, "sparse", "svd", "tucker2", "nope"]),
                                  max_size=3), json_values),
    "rank": st.one_of(st.tuples(st.floats(allow_nan=True, allow_infinity=True),
                                st.floats(allow_nan=True, allow_infinity=True)).map(list),
                      json_values),
    "sparsity": st.one_of(st.tuples(st.floats(-1, 2), st.floats(-1, 2)).map(list),
                          json_values),
    "alternating": json_values,
    "rank_anchor": st.one_of(st.sampled_from(["none", "vbmf", "energy"]), json_values),
    "options": st.one_of(st.just({"svd": {}}), json_values),
    "extra": json_values,
})
spaces = st.one_of(
    st.fixed_dictionaries({"rules": st.lists(_rule_values, max_size=3)},
                          optional={"description": json_values}),
    st.dictionaries(st.text(max_size=6), json_values, max_size=3),
)


@SETTINGS
@given(spaces)
def test_a_search_space_file_loads_or_is_a_one_line_error(data: dict[str, Any]) -> None:
    try:
        space = space_from_dict("fuzzed", data)
    except UserInputError as error:
        _one_line(error)
        return
    assert space.rules
    for rule in space.rules:
        low, high = rule.rank_range
        assert 0.0 < low <= high and math.isfinite(high)


choices = st.one_of(
    st.fixed_dictionaries({}, optional={
        "method": st.one_of(st.sampled_from([NONE, "svd", "tucker2", "cp", "nope"]),
                            json_values),
        "rank": st.one_of(ranks, json_values),
        "sparsity": st.one_of(st.floats(allow_nan=True, allow_infinity=True), json_values),
        "alternating": json_values,
        "options": json_values,
    }),
    json_values,
)


@SETTINGS
@given(st.one_of(st.dictionaries(st.text(max_size=6), choices, max_size=3), json_values))
def test_a_plan_file_reads_to_a_valid_plan_or_is_a_one_line_error(data: Any) -> None:
    try:
        plan = Plan.from_dict(data)
    except UserInputError as error:
        _one_line(error)
        return
    for name, choice in plan.layers.items():
        assert isinstance(name, str) and isinstance(choice, LayerChoice)
        assert choice.method == NONE or choice.method in DECOMPOSITIONS
        assert 0.0 <= choice.sparsity <= 1.0
        hash(choice)  # plans are compared and cached by value
    assert Plan.from_dict(plan.to_dict()) == plan
