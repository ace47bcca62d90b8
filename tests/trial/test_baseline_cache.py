"""Baselines are cached by what determines them; checkpoints of other data are noticed; a
baseline at chance level stops the run; the data split does not move with ``--seed``."""

from __future__ import annotations

import inspect
import logging
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from lpsd_search.cli.main import main
from lpsd_search.config import BaselineConfig
from lpsd_search.data.splits import DataSplits, load_data
from lpsd_search.errors import UserInputError
from lpsd_search.models.checkpoint import save_checkpoint
from lpsd_search.models.zoo import digits_cnn
from lpsd_search.options import search_options
from lpsd_search.strategy.runner import TrialRunner
from lpsd_search.trial.baseline import cache_path, load_model

NET = """
from torch import nn


def build(in_channels, num_classes, input_size):
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.{activation}(),
                         nn.Flatten(), nn.Linear(8 * input_size[0] * input_size[1], num_classes))
"""


def test_an_edited_model_file_gets_another_cache_entry(digits: DataSplits,
                                                       tmp_path: Path) -> None:
    net = tmp_path / "net.py"
    config = BaselineConfig(epochs=1)
    net.write_text(NET.format(activation="ReLU"))
    first = cache_path(f"{net}:build", digits, config, tmp_path)
    assert cache_path(f"{net}:build", digits, config, tmp_path) == first  # stable
    net.write_text(NET.format(activation="Tanh"))  # same shapes, another model
    assert cache_path(f"{net}:build", digits, config, tmp_path) != first
    net.write_text(NET.format(activation="Tanh") + "\n# a comment is an edit of the code too\n")
    assert len({first, cache_path(f"{net}:build", digits, config, tmp_path)}) == 2


def test_the_cache_key_holds_the_data_and_the_training(digits: DataSplits,
                                                       tmp_path: Path) -> None:
    config = BaselineConfig(epochs=1)
    base = cache_path("digits-cnn", digits, config, tmp_path)
    assert cache_path("digits-cnn", digits, BaselineConfig(epochs=2), tmp_path) != base
    other = DataSplits(**{**digits.__dict__, "fingerprint": "another-split"})
    assert cache_path("digits-cnn", other, config, tmp_path) != base


def _checkpoint(path: Path, model: nn.Module, data_spec: str, fingerprint: str | None) -> Path:
    save_checkpoint(path, model, model_spec="digits-cnn", data_spec=data_spec,
                    data_fingerprint=fingerprint, meta={})
    return path


def test_a_checkpoint_of_other_data_is_refused_and_of_another_split_warned(
        digits: DataSplits, digits_model: nn.Module, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    cpu = torch.device("cpu")
    other = _checkpoint(tmp_path / "a.pt", digits_model, "fashion-mnist:/data", "0123")
    with pytest.raises(UserInputError) as error:
        load_model("digits-cnn", digits, other, cpu)
    assert str(error.value) == (
        f"checkpoint {other} was trained on data 'fashion-mnist:/data', not 'digits'; valid: "
        "--data fashion-mnist:/data, or a checkpoint trained on these data (lpsd-search train "
        "--data digits)")
    with caplog.at_level(logging.WARNING, logger="lpsd_search"):
        load_model("digits-cnn", digits, _checkpoint(tmp_path / "b.pt", digits_model, "digits",
                                                     "0123"), cpu)
        load_model("digits-cnn", digits, _checkpoint(tmp_path / "c.pt", digits_model, "digits",
                                                     None), cpu)
        load_model("digits-cnn", digits, _checkpoint(tmp_path / "d.pt", digits_model, "digits",
                                                     digits.fingerprint), cpu)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 2
    assert "b.pt was trained on another split or version" in warned[0]
    assert "c.pt records no data split" in warned[1]


def test_a_chance_level_checkpoint_stops_the_search_with_one_line(
        digits: DataSplits, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    guesser = digits_cnn(1, 10, (8, 8))
    nn.init.zeros_(guesser.fc.weight)
    nn.init.zeros_(guesser.fc.bias)
    path = _checkpoint(tmp_path / "guess.pt", guesser, "digits", digits.fingerprint)
    assert main(["search", "--budget", "0.5", "--checkpoint", str(path), "--out",
                 str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"lpsd-search: error: the dense model (checkpoint {path}) scores")
    assert re.search(r"scores \d+\.\d% validation accuracy on digits, no better than chance "
                     r"\(10\.\d%\); .*; valid: a checkpoint trained on these data", err)


def test_the_split_and_the_baseline_do_not_move_with_the_seed(
        cache_dir: Path, digits_model: nn.Module, tmp_path: Path) -> None:
    assert "seed" not in inspect.signature(load_data).parameters
    runners = [TrialRunner.from_options(search_options(
        budget="0.5", seed=seed, train_epochs=8, cache_dir=cache_dir, device="cpu",
        out=tmp_path / str(seed))) for seed in (0, 7)]
    assert runners[0].data.fingerprint == runners[1].data.fingerprint
    assert runners[0].options.finetune.seed != runners[1].options.finetune.seed
    weights = [runner.evaluator.model.state_dict() for runner in runners]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
