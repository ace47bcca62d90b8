"""A user's model factory (``package.module:function`` or ``path/file.py:function``).

Importing one runs its code, so every failure, at import or in the call, becomes one
``UserInputError`` line naming the spec and the exception, not a traceback from the user's code.
Which specs name such code is decided by ``lpsd_search.models.zoo.names_code``.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from pathlib import Path
from typing import Any

from torch import nn

from lpsd_search.errors import UserInputError

FACTORY_ARGUMENTS = ("in_channels", "num_classes", "input_size")


def is_file_target(target: str) -> bool:
    """Whether a spec's ``TARGET`` (before the last ``:``) is a file path, not a module name."""
    return target.endswith(".py") or "/" in target or os.sep in target


def describe_error(error: BaseException) -> str:
    """``Type: first line of the message``, for one-line errors about a user's code."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def import_factory(spec: str, target: str, function: str) -> object:
    """Find ``function`` in a module given by dotted name or by ``.py`` file path."""
    if is_file_target(target):
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
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:  # the user's code may raise anything; report it in one line
            sys.modules.pop(module_name, None)
            raise UserInputError(
                f"model file '{target}' (from {spec!r}) raised {describe_error(exc)}"
            ) from exc
    else:
        try:
            module = importlib.import_module(target)
        except Exception as exc:  # the user's code may raise anything; report it in one line
            missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
            if missing is not None and (target + ".").startswith(missing + "."):
                raise UserInputError(
                    f"cannot import model module {target!r} (from {spec!r}): no module named "
                    f"{missing!r}"
                ) from None
            # The module exists but running it failed (one of its own imports, say).
            raise UserInputError(
                f"model module {target!r} (from {spec!r}) raised {describe_error(exc)}"
            ) from exc
    if not hasattr(module, function):
        raise UserInputError(f"model module {target!r} has no attribute {function!r}")
    return getattr(module, function)


def call_factory(spec: str, factory: object, arguments: dict[str, Any]) -> nn.Module:
    """Call a user's factory with the ``arguments`` its signature names.

    Args:
        spec: what the errors call the factory (its spec, or its name).
        factory: the callable.
        arguments: ``in_channels``, ``num_classes`` and ``input_size``.

    Raises:
        UserInputError: the factory is not callable, needs another argument, raises (one line:
            ``model factory SPEC raised TYPE: MESSAGE``), or returns no ``nn.Module``.
    """
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
                f"{', '.join(FACTORY_ARGUMENTS)} are passed"
            )
    try:
        model = factory(**kwargs)
    except Exception as exc:  # the user's code may raise anything; report it in one line
        raise UserInputError(f"model factory {spec!r} raised {describe_error(exc)}") from exc
    if not isinstance(model, nn.Module):
        raise UserInputError(
            f"model factory {spec!r} returned {type(model).__name__}, not a torch.nn.Module"
        )
    return model
