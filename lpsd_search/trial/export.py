"""Compressed models on disk: weights of front trials, ``export``, and ``load``.

A compressed model is saved as an lpsd-search checkpoint (tensors and JSON only, so it loads
with ``torch.load(weights_only=True)``) whose meta holds the model spec, the input shape and the
plan. ``load`` rebuilds the dense architecture from the spec, swaps in the plan's structure
(``plan.build_skeleton``: nothing is factorised, no code from the file runs) and loads the
weights. ``export_program`` writes a self-contained ``torch.export`` program (``.pt2``) that needs
only torch.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lpsd_search.errors import UserInputError
from lpsd_search.models.checkpoint import load_checkpoint, load_weights, save_checkpoint
from lpsd_search.models.zoo import build_model
from lpsd_search.plan.apply import build_skeleton
from lpsd_search.plan.choices import Plan
from lpsd_search.plan.measure import measure

logger = logging.getLogger(__name__)

MODELS_DIR = "models"
KEPT_ATTRS = ("params", "bytes", "flops", "accuracy", "test_accuracy", "loss", "latency_ms",
              "finetune_steps")


def model_path(out_dir: Path, number: int) -> Path:
    return out_dir / MODELS_DIR / f"trial-{number}.pt"


def save_compressed(path: Path, model: nn.Module, *, model_spec: str, data_spec: str,
                    input_shape: tuple[int, int, int], num_classes: int,
                    plan: Mapping[str, Any], meta: Mapping[str, Any] | None = None) -> None:
    """Write a compressed model with everything ``load`` needs to rebuild it."""
    channels, height, width = input_shape
    save_checkpoint(path, model, model_spec=model_spec, data_spec=data_spec, meta={
        **dict(meta or {}), "plan": dict(plan), "in_channels": channels,
        "num_classes": num_classes, "input_size": [height, width],
    })


def save_trial_model(out_dir: Path, number: int, model: nn.Module, *, plan: Mapping[str, Any],
                     measures: Mapping[str, Any], model_spec: str, data_spec: str,
                     input_shape: tuple[int, int, int], num_classes: int) -> Path:
    """Keep a trial's fine-tuned weights under ``OUT/models`` for a later export.

    Args:
        plan: the trial's plan (``Plan.to_dict``).
        measures: its measurements; those in ``KEPT_ATTRS`` go into the file's meta.
    """
    path = model_path(out_dir, number)
    save_compressed(path, model, model_spec=model_spec, data_spec=data_spec,
                    input_shape=input_shape, num_classes=num_classes, plan=plan,
                    meta={"trial": number, **{k: measures[k] for k in KEPT_ATTRS
                                              if k in measures}})
    return path


def prune_models(out_dir: Path, keep: Iterable[int]) -> None:
    """Delete saved weights of trials that are no longer on the front."""
    folder = out_dir / MODELS_DIR
    if not folder.is_dir():
        return
    wanted = {f"trial-{n}.pt" for n in keep}
    for path in folder.glob("trial-*.pt"):
        if path.name not in wanted:
            path.unlink(missing_ok=True)


def load(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a compressed model saved by ``lpsd-search export`` (or a search's front).

    Built-in models need only lpsd-search; a user's factory (``pkg.mod:fn``) must be importable.

    Raises:
        UserInputError: the file is missing, not an lpsd-search model, or does not match.
    """
    checkpoint = load_checkpoint(path)
    meta = checkpoint.get("meta") or {}
    if "plan" not in meta or not checkpoint.get("model_spec"):
        raise UserInputError(f"{path} is not a compressed lpsd-search model (no plan); valid: "
                             "a file written by lpsd-search export")
    dense = build_model(str(checkpoint["model_spec"]), in_channels=int(meta["in_channels"]),
                        num_classes=int(meta["num_classes"]),
                        input_size=(int(meta["input_size"][0]), int(meta["input_size"][1])))
    model = build_skeleton(dense, Plan.from_dict(meta["plan"]))
    load_weights(model, checkpoint)
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
    meta = load_checkpoint(path).get("meta") or {}
    height, width = (int(v) for v in meta["input_size"])
    return torch.zeros(1, int(meta["in_channels"]), height, width)


def export_trial(directory: Path, trial: int, out: Path) -> list[Path]:
    """Copy trial ``trial``'s saved model to ``out`` and write ``out`` as ``.pt2`` beside it.

    The model is loaded back with ``lpsd_search.load`` and its parameter count checked against
    the trial's measured ``params`` before anything is written.

    Raises:
        UserInputError: no such results folder, or the trial has no saved model.
    """
    pareto = directory / "pareto.json"
    if not pareto.is_file():
        raise UserInputError(f"{directory} holds no pareto.json; valid: a search's --out folder")
    document = json.loads(pareto.read_text(encoding="utf-8"))
    points = {int(p["trial"]): p for p in document["points"]}
    source = model_path(directory, trial)
    if not source.is_file():
        valid = ", ".join(str(n) for n in sorted(points)
                          if model_path(directory, n).is_file()) or "(none saved)"
        raise UserInputError(f"trial {trial} has no saved model in {directory / 'models'} "
                             f"(only front trials keep their weights); valid: --trial {valid}")
    model = load(source)
    params = measure(model, example_input(source)).params
    expected = points.get(trial, {}).get("params")
    if expected is not None and params != expected:
        raise RuntimeError(f"trial {trial}: the rebuilt model has {params} params, the front "
                           f"point {expected}")
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, out)
    program = export_program(model, example_input(source), out.with_suffix(".pt2"))
    logger.info("trial %d: %d params, exported to %s and %s", trial, params, out, program)
    return [out, program]
