"""One trial, engine-agnostic: plan → compressed model → fine-tune → measurements.

``train`` (the training loop every command shares, with sparse masks kept), ``runtime``
(precision, memory format, threads), ``batching`` (data resident on the device), ``evaluate`` (the
``Evaluator`` and its ``Measurement``), ``baseline`` (the dense starting point: loaded, or
trained with the same loop and cached), ``device`` and ``export`` (compressed models on disk:
front weights, ``load``, ``torch.export`` programs). ``admm`` (ADMM training of the dense model
towards a plan's ranks) and ``orthogonal`` (the factors' orthogonality penalty) are the
training-time methods, extra terms of the loop's loss (``train.Regulariser``).
"""

from __future__ import annotations

from lpsd_search.trial.admm import AdmmRegulariser, admm_train
from lpsd_search.trial.baseline import (
    cached_baseline,
    default_cache_dir,
    load_model,
    new_model,
    prepare_baseline,
    train_baseline,
)
from lpsd_search.trial.batching import batches, on_device
from lpsd_search.trial.device import resolve_device
from lpsd_search.trial.evaluate import (
    Evaluator,
    Measurement,
    measure_latency,
    validation_loss,
)
from lpsd_search.trial.export import (
    example_input,
    export_program,
    export_trial,
    load,
    model_path,
    prune_models,
    save_compressed,
    save_trial_model,
)
from lpsd_search.trial.orthogonal import OrthogonalRegulariser, orthogonality_penalty
from lpsd_search.trial.runtime import Runtime, resolve_runtime
from lpsd_search.trial.train import (
    Regulariser,
    TrainingDiverged,
    accuracy,
    score,
    steps_for_epochs,
    train,
)

__all__ = [
    "AdmmRegulariser",
    "Evaluator",
    "Measurement",
    "OrthogonalRegulariser",
    "Regulariser",
    "Runtime",
    "TrainingDiverged",
    "accuracy",
    "admm_train",
    "batches",
    "cached_baseline",
    "default_cache_dir",
    "example_input",
    "export_program",
    "export_trial",
    "load",
    "load_model",
    "measure_latency",
    "model_path",
    "new_model",
    "on_device",
    "orthogonality_penalty",
    "prepare_baseline",
    "prune_models",
    "resolve_device",
    "resolve_runtime",
    "save_compressed",
    "save_trial_model",
    "score",
    "steps_for_epochs",
    "train",
    "train_baseline",
    "validation_loss",
]
