"""Training-time methods and rank choices on Fashion-MNIST, each against its plain counterpart.

One trained dense model (by default ``vgg11:width=0.25``, trained once and cached under
``benchmarks/cache``) and four comparisons, every arm run through ``trial.evaluate.Evaluator`` (the
code path of a search trial: ADMM if asked, decomposition, fine-tune, measurements) with the same
data, fine-tune (steps, learning rate, batch) and seeds; the seeds change the batch order of the
fine-tune and of ADMM. The compressed layers are the convolutions holding at least 5 % of the
compressible parameters (the search's ``dense_small`` rule); the others stay dense in every arm.

1. TT with vs. without ADMM (Yin et al., CVPR 2021): every compressed layer takes TT at
   ``--fraction`` of its parameters. Arms: decomposed and fine-tuned; trained by ADMM for
   ``--admm-steps`` first (the library's default ρ schedule); decomposed and fine-tuned for the
   fine-tune plus the ADMM steps (the same number of optimiser steps as the ADMM arm).
2. VBMF-Tucker with vs. without orthogonal regularisation (He, Jiang, Wu 2024): Tucker-2 at the
   EVBMF ranks of each layer (``suggest_rank``; a layer VBMF would not shrink stays dense), the
   fine-tune with and without ``--orth-reg`` (the ``vbmf-orth`` preset's λ).
3. MTD (Liang & Lee): per layer the better of Tucker-2 and CP at ``--fraction`` of its parameters,
   judged as MTD does on that layer alone (the dense model with only that layer decomposed, by
   the validation loss on 2,000 fixed validation images), against Tucker-2 everywhere and CP
   everywhere at the same per-layer fraction.
4. VBMF ranks vs. uniform ranks at equal size: comparison 2's VBMF-Tucker arm (the same runs)
   against Tucker-2 on the same layers with one common fraction, the largest that fits in the VBMF
   plan's parameters (``Pricer.fit``).

Reported: parameters of the built model, validation accuracy as decomposed (before any
fine-tune), and after the fine-tune the validation and test accuracy, as medians over the seeds,
with the per-seed difference to the arm compared with. Nothing here was tuned on these data: the
fractions, steps and λ were fixed before the run (λ and the ADMM schedule are the library's).

Example (digits, a quick check):
    python benchmarks/training_methods.py --model digits-cnn --data digits --seeds 0 \
        --finetune-steps 30 --admm-steps 30 --train-epochs 8 --output /tmp/training_methods.md
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from bench_utils import RESULTS, header, limit_threads, seconds, write_results
from torch import nn

from lpsd_search.config import METHOD_DEFAULTS, BaselineConfig, RuntimeConfig, TrainConfig
from lpsd_search.data.splits import DataSplits, load_data
from lpsd_search.decompositions.base import get_method
from lpsd_search.decompositions.cache import FactorCache
from lpsd_search.decompositions.ranks import suggest_rank
from lpsd_search.models.checkpoint import save_checkpoint
from lpsd_search.plan.apply import apply_plan
from lpsd_search.plan.budget import Pricer, Request, parse_budget
from lpsd_search.plan.choices import LayerChoice, Plan
from lpsd_search.plan.layers import TargetLayer, find_layers
from lpsd_search.plan.measure import measure
from lpsd_search.trial.admm import RANK_GRID
from lpsd_search.trial.baseline import baseline_meta, load_model, train_baseline
from lpsd_search.trial.device import resolve_device
from lpsd_search.trial.evaluate import OBJECTIVE_EXAMPLES, Evaluator, validation_loss
from lpsd_search.trial.runtime import Runtime, resolve_runtime
from lpsd_search.trial.train import accuracy

CACHE = Path(__file__).resolve().parent / "cache"
SMALL_SHARE = 0.05
"""Layers under this share of the compressible parameters stay dense (the search's rule)."""


@dataclass(frozen=True)
class Arm:
    """One way of compressing: a plan and a fine-tune (the seed is filled in per run)."""

    name: str
    plan: Plan
    finetune: TrainConfig


@dataclass(frozen=True)
class Run:
    arm: str
    seed: int
    params: int
    val_built: float
    val: float
    test: float
    prepare_seconds: float  # ADMM (if any) and the decomposition
    finetune_seconds: float


def dense_model(args: argparse.Namespace, data: DataSplits, device: torch.device,
                runtime: Runtime) -> tuple[nn.Module, Path]:
    """The baseline, trained once under the runtime (bf16 on AMX CPUs: several times faster
    than the library's fp32 baselines) and cached under ``benchmarks/cache``."""
    safe = "".join(c if c.isalnum() else "-" for c in f"{args.model}-{args.data}")
    path = CACHE / f"training-methods-{safe}-{args.train_epochs:g}ep.pt"
    if path.is_file():
        return load_model(args.model, data, path, device), path
    config = BaselineConfig(epochs=args.train_epochs, seed=0)
    model, scores = train_baseline(args.model, data, config, device, runtime=runtime)
    save_checkpoint(path, model, model_spec=args.model, data_spec=data.spec,
                    data_fingerprint=data.fingerprint,
                    meta=baseline_meta(data, **scores, epochs=args.train_epochs, seed=0))
    return model.eval(), path


def compressed_layers(targets: list[TargetLayer]) -> list[TargetLayer]:
    total = sum(t.geometry.dense_params for t in targets)
    return [t for t in targets
            if t.geometry.kind == "conv" and t.geometry.dense_params >= SMALL_SHARE * total]


def uniform_plan(layers: list[TargetLayer], method: str, fraction: float) -> Plan:
    return Plan({t.name: LayerChoice(method, get_method(method).resolve_rank(t.geometry, fraction))
                 for t in layers})


def vbmf_plan(model: nn.Module, layers: list[TargetLayer]) -> Plan:
    """Tucker-2 at each layer's EVBMF ranks; layers that would not shrink stay dense."""
    modules = dict(model.named_modules())
    tucker = get_method("tucker2")
    plan = {}
    for target in layers:
        rank = suggest_rank(modules[target.name], "tucker2", "vbmf")
        if tucker.params(target.geometry, rank) < target.geometry.dense_params:
            plan[target.name] = LayerChoice("tucker2", rank)
    return Plan(plan)


def matched_uniform_plan(pricer: Pricer, vbmf: Plan) -> Plan:
    """Tucker-2 on the VBMF plan's layers at one fraction, the largest within its size."""
    limit = pricer.size(vbmf).params
    budget = parse_budget(str(limit)).resolve(pricer.baseline.params)
    requests = {name: Request("tucker2", 1.0) for name in vbmf.layers}
    return pricer.fit(requests, [budget], {name: ["tucker2"] for name in vbmf.layers})


def mtd_plan(model: nn.Module, layers: list[TargetLayer], fraction: float, data: DataSplits,
             device: torch.device, cache: FactorCache) -> tuple[Plan, dict[str, dict[str, float]]]:
    """Per layer the method whose single-layer decomposition keeps the validation loss lower."""
    loss = validation_loss(data, device)
    chosen, losses = {}, {}
    for target in layers:
        options = {}
        for method in ("tucker2", "cp"):
            rank = get_method(method).resolve_rank(target.geometry, fraction)
            choice = LayerChoice(method, rank)
            options[method] = (loss(apply_plan(model, Plan({target.name: choice}), cache)),
                               choice)
        losses[target.name] = {method: value for method, (value, _) in options.items()}
        chosen[target.name] = min(options.values(), key=lambda item: item[0])[1]
    return Plan(chosen), losses


def build_arms(args: argparse.Namespace, model: nn.Module, data: DataSplits, pricer: Pricer,
               layers: list[TargetLayer], device: torch.device,
               cache: FactorCache) -> tuple[list[Arm], dict[str, dict[str, float]]]:
    base = TrainConfig(args.finetune_steps, args.finetune_lr, args.batch_size)
    tt = uniform_plan(layers, "tt", args.fraction)
    vbmf = vbmf_plan(model, layers)
    mtd, losses = mtd_plan(model, layers, args.fraction, data, device, cache)
    arms = [
        Arm("TT", tt, base),
        Arm("TT + ADMM", tt, replace(base, admm_steps=args.admm_steps)),
        Arm("TT, longer fine-tune", tt,
            replace(base, steps=args.finetune_steps + args.admm_steps)),
        Arm("VBMF-Tucker", vbmf, base),
        Arm("VBMF-Tucker + orth", vbmf, replace(base, orth_reg=args.orth_reg)),
        Arm("uniform Tucker-2", matched_uniform_plan(pricer, vbmf), base),
        Arm("Tucker-2 only", uniform_plan(layers, "tucker2", args.fraction), base),
        Arm("CP only", uniform_plan(layers, "cp", args.fraction), base),
        Arm("MTD", mtd, base),
    ]
    return arms, losses


def run(arm: Arm, seed: int, model: nn.Module, data: DataSplits, device: torch.device,
        runtime: Runtime, cache: FactorCache) -> Run:
    evaluator = Evaluator(model, data, replace(arm.finetune, seed=seed), device, cache=cache,
                          runtime=runtime)
    start = time.perf_counter()
    built = evaluator.build(arm.plan)  # trains the ADMM model of the plan, if any (cached)
    prepared = time.perf_counter() - start
    val_built = accuracy(built, data.val, device, runtime=runtime)
    measured, _ = evaluator.evaluate(arm.plan)
    return Run(arm.name, seed, measured.params, val_built, measured.accuracy,
               measured.test_accuracy, prepared + measured.build_seconds,
               measured.finetune_seconds)


def pp(value: float) -> str:
    return f"{100 * value:+.2f} pp"


def percent(value: float) -> str:
    return f"{100 * value:.2f} %"


COMPARISONS: dict[str, list[str]] = {
    "1. TT with vs. without ADMM": ["TT", "TT + ADMM", "TT, longer fine-tune"],
    "2. VBMF-Tucker with vs. without orthogonal regularisation": ["VBMF-Tucker",
                                                                  "VBMF-Tucker + orth"],
    "3. MTD vs. Tucker-2 only vs. CP only": ["Tucker-2 only", "CP only", "MTD"],
    "4. VBMF ranks vs. uniform ranks": ["uniform Tucker-2", "VBMF-Tucker"],
}
"""Each comparison's arms in table order; the Δ column is against the first."""
VERDICTS: dict[str, list[tuple[str, str]]] = {
    "1. TT with vs. without ADMM": [("TT + ADMM", "TT"), ("TT + ADMM", "TT, longer fine-tune")],
    "2. VBMF-Tucker with vs. without orthogonal regularisation": [("VBMF-Tucker + orth",
                                                                   "VBMF-Tucker")],
    "3. MTD vs. Tucker-2 only vs. CP only": [("MTD", "Tucker-2 only"), ("MTD", "CP only")],
    "4. VBMF ranks vs. uniform ranks": [("VBMF-Tucker", "uniform Tucker-2")],
}
"""Which arm each verdict asks about, and against which."""


def _deltas(by_arm: dict[str, list[Run]], name: str, against: str) -> list[float]:
    return [a.test - b.test for a, b in zip(by_arm[name], by_arm[against], strict=True)]


def verdict(deltas: list[float], noise: float) -> str:
    """Whether a method helps, from its per-seed test-accuracy differences.

    A gain must hold in every seed and exceed ``noise`` (one binomial standard error of a test
    accuracy) to count: smaller differences are what re-running would change.
    """
    better, worse, median = sum(d > 0 for d in deltas), sum(d < 0 for d in deltas), \
        statistics.median(deltas)
    if better == len(deltas) and median >= noise:
        return "helps here"
    if better == len(deltas):
        return (f"no measurable gain here (better in every seed, but by less than the "
                f"±{100 * noise:.2f} pp noise of one accuracy)")
    if worse == len(deltas):
        return "does not help here: worse in every seed"
    return "does not help here" if median <= 0 else "mixed: no consistent gain"


def summary(runs: list[Run], baseline_params: int, noise: float) -> tuple[list[str], dict]:
    """The markdown tables and verdicts, and their numbers for the JSON file."""
    by_arm: dict[str, list[Run]] = {}
    for result in runs:
        by_arm.setdefault(result.arm, []).append(result)
    lines: list[str] = []
    numbers: dict = {}
    for comparison, members in COMPARISONS.items():
        reference = members[0]
        lines += [f"### {comparison}", "",
                  "| arm | params | compression | val as decomposed | val after fine-tune "
                  f"| test after fine-tune | test Δ vs {reference} (per seed) "
                  "| prepare / fine-tune time |", "|---|---|---|---|---|---|---|---|"]
        for name in members:
            chosen = by_arm[name]
            tests = [r.test for r in chosen]
            deltas = _deltas(by_arm, name, reference)
            delta = ("—" if name == reference else
                     f"{pp(statistics.median(deltas))} ({', '.join(pp(d) for d in deltas)})")
            lines.append(
                f"| {name} | {chosen[0].params:,} | {baseline_params / chosen[0].params:.1f}× "
                f"| {percent(statistics.median(r.val_built for r in chosen))} "
                f"| {percent(statistics.median(r.val for r in chosen))} "
                f"| {percent(statistics.median(tests))} (min {percent(min(tests))}) | {delta} "
                f"| {seconds(statistics.median(r.prepare_seconds for r in chosen))} / "
                f"{seconds(statistics.median(r.finetune_seconds for r in chosen))} |")
        lines.append("")
        for name, against in VERDICTS[comparison]:
            deltas = _deltas(by_arm, name, against)
            better, median = sum(d > 0 for d in deltas), statistics.median(deltas)
            said = verdict(deltas, noise)
            lines.append(f"- {name} vs. {against}: test accuracy {pp(median)} (median), better "
                         f"in {better}/{len(deltas)} seeds: **{said}**.")
            numbers[f"{name} vs. {against}"] = {"test_deltas": deltas, "median": median,
                                                "better_seeds": better, "verdict": said}
        lines.append("")
    return lines, numbers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vgg11:width=0.25")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--train-epochs", type=float, default=6.0,
                        help="epochs of the dense baseline (trained once, cached)")
    parser.add_argument("--fraction", type=float, default=0.1,
                        help="per-layer parameter fraction of TT, Tucker-2, CP and MTD")
    parser.add_argument("--finetune-steps", type=int, default=300)
    parser.add_argument("--finetune-lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--admm-steps", type=int, default=300)
    parser.add_argument("--orth-reg", type=float, default=0.01)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (1: two threads stall on a core another job holds)")
    parser.add_argument("--output", type=Path, default=RESULTS / "training_methods.md")
    args = parser.parse_args(argv)
    # INFO: the baseline's epochs and each ADMM training's distance to the rank set.
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    threads_note = limit_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    device = resolve_device(args.device)
    runtime = resolve_runtime(RuntimeConfig(threads=args.threads), device)

    start_all = time.perf_counter()
    data = load_data(args.data)
    cached = time.perf_counter()
    model, weights = dense_model(args, data, device, runtime)
    cached = time.perf_counter() - cached
    example = torch.zeros(1, data.in_channels, *data.input_size, device=device)
    size = measure(model, example)
    pricer = Pricer(find_layers(model, example), size)
    layers = compressed_layers(list(pricer.targets.values()))
    cache = FactorCache()
    dense_val = accuracy(model, data.val, device, runtime=runtime)
    dense_test = accuracy(model, data.test, device, runtime=runtime)
    arms, losses = build_arms(args, model, data, pricer, layers, device, cache)
    runs = []
    for seed in seeds:
        for arm in arms:
            result = run(arm, seed, model, data, device, runtime, cache)
            print(f"seed {seed} {arm.name}: {result.params:,} params, val as decomposed "
                  f"{percent(result.val_built)}, test {percent(result.test)}", flush=True)
            runs.append(result)
    total = time.perf_counter() - start_all

    settings = {k: v for k, v in METHOD_DEFAULTS.items() if k.startswith("admm_rho")}
    lines = header(f"Training-time methods and rank choices on {args.data}", threads_note, [
        ("model", f"`{args.model}`, {size.params:,} params; dense validation "
                  f"{percent(dense_val)}, test {percent(dense_test)}"),
        ("weights", f"`{weights.relative_to(CACHE.parent.parent)}`: {args.train_epochs:g} "
                    "epochs (seed 0, the library's baseline recipe, under the runtime below)"),
        ("data", f"`{data.spec}`: train {len(data.train):,} / validation {len(data.val):,} / "
                 f"test {len(data.test):,} images"),
        ("compressed layers", ", ".join(t.name for t in layers) + f" (≥ {SMALL_SHARE:.0%} of "
                              "the compressible parameters each); the rest stay dense"),
        ("fine-tune", f"{args.finetune_steps} AdamW steps, lr {args.finetune_lr:g} cosine to "
                      f"0, batch {args.batch_size}, every arm"),
        ("ADMM", f"{args.admm_steps} steps, ρ {settings['admm_rho']:g} ×"
                 f"{settings['admm_rho_growth']:g} per dual update (library defaults), targets "
                 f"rounded down onto the √2 rank grid ({RANK_GRID:.3f})"),
        ("orthogonal regularisation", f"λ = {args.orth_reg:g}"),
        ("seeds", f"{', '.join(map(str, seeds))} (fine-tune and ADMM batch order); medians "
                  "over them"),
        ("runtime", json.dumps(runtime.describe())),
        ("whole run", f"{seconds(total)}, of which {seconds(cached)} to train or load the "
                      "dense model"),
    ])
    # One binomial standard error of a test accuracy near the dense model's.
    noise = (dense_test * (1 - dense_test) / len(data.test)) ** 0.5
    body, numbers = summary(runs, size.params, noise)
    lines += ["## Results", "", "Δ: test accuracy minus the first arm of the comparison, "
              "seed by seed (same seed, same batches). *Val as decomposed*: before any "
              "fine-tune (after ADMM for its arm). A verdict of *helps* needs a gain in every "
              f"seed and a median gain of at least {100 * noise:.2f} pp, one binomial standard "
              f"error of a {len(data.test):,}-image test accuracy near the dense model's.", "",
              *body]
    lines += ["## Plans", ""]
    for arm in arms:
        lines.append(f"- {arm.name}: `{arm.plan.summary()}`")
    lines += ["", "MTD's single-layer validation losses (Tucker-2 / CP, "
              f"{OBJECTIVE_EXAMPLES:,} images):", ""]
    lines += [f"- {name}: {v['tucker2']:.4f} / {v['cp']:.4f}" for name, v in losses.items()]
    print(write_results(args.output, lines))
    document = {"args": {k: str(v) for k, v in vars(args).items()}, "dense":
                {"params": size.params, "val": dense_val, "test": dense_test},
                "plans": {arm.name: arm.plan.to_dict() for arm in arms},
                "runs": [asdict(r) for r in runs], "summary": numbers, "mtd_losses": losses,
                "seconds": total}
    args.output.with_suffix(".json").write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
