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


def test_apply_plan_replaces_only_planned_layers_and_keeps_the_original():
    torch.manual_seed(0)
    model = _model()
    plan = Plan({"0": LayerChoice("tucker2", (8, 3)), "3": LayerChoice("svd", 5)})
    compressed = apply_plan(model, plan)
    assert isinstance(model[0], nn.Conv2d)  # untouched
    assert isinstance(compressed[0], nn.Sequential)
    assert isinstance(compressed[3], nn.Sequential)
    x = torch.randn(2, 3, 4, 4)
    assert compressed(x).shape == (2, 5)
    # Full rank reproduces the dense model.
    exact = apply_plan(model, Plan({"0": LayerChoice("tucker2", (8, 3)),
                                    "3": LayerChoice("svd", 5)}))
    assert torch.allclose(exact(x), model(x), atol=1e-4)


def test_apply_plan_errors_name_the_layer():
    with pytest.raises(UserInputError, match="'nope'"):
        apply_plan(_model(), Plan({"nope": LayerChoice("svd", 1)}))
    with pytest.raises(UserInputError, match="'1'"):
        apply_plan(_model(), Plan({"1": LayerChoice("svd", 1)}))  # a ReLU
    with pytest.raises(UserInputError, match="needs a rank"):
        LayerChoice("svd")
