"""Save and load model weights together with the specs needed to rebuild the model.

A checkpoint is a plain dict written with ``torch.save``::

    {"format": "lpsd-search-checkpoint", "version": 1, "model_spec": "resnet20",
     "data_spec": "digits", "data_fingerprint": "06b2…", "model_code": null,
     "meta": {...JSON values...}, "state_dict": {...tensors...}}

``data_fingerprint`` names the data and split the weights were trained on (``DataSplits``'s), and
``model_code`` the digest of the file a user's ``file.py:fn`` / ``pkg.mod:fn`` spec names; files
written before they existed lack them (read back as None).

It holds only tensors and JSON values, so it loads with ``weights_only=True`` (no code runs).
Its ``model_spec`` is data too: whoever rebuilds the model decides whether a spec naming a
user's file or module may be imported (``lpsd_search.load`` refuses unless told to trust it).
A bare ``state_dict`` saved by other tools is accepted too.

Example:
    >>> save_checkpoint("run/model.pt", model, model_spec="resnet20", data_spec="digits",
    ...                 meta={"val_accuracy": 0.97})  # doctest: +SKIP
    >>> load_weights(fresh_model, load_checkpoint("run/model.pt"))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import pickle
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lpsd_search.errors import UserInputError
from lpsd_search.models.code import code_digest
from lpsd_search.models.zoo import absolute_model_spec

CHECKPOINT_FORMAT = "lpsd-search-checkpoint"
CHECKPOINT_VERSION = 1


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    model_spec: str,
    data_spec: str,
    meta: Mapping[str, Any],
    data_fingerprint: str | None = None,
) -> None:
    """Write ``model``'s weights and the specs that rebuild it to ``path``, atomically.

    The file is written next to its destination and moved into place with ``os.replace``, so
    a crash leaves either the old file or the new one, never half of one. A relative file path
    in ``model_spec`` (``nets/mine.py:build``) is stored absolute, with the digest of that file
    (``model_code``), so the file loads from any working directory and a changed model file is
    noticed (``changed_code``).

    Args:
        path: where to write.
        model: the model whose ``state_dict`` is saved.
        model_spec: the spec that rebuilds it.
        data_spec: the data it was trained on.
        meta: JSON values (NaN and infinities are kept: the file is not JSON text).
        data_fingerprint: ``DataSplits.fingerprint`` of those data.

    Raises:
        TypeError: ``meta`` holds a value that is not plain JSON.
    """
    try:
        # A JSON round trip turns tuples into lists and rejects objects weights_only can't load.
        plain_meta = json.loads(json.dumps(dict(meta), allow_nan=True))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"checkpoint meta must hold plain JSON values: {exc}") from None
    spec = absolute_model_spec(model_spec)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model_spec": spec,
        "model_code": code_digest(spec),
        "data_spec": data_spec,
        "data_fingerprint": data_fingerprint,
        "meta": plain_meta,
        "state_dict": model.state_dict(),
    }
    destination = Path(path)
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent
    )
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, destination)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _is_state_dict(value: object, *, allow_empty: bool = False) -> bool:
    return (
        isinstance(value, Mapping)
        and (allow_empty or len(value) > 0)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
    )


def _first_line(exc: BaseException, limit: int = 120) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _weights_only_reason(exc: pickle.UnpicklingError) -> str:
    """Condense torch's multi-paragraph weights_only error to its cause."""
    text = str(exc)
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if refused:
        return f"holds objects other than tensors and plain values ({refused.group(1)})"
    detail = text.partition("WeightsUnpickler error:")[2].strip()
    return (
        f"not a readable torch file ({detail.splitlines()[0] if detail else 'unpickling failed'})"
    )


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, or a bare ``state_dict``.

    Only tensors and plain values are unpickled (``weights_only=True``), onto the CPU.

    Returns:
        The checkpoint dict; a bare ``state_dict`` comes back wrapped with ``model_spec`` and
        ``data_spec`` set to ``None`` and empty ``meta``.

    Raises:
        UserInputError: ``cannot read checkpoint 'PATH': REASON`` for a missing, unreadable or
            corrupt file, or one holding something else.
    """

    def fail(reason: str) -> UserInputError:
        return UserInputError(f"cannot read checkpoint '{path}': {reason}")

    if not Path(path).is_file():
        raise fail("no such file" if not Path(path).exists() else "not a regular file")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise fail(_weights_only_reason(exc)) from None
    except Exception as exc:  # torch raises many types for a corrupt file
        raise fail(f"not a readable torch file ({_first_line(exc)})") from None
    if isinstance(content, Mapping) and content.get("format") == CHECKPOINT_FORMAT:
        if content.get("version") != CHECKPOINT_VERSION:
            raise fail(
                f"checkpoint version {content.get('version')!r} is not supported; "
                f"this version reads {CHECKPOINT_VERSION}"
            )
        # A parameter-free model has an empty state_dict, which is fine inside our format.
        if not _is_state_dict(content.get("state_dict"), allow_empty=True):
            raise fail("its 'state_dict' entry is missing or holds non-tensors")
        if not isinstance(content.get("meta", {}), Mapping):
            raise fail("its 'meta' entry is not a dict")
        checkpoint = dict(content)
        checkpoint.setdefault("meta", {})
        for key in ("model_spec", "model_code", "data_spec", "data_fingerprint"):
            checkpoint.setdefault(key, None)
        return checkpoint
    if _is_state_dict(content):
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "model_spec": None,
            "model_code": None,
            "data_spec": None,
            "data_fingerprint": None,
            "meta": {},
            "state_dict": content,
        }
    raise fail(
        f"holds a {type(content).__name__}, not an lpsd-search checkpoint or a state_dict "
        "of named tensors"
    )


def load_weights(model: nn.Module, checkpoint: Mapping[str, Any]) -> None:
    """Load a checkpoint's weights into ``model`` (strict: every name and shape must match).

    Args:
        model: a model built from the checkpoint's ``model_spec`` (or compatible).
        checkpoint: a dict from :func:`load_checkpoint`, or a bare ``state_dict``.

    Raises:
        UserInputError: naming the first tensor whose shape differs, or the first missing or
            unexpected name.
    """
    is_checkpoint = checkpoint.get("format") == CHECKPOINT_FORMAT
    state = checkpoint["state_dict"] if is_checkpoint else checkpoint
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key in state and tuple(state[key].shape) != tuple(tensor.shape):
            raise UserInputError(
                f"checkpoint tensor {key!r} has shape {tuple(state[key].shape)} but the model "
                f"expects {tuple(tensor.shape)}; was it saved from a different model?"
            )
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    if missing or unexpected:
        problem = (
            f"lacks {missing[0]!r}" if missing else f"has unexpected tensor {unexpected[0]!r}"
        )
        raise UserInputError(
            f"checkpoint {problem} ({len(missing)} missing, {len(unexpected)} unexpected "
            "names); was it saved from a different model?"
        )
    model.load_state_dict(state, strict=True)


def changed_code(checkpoint: Mapping[str, Any], spec: str | None = None) -> str | None:
    """Why the code behind a checkpoint's spec may not be what saved it, or None.

    Args:
        checkpoint: from :func:`load_checkpoint`.
        spec: the spec the model is rebuilt from (default: the checkpoint's own).

    Returns:
        ``model file '/abs/nets.py' changed since it was saved`` when the file a user's spec
        names has another digest than the one stored; None when it is unchanged, when the spec
        names no file, or when the checkpoint stored no digest.
    """
    spec = spec or checkpoint.get("model_spec")
    recorded = checkpoint.get("model_code")
    if not spec or not recorded or spec != checkpoint.get("model_spec"):
        return None
    current = code_digest(spec)
    if current is None or current == recorded:
        return None
    return f"model file '{spec.rpartition(':')[0]}' changed since it was saved"
