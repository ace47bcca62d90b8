"""Accuracy vs. size on Fashion-MNIST: low rank alone, Sparsification (LPSD) and ALPSD.

One trained dense model (by default a CIFAR-style ``vgg16:width=0.25``) is compressed at every
``--budgets`` fraction of its parameters by the three whole-model procedures of
``lpsd_search.procedures.compress_model``, wired exactly as ``lpsd-search compress`` wires them
(``procedures.run``'s data, baseline, evaluator, validation-loss objective and factor cache):

* ``lowrank``: error-balanced ALDS ranks (``allocation.balanced_ranks``) for the whole budget;
* ``lpsd`` (Sparsification): the same allocation for ``1 − sparse_share`` of the budget, then
  one global magnitude threshold over all residuals ``W − L`` picks the sparse entries;
* ``alpsd``: the same global selection, alternating L/S fits, then local selection scored by the
  validation loss on a fixed 2,000-image subset (``trial.validation_loss``).

Every compressed model is measured as built (params, deployed bytes, validation and test
accuracy), then given the same short fine-tune (``--finetune-steps`` AdamW steps, cosine schedule,
the same learning rate, batch size and seed for all, the sparse patterns held fixed) and measured
again. The dense model is measured as it is and after the same fine-tune. One run per
(procedure, budget): the times are single measurements on a shared machine.

Example (digits, for a quick check):
    python benchmarks/lpsd_fmnist.py --model digits-cnn --data digits --checkpoint /tmp/d.pt \
        --budgets 0.2,0.1 --finetune-steps 50 --output /tmp/lpsd_digits.md
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from bench_utils import RESULTS, header, limit_threads, seconds, write_results
from torch import nn

from lpsd_search.config import PROCEDURES, BaselineConfig, CompressConfig, TrainConfig
from lpsd_search.data.splits import DataSplits, load_data
from lpsd_search.decompositions.cache import FactorCache
from lpsd_search.errors import UserInputError
from lpsd_search.lpsd.sparse import masked_weights
from lpsd_search.plan.budget import Budget, parse_budget
from lpsd_search.plan.choices import Plan
from lpsd_search.procedures.compress import compress_model
from lpsd_search.trial.baseline import prepare_baseline
from lpsd_search.trial.device import resolve_device
from lpsd_search.trial.evaluate import OBJECTIVE_EXAMPLES, Evaluator, Measurement, validation_loss
from lpsd_search.trial.train import accuracy

NAMES = {"lowrank": "low rank", "lpsd": "Sparsification", "alpsd": "ALPSD"}


@dataclass(frozen=True)
class Row:
    """One compressed (or dense) model, measured before and after the fine-tune."""

    label: str
    budget: Budget | None
    params: int
    bytes: int
    sparse_entries: int
    val_before: float
    test_before: float
    val_after: float
    test_after: float
    procedure_seconds: float | None
    finetune_seconds: float
    plan: str = "dense"
    local_moves: int = 0


def sparse_entries(model: nn.Module) -> int:
    """Entries held by the sparse branches of a built model."""
    return sum(int(mask.sum()) for _, mask in masked_weights(model))


def run_one(model: nn.Module, data: DataSplits, finetune: TrainConfig, device: torch.device,
            budget: Budget, config: CompressConfig, objective: object) -> Row:
    """Compress, measure the built model, fine-tune, measure again."""
    # A fresh factor cache per run, so no procedure's time profits from another's factors.
    evaluator = Evaluator(model, data, finetune, device, cache=FactorCache())
    start = time.perf_counter()
    result = compress_model(evaluator.model, evaluator.example, budget, config,
                            objective=objective)  # type: ignore[arg-type]
    procedure_seconds = time.perf_counter() - start
    built = evaluator.build(result.plan)
    size = evaluator.size(built)
    if size.params > budget.limit:
        raise RuntimeError(f"{config.procedure} at {budget.requested}: built model has "
                           f"{size.params} params, over the budget of {budget.limit}")
    val_before = accuracy(built, data.val, device)
    test_before = accuracy(built, data.test, device)
    entries = sparse_entries(built)
    start = time.perf_counter()
    measured, _ = evaluator.evaluate(result.plan)
    finetune_seconds = time.perf_counter() - start
    if (measured.params, measured.bytes) != (size.params, size.bytes):
        raise RuntimeError(f"the fine-tune changed the size: {size} -> {measured}")
    return Row(NAMES[config.procedure], budget, measured.params, measured.bytes, entries,
               val_before, test_before, measured.accuracy, measured.test_accuracy,
               procedure_seconds, finetune_seconds, result.plan.summary(), len(result.moves))


def dense_rows(model: nn.Module, data: DataSplits, finetune: TrainConfig,
               device: torch.device) -> tuple[Measurement, Row]:
    """The dense model as trained, and after the same short fine-tune as every compressed one."""
    evaluator = Evaluator(model, data, finetune, device)
    baseline = evaluator.baseline()
    start = time.perf_counter()
    tuned, _ = evaluator.evaluate(Plan())
    row = Row("dense + fine-tune", None, baseline.params, baseline.bytes, 0, baseline.accuracy,
              baseline.test_accuracy, tuned.accuracy, tuned.test_accuracy, None,
              time.perf_counter() - start)
    return baseline, row


def percent(value: float) -> str:
    return f"{100 * value:.2f} %"


def table(rows: list[Row], baseline: Measurement) -> list[str]:
    lines = [
        "| budget (limit) | procedure | params | bytes | compression (params / bytes) "
        "| sparse entries | val before | test before | val after | test after "
        "| procedure time | fine-tune + eval time |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        budget = ("—" if row.budget is None
                  else f"{row.budget.requested} ({row.budget.limit:,})")
        procedure = "—" if row.procedure_seconds is None else seconds(row.procedure_seconds)
        lines.append(
            f"| {budget} | {row.label} | {row.params:,} | {row.bytes:,} "
            f"| {baseline.params / row.params:.1f}× / {baseline.bytes / row.bytes:.1f}× "
            f"| {row.sparse_entries:,} | {percent(row.val_before)} | {percent(row.test_before)} "
            f"| {percent(row.val_after)} | {percent(row.test_after)} | {procedure} "
            f"| {seconds(row.finetune_seconds)} |")
    return lines


def findings(rows: list[Row], baseline: Measurement, dense_tuned: Row) -> list[str]:
    """Sentences of measured numbers: accuracy per size and whether the expected order held."""
    by_budget: dict[str, dict[str, Row]] = {}
    for row in rows:
        if row.budget is not None:
            by_budget.setdefault(row.budget.requested, {})[row.label] = row
    lines = [f"Dense: validation {percent(baseline.accuracy)}, test "
             f"{percent(baseline.test_accuracy)}; after the same fine-tune "
             f"{percent(dense_tuned.val_after)} / {percent(dense_tuned.test_after)}.", ""]
    order = [NAMES[p] for p in ("alpsd", "lpsd", "lowrank")]
    held = {"before": [], "after": []}  # type: dict[str, list[str]]
    for requested, runs in by_budget.items():
        present = [name for name in order if name in runs]
        parts = []
        for name in present:
            run = runs[name]
            parts.append(f"{name} {percent(run.test_after)} at "
                         f"{baseline.params / run.params:.1f}× "
                         f"({percent(run.test_before)} before the fine-tune)")
        lines.append(f"- budget {requested}: test accuracy " + "; ".join(parts) + ".")
        for stage in ("before", "after"):
            values = [getattr(runs[name], f"test_{stage}") for name in present]
            if all(a >= b for a, b in itertools.pairwise(values)):
                held[stage].append(requested)
    budgets = list(by_budget)
    lines.append("")
    for stage in ("before", "after"):
        missing = [b for b in budgets if b not in held[stage]]
        verdict = ("held at every budget" if not missing
                   else f"held at {', '.join(held[stage]) or 'no budget'}; not at "
                        f"{', '.join(missing)}")
        lines.append(f"Order ALPSD ≥ Sparsification ≥ low rank (test accuracy, {stage} the "
                     f"fine-tune): {verdict}.")
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vgg16:width=0.25", help="model spec (lpsd-search)")
    parser.add_argument("--data", default="fashion-mnist", help="data spec (lpsd-search)")
    parser.add_argument("--checkpoint", default=None,
                        help="weights from lpsd-search train; default: train and cache one")
    parser.add_argument("--budgets", default="0.2,0.1,0.05,0.033,0.025",
                        help="comma list of budgets (fractions of the baseline's params)")
    parser.add_argument("--procedures", default=",".join(("lowrank", "lpsd", "alpsd")),
                        help=f"comma list out of {', '.join(PROCEDURES)}")
    parser.add_argument("--finetune-steps", type=int, default=400)
    parser.add_argument("--finetune-lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--low-rank", default="alds", help="low-rank method of L")
    parser.add_argument("--sparse-share", type=float, default=0.3)
    parser.add_argument("--local-passes", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="data split and fine-tune seed")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (1: see benchmarks/README.md on shared machines)")
    parser.add_argument("--output", type=Path, default=RESULTS / "lpsd_fmnist.md")
    args = parser.parse_args(argv)
    threads_note = limit_threads(args.threads)
    procedures = [p for p in args.procedures.split(",") if p]
    budgets = [parse_budget(b) for b in args.budgets.split(",") if b]
    configs = {p: CompressConfig(procedure=p, low_rank=args.low_rank,  # type: ignore[arg-type]
                                 sparse_share=args.sparse_share, local_passes=args.local_passes)
               for p in procedures}
    device = resolve_device(args.device)
    finetune = TrainConfig(args.finetune_steps, args.finetune_lr, args.batch_size,
                           seed=args.seed)

    start_all = time.perf_counter()
    data = load_data(args.data)
    model = prepare_baseline(args.model, data, args.checkpoint, BaselineConfig(seed=args.seed),
                             device, None)
    baseline, dense_tuned = dense_rows(model, data, finetune, device)
    objective = validation_loss(data, device)
    # Untimed warm-up: the first factorisations of a process pay one-off start-up costs that
    # would otherwise be charged to whichever procedure happens to run first.
    compress_model(model, torch.zeros(1, data.in_channels, *data.input_size, device=device),
                   budgets[0].resolve(baseline.params), CompressConfig(
                       procedure="lpsd", low_rank=args.low_rank))
    rows = [dense_tuned]
    skipped: list[str] = []
    for spec in budgets:
        budget = spec.resolve(baseline.params)
        for procedure in procedures:
            try:
                row = run_one(model, data, finetune, device, budget, configs[procedure],
                              objective)
            except UserInputError as error:  # e.g. the low-rank part's minimum does not fit
                skipped.append(f"{NAMES[procedure]} at budget {budget.requested}: {error}")
                print(skipped[-1], flush=True)
                continue
            print(f"{budget.requested} {row.label}: {row.params:,} params, test "
                  f"{percent(row.test_before)} -> {percent(row.test_after)}, procedure "
                  f"{seconds(row.procedure_seconds or 0.0)}", flush=True)
            rows.append(row)
    total = time.perf_counter() - start_all

    config = next(iter(configs.values()))
    lines = header("Accuracy vs. size: low rank, Sparsification (LPSD) and ALPSD", threads_note, [
        ("model", f"`{args.model}`, {baseline.params:,} params, {baseline.bytes:,} bytes"),
        ("weights", f"`{args.checkpoint}`" if args.checkpoint else "trained and cached here"),
        ("data", f"`{data.spec}`: train {len(data.train):,} / validation {len(data.val):,} / "
                 f"test {len(data.test):,} images, split seed {args.seed}"),
        ("procedures", f"`compress_model`, low-rank method `{config.low_rank}`, sparse share "
                       f"{config.sparse_share} (Sparsification, ALPSD), ALPSD local passes "
                       f"{config.local_passes} at step {config.local_step}, objective: "
                       f"validation loss on {OBJECTIVE_EXAMPLES:,} fixed validation images"),
        ("fine-tune", f"{finetune.steps} AdamW steps, lr {finetune.lr:g} cosine to 0, batch "
                      f"{finetune.batch_size}, weight decay {finetune.weight_decay:g}, seed "
                      f"{finetune.seed}, the same for every row; sparse patterns fixed"),
        ("repeats", "one run per row (no medians); times are single measurements"),
        ("device", str(device)),
        ("whole run", seconds(total)),
    ])
    body = table(rows, baseline)
    dense = (f"| — | dense (as trained) | {baseline.params:,} | {baseline.bytes:,} "
             f"| 1.0× / 1.0× | 0 | {percent(baseline.accuracy)} "
             f"| {percent(baseline.test_accuracy)} | — | — | — | — |")
    lines += ["## Accuracy vs. size", "", *body[:2], dense, *body[2:], ""]
    lines += ["## What this shows", "", *findings(rows, baseline, dense_tuned)]
    if skipped:
        lines += ["Not run (the procedure refused the budget):", "",
                  *[f"- {reason}" for reason in skipped], ""]
    lines += ["## Plans", "",
              "Per-layer choices (`alds(r)` low rank, `+s` one-pass sparse residual, `+S` "
              "alternating, with the kept fraction of the layer's entries).", ""]
    for row in rows[1:]:
        assert row.budget is not None
        moves = f", {row.local_moves} local moves kept" if row.label == NAMES["alpsd"] else ""
        lines += [f"- {row.budget.requested} {row.label}{moves}: `{row.plan}`"]
    lines += [""]
    print(write_results(args.output, lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
