from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from lpsd_search.errors import UserInputError
from lpsd_search.plan.apply import apply_plan
from lpsd_search.plan.choices import LayerChoice, Plan


def _model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 4 * 4, 5))


def test_plan_json_round_trip():
    plan = Plan({"0": LayerChoice("tucker2", (4, 2)), "3": LayerChoice("svd", 3),
                 "x": LayerChoice()})
    text = json.dumps(plan.to_dict())
    assert Plan.from_dict(json.loads(text)) == plan
    assert plan.to_dict()["0"] == {"method": "tucker2", "rank": [4, 2], "sparsity": 0.0}
    assert plan.summary() == "0=tucker2(4,2) 3=svd(3)"
    assert Plan().summary() == "dense"


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_apply_plan_replaces_only_planned_layers_and_keeps_the_original():
    torch.manual_seed(0)
    model = _model()
    before = {name: p.detach().clone() for name, p in model.state_dict().items()}
    x = torch.randn(2, 3, 4, 4)
    dense_out = model(x).detach()
    # Full rank: Tucker-2 (8, 3) of the 3 -> 8 conv is 1x1 3->3 (9), 3x3 3->8 (216) and
    # 1x1 8->8 with the bias (64 + 8) = 297 params; SVD rank 5 of Linear(128, 5) is 128x5 (640)
    # and 5x5 with the bias (25 + 5) = 670. The dense layers have 3*8*9 + 8 = 224 and
    # 128*5 + 5 = 645.
    compressed = apply_plan(model, Plan({"0": LayerChoice("tucker2", (8, 3)),
                                         "3": LayerChoice("svd", 5)}))
    assert [_count(layer) for layer in compressed] == [297, 0, 0, 670]
    assert [_count(layer) for layer in model] == [224, 0, 0, 645]
    assert [type(layer) for layer in compressed] == [nn.Sequential, nn.ReLU, nn.Flatten,
                                                     nn.Sequential]
    assert [tuple(p.shape) for p in compressed[0].parameters()] == [
        (3, 3, 1, 1), (8, 3, 3, 3), (8, 8, 1, 1), (8,)]
    assert [tuple(p.shape) for p in compressed[3].parameters()] == [(5, 128), (5, 5), (5,)]
    # The original is untouched: same layer types, same weights, same outputs.
    assert [type(layer) for layer in model] == [nn.Conv2d, nn.ReLU, nn.Flatten, nn.Linear]
    assert all(torch.equal(before[name], p) for name, p in model.state_dict().items())
    assert torch.equal(model(x), dense_out)
    # Full rank reproduces the dense model.
    assert torch.allclose(compressed(x), dense_out, atol=1e-4)
    # A lower rank is a smaller, different model: Tucker-2 (2, 1) is 3*1 + 1*2*9 + 2*8 + 8 = 45
    # params, SVD rank 1 is 128 + 5 + 5 = 138.
    low = apply_plan(model, Plan({"0": LayerChoice("tucker2", (2, 1)),
                                  "3": LayerChoice("svd", 1)}))
    assert [_count(layer) for layer in low] == [45, 0, 0, 138]
    assert low(x).shape == (2, 5)
    assert not torch.allclose(low(x), dense_out, atol=1e-2)
    # A plan of dense choices changes nothing.
    same = apply_plan(model, Plan({"0": LayerChoice(), "3": LayerChoice()}))
    assert [type(layer) for layer in same] == [nn.Conv2d, nn.ReLU, nn.Flatten, nn.Linear]
    assert torch.equal(same(x), dense_out)


def test_apply_plan_errors_name_the_layer():
    with pytest.raises(UserInputError) as info:
        apply_plan(_model(), Plan({"nope": LayerChoice("svd", 1)}))
    assert str(info.value) == "plan names 'nope', which is not a Conv2d or Linear layer"
    with pytest.raises(UserInputError) as info:
        apply_plan(_model(), Plan({"1": LayerChoice("svd", 1)}))  # a ReLU
    assert str(info.value) == "plan names '1', which is not a Conv2d or Linear layer"
    with pytest.raises(UserInputError) as info:
        LayerChoice("svd")
    assert str(info.value) == "method 'svd' needs a rank; valid: an int or a tuple"
