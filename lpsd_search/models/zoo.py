"""Build the model to compress from a one-string spec (the CLI's ``--model``).

Valid specs::

    digits-cnn, vgg11, vgg16, resnet20, resnet56   built-ins; options as NAME:key=value,...
                                                   (e.g. ``vgg16:width=0.25``)
    torchvision:NAME                               any ``torchvision.models`` architecture
    package.module:function                        a user's factory, imported
    path/to/file.py:function                       a user's factory, loaded from a file

Every built-in uses standard ``torch.nn`` modules only, so it survives ``torch.save``,
``torch.jit.script`` and ONNX export. A user's factory is called with the keyword arguments
among ``in_channels``, ``num_classes`` and ``input_size`` that its signature accepts.

Example:
    >>> model = build_model("resnet20", in_channels=3, num_classes=10, input_size=(32, 32))
    >>> sum(p.numel() for p in model.parameters())
    272474
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import os
import sys
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from lpsd_search.errors import UserInputError
from lpsd_search.models.cifar import VGG, VGG_CONFIGS, CifarResNet
from lpsd_search.registry import Registry

ModelFactory = Callable[..., nn.Module]
MODELS: Registry[ModelFactory] = Registry("model")
_FACTORY_ARGUMENTS = ("in_channels", "num_classes", "input_size")


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


def _import_factory(spec: str, target: str, function: str) -> object:
    """Find ``function`` in a module given by dotted name or by ``.py`` file path."""
    if target.endswith(".py") or "/" in target or os.sep in target:
        path = Path(target).expanduser()
        if not path.is_file():
            raise UserInputError(f"model file '{target}' (from {spec!r}) does not exist")
        module_name = f"lpsd_user_model_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        if module_spec is None or module_spec.loader is None:
            raise UserInputError(f"cannot load model file '{target}' as Python")
        module = importlib.util.module_from_spec(module_spec)
        # Registered before running so dataclasses and pickling inside the file find it.
        sys.modules[module_name] = module
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as exc:
            if exc.name is None or not (target + ".").startswith(exc.name + "."):
                raise  # the module exists but one of its own imports failed
            raise UserInputError(
                f"cannot import model module {target!r} (from {spec!r}): no module named "
                f"{exc.name!r}"
            ) from None
    if not hasattr(module, function):
        raise UserInputError(f"model module {target!r} has no attribute {function!r}")
    return getattr(module, function)


def _call_factory(spec: str, factory: object, arguments: dict[str, Any]) -> nn.Module:
    """Call a user's factory with the arguments its signature names; check it returns a model."""
    if not callable(factory):
        raise UserInputError(f"model factory {spec!r} is not callable")
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # some builtins have no signature: pass everything
        kwargs = arguments
    else:
        kinds = {p.kind for p in parameters.values()}
        if inspect.Parameter.VAR_KEYWORD in kinds:
            kwargs = arguments
        else:
            kwargs = {k: v for k, v in arguments.items() if k in parameters}
        required = [
            p.name
            for p in parameters.values()
            if p.default is p.empty
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            and p.name not in kwargs
        ]
        if required:
            raise UserInputError(
                f"model factory {spec!r} requires argument {required[0]!r}; only "
                f"{', '.join(_FACTORY_ARGUMENTS)} are passed"
            )
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise UserInputError(
            f"model factory {spec!r} returned {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def build_model(
    spec: str, *, in_channels: int, num_classes: int, input_size: tuple[int, int]
) -> nn.Module:
    """Build an untrained model for images of ``in_channels x input_size`` and ``num_classes``.

    Args:
        spec: a built-in name with optional options (``vgg16:width=0.25``),
            ``torchvision:NAME``, ``package.module:function`` or ``path/file.py:function``.
        in_channels: image channels.
        num_classes: output logits.
        input_size: image ``(H, W)``; built-ins size their pooling from it.

    Returns:
        The model, in training mode, on the CPU.

    Raises:
        UserInputError: unknown name, bad option, missing module/file/function, or a factory
            that does not return an ``nn.Module``.
    """
    spec = spec.strip()
    arguments = {"in_channels": in_channels, "num_classes": num_classes, "input_size": input_size}
    head, sep, tail = spec.partition(":")
    if head in MODELS:
        return MODELS.get(head)(**arguments, **parse_model_options(head, tail))
    if head == "torchvision" and sep:
        return _torchvision_model(tail.strip(), in_channels, num_classes)
    target, sep, function = spec.rpartition(":")
    if not sep or not target or not function:
        raise UserInputError(
            f"unknown model {spec!r}; valid: {', '.join(MODELS.names())}, torchvision:NAME, "
            "package.module:function, path/to/file.py:function"
        )
    return _call_factory(spec, _import_factory(spec, target, function), arguments)
