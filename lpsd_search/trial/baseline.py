"""The dense starting point: build the model, then load its weights or train and cache them."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from torch import nn

from lpsd_search.config import BaselineConfig, TrainConfig
from lpsd_search.data.splits import DataSplits
from lpsd_search.errors import UserInputError
from lpsd_search.models.checkpoint import load_checkpoint, load_weights, save_checkpoint
from lpsd_search.models.zoo import build_model
from lpsd_search.trial.preflight import check_model_fits, check_output_dir
from lpsd_search.trial.runtime import Runtime
from lpsd_search.trial.train import accuracy, steps_for_epochs, train

logger = logging.getLogger(__name__)

TRAINING_RECIPE_VERSION = 2
"""Bump when the training loop changes, so cached baselines are retrained."""


def default_cache_dir() -> Path:
    """``$LPSD_SEARCH_CACHE``, else ``$XDG_CACHE_HOME/lpsd-search``, else ``~/.cache/…``."""
    if "LPSD_SEARCH_CACHE" in os.environ:
        return Path(os.environ["LPSD_SEARCH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lpsd-search"


def new_model(model_spec: str, data: DataSplits, seed: int = 0) -> nn.Module:
    """A freshly initialised model for ``data`` (seeded, so runs are reproducible).

    Raises:
        UserInputError: a bad spec, a factory that fails, or a model that does not fit ``data``
            (checked with one forward pass, before any training).
    """
    torch.manual_seed(seed)
    model = build_model(model_spec, in_channels=data.in_channels, num_classes=data.num_classes,
                        input_size=data.input_size)
    check_model_fits(model, data, model_spec)
    return model


def train_baseline(model_spec: str, data: DataSplits, config: BaselineConfig,
                   device: torch.device, runtime: Runtime | None = None
                   ) -> tuple[nn.Module, dict[str, float]]:
    """Train a dense model from scratch; returns it with its validation and test accuracy.

    ``runtime`` (precision, threads) defaults to fp32: the cached baselines are trained so.
    """
    model = new_model(model_spec, data, config.seed)
    steps = steps_for_epochs(data.train, config.epochs, config.batch_size)
    logger.info("training %s on %s for %d steps", model_spec, data.spec, steps)
    train(model, data.train, TrainConfig(steps, config.lr, config.batch_size,
                                         config.weight_decay, config.seed), device,
          runtime=runtime)
    # Scored in fp32: these are the numbers every compressed model is compared with.
    scores = {"accuracy": accuracy(model, data.val, device),
              "test_accuracy": accuracy(model, data.test, device)}
    logger.info("baseline: validation %.4f, test %.4f", scores["accuracy"],
                scores["test_accuracy"])
    return model, scores


def cached_baseline(model_spec: str, data: DataSplits, config: BaselineConfig,
                    device: torch.device, cache_dir: Path | None = None) -> nn.Module:
    """The trained baseline for (model, data, recipe): from the cache, or trained and cached."""
    key = json.dumps({"model": model_spec, "data": data.spec, "config": config.__dict__,
                      "recipe": TRAINING_RECIPE_VERSION}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in model_spec)[:40]
    path = (cache_dir or default_cache_dir()) / "baselines" / f"{safe}-{digest}.pt"
    if path.is_file():
        logger.info("using the cached baseline %s", path)
        return load_model(model_spec, data, path, device)
    # Found out now rather than after the training, whose weights would then be lost.
    check_output_dir(path.parent, "--cache-dir")
    model, scores = train_baseline(model_spec, data, config, device)
    save_checkpoint(path, model, model_spec=model_spec, data_spec=data.spec,
                    meta={**scores, "recipe": TRAINING_RECIPE_VERSION, **config.__dict__})
    return model


def load_model(model_spec: str, data: DataSplits, checkpoint: str | Path,
               device: torch.device) -> nn.Module:
    """Build ``model_spec`` for ``data`` and load weights from ``checkpoint`` (weights only)."""
    model = new_model(model_spec, data)
    load_weights(model, load_checkpoint(checkpoint))
    return model.to(device).eval()


def prepare_baseline(model_spec: str, data: DataSplits, checkpoint: str | None,
                     config: BaselineConfig, device: torch.device,
                     cache_dir: Path | None) -> nn.Module:
    """The dense model to compress: ``checkpoint``'s weights, or a trained and cached baseline."""
    if checkpoint is not None:
        if not Path(checkpoint).is_file():
            raise UserInputError(f"cannot read checkpoint {checkpoint!r}: no such file")
        return load_model(model_spec, data, checkpoint, device)
    return cached_baseline(model_spec, data, config, device, cache_dir)
