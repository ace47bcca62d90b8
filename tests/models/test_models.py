"""Tests for lpsd_search.models.zoo and lpsd_search.models.cifar."""

from __future__ import annotations

import io
import sys
import warnings
from pathlib import Path
from typing import TypeVar

import pytest
import torch
from torch import nn

from lpsd_search.errors import UserInputError
from lpsd_search.models.zoo import MODELS, build_model

ModuleT = TypeVar("ModuleT", bound=nn.Module)
SHAPES = [(1, (8, 8)), (1, (28, 28)), (3, (32, 32))]


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _sub(model: nn.Module, name: str, kind: type[ModuleT]) -> ModuleT:
    module = model.get_submodule(name)
    assert isinstance(module, kind)
    return module


def _count(model: nn.Module, kind: type[nn.Module]) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


def _script(model: nn.Module) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still used
        return torch.jit.script(model)


@pytest.mark.parametrize("name", ["digits-cnn", "vgg11", "vgg16", "resnet20", "resnet56"])
@pytest.mark.parametrize(("channels", "size"), SHAPES)
def test_builtins_forward_shape(name: str, channels: int, size: tuple[int, int]) -> None:
    model = build_model(name, in_channels=channels, num_classes=10, input_size=size).eval()
    with torch.no_grad():
        assert model(torch.randn(2, channels, *size)).shape == (2, 10)


def test_registry_lists_the_builtins() -> None:
    assert MODELS.names() == ["digits-cnn", "vgg11", "vgg16", "resnet20", "resnet56"]


def test_parameter_counts() -> None:
    digits = build_model("digits-cnn", in_channels=1, num_classes=10, input_size=(8, 8))
    assert _params(digits) == 25978  # 144 + 4608 + 18432 conv, 224 BN, 2570 linear
    resnet20 = build_model("resnet20", in_channels=3, num_classes=10, input_size=(32, 32))
    assert _params(resnet20) == 272474  # He et al. report 0.27M
    assert _count(resnet20, nn.Conv2d) == 19 + 2  # 19 weighted convs + 2 projection shortcuts
    resnet56 = build_model("resnet56", in_channels=3, num_classes=10, input_size=(32, 32))
    assert _count(resnet56, nn.Conv2d) == 55 + 2
    assert _params(resnet56) == 855770
    vgg16 = build_model("vgg16", in_channels=3, num_classes=10, input_size=(32, 32))
    assert _count(vgg16, nn.Conv2d) == 13 and _count(vgg16, nn.MaxPool2d) == 5
    assert _params(vgg16) == 14724042  # 14,710,464 bias-free 3x3 conv, 8,448 BN, 5,130 linear
    vgg11 = build_model("vgg11", in_channels=3, num_classes=10, input_size=(32, 32))
    assert _params(vgg11) == 9228362  # 9,217,728 conv, 5,504 BN, 5,130 linear
    # Only the first conv depends on the input channels: 2 channels fewer, 2 * 64 * 3 * 3 less.
    grey = build_model("vgg11", in_channels=1, num_classes=10, input_size=(32, 32))
    assert _params(vgg11) - _params(grey) == 1152
    assert _sub(vgg16, "classifier", nn.Linear).in_features == 512


def test_vgg_skips_pools_on_small_inputs_without_renaming_layers() -> None:
    small = build_model("vgg16", in_channels=1, num_classes=10, input_size=(8, 8))
    large = build_model("vgg16", in_channels=1, num_classes=10, input_size=(32, 32))
    assert _count(small, nn.MaxPool2d) == 3 and _count(small, nn.Identity) == 2
    assert list(small.state_dict()) == list(large.state_dict())


def test_width_multiplier() -> None:
    quarter = build_model("vgg16:width=0.25", in_channels=3, num_classes=10, input_size=(32, 32))
    assert _sub(quarter, "features.0", nn.Conv2d).out_channels == 16
    assert _sub(quarter, "classifier", nn.Linear).in_features == 128
    tiny = build_model("vgg11:width=0.01", in_channels=3, num_classes=10, input_size=(32, 32))
    assert _sub(tiny, "features.0", nn.Conv2d).out_channels == 8
    wide = build_model("resnet20:width=2", in_channels=3, num_classes=10, input_size=(32, 32))
    assert _sub(wide, "fc", nn.Linear).in_features == 128


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("vgg16:depth=3", "bad option 'depth=3' for model 'vgg16'; valid: width=VALUE"),
        ("vgg16:width", "bad option 'width'"),
        ("digits-cnn:width=2", "valid: none"),
        ("resnet20:width=0", "width=0 is invalid; valid: a finite number > 0"),
        ("alexnet", "unknown model 'alexnet'; valid: digits-cnn, vgg11"),
        ("torchvision:resnet181", "unknown torchvision model 'resnet181'; e.g. resnet18"),
        ("no_such_module_xyz:make", "cannot import model module 'no_such_module_xyz'"),
        ("json:make_model", "model module 'json' has no attribute 'make_model'"),
        ("/no/such/file.py:make", "model file '/no/such/file.py' .* does not exist"),
    ],
)
def test_spec_errors(spec: str, message: str) -> None:
    with pytest.raises(UserInputError, match=message) as error:
        build_model(spec, in_channels=1, num_classes=10, input_size=(8, 8))
    assert "\n" not in str(error.value)


def test_torchvision_model_with_one_channel() -> None:
    model = build_model("torchvision:resnet18", in_channels=1, num_classes=7, input_size=(32, 32))
    first = _sub(model, "conv1", nn.Conv2d)
    assert (first.in_channels, first.out_channels, first.kernel_size, first.stride) == (
        1,
        64,
        (7, 7),
        (2, 2),
    )
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 1, 32, 32)).shape == (2, 7)


USER_FILE = """
from torch import nn

def only_classes(num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))

def everything(**kwargs):
    channels, (h, w) = kwargs["in_channels"], kwargs["input_size"]
    return nn.Sequential(nn.Flatten(), nn.Linear(channels * h * w, kwargs["num_classes"]))

def needs_depth(num_classes, depth):
    return nn.Linear(depth, num_classes)

def not_a_model():
    return 42
"""


def test_user_factory_from_file(tmp_path: Path) -> None:
    path = tmp_path / "my_models.py"
    path.write_text(USER_FILE)
    model = build_model(f"{path}:only_classes", in_channels=1, num_classes=4, input_size=(8, 8))
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 4)
    model = build_model(f"{path}:everything", in_channels=2, num_classes=5, input_size=(3, 4))
    assert _sub(model, "1", nn.Linear).in_features == 24
    with pytest.raises(UserInputError, match="requires argument 'depth'"):
        build_model(f"{path}:needs_depth", in_channels=1, num_classes=4, input_size=(8, 8))
    with pytest.raises(UserInputError, match=r"returned int, not a torch\.nn\.Module"):
        build_model(f"{path}:not_a_model", in_channels=1, num_classes=4, input_size=(8, 8))
    with pytest.raises(UserInputError, match="has no attribute 'missing'"):
        build_model(f"{path}:missing", in_channels=1, num_classes=4, input_size=(8, 8))


def test_user_factory_from_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "lpsd_test_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "arch.py").write_text(USER_FILE)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        spec = "lpsd_test_pkg.arch:only_classes"
        model = build_model(spec, in_channels=1, num_classes=6, input_size=(8, 8))
        assert _sub(model, "1", nn.Linear).out_features == 6
        with pytest.raises(UserInputError, match=r"no module named 'lpsd_test_pkg\.nope'"):
            build_model("lpsd_test_pkg.nope:f", in_channels=1, num_classes=6, input_size=(8, 8))
    finally:
        for name in ("lpsd_test_pkg", "lpsd_test_pkg.arch"):
            sys.modules.pop(name, None)


@pytest.mark.parametrize("name", ["digits-cnn", "resnet20", "vgg11"])
def test_torchscript_matches_eager(name: str) -> None:
    model = build_model(name, in_channels=1, num_classes=10, input_size=(8, 8)).eval()
    inputs = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(_script(model)(inputs), model(inputs))


def test_whole_model_survives_torch_save() -> None:
    model = build_model("resnet20", in_channels=1, num_classes=10, input_size=(8, 8)).eval()
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    restored = torch.load(buffer, weights_only=False)
    inputs = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(restored(inputs), model(inputs))


@pytest.mark.parametrize("name", ["digits-cnn", "resnet20"])
def test_onnx_export(tmp_path: Path, name: str) -> None:
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")  # torch's default (dynamo) exporter needs it
    model = build_model(name, in_channels=1, num_classes=10, input_size=(8, 8)).eval()
    path = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 1, 8, 8),), str(path))
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    assert sum(node.op_type == "Conv" for node in graph.graph.node) == _count(model, nn.Conv2d)
    onnxruntime = pytest.importorskip("onnxruntime")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = torch.randn(1, 1, 8, 8)
    (output,) = session.run(None, {session.get_inputs()[0].name: inputs.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(output), model(inputs), rtol=1e-4, atol=1e-5)
