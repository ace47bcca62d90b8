"""The evaluator's loops as they were before issue 16 (commit 1517883), kept verbatim.

``benchmarks/evaluator.py`` measures them next to the current loops in the same run, so the
"before" numbers come from the same machine, data, model and seed as the "after" ones. Not part
of the library.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn import functional
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lpsd_search.config import TrainConfig
from lpsd_search.lpsd.sparse import enforce_masks, mask_gradients, masked_weights
from lpsd_search.trial.train import TrainingDiverged


def batches(dataset: Dataset, batch_size: int, generator: torch.Generator,
            shuffle: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One pass over ``dataset`` in batches (in-memory tensor datasets skip the DataLoader)."""
    if isinstance(dataset, TensorDataset):
        inputs, labels = dataset.tensors[0], dataset.tensors[1]
        count = len(inputs)
        order = (torch.randperm(count, generator=generator) if shuffle
                 else torch.arange(count))
        for start in range(0, count, batch_size):
            index = order[start:start + batch_size]
            yield inputs[index], labels[index]
        return
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)
    yield from loader


def _endless(dataset: Dataset, batch_size: int,
             generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    while True:
        yield from batches(dataset, batch_size, generator)


def _distill_loss(logits: torch.Tensor, teacher_logits: torch.Tensor,
                  temperature: float) -> torch.Tensor:
    student = functional.log_softmax(logits / temperature, dim=1)
    teacher = functional.log_softmax(teacher_logits / temperature, dim=1)
    kl = functional.kl_div(student, teacher, log_target=True, reduction="batchmean")
    return kl * temperature**2


def train(model: nn.Module, dataset: Dataset, config: TrainConfig,
          device: torch.device, teacher: nn.Module | None = None) -> float:
    """Train ``model`` in place for ``config.steps`` steps with AdamW and a cosine schedule.

    Sparse weights (LPSD's residual branches) keep their pattern: their gradients are masked
    before every step, so no optimiser state builds up outside the mask, and the weights are
    masked again after it, so the stored size never grows whatever the optimiser does.

    With a ``teacher`` and ``config.distill_alpha > 0`` the loss mixes in knowledge
    distillation from the teacher's logits (the teacher is not trained).

    Returns:
        The mean loss over the last 10 % of the steps.

    Raises:
        TrainingDiverged: when the loss is NaN or infinite.
    """
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: 0.5 * (1 + math.cos(math.pi * step / max(config.steps, 1)))
    )
    generator = torch.Generator().manual_seed(config.seed)
    loss_fn = nn.CrossEntropyLoss()
    tail: list[float] = []
    stream = _endless(dataset, config.batch_size, generator)
    sparse = masked_weights(model)
    for step in range(config.steps):
        inputs, labels = next(stream)
        inputs, labels = inputs.to(device), labels.to(device)
        logits = model(inputs)
        loss = loss_fn(logits, labels)
        if teacher is not None and config.distill_alpha > 0:
            with torch.no_grad():
                teacher_logits = teacher(inputs)
            loss = ((1 - config.distill_alpha) * loss + config.distill_alpha
                    * _distill_loss(logits, teacher_logits, config.distill_temperature))
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"loss became {loss.item()} at step {step}")
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        mask_gradients(sparse)
        optimiser.step()
        enforce_masks(sparse)
        schedule.step()
        if step >= config.steps * 0.9:
            tail.append(loss.item())
    return sum(tail) / len(tail) if tail else float("nan")


@torch.no_grad()
def score(model: nn.Module, dataset: Dataset, device: torch.device,
          batch_size: int = 512) -> tuple[float, float]:
    """Top-1 accuracy in [0, 1] and mean cross-entropy of ``model`` on ``dataset`` (eval mode)."""
    model.to(device).eval()
    correct = total = 0
    loss_sum = 0.0
    for inputs, labels in batches(dataset, batch_size, torch.Generator(), shuffle=False):
        labels = labels.to(device)
        logits = model(inputs.to(device))
        correct += int((logits.argmax(dim=1) == labels).sum())
        loss_sum += float(functional.cross_entropy(logits, labels, reduction="sum"))
        total += len(labels)
    return correct / max(total, 1), loss_sum / max(total, 1)


@torch.no_grad()
def accuracy(model: nn.Module, dataset: Dataset, device: torch.device,
             batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on ``dataset`` in [0, 1] (model put in eval mode)."""
    model.to(device).eval()
    correct = total = 0
    for inputs, labels in batches(dataset, batch_size, torch.Generator(), shuffle=False):
        predictions = model(inputs.to(device)).argmax(dim=1)
        correct += int((predictions == labels.to(device)).sum())
        total += len(labels)
    return correct / max(total, 1)


