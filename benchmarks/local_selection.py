"""ALPSD's local selection: its cost and its choices against the number of images it scores on.

The local selection scores each candidate move by the validation loss of the whole model on a
fixed subset of validation images (``trial.evaluate.OBJECTIVE_EXAMPLES``); on ResNet-20 it was
most of a ladder trial's time. This benchmark runs ``compress_model`` (ALPSD, one local pass)
on the search tier's trained settings, at several rungs and policies, scoring on each subset
size in turn (round-robin, ``--repeats`` times), and records per case the median seconds, the
moves made and whether the plan equals the one chosen on the largest subset.

    python benchmarks/local_selection.py --threads 1 --cache-dir /work/bcache

Results: ``benchmarks/results/local_selection_cpu.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from bench_utils import RESULTS, header, limit_threads, write_results

from lpsd_search.config import (
    BaselineConfig,
    CompressConfig,
    RuntimeConfig,
    SearchConfig,
    SearchOptions,
    TrainConfig,
)
from lpsd_search.procedures.compress import compress_model
from lpsd_search.strategy.ladder import params_budget
from lpsd_search.strategy.rungs import rung_budget
from lpsd_search.strategy.runner import TrialRunner
from lpsd_search.trial.evaluate import ValidationLoss

SETTINGS = [("resnet20-w0.5", "resnet20:width=0.5", [5.0, 10.0]),
            ("vgg11-w0.25", "vgg11:width=0.25", [10.0, 30.0])]
"""The search benchmark's cpu tier settings (Fashion-MNIST, 2 epochs) and two of their rungs."""

POLICIES = [("balanced", 0.3), ("uniform", 0.45), ("vbmf", 0.2)]
"""(rank allocation, sparse share) of the ALPSD runs: the published one and two others."""


def run_case(runner: TrialRunner, level: float, allocation: str, share: float,
             sizes: list[int], repeats: int) -> dict[str, Any]:
    base = params_budget(runner.budgets, runner.pricer)
    budget = rung_budget(base, runner.baseline.params, level)
    config = CompressConfig(procedure="alpsd", low_rank="alds", sparse_share=share,
                            local_passes=1, allocation=allocation)  # type: ignore[arg-type]
    objectives = {n: ValidationLoss(runner.data, runner.device, n) for n in sizes}
    model, example = runner.evaluator.model, runner.evaluator.example
    seconds: dict[int, list[float]] = {n: [] for n in sizes}
    results: dict[int, Any] = {}
    for _ in range(repeats):
        for n in sizes:
            start = time.perf_counter()
            results[n] = compress_model(model, example, budget, config, objective=objectives[n])
            seconds[n].append(time.perf_counter() - start)
    reference = results[sizes[0]].plan.to_dict()
    return {"level": level, "allocation": allocation, "sparse_share": share,
            "by_images": {str(n): {"seconds": statistics.median(seconds[n]),
                                   "moves": len(results[n].moves),
                                   "same_plan": results[n].plan.to_dict() == reference}
                          for n in sizes}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache-dir", type=Path, default=Path("benchmarks/cache"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--images", type=int, nargs="+", default=[2000, 1000])
    args = parser.parse_args()
    threads_note = limit_threads(args.threads)
    cases = []
    for name, model, levels in SETTINGS:
        options = SearchOptions(
            model=model, data="fashion-mnist", budget="0.2", out=Path("/tmp/local-selection"),
            cache_dir=args.cache_dir, device="cpu", finetune=TrainConfig(steps=50),
            baseline=BaselineConfig(epochs=2.0), search=SearchConfig(),
            runtime=RuntimeConfig(threads=args.threads))
        runner = TrialRunner.from_options(options)
        for level in levels:
            for allocation, share in POLICIES:
                case = run_case(runner, level, allocation, share, args.images, args.repeats)
                cases.append({"setting": name, **case})
                print(json.dumps(cases[-1]), flush=True)
    document = {"images": args.images, "repeats": args.repeats, "cases": cases,
                "torch": torch.__version__}
    (RESULTS / "local_selection_cpu.json").write_text(json.dumps(document, indent=1) + "\n",
                                                      encoding="utf-8")
    lines = header("ALPSD local selection against the images it scores on", threads_note)
    first = args.images[0]
    lines += ["", f"ALPSD (ALDS low rank, one local pass) per case; median of {args.repeats} "
              "round-robin runs. Plan: equal to the plan chosen on "
              f"{first} images.", "",
              "| setting | rung | allocation, sparse share | "
              + " | ".join(f"{n} images: s, moves, plan" for n in args.images)
              + f" | speed-up of {args.images[-1]} |",
              "|---|---|---|" + "---|" * (len(args.images) + 1)]
    ratios = []
    for case in cases:
        cells = []
        for n in args.images:
            found = case["by_images"][str(n)]
            cells.append(f"{found['seconds']:.1f}, {found['moves']}, "
                         f"{'same' if found['same_plan'] else 'differs'}")
        ratio = (case["by_images"][str(first)]["seconds"]
                 / case["by_images"][str(args.images[-1])]["seconds"])
        ratios.append(ratio)
        lines.append(f"| {case['setting']} | {case['level']:g}× | {case['allocation']}, "
                     f"{case['sparse_share']:g} | " + " | ".join(cells) + f" | {ratio:.2f}× |")
    same = sum(c["by_images"][str(args.images[-1])]["same_plan"] for c in cases)
    lines += ["", f"Median speed-up {statistics.median(ratios):.2f}×; the same plan in {same} "
              f"of {len(cases)} cases."]
    write_results(RESULTS / "local_selection_cpu.md", lines)


if __name__ == "__main__":
    main()
