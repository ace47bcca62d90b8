"""Checks that run before any training or trial, so that bad input costs seconds, not hours.

A model that does not fit its data, or an output path that cannot be written, would otherwise
surface only when training starts or, worse, after it ends (and the trained weights are lost).
Each check raises a one-line ``UserInputError`` naming what was given and what would be valid.

Example:
    >>> check_output_dir(Path("runs/x"))  # doctest: +SKIP
    >>> check_model_fits(model, data, "digits-cnn")  # doctest: +SKIP
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from lpsd_search.data.splits import DataSplits
from lpsd_search.errors import UserInputError

PROBE_BATCH = 2
"""Images in the forward pass of ``check_model_fits`` (two, so batch statistics exist)."""


def _first_line(error: BaseException, limit: int = 200) -> str:
    text = str(error).strip()
    line = text.splitlines()[0] if text else ""
    line = line if len(line) <= limit else line[: limit - 3] + "..."
    return f"{type(error).__name__}: {line}" if line else type(error).__name__


def _shape(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def check_model_fits(model: nn.Module, data: DataSplits, spec: str) -> None:
    """Run one forward pass of a small training batch through ``model`` and check its logits.

    The pass runs in eval mode without gradients, on the model's device, with the random state
    restored afterwards, so it changes neither the model nor a seeded run.

    Args:
        model: the freshly built model.
        data: the splits it will be trained and measured on.
        spec: the model spec, for the message.

    Raises:
        UserInputError: the forward pass raises (the model's own error, in one line), or its
            output is not ``(batch, logits)`` with at least ``data.num_classes`` logits.
    """
    images = f"{data.in_channels}×{data.input_size[0]}×{data.input_size[1]} images"
    where = f"model {spec!r} on data {data.spec!r} ({images}, {data.num_classes} classes)"
    count = min(PROBE_BATCH, len(data.train))  # type: ignore[arg-type]
    inputs = torch.stack([data.train[index][0] for index in range(count)])
    parameter = next(model.parameters(), None)
    if parameter is not None:
        inputs = inputs.to(parameter.device)
    was_training = model.training
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            model.eval()
            output = model(inputs)
    except Exception as error:  # the user's model raised: say so in one line
        raise UserInputError(f"{where}: a forward pass raised {_first_line(error)}; valid: a "
                             "model that takes these images") from error
    finally:
        model.train(was_training)
    if not isinstance(output, torch.Tensor) or output.dim() != 2 or len(output) != count:
        raise UserInputError(f"{where}: a batch of {count} gave {_shape(output)}; valid: logits "
                             f"of shape ({count}, classes)")
    if output.shape[1] < data.num_classes:
        raise UserInputError(f"{where}: the model gives {output.shape[1]} logits; valid: at "
                             f"least {data.num_classes}, one per class")


def _reason(error: OSError) -> str:
    """Why a folder cannot be written, from the error that creating or probing it raised."""
    if isinstance(error, FileExistsError) or error.errno == errno.EEXIST:
        return "is a file, not a folder"
    if isinstance(error, NotADirectoryError) or error.errno == errno.ENOTDIR:
        return "lies under a file, not a folder"
    return f"cannot be written ({error.strerror or type(error).__name__})"


def _probe(folder: Path) -> None:
    """Create ``folder`` (with its parents), then write and remove a file in it."""
    folder.mkdir(parents=True, exist_ok=True)
    handle, probe = tempfile.mkstemp(prefix=".lpsd-probe-", dir=folder)
    os.close(handle)
    os.unlink(probe)


def check_output_dir(path: Path, option: str = "--out") -> None:
    """Create the folder ``path`` (with its parents) and write and remove a probe file in it.

    Raises:
        UserInputError: ``path`` is a file, lies under a file, or cannot be written.
    """
    try:
        _probe(Path(path))
    except OSError as error:
        raise UserInputError(f"{option} '{path}' {_reason(error)}; valid: a folder you can "
                             "write to") from None


def check_output_file(path: Path, option: str = "--out") -> None:
    """Check that the file ``path`` can be written: its folder is created and probed, and an
    existing ``path`` must be a writable file.

    Raises:
        UserInputError: ``path`` is a folder or a read-only file, or its folder cannot be
            written.
    """
    path = Path(path)
    if path.is_dir():
        raise UserInputError(f"{option} '{path}' is a folder; valid: a file path such as "
                             f"'{path / 'model.pt'}'")
    try:
        _probe(path.parent)
    except OSError as error:
        raise UserInputError(f"{option} '{path}': its folder '{path.parent}' {_reason(error)}; "
                             "valid: a file in a folder you can write to") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise UserInputError(f"{option} '{path}' is read-only; valid: a file you can write")
