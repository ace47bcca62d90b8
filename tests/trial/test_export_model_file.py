"""A model named by a relative file (``nets/tiny.py:build``) is saved resolved, with the file's
digest: ``compress``'s fine-tuned model exports from another folder, and an edited file is
noticed when the model loads."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

import lpsd_search
from lpsd_search.cli.main import main
from lpsd_search.errors import UserInputError
from lpsd_search.models.code import file_digest
from lpsd_search.plan.measure import measure

NET = """
from torch import nn


def build(in_channels, num_classes, input_size):
    return nn.Sequential(nn.Conv2d(in_channels, {width}, 3, padding=1), nn.ReLU(),
                         nn.Conv2d({width}, 16, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, num_classes))
"""


@pytest.fixture(scope="module")
def compressed(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("project")
    (root / "proj" / "nets").mkdir(parents=True)
    (root / "proj" / "nets" / "tiny.py").write_text(NET.format(width=16))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root / "proj")
        assert main(["-q", "compress", "--model", "nets/tiny.py:build", "--budget", "0.5",
                     "--method", "lowrank", "--finetune-steps", "30", "--train-epochs", "8",
                     "--precision", "fp32", "--cache-dir", str(cache_dir), "--out", "run"]) == 0
    return root


def test_compress_writes_strict_json_and_its_model_with_the_resolved_spec(
        compressed: Path) -> None:
    run = compressed / "proj" / "run"
    document = json.loads((run / "plan.json").read_text(),
                          parse_constant=lambda name: pytest.fail(f"{name} in plan.json"))
    assert document["compressed"]["latency_ms"] is None  # not measured: null, not NaN
    saved = torch.load(run / "model.pt", weights_only=True)
    net = compressed / "proj" / "nets" / "tiny.py"
    assert saved["model_spec"] == f"{net}:build"
    assert saved["model_code"] == file_digest(net)
    assert saved["meta"]["plan"] == document["plan"]


def test_export_and_load_work_from_another_folder(compressed: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(compressed)
    assert main(["-q", "export", "proj/run", "--out", "out/m.pt", "--trust-model-spec"]) == 0
    document = json.loads((compressed / "proj" / "run" / "plan.json").read_text())
    model = lpsd_search.load("out/m.pt", trust_model_spec=True)
    assert measure(model, torch.zeros(1, 1, 8, 8)).params == document["compressed"]["params"]
    assert (compressed / "out" / "m.pt2").is_file()


def test_an_edited_model_file_is_noticed(compressed: Path, caplog: pytest.LogCaptureFixture,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    net = compressed / "proj" / "nets" / "tiny.py"
    saved = compressed / "proj" / "run" / "model.pt"
    monkeypatch.chdir(compressed)
    original = net.read_text()
    try:
        net.write_text(original + "# edited\n")  # the weights still fit: a warning
        with caplog.at_level(logging.WARNING, logger="lpsd_search"):
            lpsd_search.load(saved, trust_model_spec=True)
        assert any(f"model file '{net}' changed since it was saved" in r.getMessage()
                   for r in caplog.records)
        net.write_text(NET.format(width=12))  # they no longer fit: the error says why
        with pytest.raises(UserInputError) as error:
            lpsd_search.load(saved, trust_model_spec=True)
        assert "\n" not in str(error.value)
        assert str(error.value).endswith(f"(model file '{net}' changed since it was saved)")
    finally:
        net.write_text(original)


def test_export_of_a_search_folder_without_trial_names_the_trials(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "pareto.json").write_text(json.dumps({"points": [{"trial": 4}]}))
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "m.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "name the trial; valid: --trial" in err
