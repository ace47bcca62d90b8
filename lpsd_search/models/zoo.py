"""Build the model to compress from a one-string spec (the CLI's ``--model``).

Valid specs::

    digits-cnn, vgg11, vgg16, resnet20, resnet56   built-ins; options as NAME:key=value,...
                                                   (e.g. ``vgg16:width=0.25``)
    torchvision:NAME                               any ``torchvision.models`` architecture
    package.module:function                        a user's factory, imported
    path/to/file.py:function                       a user's factory, loaded from a file
    python:NAME@DIGEST                             a module or factory given to the Python API
                                                   (``models.objects``), in that call only

Every built-in uses standard ``torch.nn`` modules only, so it survives ``torch.save``,
``torch.jit.script`` and ONNX export. A user's factory is called with the keyword arguments
among ``in_channels``, ``num_classes`` and ``input_size`` that its signature accepts. Importing
a user's factory runs its code, so a spec read from a file is built with ``allow_code=False``
unless the user consented (``names_code`` tells the two kinds apart).

Example:
    >>> model = build_model("resnet20", in_channels=3, num_classes=10, input_size=(32, 32))
    >>> sum(p.numel() for p in model.parameters())
    272474
"""

from __future__ import annotations

import difflib
import inspect
import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from lpsd_search.errors import UserInputError
from lpsd_search.models.cifar import VGG, VGG_CONFIGS, CifarResNet
from lpsd_search.models.objects import build_given, is_object_spec
from lpsd_search.models.user_factory import call_factory, import_factory, is_file_target
from lpsd_search.registry import Registry

ModelFactory = Callable[..., nn.Module]
MODELS: Registry[ModelFactory] = Registry("model")


@MODELS.register("digits-cnn")
def digits_cnn(in_channels: int, num_classes: int, input_size: tuple[int, int]) -> nn.Module:
    """A small CNN for 8x8 digits (about 26k parameters with 1 channel and 10 classes)."""
    # The pool is skipped on inputs under 2 pixels; Identity keeps the layer names unchanged.
    pool: nn.Module = nn.MaxPool2d(2) if min(input_size) >= 2 else nn.Identity()
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        conv1=nn.Conv2d(in_channels, 16, 3, padding=1, bias=False),
        bn1=nn.BatchNorm2d(16),
        relu1=nn.ReLU(inplace=True),
        conv2=nn.Conv2d(16, 32, 3, padding=1, bias=False),
        bn2=nn.BatchNorm2d(32),
        relu2=nn.ReLU(inplace=True),
        pool=pool,
        conv3=nn.Conv2d(32, 64, 3, padding=1, bias=False),
        bn3=nn.BatchNorm2d(64),
        relu3=nn.ReLU(inplace=True),
        avgpool=nn.AdaptiveAvgPool2d(2),
        flatten=nn.Flatten(),
        fc=nn.Linear(64 * 2 * 2, num_classes),
    )
    return nn.Sequential(layers)


@MODELS.register("vgg11")
def vgg11(
    in_channels: int, num_classes: int, input_size: tuple[int, int], *, width: float = 1.0
) -> nn.Module:
    """VGG-11 (configuration A) with BatchNorm, CIFAR-style classifier."""
    return VGG(VGG_CONFIGS["A"], in_channels, num_classes, input_size, width)


@MODELS.register("vgg16")
def vgg16(
    in_channels: int, num_classes: int, input_size: tuple[int, int], *, width: float = 1.0
) -> nn.Module:
    """VGG-16 (configuration D) with BatchNorm, CIFAR-style classifier."""
    return VGG(VGG_CONFIGS["D"], in_channels, num_classes, input_size, width)


@MODELS.register("resnet20")
def resnet20(
    in_channels: int, num_classes: int, input_size: tuple[int, int], *, width: float = 1.0
) -> nn.Module:
    """CIFAR ResNet-20: 3 basic blocks per stage."""
    return CifarResNet(3, in_channels, num_classes, width)


@MODELS.register("resnet56")
def resnet56(
    in_channels: int, num_classes: int, input_size: tuple[int, int], *, width: float = 1.0
) -> nn.Module:
    """CIFAR ResNet-56: 9 basic blocks per stage."""
    return CifarResNet(9, in_channels, num_classes, width)


def _parse_value(text: str) -> int | float | str:
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def parse_model_options(name: str, text: str) -> dict[str, Any]:
    """Parse ``key=value,key=value`` and check every key is an option of built-in ``name``."""
    factory = MODELS.get(name)
    valid = [
        p.name
        for p in inspect.signature(factory).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    options: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in valid:
            raise UserInputError(
                f"bad option {item!r} for model {name!r}; valid: "
                + (", ".join(f"{k}=VALUE" for k in valid) or "none")
            )
        options[key] = _parse_value(value.strip())
    return options


def _torchvision_model(name: str, in_channels: int, num_classes: int) -> nn.Module:
    import torchvision  # imported here: a second of import time only ``torchvision:NAME`` needs

    names = torchvision.models.list_models()
    if name not in names:
        suggestions = difflib.get_close_matches(name, names, n=5) or sorted(names)[:6]
        raise UserInputError(
            f"unknown torchvision model {name!r}; e.g. {', '.join(suggestions)} "
            "(all: torchvision.models.list_models())"
        )
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    if in_channels != 3:
        _replace_first_conv(model, in_channels)
    return model


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    """Swap the first ``nn.Conv2d`` for one taking ``in_channels`` inputs, other settings kept."""
    for qualified_name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            parent_name, _, attribute = qualified_name.rpartition(".")
            replacement = nn.Conv2d(
                in_channels,
                module.out_channels,
                module.kernel_size,  # type: ignore[arg-type]
                stride=module.stride,  # type: ignore[arg-type]
                padding=module.padding,  # type: ignore[arg-type]
                dilation=module.dilation,  # type: ignore[arg-type]
                groups=module.groups,
                bias=module.bias is not None,
                padding_mode=module.padding_mode,
            )
            setattr(model.get_submodule(parent_name), attribute, replacement)
            return
    raise UserInputError(f"cannot adapt {type(model).__name__} to {in_channels} channels")


def names_code(spec: str) -> bool:
    """Whether building ``spec`` imports a user's file or module (and so runs its code).

    Built-ins and ``torchvision:NAME`` come from registries; any other ``TARGET:FUNCTION`` is
    a factory to import. A spec of neither kind is malformed and imports nothing.
    """
    head, sep, _ = spec.strip().partition(":")
    if head in MODELS or (head == "torchvision" and sep):
        return False
    target, sep, function = spec.strip().rpartition(":")
    return bool(sep and target and function)


def absolute_model_spec(spec: str) -> str:
    """``spec`` with a relative ``file.py`` path made absolute (other specs are unchanged).

    A saved model keeps its spec; an absolute path lets it load from any working directory.
    """
    target, _, function = spec.strip().rpartition(":")
    if not names_code(spec) or not is_file_target(target):
        return spec
    return f"{os.path.abspath(Path(target).expanduser())}:{function}"


def build_model(
    spec: str,
    *,
    in_channels: int,
    num_classes: int,
    input_size: tuple[int, int],
    allow_code: bool = True,
) -> nn.Module:
    """Build an untrained model for images of ``in_channels x input_size`` and ``num_classes``.

    Args:
        spec: a built-in name with optional options (``vgg16:width=0.25``),
            ``torchvision:NAME``, ``package.module:function`` or ``path/file.py:function``.
        in_channels: image channels.
        num_classes: output logits.
        input_size: image ``(H, W)``; built-ins size their pooling from it.
        allow_code: whether a spec may import a user's file or module; False for a spec read
            from a file nobody vouched for (see ``names_code``).

    Returns:
        The model, in training mode, on the CPU.

    Raises:
        UserInputError: unknown name, bad option, missing module/file/function, user code
            while ``allow_code`` is False, or a factory that raises or returns no ``nn.Module``.
    """
    spec = spec.strip()
    arguments = {"in_channels": in_channels, "num_classes": num_classes, "input_size": input_size}
    if is_object_spec(spec):  # an object given to the Python API: only it can build itself
        return build_given(spec, arguments)
    head, sep, tail = spec.partition(":")
    if head in MODELS:
        options = parse_model_options(head, tail)
        try:
            return MODELS.get(head)(**arguments, **options)
        except (TypeError, ValueError, ArithmeticError, RuntimeError, MemoryError) as error:
            if isinstance(error, UserInputError):
                raise
            # An option value that parsed but makes no model (too wide to allocate, say).
            raise UserInputError(f"model {spec!r} cannot be built ({type(error).__name__}: "
                                 f"{str(error).strip()[:200]}); valid: other options") from error
    if head == "torchvision" and sep:
        return _torchvision_model(tail.strip(), in_channels, num_classes)
    target, sep, function = spec.rpartition(":")
    if not sep or not target or not function:
        raise UserInputError(
            f"unknown model {spec!r}; valid: {', '.join(MODELS.names())}, torchvision:NAME, "
            "package.module:function, path/to/file.py:function"
        )
    if not allow_code:
        raise UserInputError(f"model spec {spec!r} names code outside lpsd-search; refused")
    return call_factory(spec, import_factory(spec, target, function), arguments)
