"""Training, fine-tuning and accuracy: the loops every command shares.

The loops keep the device busy: batches come from ``trial.batching`` (resident on the device
when the data is in memory), the forward pass runs under the runtime's autocast, and nothing in
the loop waits for the device: the divergence check is a device-side flag read every
``CHECK_EVERY`` steps, the loss tail and the evaluation counts accumulate on the device and are
read once at the end.
"""

from __future__ import annotations

import logging
import math
from typing import Protocol

import torch
from torch import nn
from torch.nn import functional
from torch.utils.data import Dataset

from lpsd_search.config import TrainConfig
from lpsd_search.lpsd.sparse import enforce_masks, mask_gradients, masked_weights
from lpsd_search.trial.batching import batches, endless
from lpsd_search.trial.runtime import Runtime

logger = logging.getLogger(__name__)

CHECK_EVERY = 25
"""Steps between reads of the divergence flag (each read waits for the device)."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class Regulariser(Protocol):
    """An extra term of the training loss (``trial.admm``, ``trial.orthogonal``).

    ``loss`` is added to the task loss of every step, in fp32 outside autocast, and must not wait
    for the device; ``after_step`` runs after every optimiser step (ADMM's dual updates).
    """

    def loss(self) -> torch.Tensor: ...

    def after_step(self, step: int) -> None: ...


def _distill_loss(logits: torch.Tensor, teacher_logits: torch.Tensor,
                  temperature: float) -> torch.Tensor:
    student = functional.log_softmax(logits / temperature, dim=1)
    teacher = functional.log_softmax(teacher_logits / temperature, dim=1)
    kl = functional.kl_div(student, teacher, log_target=True, reduction="batchmean")
    return kl * temperature**2


def _optimiser(params: list[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    # The fused AdamW kernel (CUDA and CPU) updates every parameter in one launch per group.
    try:
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay,
                                 fused=bool(params))
    except RuntimeError:  # a device or dtype without a fused kernel
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


class _Divergence:
    """The first step whose loss is not finite, kept on the device until it is read."""

    def __init__(self, device: torch.device) -> None:
        self.step = torch.full((), -1, dtype=torch.long, device=device)
        self.loss = torch.zeros((), device=device)

    def observe(self, loss: torch.Tensor, step: int) -> None:
        first = (self.step < 0) & ~torch.isfinite(loss)
        self.step = torch.where(first, step, self.step)
        self.loss = torch.where(first, loss.detach().float(), self.loss)

    def check(self) -> None:
        step = int(self.step)  # the one host synchronisation, every CHECK_EVERY steps
        if step >= 0:
            raise TrainingDiverged(f"loss became {float(self.loss)} at step {step}")


def train(model: nn.Module, dataset: Dataset, config: TrainConfig,
          device: torch.device, teacher: nn.Module | None = None,
          runtime: Runtime | None = None, regulariser: Regulariser | None = None) -> float:
    """Train ``model`` in place for ``config.steps`` steps with AdamW and a cosine schedule.

    Sparse weights (LPSD's residual branches) keep their pattern: their gradients are masked
    before every step, so no optimiser state builds up outside the mask, and the weights are
    masked again after it, so the stored size never grows whatever the optimiser does.

    With a ``teacher`` and ``config.distill_alpha > 0`` the loss mixes in knowledge
    distillation from the teacher's logits (the teacher is not trained). A ``regulariser``
    adds its term to the loss of every step.

    Args:
        model: trained in place (its weights stay fp32 whatever the precision).
        dataset: the training split.
        config: steps, learning rate, batch size, seed, distillation.
        device: where it trains.
        teacher: the distillation teacher.
        runtime: precision, memory format and compilation (default: fp32 on ``device``).
        regulariser: an extra loss term over the model's weights (None: the task loss alone).

    Returns:
        The mean loss over the last 10 % of the steps (the regulariser's term included).

    Raises:
        TrainingDiverged: when the loss is NaN or infinite (found within ``CHECK_EVERY`` steps).
    """
    runtime = runtime if runtime is not None else Runtime(device)
    runtime.prepare(model).train()
    if teacher is not None:
        runtime.prepare(teacher)
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = _optimiser(params, config)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: 0.5 * (1 + math.cos(math.pi * step / max(config.steps, 1)))
    )
    scaler = torch.amp.GradScaler(device.type) if runtime.precision == "fp16" else None
    forward = torch.compile(model) if runtime.compile else model
    generator = torch.Generator().manual_seed(config.seed)
    loss_fn = nn.CrossEntropyLoss()
    tail_from = math.ceil(config.steps * 0.9)
    tail = torch.zeros((), device=device)
    divergence = _Divergence(device)
    stream = endless(dataset, config.batch_size, generator, device)
    sparse = masked_weights(model)
    for step in range(config.steps):
        inputs, labels = next(stream)
        inputs = runtime.inputs(inputs)
        with runtime.autocast():
            logits = forward(inputs).float()
            loss = loss_fn(logits, labels)
            if teacher is not None and config.distill_alpha > 0:
                with torch.no_grad():
                    teacher_logits = teacher(inputs).float()
                loss = ((1 - config.distill_alpha) * loss + config.distill_alpha
                        * _distill_loss(logits, teacher_logits, config.distill_temperature))
        if regulariser is not None:
            loss = loss + regulariser.loss()
        divergence.observe(loss, step)
        optimiser.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            mask_gradients(sparse)
            optimiser.step()
        else:
            scaler.scale(loss).backward()
            scaler.unscale_(optimiser)
            mask_gradients(sparse)
            scaler.step(optimiser)
            scaler.update()
        enforce_masks(sparse)
        if regulariser is not None:
            regulariser.after_step(step)
        schedule.step()
        if step >= tail_from:
            tail += loss.detach()
        if (step + 1) % CHECK_EVERY == 0 or step + 1 == config.steps:
            divergence.check()
    count = config.steps - tail_from
    return float(tail) / count if count > 0 else float("nan")


@torch.no_grad()
def score(model: nn.Module, dataset: Dataset, device: torch.device,
          batch_size: int = 512, runtime: Runtime | None = None) -> tuple[float, float]:
    """Top-1 accuracy in [0, 1] and mean cross-entropy of ``model`` on ``dataset`` (eval mode).

    Counts accumulate on the device and are read once, after the last batch.
    """
    runtime = runtime if runtime is not None else Runtime(device)
    runtime.prepare(model).eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    total = 0
    for inputs, labels in batches(dataset, batch_size, torch.Generator(), shuffle=False,
                                  device=device):
        with runtime.autocast():
            logits = model(runtime.inputs(inputs)).float()
        correct += (logits.argmax(dim=1) == labels).sum()
        loss_sum += functional.cross_entropy(logits, labels, reduction="sum")
        total += len(labels)
    return int(correct) / max(total, 1), float(loss_sum) / max(total, 1)


def accuracy(model: nn.Module, dataset: Dataset, device: torch.device,
             batch_size: int = 512, runtime: Runtime | None = None) -> float:
    """Top-1 accuracy of ``model`` on ``dataset`` in [0, 1] (model put in eval mode)."""
    return score(model, dataset, device, batch_size, runtime)[0]


def steps_for_epochs(dataset: Dataset, epochs: float, batch_size: int) -> int:
    """Optimiser steps that cover ``epochs`` passes over ``dataset``."""
    return max(1, math.ceil(epochs * len(dataset) / batch_size))  # type: ignore[arg-type]
