"""``lpsd-search compress``: one whole-model LPSD / ALPSD / low-rank run, written as ``plan.json``
and ``model.pt``.

Data → dense model → procedure (``compress.compress_model``) → short fine-tune → measurements.
The plan in ``plan.json`` is what ``apply_plan`` rebuilds; the measurements are taken on the
built model (sizes) and on the validation and test splits (accuracy before and after the
fine-tune). The fine-tuned model is kept as ``model.pt``, a saved model like a search's front
points (``lpsd-search export OUT --out m.pt``, ``lpsd_search.load``). ``plan.json`` is strict
JSON: what was not measured (latency, say) is null, never NaN.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from typing import Any

import torch

from lpsd_search.config import CompressOptions
from lpsd_search.data.splits import DataSplits, load_data
from lpsd_search.decompositions.base import get_method
from lpsd_search.errors import UserInputError
from lpsd_search.plan.budget import BudgetSpec, Pricer, parse_budget
from lpsd_search.plan.layers import find_layers
from lpsd_search.plan.measure import measure
from lpsd_search.procedures.compress import compress_model
from lpsd_search.safe_json import json_safe
from lpsd_search.trial.baseline import new_model, prepare_baseline
from lpsd_search.trial.device import resolve_device
from lpsd_search.trial.evaluate import Evaluator, validation_loss
from lpsd_search.trial.export import COMPRESSED_MODEL, save_compressed
from lpsd_search.trial.preflight import check_output_dir
from lpsd_search.trial.runtime import resolve_runtime
from lpsd_search.trial.train import accuracy

logger = logging.getLogger(__name__)


def _check_budget(options: CompressOptions, data: DataSplits, spec: BudgetSpec) -> None:
    """Fail before any training when the model does not fit the data (``new_model`` runs one
    batch through it) or the budget cannot hold the smallest low-rank plan: sizes need no
    trained weights."""
    model = new_model(options.model, data, options.baseline.seed)
    example = torch.zeros(1, data.in_channels, *data.input_size)
    pricer = Pricer(find_layers(model, example), measure(model, example))
    budget = spec.resolve(pricer.baseline.params)
    method = get_method(options.config.low_rank)
    allowed = {name: [method.name] for name, target in pricer.targets.items()
               if method.supports(target.geometry)}
    if not allowed:
        raise UserInputError(f"{method.name} cannot compress any layer of {options.model!r}; "
                             "valid: another --low-rank method")
    pricer.check_reachable(budget, allowed)


def run_compress(options: CompressOptions) -> dict[str, Any]:
    """Run the procedure, fine-tune and measure; write ``model.pt`` and ``plan.json`` and return
    the ``plan.json`` document."""
    budget_spec = parse_budget(options.budget)
    if budget_spec.metric != "params":
        raise UserInputError(f"--budget {options.budget!r}: compress takes a parameter budget; "
                             "valid: a fraction (0.05) or a count (50000) of parameters")
    get_method(options.config.low_rank)  # an unknown method fails before any data is loaded
    check_output_dir(options.out)  # before the work, whose result would otherwise be lost
    device = resolve_device(options.device)
    data = load_data(options.data)
    _check_budget(options, data, budget_spec)
    runtime = resolve_runtime(options.runtime, device)  # its threads also train the baseline
    model = prepare_baseline(options.model, data, options.checkpoint, options.baseline, device,
                             options.cache_dir)
    evaluator = Evaluator(model, data, options.finetune, device, runtime=runtime)
    baseline = evaluator.baseline()
    budget = budget_spec.resolve(baseline.params)
    result = compress_model(evaluator.model, evaluator.example, budget, options.config,
                            objective=validation_loss(data, device))
    before = accuracy(evaluator.build(result.plan), data.val, device, runtime=runtime)
    measured, tuned = evaluator.evaluate(result.plan)
    document: dict[str, Any] = {
        "model": options.model, "data": data.spec,
        "procedure": asdict(options.config),
        "runtime": runtime.describe(),
        "budget": budget.to_dict(),
        "baseline": {k: v for k, v in baseline.to_dict().items() if k != "seconds"},
        "compressed": {**measured.to_dict(), "accuracy_before_finetune": before,
                       "compression": baseline.params / measured.params,
                       "finetune_steps": options.finetune.steps},
        "plan": result.plan.to_dict(),
        "layer_errors": result.errors,
        "local_moves": [list(move) for move in result.moves],
        "model_file": COMPRESSED_MODEL,
    }
    document = json_safe(document)
    options.out.mkdir(parents=True, exist_ok=True)
    save_compressed(options.out / COMPRESSED_MODEL, tuned, model_spec=options.model, data=data,
                    plan=document["plan"], meta={
                        key: value for key, value in document["compressed"].items()
                        if value is not None} | {"procedure": options.config.procedure})
    path = options.out / "plan.json"
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n",
                         encoding="utf-8")
    os.replace(temporary, path)
    return document
