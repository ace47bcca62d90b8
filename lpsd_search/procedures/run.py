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
from dataclasses import asdict
from typing import Any

from lpsd_search.config import CompressOptions
from lpsd_search.data.splits import load_data
from lpsd_search.plan.budget import parse_budget
from lpsd_search.procedures.compress import compress_model
from lpsd_search.trial.baseline import prepare_baseline
from lpsd_search.trial.device import resolve_device
from lpsd_search.trial.evaluate import Evaluator, validation_loss
from lpsd_search.trial.train import accuracy

logger = logging.getLogger(__name__)

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
