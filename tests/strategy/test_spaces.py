from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch

from lpsd_search.errors import UserInputError
from lpsd_search.plan.budget import Request
from lpsd_search.plan.layers import find_layers
from lpsd_search.presets import preset_names, tomllib
from lpsd_search.strategy.params import BoundSpace
from lpsd_search.strategy.spaces import LayerRule, load_space

SHIPPED = Path(__file__).resolve().parents[2] / "search_spaces"


def test_shipped_presets_load_by_name():
    # Expected from the files themselves, read with tomllib: every preset, every rule.
    files = sorted(SHIPPED.glob("*.toml"))
    names = preset_names("search_spaces")
    assert names == [path.stem for path in files]
    assert {"default", "svd", "alpsd"} <= set(names)
    for path in files:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        space = load_space(path.stem)
        assert (space.name, space.description) == (path.stem, raw["description"])
        assert [(rule.pattern, rule.methods, rule.rank_range) for rule in space.rules] == [
            (entry.get("match", ".*"), tuple(entry["methods"]),
             tuple(float(v) for v in entry.get("rank", (0.02, 1.0))))
            for entry in raw["rules"]], path.name
    default = load_space("default")
    assert default.rules == (LayerRule(".*", ("none", "svd", "alds", "tucker2"), (0.02, 1.0),
                                       (0.002, 0.3)),)


def test_user_preset_file(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('[[rules]]\nmatch = "conv.*"\nmethods = ["tucker2"]\nrank = [0.1, 0.5]\n')
    space = load_space(str(path))
    assert (space.name, space.description) == ("mine", "")
    rule = LayerRule("conv.*", ("tucker2",), (0.1, 0.5))
    assert space.rules == (rule,)
    # The regex must match the whole name.
    assert [space.rule_for(name) for name in ("conv2", "conv", "fc", "xconv2")] == [
        rule, rule, None, None]


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
    with pytest.raises(UserInputError) as info:
        load_space("nope")
    assert str(info.value) == (
        "unknown search space 'nope'; valid: all, alpsd, default, lpsd, mtd, svd, tt-admm, "
        "tucker-vbmf, vbmf-orth, or a path to a .toml file")


def _fraction(u: float, multiplier: float, low: float = 0.02, high: float = 1.0) -> float:
    """The documented map, written out: ``u`` log-linearly on [low, high], times the layer's
    multiplier, clipped to [low, high]."""
    return min(max(low * (high / low) ** u * multiplier, low), high)


LOW_RANK = """description = "none / svd / tucker2 per layer (the default before sparse residuals)"
[[rules]]
match = ".*"
methods = ["none", "svd", "tucker2"]
rank = [0.02, 1.0]
"""


@pytest.fixture
def low_rank_space(tmp_path):
    path = tmp_path / "low-rank.toml"
    path.write_text(LOW_RANK, encoding="utf-8")
    return load_space(str(path))


def test_default_space_offers_a_sparse_residual_with_every_low_rank_method():
    space = load_space("default")
    (rule,) = space.rules
    assert space.has_sparsity and rule.sparsity_range == (0.002, 0.3)
    assert rule.methods == ("none", "svd", "alds", "tucker2")


def test_sample_covers_every_searchable_layer(digits_model, low_rank_space):
    space = low_rank_space
    targets = find_layers(digits_model, torch.zeros(1, 1, 8, 8))
    allowed = space.allowed(targets)
    assert allowed == {name: ["none", "svd", "tucker2"]
                       for name in ("conv1", "conv2", "conv3", "fc")}
    bound = BoundSpace(space, targets, allowed)
    # conv1 (144 of 25,754 searchable params) is under 5 %: the only "small" layer.
    assert bound.small == {"conv1"}
    study = optuna.create_study(directions=["maximize", "minimize"],
                                sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        params = bound.suggest(study.ask())
        assert list(params) == [
            "global:family", "global:rank", "global:dense_small",
            "conv1:method", "conv1:rank", "conv2:method", "conv2:rank",
            "conv3:method", "conv3:rank", "fc:method", "fc:rank"]
        requests = bound.requests(params)
        assert list(requests) == ["conv1", "conv2", "conv3", "fc"]
        for name, request in requests.items():
            method = params[f"{name}:method"]
            if method == "=global":
                small = name == "conv1" and params["global:dense_small"]
                method = "none" if small else params["global:family"]
            assert request.method == method, (name, params)
            fraction = (1.0 if method == "none"
                        else _fraction(params["global:rank"], params[f"{name}:rank"]))
            assert request.fraction == pytest.approx(fraction, rel=1e-12), (name, params)
            assert (request.sparsity, request.alternating, request.options) == (0.0, False, ())


def test_global_and_local_knobs_map_to_hand_computed_requests(digits_model, low_rank_space):
    space = low_rank_space
    targets = find_layers(digits_model, torch.zeros(1, 1, 8, 8))
    bound = BoundSpace(space, targets, space.allowed(targets))
    params = {"global:family": "svd", "global:rank": 0.5, "global:dense_small": True,
              "conv1:method": "=global", "conv1:rank": 1.0,
              "conv2:method": "tucker2", "conv2:rank": 2.0,
              "conv3:method": "=global", "conv3:rank": 0.125,
              "fc:method": "=global", "fc:rank": 8.0}
    requests = bound.requests(params)
    # Rank range [0.02, 1]: u = 0.5 is 0.02 * 50 ** 0.5 = 0.141421...; conv2 doubles it to
    # 0.282843; conv3's 1/8 gives 0.017678, clipped up to 0.02; fc's 8x gives 1.13, clipped to
    # 1. conv1 is small and dense_small keeps it dense.
    assert requests == {
        "conv1": Request("none", 1.0, 0.0),
        "conv2": Request("tucker2", pytest.approx(0.2828427, rel=1e-6), 0.0),
        "conv3": Request("svd", pytest.approx(0.02), 0.0),
        "fc": Request("svd", pytest.approx(1.0), 0.0),
    }


def test_searched_options_apply_only_where_the_layer_takes_them(digits_model):
    space = load_space("all")
    targets = find_layers(digits_model, torch.zeros(1, 1, 8, 8))
    bound = BoundSpace(space, targets, space.allowed(targets))
    assert "global:alds.k" in bound.distributions()
    assert bound.distributions()["global:alds.k"].choices == (2, 4)
    params = {"global:family": "alds", "global:rank": 0.5, "global:sparsity": 0.5,
              "global:alds.k": 2, "global:cp.variant": "cp3"}
    requests = bound.requests(params)
    # conv1 has one input channel and fc is a Linear: neither can be split into 2 groups.
    assert requests["conv1"].options == () and requests["fc"].options == ()
    assert requests["conv2"].options == (("k", 2),)
    # Rank range [0.01, 1] at u = 0.5: 0.01 * 100 ** 0.5 = 0.1. Sparsity range [0.001, 0.3] at
    # u = 0.5: 0.001 * 300 ** 0.5 = 0.0173205...
    sparsity = pytest.approx(0.0173205, rel=1e-5)
    assert requests == {
        "conv1": Request("alds", pytest.approx(0.1), sparsity, False, ()),
        "conv2": Request("alds", pytest.approx(0.1), sparsity, False, (("k", 2),)),
        "conv3": Request("alds", pytest.approx(0.1), sparsity, False, (("k", 2),)),
        "fc": Request("alds", pytest.approx(0.1), sparsity, False, ()),
    }


def test_warm_start_parameters_map_back_to_their_requests(digits_model):
    space = load_space("lpsd")
    targets = find_layers(digits_model, torch.zeros(1, 1, 8, 8))
    bound = BoundSpace(space, targets, space.allowed(targets))
    wanted = {"conv1": Request("none"), "conv2": Request("alds", 0.2, 0.05),
              "conv3": Request("alds", 0.1, 0.02), "fc": Request("sparse", 1.0, 0.1)}
    params = bound.params_for(wanted)
    assert [params[f"{name}:method"] for name in wanted] == ["none", "alds", "alds", "sparse"]
    got = bound.requests(params)
    assert list(got) == list(wanted)
    for name, request in wanted.items():
        assert got[name].method == request.method
        assert got[name].fraction == pytest.approx(request.fraction, rel=1e-6)
        assert got[name].sparsity == pytest.approx(request.sparsity, rel=1e-6)
        assert (got[name].alternating, got[name].options) == (False, ())
