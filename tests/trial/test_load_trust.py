"""``load`` and ``export`` never import code named by a saved model's spec without consent."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import lpsd_search
from lpsd_search.cli.main import main
from lpsd_search.data.normalise import Preprocessing
from lpsd_search.data.splits import DataSplits
from lpsd_search.errors import UserInputError
from lpsd_search.models.zoo import digits_cnn
from lpsd_search.plan.apply import apply_plan
from lpsd_search.plan.choices import LayerChoice, Plan
from lpsd_search.plan.measure import measure
from lpsd_search.trial.export import load, save_compressed, save_trial_model

INPUT_SHAPE = (1, 8, 8)
_EMPTY = TensorDataset(torch.zeros(0, *INPUT_SHAPE), torch.zeros(0))
# Identity preprocessing: a loaded model (normalisation first) computes what the saved one does.
DATA = DataSplits("digits", _EMPTY, _EMPTY, _EMPTY, in_channels=1, num_classes=10,
                  input_size=(8, 8), preprocessing=Preprocessing(1.0, (0.0,), (1.0,), 1, (8, 8)),
                  fingerprint="test")
PLAN = Plan({"conv2": LayerChoice("svd", 4, sparsity=0.05)})
# Importing this file leaves a marker beside it: the proof that its code ran.
USER_MODEL = """
from pathlib import Path

from lpsd_search.models.zoo import digits_cnn

Path(__file__).with_name("imported.marker").write_text("ran")


def make(in_channels, num_classes, input_size):
    return digits_cnn(in_channels, num_classes, input_size)


def broken(num_classes):
    raise RuntimeError("boom")
"""


@pytest.fixture(autouse=True)
def _forget_user_modules() -> Iterator[None]:
    yield
    for name in [n for n in sys.modules if n.startswith("lpsd_user_model_") or n == "evilmod"]:
        del sys.modules[name]


def _compressed() -> nn.Module:
    torch.manual_seed(0)
    dense = digits_cnn(1, 10, (8, 8)).eval()
    return apply_plan(dense, PLAN).eval()


def _outputs(model: nn.Module) -> torch.Tensor:
    torch.manual_seed(1)
    with torch.no_grad():
        return model.eval()(torch.randn(4, *INPUT_SHAPE))


def _save(path: Path, model: nn.Module, spec: str) -> Path:
    save_compressed(path, model, model_spec=spec, data=DATA, plan=PLAN.to_dict())
    return path


@pytest.fixture
def user_file(tmp_path: Path) -> Path:
    path = tmp_path / "evil.py"
    path.write_text(USER_MODEL)
    return path


def test_a_spec_naming_a_file_is_refused_and_its_code_never_runs(user_file: Path) -> None:
    saved = _save(user_file.parent / "trial-3.pt", _compressed(), f"{user_file}:make")
    with pytest.raises(UserInputError) as error:
        load(saved)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"model spec '{user_file}:make' in {saved} names code outside")
    assert "model_factory=" in message and "--trust-model-spec" in message
    assert not (user_file.parent / "imported.marker").exists()


def test_a_spec_naming_a_module_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    (tmp_path / "evilmod.py").write_text(USER_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    saved = _save(tmp_path / "m.pt", _compressed(), "evilmod:make")
    with pytest.raises(UserInputError, match=r"model spec 'evilmod:make' in .* names code"):
        load(saved)
    assert "evilmod" not in sys.modules
    assert not (tmp_path / "imported.marker").exists()


def test_os_abort_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    called: list[bool] = []

    def fake_abort() -> None:  # were the spec obeyed, the test process would die
        called.append(True)
        raise SystemError("os.abort was called")

    monkeypatch.setattr(os, "abort", fake_abort)
    saved = _save(tmp_path / "m.pt", _compressed(), "os:abort")
    with pytest.raises(UserInputError, match=r"model spec 'os:abort' in .* names code outside"):
        load(saved)
    assert called == []


def test_a_model_factory_replaces_the_spec(user_file: Path) -> None:
    model = _compressed()
    saved = _save(user_file.parent / "m.pt", model, f"{user_file}:make")
    loaded = load(saved, model_factory=digits_cnn)
    torch.testing.assert_close(_outputs(loaded), _outputs(model))
    assert not (user_file.parent / "imported.marker").exists()


def test_a_trusted_spec_is_imported(user_file: Path) -> None:
    model = _compressed()
    saved = _save(user_file.parent / "m.pt", model, f"{user_file}:make")
    loaded = lpsd_search.load(saved, trust_model_spec=True)
    torch.testing.assert_close(_outputs(loaded), _outputs(model))
    assert (user_file.parent / "imported.marker").exists()


def test_a_failing_factory_is_one_line(user_file: Path) -> None:
    saved = _save(user_file.parent / "m.pt", _compressed(), f"{user_file}:broken")

    def boom() -> nn.Module:
        raise RuntimeError("boom")

    with pytest.raises(UserInputError) as error:
        load(saved, model_factory=boom)
    assert str(error.value) == f"model factory '{boom.__qualname__}' raised RuntimeError: boom"
    with pytest.raises(UserInputError) as error:
        load(saved, trust_model_spec=True)
    assert str(error.value) == f"model factory '{user_file}:broken' raised RuntimeError: boom"


@pytest.mark.parametrize(("spec", "meta", "message"), [
    ("not a model", {}, "unknown model 'not a model'"),
    ("digits-cnn:depth=3", {}, "bad option 'depth=3' for model 'digits-cnn'"),
    ("digits-cnn", {"input_size": "big"}, "its meta lacks in_channels, num_classes or input_"),
])
def test_malformed_files_are_one_line(tmp_path: Path, spec: str, meta: dict[str, object],
                                      message: str) -> None:
    saved = _save(tmp_path / "m.pt", _compressed(), spec)
    if meta:
        checkpoint = torch.load(saved, weights_only=True)
        checkpoint["meta"].update(meta)
        torch.save(checkpoint, saved)
    with pytest.raises(UserInputError, match=message) as error:
        load(saved)
    assert "\n" not in str(error.value)


def test_a_builtin_spec_needs_no_consent(tmp_path: Path) -> None:
    model = _compressed()
    loaded = load(_save(tmp_path / "m.pt", model, "digits-cnn"))
    torch.testing.assert_close(_outputs(loaded), _outputs(model))


def test_a_relative_model_file_loads_from_another_folder(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "nets").mkdir()
    (tmp_path / "nets" / "mine.py").write_text(USER_MODEL)
    (tmp_path / "elsewhere").mkdir()
    model = _compressed()
    monkeypatch.chdir(tmp_path)
    saved = _save(tmp_path / "m.pt", model, "nets/mine.py:make")
    monkeypatch.chdir(tmp_path / "elsewhere")
    loaded = load(saved, trust_model_spec=True)
    torch.testing.assert_close(_outputs(loaded), _outputs(model))


def _results_folder(directory: Path, spec: str) -> tuple[nn.Module, int]:
    """A search's --out folder holding one front trial (3) saved with ``spec``."""
    model = _compressed()
    params = measure(model, torch.zeros(1, *INPUT_SHAPE)).params
    save_trial_model(directory, 3, model, plan=PLAN.to_dict(), measures={"params": params},
                     model_spec=spec, data=DATA)
    document = {"points": [{"trial": 3, "params": params, "plan": PLAN.to_dict()}]}
    (directory / "pareto.json").write_text(json.dumps(document), encoding="utf-8")
    return model, 3


def test_export_refuses_a_spec_naming_a_file(user_file: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "run"
    _, trial = _results_folder(results, f"{user_file}:make")
    out = tmp_path / "out" / "m.pt"
    status = main(["-q", "export", str(results), "--trial", str(trial), "--out", str(out)])
    stderr = capsys.readouterr().err
    assert status == 2
    assert stderr.count("\n") == 1 and "Traceback" not in stderr
    assert stderr.startswith(f"lpsd-search: error: model spec '{user_file}:make' in ")
    assert "--trust-model-spec" in stderr
    assert not (user_file.parent / "imported.marker").exists()
    assert not out.exists()


def test_export_with_trust_model_spec(user_file: Path, tmp_path: Path) -> None:
    results = tmp_path / "run"
    model, trial = _results_folder(results, f"{user_file}:make")
    out = tmp_path / "out" / "m.pt"
    status = main(["-q", "export", str(results), "--trial", str(trial), "--out", str(out),
                   "--trust-model-spec"])
    assert status == 0
    assert (user_file.parent / "imported.marker").exists()
    assert out.with_suffix(".pt2").is_file()
    exported = load(out, model_factory=digits_cnn)
    torch.testing.assert_close(_outputs(exported), _outputs(model))
