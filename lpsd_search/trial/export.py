"""Compressed models on disk: weights of front trials, ``export``, and ``load``.

A compressed model is saved as an lpsd-search checkpoint (tensors and JSON only, so it loads
with ``torch.load(weights_only=True)``) whose meta holds the model spec, the input shape, the
plan and the input preprocessing of its data. ``load`` rebuilds the dense architecture from the
spec, swaps in the plan's structure (``plan.build_skeleton``: nothing is factorised), loads the
weights and puts the input normalisation in front (``models.preprocessing``), so the model it
returns takes raw images, as the ``.pt2`` program ``export_program`` writes from it does. A spec
naming a user's file or module is code the file chooses, so it runs only with the caller's
consent (``model_factory`` or ``trust_model_spec``).

The preprocessing contract of every export: a float ``N×C×H×W`` batch of raw images, pixels as
the data set stores them (0–255 for image files, Fashion-MNIST and CIFAR-10; 0–16 for the
digits; what a user's torch dataset yields), at the recorded ``input_size``; the model divides
by ``input_scale``, subtracts ``mean`` and divides by ``std`` per channel.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lpsd_search.data.splits import DataSplits
from lpsd_search.errors import UserInputError
from lpsd_search.models.checkpoint import (
    changed_code,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from lpsd_search.models.objects import is_object_spec
from lpsd_search.models.preprocessing import with_preprocessing
from lpsd_search.models.user_factory import call_factory
from lpsd_search.models.zoo import ModelFactory, build_model, names_code
from lpsd_search.plan.apply import build_skeleton
from lpsd_search.plan.choices import Plan
from lpsd_search.plan.measure import measure

logger = logging.getLogger(__name__)

MODELS_DIR = "models"
COMPRESSED_MODEL = "model.pt"
"""The fine-tuned model of ``lpsd-search compress``, beside its ``plan.json``."""
KEPT_ATTRS = ("params", "bytes", "flops", "accuracy", "test_accuracy", "loss", "latency_ms",
              "finetune_steps")


def model_path(out_dir: Path, number: int) -> Path:
    return out_dir / MODELS_DIR / f"trial-{number}.pt"


def save_compressed(path: Path, model: nn.Module, *, model_spec: str, data: DataSplits,
                    plan: Mapping[str, Any], meta: Mapping[str, Any] | None = None) -> None:
    """Write a compressed model with everything ``load`` needs to rebuild it, atomically.

    Beside the plan, the file records the data's input preprocessing (the contract of every
    export of it) and fingerprint.

    ``save_checkpoint`` writes a temporary file in the same folder, syncs it and moves it into
    place with ``os.replace``; the folder is synced after it, so once this returns the file is
    on disk whole, and a crash or a full disk at any point leaves the old file or none, never a
    torn one.

    Raises:
        OSError: the file could not be written (the disk is full, say); nothing is left behind.
    """
    height, width = data.input_size
    save_checkpoint(path, model, model_spec=model_spec, data_spec=data.spec,
                    data_fingerprint=data.fingerprint, meta={
                        **dict(meta or {}), "plan": dict(plan), "in_channels": data.in_channels,
                        "num_classes": data.num_classes, "input_size": [height, width],
                        "preprocessing": data.preprocessing.to_dict(),
                    })
    _sync_folder(Path(path).parent)


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; folders cannot be opened on Windows)."""
    if os.name != "posix":
        return
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def save_trial_model(out_dir: Path, number: int, model: nn.Module, *, plan: Mapping[str, Any],
                     measures: Mapping[str, Any], model_spec: str, data: DataSplits) -> Path:
    """Keep a trial's fine-tuned weights under ``OUT/models`` for a later export.

    The file appears whole or not at all (``save_compressed``); a search saves it before it
    tells the study the trial is complete.

    Args:
        plan: the trial's plan (``Plan.to_dict``).
        measures: its measurements; those in ``KEPT_ATTRS`` go into the file's meta.
    """
    path = model_path(out_dir, number)
    save_compressed(path, model, model_spec=model_spec, data=data, plan=plan,
                    meta={"trial": number, **{k: measures[k] for k in KEPT_ATTRS
                                              if k in measures}})
    return path


def prune_models(out_dir: Path, keep: Iterable[int]) -> None:
    """Delete saved weights of trials that are no longer on the front.

    Args:
        out_dir: the results folder.
        keep: trials whose weights stay: the front, and the trials still running (a search
            saves a trial's weights before it tells the study, see
            ``strategy.results_folder.prune_front_models``).
    """
    folder = out_dir / MODELS_DIR
    if not folder.is_dir():
        return
    wanted = {f"trial-{n}.pt" for n in keep}
    for path in folder.glob("trial-*.pt"):
        if path.name not in wanted:
            path.unlink(missing_ok=True)


def _model_arguments(path: str | Path, meta: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments the dense model was built with, read from a saved model's meta."""
    try:
        height, width = (int(v) for v in meta["input_size"])
        return {"in_channels": int(meta["in_channels"]), "num_classes": int(meta["num_classes"]),
                "input_size": (height, width)}
    except (KeyError, TypeError, ValueError):
        raise UserInputError(f"{path} is not a compressed lpsd-search model: its meta lacks "
                             "in_channels, num_classes or input_size [H, W]") from None


def read_preprocessing(path: str | Path) -> dict[str, Any] | None:
    """The input preprocessing recorded with a saved model (None for files written before
    exports carried it): ``input_scale``, per-channel ``mean`` and ``std``, ``in_channels``,
    ``input_size``."""
    record = (load_checkpoint(path).get("meta") or {}).get("preprocessing")
    return dict(record) if isinstance(record, Mapping) else None


def _dense_model(path: str | Path, spec: str, arguments: dict[str, Any],
                 model_factory: ModelFactory | None, trust_model_spec: bool) -> nn.Module:
    """The dense architecture a saved model's weights go into, built with consent only."""
    if model_factory is not None:
        name = getattr(model_factory, "__qualname__", None) or repr(model_factory)
        return call_factory(name, model_factory, arguments)
    if is_object_spec(spec):
        return build_model(spec, **arguments)  # in the call that gave it, else one line why not
    if names_code(spec) and not trust_model_spec:
        raise UserInputError(f"model spec {spec!r} in {path} names code outside lpsd-search; "
                             "pass model_factory=... to load() or --trust-model-spec to export "
                             "if you trust this file")
    return build_model(spec, **arguments, allow_code=trust_model_spec)


def load(path: str | Path, map_location: str | torch.device = "cpu", *,
         model_factory: ModelFactory | None = None, trust_model_spec: bool = False,
         preprocessing: bool = True) -> nn.Module:
    """Rebuild a compressed model saved by ``lpsd-search export`` (or a search's front, or
    ``compress``).

    The dense model comes from the spec stored in the file when it names a built-in
    (``digits-cnn``, ``vgg16:width=0.25``, ``torchvision:NAME``). A spec naming a user's file
    or module (``nets.py:build``, ``pkg.mod:fn``) would run that code, so it is refused unless
    the caller passes ``model_factory`` or ``trust_model_spec=True``; a model given to
    ``lpsd_search.search`` as an object can only be rebuilt by a ``model_factory``. A file
    named by the spec that changed since the model was saved is warned about.

    Args:
        path: the ``.pt`` file.
        map_location: the device of the returned model.
        model_factory: builds the dense model instead of the stored spec; called with those of
            ``in_channels``, ``num_classes`` and ``input_size`` its signature takes.
        trust_model_spec: import and call the stored spec even when it names a file or module.
        preprocessing: put the input normalisation recorded with the model in front of it
            (children ``normalize`` and ``network``), so that it takes raw images, as every
            export does; False returns the bare network, which takes normalised images (its
            ``state_dict`` is the file's).

    Example:
        >>> from nets import build  # doctest: +SKIP
        >>> model = lpsd_search.load("trial-3.pt", model_factory=build)  # doctest: +SKIP
        >>> logits = model(raw_images.float())  # pixels 0..255, N×C×H×W  # doctest: +SKIP

    Raises:
        UserInputError: the file is missing, not an lpsd-search model, or does not match; its
            spec names code and no consent was given; the spec or the factory fails.
    """
    checkpoint = load_checkpoint(path)
    meta = checkpoint.get("meta") or {}
    spec = checkpoint.get("model_spec")
    if "plan" not in meta or not spec:
        raise UserInputError(f"{path} is not a compressed lpsd-search model (no plan); valid: "
                             "a file written by lpsd-search export")
    if not isinstance(spec, str):
        raise UserInputError(f"{path} is not a compressed lpsd-search model: its model spec "
                             f"is a {type(spec).__name__}, not a string")
    dense = _dense_model(path, spec, _model_arguments(path, meta), model_factory,
                         trust_model_spec)
    changed = None if model_factory is not None else changed_code(checkpoint)
    try:
        plan = Plan.from_dict(meta["plan"])
    except (AttributeError, TypeError, ValueError) as exc:
        raise UserInputError(f"{path} holds a malformed plan ({exc})") from None
    model = build_skeleton(dense, plan)
    try:
        load_weights(model, checkpoint)
    except UserInputError as error:
        raise UserInputError(f"{path}: {error}{f' ({changed})' if changed else ''}") from None
    if changed:
        logger.warning("%s: %s; its weights still fit", path, changed)
    record = meta.get("preprocessing")
    if preprocessing and isinstance(record, Mapping):
        try:
            model = with_preprocessing(model, record)
        except (KeyError, TypeError, ValueError) as exc:
            raise UserInputError(f"{path} holds a malformed preprocessing record "
                                 f"({exc})") from None
    elif preprocessing:
        logger.warning("%s records no input preprocessing (an older lpsd-search wrote it): the "
                       "model takes images normalised as in training", path)
    return model.to(map_location).eval()


def export_program(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """Write ``model`` as a ``torch.export`` program (``.pt2``) that needs only torch.

    The batch dimension is dynamic, so the program takes any batch size.
    """
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    example = example.expand(2, *example.shape[1:]).contiguous()  # 1 would be specialised
    program = torch.export.export(model.eval(), (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    return path


def example_input(path: str | Path) -> torch.Tensor:
    """A zero input of the shape the saved model was built for."""
    arguments = _model_arguments(path, load_checkpoint(path).get("meta") or {})
    return torch.zeros(1, arguments["in_channels"], *arguments["input_size"])


def _source(directory: Path, trial: int | None) -> tuple[Path, int | None, str]:
    """The saved model to export from a results folder, its measured params and its name.

    A search's folder (``pareto.json``) needs ``trial``; a ``compress`` folder (``plan.json``
    and ``model.pt``) holds one model and takes none.
    """
    if trial is None and (directory / COMPRESSED_MODEL).is_file():
        plan = json.loads((directory / "plan.json").read_text(encoding="utf-8"))
        return directory / COMPRESSED_MODEL, plan["compressed"]["params"], "the compressed model"
    pareto = directory / "pareto.json"
    if not pareto.is_file():
        raise UserInputError(f"{directory} holds no pareto.json nor {COMPRESSED_MODEL}; valid: "
                             "the --out folder of lpsd-search search or compress")
    points = {int(p["trial"]): p for p in json.loads(pareto.read_text(encoding="utf-8"))["points"]}
    saved = [n for n in sorted(points) if model_path(directory, n).is_file()]
    if trial is None:
        raise UserInputError(f"{directory} holds a search's results: name the trial; valid: "
                             f"--trial {', '.join(map(str, saved)) or '(none saved)'}")
    if not model_path(directory, trial).is_file():
        raise UserInputError(f"trial {trial} has no saved model in {directory / 'models'} "
                             "(only front trials keep their weights); valid: --trial "
                             f"{', '.join(map(str, saved)) or '(none saved)'}")
    return model_path(directory, trial), points.get(trial, {}).get("params"), f"trial {trial}"


def export_trial(directory: Path, trial: int | None, out: Path, *,
                 model_factory: ModelFactory | None = None,
                 trust_model_spec: bool = False) -> list[Path]:
    """Copy a saved model to ``out`` and write it as a ``.pt2`` program beside it.

    The model is trial ``trial`` of a search's folder, or the one model of a ``compress``
    folder (``trial`` None). It is loaded back with ``load`` (``model_factory`` and
    ``trust_model_spec`` are passed on: a spec naming a user's file or module needs one of them)
    and its parameter count checked against the measured ``params`` before anything is written.
    The ``.pt2`` program starts with the input normalisation: it takes raw images.

    Raises:
        UserInputError: no such results folder, the trial has no saved model, or ``load``
            refuses it.
    """
    source, expected, name = _source(directory, trial)
    model = load(source, model_factory=model_factory, trust_model_spec=trust_model_spec)
    params = measure(model, example_input(source)).params
    if expected is not None and params != expected:
        raise RuntimeError(f"{name}: the rebuilt model has {params} params, the measured "
                           f"{expected}")
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, out)
    program = export_program(model, example_input(source), out.with_suffix(".pt2"))
    logger.info("%s: %d params, exported to %s and %s", name, params, out, program)
    return [out, program]
