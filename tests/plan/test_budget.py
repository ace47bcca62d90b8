from __future__ import annotations

import pytest
import torch

from lpsd_search.errors import UserInputError
from lpsd_search.plan.apply import apply_plan
from lpsd_search.plan.budget import Pricer, parse_budget
from lpsd_search.plan.choices import LayerChoice, Plan
from lpsd_search.plan.layers import find_layers
from lpsd_search.plan.measure import ModelSize, measure


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
    fraction = parse_budget("0.2").resolve(1000)
    assert (fraction.limit, fraction.fraction, fraction.metric) == (200, 0.2, "params")
    assert parse_budget("0.1").resolve(1005).limit == 100  # 100.5 rounds down: never above
    budget = parse_budget("300").resolve(1000)
    assert budget.limit == 300
    assert budget.fraction == pytest.approx(0.3)


# digits-cnn on 8x8 inputs (1 channel, 10 classes), by hand:
#   conv1 1->16 3x3 no bias: 144 params; conv2 16->32: 4,608; conv3 32->64: 18,432;
#   fc 256->10 with bias: 2,570; BatchNorms 2*(16+32+64) = 224 params.
#   Total 25,978 params; bytes 4*25,978 + 4*224 running statistics = 104,808.
#   MACs: conv1 64 positions*16*9 = 9,216; conv2 64*32*144 = 294,912; conv3 (after the 2x2
#   pool) 16*64*288 = 294,912; fc 2,560; total 601,600.
DIGITS_BASELINE = ModelSize(params=25_978, bytes=104_808, flops=601_600)


def _setup(model):
    example = torch.zeros(1, 1, 8, 8)
    targets = find_layers(model, example)
    return example, targets, Pricer(targets, measure(model, example))


def test_baseline_is_measured_as_counted_by_hand(digits_model):
    _, targets, pricer = _setup(digits_model)
    assert pricer.baseline == DIGITS_BASELINE
    assert {t.name: t.geometry.dense_params for t in targets} == {
        "conv1": 144, "conv2": 4608, "conv3": 18432, "fc": 2570}


@pytest.mark.parametrize("method", ["svd", "tucker2"])
@pytest.mark.parametrize("fraction", [0.05, 0.3, 0.9])
def test_closed_form_size_equals_built_model(digits_model, method, fraction):
    example, targets, pricer = _setup(digits_model)
    plan = pricer.resolve({t.name: (method, fraction) for t in targets})
    # Every layer really is decomposed, so the comparison is not between two dense models.
    assert [(name, c.method) for name, c in plan.compressed().items()] == [
        (t.name, method) for t in targets]
    built = measure(apply_plan(digits_model, plan), example)
    assert pricer.size(plan) == built
    assert built.params < DIGITS_BASELINE.params and built.flops < DIGITS_BASELINE.flops
    # Bytes are 4 per parameter plus the 896 bytes of BatchNorm statistics.
    assert built.bytes == 4 * built.params + 896


def test_closed_form_size_with_mixed_plan(digits_model):
    example, _, pricer = _setup(digits_model)
    plan = Plan({"conv1": LayerChoice(), "conv2": LayerChoice("svd", 3),
                 "conv3": LayerChoice("tucker2", (5, 7)), "fc": LayerChoice("svd", 2)})
    # By hand: conv1 dense 144; conv2 svd(3) = 3x3 16->3 (432) + 1x1 3->32 (96) = 528;
    # conv3 tucker2(5, 7) = 1x1 32->7 (224) + 3x3 7->5 (315) + 1x1 5->64 (320) = 859;
    # fc svd(2) = 256x2 (512) + 2x10 (20) + bias 10 = 542; BatchNorms 224.
    # Params 144 + 528 + 859 + 542 + 224 = 2,297; bytes 4*2,297 + 896 = 10,084.
    # MACs: conv1 9,216; conv2 64*3*144 + 64*32*3 = 33,792; conv3 16*7*32 + 16*5*63
    # + 16*64*5 = 13,744; fc 512 + 20 = 532; total 57,284.
    expected = ModelSize(params=2297, bytes=10_084, flops=57_284)
    assert pricer.size(plan) == expected
    assert measure(apply_plan(digits_model, plan), example) == expected


@pytest.mark.parametrize("fraction", [0.05, 0.2, 0.5])
def test_fit_repairs_any_request_into_the_budget(digits_model, fraction):
    example, targets, pricer = _setup(digits_model)
    allowed = {t.name: ["none", "svd", "tucker2"] for t in targets}
    budget = parse_budget(str(fraction)).resolve(pricer.baseline.params)
    assert budget.limit == int(fraction * 25_978)
    requests = [
        {t.name: ("none", 1.0) for t in targets},
        {t.name: ("tucker2", 1.0) for t in targets},
        {t.name: ("svd", 0.9) for t in targets},
    ]
    for request in requests:
        plan = pricer.fit(request, budget, allowed)
        params = measure(apply_plan(digits_model, plan), example).params
        assert params <= budget.limit
        # Repair must not throw away more than it needs: within 10 % of the limit (or of the
        # request's own size), unless every layer is already at its smallest rank.
        wanted = min(budget.limit, pricer.size(pricer.resolve(request)).params)
        floor = pricer.size(pricer.resolve(request, 1e-9)).params
        assert params >= 0.9 * wanted or params == floor, (params, wanted, floor)
        # Repair keeps the requested methods (only an all-dense request must change some).
        methods = {c.method for c in plan.compressed().values()}
        if request["conv1"][0] != "none":
            assert methods == {request["conv1"][0]} and len(plan.compressed()) == 4
        else:
            assert methods <= {"svd", "tucker2"} and len(plan.compressed()) >= 1


def test_plan_within_budget_is_left_alone(digits_model):
    _, targets, pricer = _setup(digits_model)
    allowed = {t.name: ["none", "svd"] for t in targets}
    request = {t.name: ("svd", 0.1) for t in targets}
    budget = parse_budget("0.9").resolve(pricer.baseline.params)
    plan = pricer.fit(request, budget, allowed)
    assert plan == pricer.resolve(request)
    # By hand: SVD rank r costs per layer conv1 (1*9 + 16) r = 25r, conv2 (16*9 + 32) r = 176r,
    # conv3 (32*9 + 64) r = 352r, fc (256 + 10) r + 10. A tenth of each layer's 144 / 4,608 /
    # 18,432 / 2,570 params allows r = 0 (so the minimum 1), 2, 5 and 0 (so 1):
    # 25 + 352 + 1,760 + 276 + 224 BatchNorm = 2,637 params, far under the 23,380 limit.
    assert plan.summary() == "conv1=svd(1) conv2=svd(2) conv3=svd(5) fc=svd(1)"
    assert pricer.size(plan).params == 2637 and budget.limit == 23_380


def test_unreachable_budget_is_an_error_up_front(digits_model):
    _, targets, pricer = _setup(digits_model)
    allowed = {t.name: ["none", "svd"] for t in targets}
    # By hand: every layer at SVD rank 1 (25 + 176 + 352 + 276) plus 224 BatchNorm = 1,053.
    smallest = pricer.smallest(allowed)
    assert smallest == 1053
    # A budget of exactly the smallest size is reachable: no error.
    pricer.check_reachable(parse_budget("1053").resolve(pricer.baseline.params), allowed)
    with pytest.raises(UserInputError) as info:
        pricer.check_reachable(parse_budget("1052").resolve(pricer.baseline.params), allowed)
    # 1,053 / 25,978 = 0.04053...
    assert str(info.value) == (
        "budget 1052 (1052 params) cannot be met: the smallest reachable model has 1053 "
        "params; valid: a budget ≥ 1053 (≥ 0.0405 as a fraction)")
