"""Models given to the Python API as objects (an ``nn.Module`` or a factory), found by spec.

``lpsd_search.search(my_module, …)`` names the object by a ``python:`` spec
(``python:mypkg.nets.Net@3f2a…``, the digest of its architecture and weights, or of a factory's
source) and registers it for as long as the call runs; ``models.zoo.build_model`` finds it by that
spec. The spec is what the study, the baseline cache and the saved models record: a saved model
of a given object is rebuilt only by a factory its caller passes (``lpsd_search.load(path,
model_factory=…)``), since no spec can bring a Python object back.

A module is a trained model, used as it is (the dense baseline); a factory builds an untrained
one (called with ``in_channels``, ``num_classes``, ``input_size``, as ``file.py:function`` specs
are), which is trained and cached like a built-in, or loaded from a checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from lpsd_search.errors import UserInputError
from lpsd_search.models.user_factory import call_factory

PYTHON_PREFIX = "python:"

_GIVEN: dict[str, nn.Module | Callable[..., nn.Module]] = {}


def _name(value: object) -> str:
    owner = value if callable(value) and not isinstance(value, nn.Module) else type(value)
    module = getattr(owner, "__module__", None) or "object"
    return f"{module}.{getattr(owner, '__qualname__', type(owner).__name__)}"


def object_digest(model: nn.Module | Callable[..., nn.Module]) -> str:
    """Digest of a module's architecture and weights, or of a factory's name and source."""
    digest = hashlib.sha256(_name(model).encode())
    if isinstance(model, nn.Module):
        digest.update(repr(model).encode())
        for key, tensor in model.state_dict().items():
            digest.update(f"{key}{tuple(tensor.shape)}{tensor.dtype}".encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8)
                          .numpy().tobytes())
    else:
        # A builtin, or a function typed at a prompt, has no source: its name only then.
        with contextlib.suppress(OSError, TypeError):
            digest.update(inspect.getsource(model).encode())
    return digest.hexdigest()[:16]


def object_spec(model: nn.Module | Callable[..., nn.Module]) -> str:
    """The ``python:`` spec of a given module or factory (equal objects give equal specs)."""
    if not isinstance(model, nn.Module) and not callable(model):
        raise UserInputError(f"model {type(model).__name__} is invalid; valid: a spec string, "
                             "a torch.nn.Module, or a function that returns one")
    return f"{PYTHON_PREFIX}{_name(model)}@{object_digest(model)}"


def is_object_spec(spec: str) -> bool:
    return spec.strip().startswith(PYTHON_PREFIX)


def is_given_module(spec: str) -> bool:
    """Whether ``spec`` names a registered trained module (used as the baseline as it is)."""
    return isinstance(_GIVEN.get(spec.strip()), nn.Module)


@contextmanager
def given(model: nn.Module | Callable[..., nn.Module]) -> Iterator[str]:
    """Make ``model`` buildable by its spec (``build_model(spec, …)``) inside the block."""
    spec = object_spec(model)
    previous = _GIVEN.get(spec)
    _GIVEN[spec] = model
    try:
        yield spec
    finally:
        if previous is None:
            _GIVEN.pop(spec, None)
        else:
            _GIVEN[spec] = previous


def build_given(spec: str, arguments: dict[str, Any]) -> nn.Module:
    """A copy of the registered module, or what the registered factory builds.

    Raises:
        UserInputError: nothing is registered under ``spec`` (a saved model of an object
            given in another call), or the factory fails.
    """
    model = _GIVEN.get(spec.strip())
    if model is None:
        raise UserInputError(f"model {spec!r} was a Python object given to lpsd_search in "
                             "another call; valid: lpsd_search.load(path, model_factory=F) "
                             "with a function F that builds it")
    if isinstance(model, nn.Module):
        return copy.deepcopy(model)
    return call_factory(spec, model, arguments)
