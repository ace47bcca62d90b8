from __future__ import annotations

import optuna
import pytest
import torch

from lpsd_search.errors import UserInputError
from lpsd_search.plan.budget import Request
from lpsd_search.plan.layers import find_layers
from lpsd_search.presets import preset_names
from lpsd_search.strategy.params import BoundSpace
from lpsd_search.strategy.spaces import load_space


def test_shipped_presets_load_by_name():
    names = preset_names("search_spaces")
    assert {"default", "svd"} <= set(names)
    for name in names:
        space = load_space(name)
        assert space.rules


def test_user_preset_file(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('[[rules]]\nmatch = "conv.*"\nmethods = ["tucker2"]\nrank = [0.1, 0.5]\n')
    space = load_space(str(path))
    assert space.name == "mine"
    assert space.rule_for("conv2") is not None
    assert space.rule_for("fc") is None


@pytest.mark.parametrize(("text", "message"), [
    ('[[rules]]\nmethods = ["magic"]\n', "unknown method 'magic'; valid: none, sparse, svd"),
    ('[[rules]]\nrank = [0.5, 0.1]\n', "rank range"),
    ('[[rules]]\nmatch = "("\n', "bad regex"),
    ("description = 'x'\n", "no \\[\\[rules\\]\\]"),
    ("[[rules]\n", "not valid TOML"),
])
def test_bad_presets_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(UserInputError, match=message) as info:
        load_space(str(path))
    assert "\n" not in str(info.value)


def test_unknown_preset_lists_valid_names():
    with pytest.raises(UserInputError, match=r"valid: .*default"):
        load_space("nope")


def test_sample_covers_every_searchable_layer(digits_model):
    space = load_space("default")
    targets = find_layers(digits_model, torch.zeros(1, 1, 8, 8))
    allowed = space.allowed(targets)
    assert list(allowed) == ["conv1", "conv2", "conv3", "fc"]
    bound = BoundSpace(space, targets, allowed)
    study = optuna.create_study(directions=["maximize", "minimize"])
    params = bound.suggest(study.ask())
    requests = bound.requests(params)
    assert set(requests) == set(allowed)
    for request in requests.values():
        assert request.method in {"none", "svd", "tucker2"}
        assert 0.02 <= request.fraction <= 1.0


def test_searched_options_apply_only_where_the_layer_takes_them(digits_model):
    space = load_space("all")
    targets = find_layers(digits_model, torch.zeros(1, 1, 8, 8))
    bound = BoundSpace(space, targets, space.allowed(targets))
    assert "global:alds.k" in bound.distributions()
    params = {"global:family": "alds", "global:rank": 0.5, "global:sparsity": 0.5,
              "global:alds.k": 2, "global:cp.variant": "cp3"}
    requests = bound.requests(params)
    # conv1 has one input channel and fc is a Linear: neither can be split into 2 groups.
    assert requests["conv1"].options == () and requests["fc"].options == ()
    assert requests["conv2"].options == (("k", 2),)
    assert all(r.method == "alds" and r.sparsity > 0 for r in requests.values())


def test_warm_start_parameters_map_back_to_their_requests(digits_model):
    space = load_space("lpsd")
    targets = find_layers(digits_model, torch.zeros(1, 1, 8, 8))
    bound = BoundSpace(space, targets, space.allowed(targets))
    wanted = {"conv1": Request("none"), "conv2": Request("alds", 0.2, 0.05),
              "conv3": Request("alds", 0.1, 0.02), "fc": Request("sparse", 1.0, 0.1)}
    got = bound.requests(bound.params_for(wanted))
    for name, request in wanted.items():
        assert got[name].method == request.method
        assert got[name].sparsity == pytest.approx(request.sparsity, rel=1e-6)
        if request.method == "alds":
            assert got[name].fraction == pytest.approx(request.fraction, rel=1e-6)
