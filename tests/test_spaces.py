from __future__ import annotations

import optuna
import pytest
import torch

from lpsd_search.errors import UserInputError
from lpsd_search.layers import find_layers
from lpsd_search.presets import preset_names
from lpsd_search.spaces import load_space


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
    ('[[rules]]\nmethods = ["magic"]\n', "unknown method 'magic'; valid: none, svd"),
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
    study = optuna.create_study(directions=["maximize", "minimize"])
    trial = study.ask()
    requests = space.sample(trial, allowed)
    assert set(requests) == set(allowed)
    for method, fraction in requests.values():
        assert method in {"none", "svd", "tucker2"}
        assert 0.02 <= fraction <= 1.0


def test_depthwise_layers_are_not_searchable():
    model = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, groups=8), torch.nn.Conv2d(8, 16, 1))
    targets = find_layers(model, torch.zeros(1, 8, 6, 6))
    allowed = load_space("default").allowed(targets)
    assert "0" not in allowed
    assert "1" in allowed
