"""Search strategies at equal trials: random, TPE, NSGA-II, global→local + warm starts.

Every strategy runs the same search (model, checkpoint, data, space, budgets, fine-tune, seed)
through ``lpsd_search.backends.optuna.search`` with promotion off, so all trials have the same
fidelity. Per strategy the table gives the hypervolume of the feasible front after every
``--every`` trials (objectives: validation accuracy and params / baseline params, reference
point (0 accuracy, 1.0 of the baseline's params); larger is better) and the best validation and
test accuracy among the feasible trials at ≥ 10×, 20× and 40× compression. One run per strategy.

Example:
    python benchmarks/search_strategies.py --model vgg16:width=0.25 --data fashion-mnist \
        --checkpoint benchmarks/cache/vgg16w025-fmnist.pt --trials 30 --finetune-steps 200 \
        --output benchmarks/results/search_strategies.md
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from bench_utils import RESULTS, header, limit_threads

from lpsd_search.backends.optuna import search
from lpsd_search.config import BaselineConfig, SearchConfig, SearchOptions, TrainConfig
from lpsd_search.report.pareto import hypervolume_2d
from lpsd_search.report.record import study_baseline, study_budgets
from lpsd_search.report.results import trial_rows
from lpsd_search.strategy.study import load_study

STRATEGIES = {
    "random": {"sampler": "random", "strategy": "flat", "warm_starts": ()},
    "TPE": {"sampler": "tpe", "strategy": "flat", "warm_starts": ()},
    "NSGA-II": {"sampler": "nsga2", "strategy": "flat", "warm_starts": ()},
    "global→local + warm starts": {"sampler": "tpe", "strategy": "global-local"},
}
LEVELS = (10.0, 20.0, 40.0)


def _run(name: str, settings: dict, args: argparse.Namespace, out: Path) -> tuple[list, float]:
    shutil.rmtree(out, ignore_errors=True)
    options = SearchOptions(
        model=args.model, data=args.data, budget=tuple(args.budget), out=out,
        checkpoint=args.checkpoint, space=args.space,
        finetune=TrainConfig(args.finetune_steps, 3e-3, 64, seed=args.seed),
        search=SearchConfig(trials=args.trials, seed=args.seed, promote_steps=0,
                            save_models=False, **settings),
        baseline=BaselineConfig(epochs=args.train_epochs, seed=args.seed),
        device="cpu", cache_dir=args.cache_dir,
    )
    start = time.perf_counter()
    search(options)
    seconds = time.perf_counter() - start
    study = load_study(f"sqlite:///{out / 'study.db'}", None)
    return [row for row in trial_rows(study) if row.state == "COMPLETE"], seconds


def _slug(name: str) -> str:
    return name.split()[0].replace("→", "-").lower()


def _run_one(name: str, args: argparse.Namespace) -> tuple[list, float]:
    limit_threads(args.threads)  # a fresh process (spawn) starts with torch's default threads
    rows, seconds = _run(name, STRATEGIES[name], args, args.work / _slug(name))
    print(f"{name}: {len(rows)} trials in {seconds:.0f} s", file=sys.stderr)
    return rows, seconds


def _run_all(args: argparse.Namespace) -> dict[str, tuple[list, float]]:
    """Every strategy, ``--jobs`` at a time (each in its own process, ``--threads`` each)."""
    if args.jobs <= 1:
        return {name: _run_one(name, args) for name in STRATEGIES}
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
        futures = {name: pool.submit(_run_one, name, args) for name in STRATEGIES}
        return {name: future.result() for name, future in futures.items()}


def _curve(rows: list, baseline_params: int, limit: int, every: int) -> list[float]:
    curve = []
    for end in range(every, len(rows) + 1, every):
        feasible = [r for r in rows[:end] if r.measures["params"] <= limit]
        values = np.array([[r.measures["accuracy"], r.measures["params"] / baseline_params]
                           for r in feasible]).reshape(-1, 2)
        curve.append(hypervolume_2d(values, [True, False], [0.0, 1.0]))
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", default="vgg16:width=0.25")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--checkpoint", default="benchmarks/cache/vgg16w025-fmnist.pt")
    parser.add_argument("--budget", action="append", default=None)
    parser.add_argument("--train-epochs", type=float, default=30.0,
                        help="baseline recipe when --checkpoint is none")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--space", default="all")
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--finetune-steps", type=int, default=200)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=1,
                        help="strategies run at the same time (each in its own process)")
    parser.add_argument("--work", type=Path, default=Path("benchmarks/cache/strategies"))
    parser.add_argument("--output", type=Path, default=RESULTS / "search_strategies.md")
    args = parser.parse_args()
    args.budget = args.budget or ["0.1"]
    args.checkpoint = None if args.checkpoint in ("", "none") else args.checkpoint
    note = limit_threads(args.threads)
    if args.jobs > 1:
        note += f"; {args.jobs} strategies at a time, one process each"
    results = _run_all(args)
    study = load_study(f"sqlite:///{args.work / 'random' / 'study.db'}", None)
    baseline = study_baseline(study)
    limit = min(b["limit"] for b in study_budgets(study) if b["metric"] == "params")
    lines = header("Search strategies at equal trials", note, [
        ("model / data", f"`{args.model}` on `{args.data}`, checkpoint `{args.checkpoint}`"),
        ("baseline", f"{baseline['params']:,} params, validation accuracy "
                     f"{baseline['accuracy']:.4f}, test {baseline['test_accuracy']:.4f}"),
        ("search", f"space `{args.space}`, budget {', '.join(args.budget)}, {args.trials} "
                   f"trials, {args.finetune_steps} fine-tune steps, seed {args.seed}, "
                   "no promotion"),
    ])
    checkpoints = list(range(args.every, args.trials + 1, args.every))
    lines += ["## Hypervolume after n trials (accuracy × params saved; larger is better)", "",
              "| strategy | " + " | ".join(f"n={n}" for n in checkpoints) + " | wall s |",
              "|---|" + "---:|" * (len(checkpoints) + 1)]
    for name, (rows, seconds) in results.items():
        curve = _curve(rows, baseline["params"], limit, args.every)
        lines.append(f"| {name} | " + " | ".join(f"{v:.4f}" for v in curve) +
                     f" | {seconds:.0f} |")
    lines += ["", "## Best accuracy at a compression level (validation / test; — none)", "",
              "| strategy | " + " | ".join(f"≥ {level:g}×" for level in LEVELS) + " |",
              "|---|" + "---:|" * len(LEVELS)]
    for name, (rows, _) in results.items():
        cells = []
        for level in LEVELS:
            fitting = [r for r in rows if baseline["params"] / r.measures["params"] >= level]
            best = max(fitting, key=lambda r: r.measures["accuracy"], default=None)
            cells.append("—" if best is None else
                         f"{best.measures['accuracy']:.4f} / {best.measures['test_accuracy']:.4f}"
                         f" (trial {best.trial})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(args.output.read_text())


if __name__ == "__main__":
    main()
