from __future__ import annotations

import pytest
import torch

from lpsd_search.errors import UserInputError
from lpsd_search.plan.apply import apply_plan
from lpsd_search.plan.budget import Pricer, parse_budget
from lpsd_search.plan.choices import LayerChoice, Plan
from lpsd_search.plan.layers import find_layers
from lpsd_search.plan.measure import measure


@pytest.mark.parametrize(("text", "fraction", "absolute"), [
    ("0.1", 0.1, None), ("1", None, 1), ("1.0", 1.0, None), ("50000", None, 50000),
    (" 0.25 ", 0.25, None),
])
def test_parse_budget_accepts_fractions_and_whole_numbers(text, fraction, absolute):
    spec = parse_budget(text)
    assert spec.fraction == fraction
    assert spec.absolute == absolute


@pytest.mark.parametrize("text", ["0", "-0.1", "1.5", "2.0", "abc", "", "nan", "inf", "-5"])
def test_parse_budget_rejects_everything_else(text):
    with pytest.raises(UserInputError, match="budget") as info:
        parse_budget(text)
    assert "\n" not in str(info.value)
    assert "valid:" in str(info.value)


def test_budget_resolution():
    assert parse_budget("0.2").resolve(1000).limit == 200
    budget = parse_budget("300").resolve(1000)
    assert budget.limit == 300
    assert budget.fraction == pytest.approx(0.3)


def _setup(model):
    example = torch.zeros(1, 1, 8, 8)
    targets = find_layers(model, example)
    return example, targets, Pricer(targets, measure(model, example))


@pytest.mark.parametrize("method", ["svd", "tucker2"])
@pytest.mark.parametrize("fraction", [0.05, 0.3, 0.9])
def test_closed_form_size_equals_built_model(digits_model, method, fraction):
    example, targets, pricer = _setup(digits_model)
    plan = pricer.resolve({t.name: (method, fraction) for t in targets})
    built = measure(apply_plan(digits_model, plan), example)
    assert pricer.size(plan) == built


def test_closed_form_size_with_mixed_plan(digits_model):
    example, _, pricer = _setup(digits_model)
    plan = Plan({"conv1": LayerChoice(), "conv2": LayerChoice("svd", 3),
                 "conv3": LayerChoice("tucker2", (5, 7)), "fc": LayerChoice("svd", 2)})
    assert pricer.size(plan) == measure(apply_plan(digits_model, plan), example)


@pytest.mark.parametrize("fraction", [0.05, 0.2, 0.5])
def test_fit_repairs_any_request_into_the_budget(digits_model, fraction):
    example, targets, pricer = _setup(digits_model)
    allowed = {t.name: ["none", "svd", "tucker2"] for t in targets}
    budget = parse_budget(str(fraction)).resolve(pricer.baseline.params)
    requests = [
        {t.name: ("none", 1.0) for t in targets},
        {t.name: ("tucker2", 1.0) for t in targets},
        {t.name: ("svd", 0.9) for t in targets},
    ]
    for request in requests:
        plan = pricer.fit(request, budget, allowed)
        params = measure(apply_plan(digits_model, plan), example).params
        assert params <= budget.limit
        # Repair must not throw away more than it needs: within 10 % of the limit or at the
        # request's own size.
        assert params >= 0.7 * min(budget.limit, pricer.size(pricer.resolve(request)).params)


def test_plan_within_budget_is_left_alone(digits_model):
    _, targets, pricer = _setup(digits_model)
    allowed = {t.name: ["none", "svd"] for t in targets}
    request = {t.name: ("svd", 0.1) for t in targets}
    budget = parse_budget("0.9").resolve(pricer.baseline.params)
    assert pricer.fit(request, budget, allowed) == pricer.resolve(request)


def test_unreachable_budget_is_an_error_up_front(digits_model):
    _, targets, pricer = _setup(digits_model)
    allowed = {t.name: ["none", "svd"] for t in targets}
    smallest = pricer.smallest(allowed)
    assert smallest < pricer.baseline.params
    pricer.check_reachable(parse_budget(str(smallest)).resolve(pricer.baseline.params), allowed)
    with pytest.raises(UserInputError, match=f"valid: a budget ≥ {smallest}"):
        pricer.check_reachable(parse_budget(str(smallest - 1)).resolve(pricer.baseline.params),
                               allowed)
