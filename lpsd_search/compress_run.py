"""``lpsd-search compress``: one whole-model LPSD / ALPSD / low-rank run, written as ``plan.json``.

Data → dense model → procedure (``compress.compress_model``) → short fine-tune → measurements.
The plan in ``plan.json`` is what ``apply_plan`` rebuilds; the measurements are taken on the
built model (sizes) and on the validation and test splits (accuracy before and after the
fine-tune).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from lpsd_search.baseline import BaselineConfig
from lpsd_search.budget import parse_budget
from lpsd_search.compress import CompressConfig, compress_model
from lpsd_search.data import DataSplits, load_data
from lpsd_search.evaluate import Evaluator
from lpsd_search.pipeline import prepare_baseline, resolve_device
from lpsd_search.train import TrainConfig, accuracy, batches

logger = logging.getLogger(__name__)

OBJECTIVE_EXAMPLES = 2000
"""Validation images the local selection scores each candidate on (a fixed subset: speed)."""


@dataclass(frozen=True)
class CompressOptions:
    """Everything ``lpsd-search compress`` takes (see ``SearchOptions`` for the shared ones)."""

    model: str
    data: str
    budget: str
    out: Path
    config: CompressConfig
    checkpoint: str | None = None
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(steps=200, lr=3e-3))
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    device: str = "auto"
    cache_dir: Path | None = None
    seed: int = 0


def validation_loss(data: DataSplits, device: torch.device,
                    examples: int = OBJECTIVE_EXAMPLES) -> Any:
    """A function returning a model's mean cross-entropy on a fixed validation subset."""
    inputs, labels = next(batches(data.val, examples, torch.Generator().manual_seed(0)))
    inputs, labels = inputs.to(device), labels.to(device)

    @torch.no_grad()
    def loss(model: nn.Module) -> float:
        model.to(device).eval()
        return float(functional.cross_entropy(model(inputs), labels))

    return loss


def run_compress(options: CompressOptions) -> dict[str, Any]:
    """Run the procedure, fine-tune and measure; write and return the ``plan.json`` document."""
    budget_spec = parse_budget(options.budget)
    device = resolve_device(options.device)
    data = load_data(options.data, seed=options.seed)
    model = prepare_baseline(options.model, data, options.checkpoint, options.baseline, device,
                             options.cache_dir)
    evaluator = Evaluator(model, data, options.finetune, device)
    baseline = evaluator.baseline()
    budget = budget_spec.resolve(baseline.params)
    result = compress_model(evaluator.model, evaluator.example, budget, options.config,
                            objective=validation_loss(data, device), cache=evaluator.cache)
    before = accuracy(evaluator.build(result.plan), data.val, device)
    measured, _ = evaluator.evaluate(result.plan)
    document = {
        "model": options.model, "data": data.spec,
        "procedure": asdict(options.config),
        "budget": budget.to_dict(),
        "baseline": {k: v for k, v in baseline.to_dict().items() if k != "seconds"},
        "compressed": {**measured.to_dict(), "accuracy_before_finetune": before,
                       "compression": baseline.params / measured.params,
                       "finetune_steps": options.finetune.steps},
        "plan": result.plan.to_dict(),
        "layer_errors": result.errors,
        "local_moves": [list(move) for move in result.moves],
    }
    options.out.mkdir(parents=True, exist_ok=True)
    path = options.out / "plan.json"
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)
    return document
