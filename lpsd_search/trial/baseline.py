"""The dense starting point: build the model, then load its weights or train and cache them.

A trained baseline is cached under a key of everything that determines it: the model's spec
and code (``models.code.model_fingerprint``: its architecture and the source files behind it),
the data and their split (``DataSplits.fingerprint``) and the training settings. A checkpoint
records the data it was trained on; used with other data it is refused, used with another split
of the same data it is warned about. Whatever its source, a baseline no better than chance on
the validation split stops the run with one line: every point of its front would be noise.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from lpsd_search.config import BaselineConfig, TrainConfig
from lpsd_search.data.normalise import ImageTensorDataset, NormalisedDataset
from lpsd_search.data.splits import DataSplits
from lpsd_search.errors import UserInputError
from lpsd_search.models.checkpoint import (
    changed_code,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from lpsd_search.models.code import model_fingerprint
from lpsd_search.models.objects import is_given_module
from lpsd_search.models.zoo import absolute_model_spec, build_model
from lpsd_search.trial.preflight import check_model_fits, check_output_dir
from lpsd_search.trial.runtime import Runtime
from lpsd_search.trial.train import accuracy, steps_for_epochs, train

logger = logging.getLogger(__name__)

TRAINING_RECIPE_VERSION = 3
"""Bump when the training loop changes, so cached baselines are retrained."""

BUILT_IN_DATA = ("digits", "fashion-mnist", "cifar10", "imagefolder")


def default_cache_dir() -> Path:
    """``$LPSD_SEARCH_CACHE``, else ``$XDG_CACHE_HOME/lpsd-search``, else ``~/.cache/…``."""
    if "LPSD_SEARCH_CACHE" in os.environ:
        return Path(os.environ["LPSD_SEARCH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lpsd-search"


def new_model(model_spec: str, data: DataSplits, seed: int = 0) -> nn.Module:
    """A freshly initialised model for ``data`` (seeded, so runs are reproducible); a module
    given to the Python API comes back as a copy of itself.

    Raises:
        UserInputError: a bad spec, a factory that fails, or a model that does not fit ``data``
            (checked with one forward pass, before any training).
    """
    torch.manual_seed(seed)
    model = build_model(model_spec, in_channels=data.in_channels, num_classes=data.num_classes,
                        input_size=data.input_size)
    check_model_fits(model, data, model_spec)
    return model


class _EpochLog:
    """Logs a line at the end of every epoch of a training run (a forward pre-hook counting
    the training steps, so the loop itself never waits for the device to report)."""

    def __init__(self, steps: int, per_epoch: int) -> None:
        self.steps, self.per_epoch, self.step = steps, max(per_epoch, 1), 0
        self.epochs = math.ceil(steps / self.per_epoch)
        self.start = time.perf_counter()

    def __call__(self, module: nn.Module, inputs: Any) -> None:
        if not module.training or not torch.is_grad_enabled():
            return  # an evaluation pass, not a step
        self.step += 1
        if self.step % self.per_epoch and self.step != self.steps:
            return
        spent = time.perf_counter() - self.start
        left = spent / self.step * (self.steps - self.step)
        logger.info("epoch %d/%d: step %d/%d, %.1f s (about %.0f s left)",
                    math.ceil(self.step / self.per_epoch), self.epochs, self.step, self.steps,
                    spent, left)


def train_baseline(model_spec: str, data: DataSplits, config: BaselineConfig,
                   device: torch.device, runtime: Runtime | None = None
                   ) -> tuple[nn.Module, dict[str, float]]:
    """Train a dense model from scratch; returns it with its validation and test accuracy.

    ``runtime`` (precision, threads) defaults to fp32: the cached baselines are trained so.
    Every epoch logs one line (at INFO).
    """
    model = new_model(model_spec, data, config.seed)
    steps = steps_for_epochs(data.train, config.epochs, config.batch_size)
    logger.info("training %s on %s for %d steps", model_spec, data.spec, steps)
    # A hook inside a compiled model would break its graph at every step.
    hook = None if runtime is not None and runtime.compile else model.register_forward_pre_hook(
        _EpochLog(steps, steps_for_epochs(data.train, 1, config.batch_size)))
    try:
        train(model, data.train, TrainConfig(steps, config.lr, config.batch_size,
                                             config.weight_decay, config.seed), device,
              runtime=runtime)
    finally:
        if hook is not None:
            hook.remove()
    # Scored in fp32: these are the numbers every compressed model is compared with.
    scores = {"accuracy": accuracy(model, data.val, device),
              "test_accuracy": accuracy(model, data.test, device)}
    logger.info("baseline: validation %.4f, test %.4f", scores["accuracy"],
                scores["test_accuracy"])
    return model, scores


def baseline_meta(data: DataSplits, **values: Any) -> dict[str, Any]:
    """The meta every dense checkpoint holds: its split sizes, its input preprocessing (what an
    export of it must apply) and ``values``."""
    return {**values, "split": data.sizes, "preprocessing": data.preprocessing.to_dict()}


def cache_path(model_spec: str, data: DataSplits, config: BaselineConfig,
               cache_dir: Path | None = None) -> Path:
    """Where the trained baseline of (model and its code, data and split, recipe) is cached."""
    code = model_fingerprint(model_spec, new_model(model_spec, data, config.seed))
    key = json.dumps({"model": absolute_model_spec(model_spec), "code": code,
                      "data": data.fingerprint, "config": config.__dict__,
                      "recipe": TRAINING_RECIPE_VERSION}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in model_spec)[:40]
    return (cache_dir or default_cache_dir()) / "baselines" / f"{safe}-{digest}.pt"


def cached_baseline(model_spec: str, data: DataSplits, config: BaselineConfig,
                    device: torch.device, cache_dir: Path | None = None) -> nn.Module:
    """The trained baseline for (model, data, recipe): from the cache, or trained and cached.

    Raises:
        UserInputError: the cached file cannot be read or does not fit (named, with the fix).
    """
    path = cache_path(model_spec, data, config, cache_dir)
    if path.is_file():
        logger.info("using the cached baseline %s", path)
        try:
            return load_model(model_spec, data, path, device)
        except UserInputError as error:
            raise UserInputError(f"cached baseline {path} is unusable ({error}); valid: delete "
                                 "it to train the baseline again") from None
    # Found out now rather than after the training, whose weights would then be lost.
    check_output_dir(path.parent, "--cache-dir")
    model, scores = train_baseline(model_spec, data, config, device)
    save_checkpoint(path, model, model_spec=model_spec, data_spec=data.spec,
                    data_fingerprint=data.fingerprint,
                    meta=baseline_meta(data, **scores, recipe=TRAINING_RECIPE_VERSION,
                                       **config.__dict__))
    return model


def _data_name(spec: str) -> str:
    return spec.strip().partition(":")[0]


def check_checkpoint_data(checkpoint: dict[str, Any], path: str | Path,
                          data: DataSplits) -> None:
    """Refuse a checkpoint trained on other data; warn when it was trained on another split
    (or version) of these data, or recorded none.

    Raises:
        UserInputError: the checkpoint names another built-in data set.
    """
    recorded, spec = checkpoint.get("data_fingerprint"), checkpoint.get("data_spec")
    if recorded == data.fingerprint:
        return
    if recorded is None:
        logger.warning("checkpoint %s records no data split (an older lpsd-search or another "
                       "tool wrote it): if it was trained on images of the validation or test "
                       "split of %s, the accuracies reported are optimistic", path, data.spec)
        return
    names = {_data_name(str(spec)), _data_name(data.spec)}
    if spec and len(names) == 2 and names <= set(BUILT_IN_DATA):
        raise UserInputError(f"checkpoint {path} was trained on data {spec!r}, not "
                             f"{data.spec!r}; valid: --data {spec}, or a checkpoint trained on "
                             f"these data (lpsd-search train --data {data.spec})")
    logger.warning("checkpoint %s was trained on another split or version of the data (%s, "
                   "fingerprint %s; now %s, %s): its validation or test images may have been "
                   "trained on, so the accuracies reported may be optimistic; retrain it with "
                   "lpsd-search train for honest numbers", path, spec, recorded, data.spec,
                   data.fingerprint)


def load_model(model_spec: str, data: DataSplits, checkpoint: str | Path,
               device: torch.device) -> nn.Module:
    """Build ``model_spec`` for ``data`` and load weights from ``checkpoint`` (weights only).

    Raises:
        UserInputError: unreadable checkpoint, other data (``check_checkpoint_data``), or
            weights that do not fit the model (saying so when its file changed since).
    """
    stored = load_checkpoint(checkpoint)
    check_checkpoint_data(stored, checkpoint, data)
    model = new_model(model_spec, data)
    changed = changed_code(stored, absolute_model_spec(model_spec))
    try:
        load_weights(model, stored)
    except UserInputError as error:
        raise UserInputError(f"{error}{f' ({changed})' if changed else ''}") from None
    if changed:
        logger.warning("%s: %s", checkpoint, changed)
    return model.to(device).eval()


def _labels(dataset: Dataset[Any]) -> torch.Tensor | None:
    """The labels of a split when they can be had without reading its images."""
    if isinstance(dataset, ImageTensorDataset):
        return dataset.labels
    if isinstance(dataset, NormalisedDataset):
        base = dataset.base
        if isinstance(base, Subset) and hasattr(base.dataset, "targets"):
            return torch.as_tensor(base.dataset.targets)[torch.as_tensor(base.indices)]
        if hasattr(base, "targets"):
            return torch.as_tensor(base.targets)
    return None


def check_better_than_chance(model: nn.Module, data: DataSplits, device: torch.device,
                             source: str, remedy: str) -> float:
    """The validation accuracy of the dense model, refused when it is no better than always
    answering the largest class (three standard errors of guessing above it).

    Returns:
        The validation accuracy.

    Raises:
        UserInputError: ``source`` (what the model is) scores at chance; ``remedy`` says what to
            do instead.
    """
    score = accuracy(model, data.val, device)
    labels = _labels(data.val)
    count = data.sizes["val"]
    chance = (float(torch.bincount(labels.long()).max()) / max(len(labels), 1)
              if labels is not None and len(labels) else 1.0 / data.num_classes)
    margin = max(0.01, 3 * math.sqrt(chance * (1 - chance) / max(count, 1)))
    if score <= chance + margin:
        raise UserInputError(f"the dense model ({source}) scores {score:.1%} validation accuracy "
                             f"on {data.spec}, no better than chance ({chance:.1%}); every "
                             f"compressed model would be noise; valid: {remedy}")
    return score


def prepare_baseline(model_spec: str, data: DataSplits, checkpoint: str | None,
                     config: BaselineConfig, device: torch.device,
                     cache_dir: Path | None) -> nn.Module:
    """The dense model to compress: ``checkpoint``'s weights, a module given to the Python API
    as it is, or a trained and cached baseline; checked to be better than chance.

    Raises:
        UserInputError: no such checkpoint, one of other data, or a baseline at chance level.
    """
    if checkpoint is not None:
        if not Path(checkpoint).is_file():
            raise UserInputError(f"cannot read checkpoint {checkpoint!r}: no such file")
        model = load_model(model_spec, data, checkpoint, device)
        source, remedy = (f"checkpoint {checkpoint}", "a checkpoint trained on these data "
                          f"(lpsd-search train --model {model_spec} --data {data.spec})")
    elif is_given_module(model_spec):
        model = new_model(model_spec, data).to(device).eval()
        source, remedy = "the module given", "a module trained on these data"
    else:
        model = cached_baseline(model_spec, data, config, device, cache_dir)
        source, remedy = (f"trained for {config.epochs:g} epochs",
                          f"more --train-epochs (now {config.epochs:g}), or a --checkpoint")
    check_better_than_chance(model, data, device, source, remedy)
    return model
