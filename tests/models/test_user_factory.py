"""A user's model factory: which specs import code, ``allow_code``, one-line errors, paths."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from lpsd_search.errors import UserInputError
from lpsd_search.models.checkpoint import load_checkpoint, save_checkpoint
from lpsd_search.models.zoo import absolute_model_spec, build_model, names_code

USER_FILE = """
from pathlib import Path

from torch import nn

Path(__file__).with_name("imported.marker").write_text("ran")


def make(num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))


def broken(num_classes):
    raise RuntimeError("boom\\nsecond line")
"""


def _build(spec: str, *, allow_code: bool = True) -> nn.Module:
    return build_model(spec, in_channels=1, num_classes=10, input_size=(8, 8),
                       allow_code=allow_code)


@pytest.fixture(autouse=True)
def _forget_user_modules() -> Iterator[None]:
    yield
    for name in [n for n in sys.modules
                 if n.startswith(("lpsd_user_model_", "lpsd_factory_pkg"))]:
        del sys.modules[name]


@pytest.fixture
def user_file(tmp_path: Path) -> Path:
    path = tmp_path / "mine.py"
    path.write_text(USER_FILE)
    return path


@pytest.mark.parametrize(("spec", "code"), [
    ("digits-cnn", False),
    ("vgg16:width=0.25", False),
    (" resnet20 ", False),
    ("torchvision:resnet18", False),
    ("alexnet", False),  # malformed: imports nothing
    ("os:abort", True),
    ("evilmod:make", True),
    ("nets/mine.py:build", True),
    ("/abs/mine.py:build", True),
])
def test_names_code(spec: str, code: bool) -> None:
    assert names_code(spec) is code


def test_allow_code_false_refuses_user_code_and_builds_builtins(user_file: Path) -> None:
    with pytest.raises(UserInputError, match=r"model spec '.*mine\.py:make' names code") as error:
        _build(f"{user_file}:make", allow_code=False)
    assert "\n" not in str(error.value)
    assert not (user_file.parent / "imported.marker").exists()
    model = _build("vgg11:width=0.25", allow_code=False)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_a_raising_factory_is_one_line(user_file: Path) -> None:
    with pytest.raises(UserInputError) as error:
        _build(f"{user_file}:broken")
    assert str(error.value) == f"model factory '{user_file}:broken' raised RuntimeError: boom"


def test_a_file_that_fails_on_import_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.py"
    path.write_text("raise ValueError('no GPU here')\n")
    with pytest.raises(UserInputError) as error:
        _build(f"{path}:make")
    assert str(error.value) == (f"model file '{path}' (from '{path}:make') raised ValueError: "
                                "no GPU here")
    path.write_text("def make(:\n")
    with pytest.raises(UserInputError, match=r"raised SyntaxError: "):
        _build(f"{path}:make")


def test_a_module_whose_own_import_fails_is_one_line(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "lpsd_factory_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "arch.py").write_text("import lpsd_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserInputError) as error:
        _build("lpsd_factory_pkg.arch:make")
    assert str(error.value) == (
        "model module 'lpsd_factory_pkg.arch' (from 'lpsd_factory_pkg.arch:make') raised "
        "ModuleNotFoundError: No module named 'lpsd_no_such_dependency'")


def test_absolute_model_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert absolute_model_spec("nets/mine.py:build") == f"{tmp_path}/nets/mine.py:build"
    assert absolute_model_spec("/abs/mine.py:build") == "/abs/mine.py:build"
    for spec in ("digits-cnn", "vgg16:width=0.25", "torchvision:resnet18", "pkg.mod:fn"):
        assert absolute_model_spec(spec) == spec


def test_a_checkpoint_stores_a_relative_model_file_absolute(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    monkeypatch.chdir(tmp_path)
    model = torch.nn.Linear(2, 2)
    save_checkpoint("c.pt", model, model_spec="nets/mine.py:build", data_spec="d", meta={})
    stored = load_checkpoint(tmp_path / "c.pt")["model_spec"]
    assert stored == os.path.join(str(tmp_path), "nets", "mine.py") + ":build"
